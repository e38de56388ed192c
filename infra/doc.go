// Package infra holds groupcast's deployment: the NATS supercluster configuration
// (infra/nats), the Cloud Run service (infra/cloudrun), the guide (infra/README.md), and
// the Go helpers that boot that configuration on one machine.
//
// The helpers start real nats-server instances from the very files in infra/nats, one
// cluster per region joined by gateways, and run groupcast binaries against them. The
// playground (go run ./infra/playground) and the package's tests use them. The offline
// checks of the Dockerfile, cloudbuild.yaml and the Cloud Run service live in the
// module infra/deploycheck, which the tests here run.
package infra
