// Package deploycheck holds groupcast's offline deploy checks, as tests: the
// Dockerfile (parsed and linted by BuildKit, its go build run for real),
// .dockerignore, cloudbuild.yaml (decoded into the Cloud Build API's Build, its
// step graph and rollout checked) and the Cloud Run service rendered for every
// region (decoded into the Cloud Run Admin API's Service).
//
// It is a module of its own, so that BuildKit and the Google API types stay out
// of the go.mod of github.com/groupcast/groupcast: `go get` of the Go client
// pulls none of them. `go test ./...` at the repository root still runs these
// checks, through TestDeployChecks in package infra.
package deploycheck
