package deploycheck

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/groupcast/groupcast/infra"
)

// gcloudStandIn answers the gcloud calls rollout.sh makes, as Cloud Run would for a
// service whose traffic is $TRAFFIC_JSON (the candidate tag's URL pointing at a
// real groupcast instance) and exists once the file $EXISTS does, and writes every
// call to $CALLS and every applied service to $APPLIED. There is no Cloud Run offline: what is real here is the
// script, the smoke check binary and the instance it checks.
const gcloudStandIn = `#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$CALLS"
case "$1 $2 $3" in
"run services list") [[ -f $EXISTS ]] && echo "$SERVICE" || true ;;
"run services describe") echo "{\"status\":{\"traffic\":$TRAFFIC_JSON}}" ;;
"run services replace") cp "$4" "$APPLIED" && touch "$EXISTS" ;;
"run services update-traffic" | "run services add-iam-policy-binding") ;;
*) echo "gcloud stand-in: unexpected call: $*" >&2; exit 2 ;;
esac
`

// TestRolloutMovesTrafficOnlyAfterTheSmokeCheck runs rollout.sh first against a
// real instance behind the candidate tag: traffic moves when the smoke check passes
// and never when it fails.
func TestRolloutMovesTrafficOnlyAfterTheSmokeCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary and the smoke check")
	}
	bin := dockerfileBinary(t)
	dir := t.TempDir()
	smoke := filepath.Join(dir, "smoke")
	build := exec.Command("go", "build", "-o", smoke, "./cmd/smoke")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "gcloud"), []byte(gcloudStandIn), 0o755); err != nil {
		t.Fatal(err)
	}

	ports, err := infra.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	app, err := infra.StartApp(bin, ports[0], map[string]string{"REGION": "europe-west1", "API_KEY": "k3y"}, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := app.Stop(10 * time.Second); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := app.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	const newRevision = "groupcast-b1"
	serving := func(old string) string {
		return fmt.Sprintf(`[{"percent":100,"revisionName":%q},{"revisionName":%q,"tag":"candidate","url":%q}]`, old, newRevision, app.URL)
	}
	type result struct {
		err     error
		calls   []string
		applied string
		output  string
	}
	rollout := func(region, exists, traffic string) result {
		calls, applied, state := filepath.Join(dir, "calls"), filepath.Join(dir, "applied.yaml"), filepath.Join(dir, "exists")
		_ = os.Remove(calls)
		_ = os.Remove(applied)
		_ = os.Remove(state)
		if exists == "yes" {
			if err := os.WriteFile(state, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command("bash", filepath.Join(root, rolloutScript), "first")
		cmd.Env = []string{
			"PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH"),
			"HOME=" + dir,
			"PROJECT_ID=my-project", "SERVICE=groupcast", "REVISION=b1",
			"IMAGE=us-docker.pkg.dev/my-project/groupcast/groupcast:b1",
			"REGIONS=" + region + " asia-northeast1", "SMOKE=" + smoke, "API_KEY=k3y",
			"CALLS=" + calls, "APPLIED=" + applied, "EXISTS=" + state, "TRAFFIC_JSON=" + traffic,
		}
		out, err := cmd.CombinedOutput()
		r := result{err: err, output: string(out)}
		if b, err := os.ReadFile(calls); err == nil {
			r.calls = strings.Split(strings.TrimSpace(string(b)), "\n")
		}
		if b, err := os.ReadFile(applied); err == nil {
			r.applied = string(b)
		}
		t.Logf("rollout.sh first, %s:\n%s\ncalls:\n%s", region, out, strings.Join(r.calls, "\n"))
		return r
	}
	called := func(r result, verb string) bool {
		for _, c := range r.calls {
			if strings.HasPrefix(c, "run services "+verb+" ") {
				return true
			}
		}
		return false
	}
	// appliedTraffic checks the rendered service that was replaced.
	appliedTraffic := func(t *testing.T, r result, region, old string) {
		t.Helper()
		env := map[string]string{"PROJECT_ID": "my-project", "SERVICE": "groupcast", "REVISION": "b1",
			"IMAGE": "us-docker.pkg.dev/my-project/groupcast/groupcast:b1"}
		if _, err := checkService([]byte(r.applied), rendering{Env: env, Region: region, Serving: old}); err != nil {
			t.Errorf("the applied service: %v", err)
		}
	}

	t.Run("smoke check passes", func(t *testing.T) {
		r := rollout("europe-west1", "yes", serving("groupcast-a0"))
		if r.err != nil {
			t.Fatalf("rollout failed: %v", r.err)
		}
		appliedTraffic(t, r, "europe-west1", "groupcast-a0")
		last := r.calls[len(r.calls)-1]
		if want := "run services update-traffic groupcast --region=europe-west1 --to-revisions=" + newRevision + "=100"; last != want {
			t.Errorf("last call %q, want %q", last, want)
		}
		if strings.Contains(strings.Join(r.calls, "\n"), "asia-northeast1") {
			t.Error("first touched another region than the first")
		}
	})
	t.Run("smoke check fails", func(t *testing.T) {
		// The instance says europe-west1: as us-central1's candidate it fails the check.
		r := rollout("us-central1", "yes", serving("groupcast-a0"))
		if r.err == nil {
			t.Fatal("rollout passed")
		}
		if !called(r, "replace") {
			t.Fatal("the revision was not even created")
		}
		if called(r, "update-traffic") {
			t.Fatal("traffic moved after a failed smoke check")
		}
		if !strings.Contains(r.output, "the smoke check failed; the traffic stays on groupcast-a0") {
			t.Error("the output does not say where the traffic stays")
		}
	})
	t.Run("traffic split", func(t *testing.T) {
		split := fmt.Sprintf(`[{"percent":50,"revisionName":"groupcast-a0"},{"percent":50,"revisionName":"groupcast-a1"},{"revisionName":%q,"tag":"candidate","url":%q}]`, newRevision, app.URL)
		r := rollout("europe-west1", "yes", split)
		if r.err == nil || called(r, "replace") || called(r, "update-traffic") {
			t.Fatalf("a split region was rolled out to (err %v)", r.err)
		}
		if !strings.Contains(r.output, "traffic is split") {
			t.Error("the output does not say why")
		}
	})
	t.Run("first deploy", func(t *testing.T) {
		r := rollout("europe-west1", "no", serving(newRevision))
		if r.err != nil {
			t.Fatalf("rollout failed: %v", r.err)
		}
		appliedTraffic(t, r, "europe-west1", newRevision)
		if !called(r, "add-iam-policy-binding") {
			t.Error("a new service was not made public")
		}
	})
}
