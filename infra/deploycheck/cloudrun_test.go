package deploycheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	run "google.golang.org/api/run/v1"
)

// rendering is what rollout.sh fills service.yaml with for one region.
type rendering struct {
	Env     map[string]string // PROJECT_ID, SERVICE, IMAGE, REVISION, expanded
	Region  string
	Serving string // the revision that keeps the traffic
}

// candidate is the new revision's name.
func (r rendering) candidate() string { return r.Env["SERVICE"] + "-" + r.Env["REVISION"] }

// renderService runs the rollout script of the directory cloudrun (which holds
// rollout.sh and service.yaml, next to nats/regions) as the pipeline does:
// rollout.sh render REGION SERVING.
func renderService(cloudrun string, r rendering) ([]byte, error) {
	cmd := exec.Command("bash", filepath.Join(cloudrun, "rollout.sh"), "render", r.Region, r.Serving)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range r.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", cmd, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// pipelineEnv is what the rollout steps give rollout.sh, with the substitutions
// expanded for a build of project my-project.
func pipelineEnv(facts *cloudBuildFacts) map[string]string {
	subst := map[string]string{"PROJECT_ID": "my-project", "BUILD_ID": "0b7e5e0c-7d4a-4f5e-9a51-6a1b2c3d4e5f"}
	maps.Copy(subst, facts.Build.Substitutions)
	expand := func(v string) string { // substitutions may refer to others
		for range 5 {
			v = substitutionRef.ReplaceAllStringFunc(v, func(ref string) string {
				if val, ok := subst[strings.Trim(ref, "${}")]; ok {
					return val
				}
				return ref
			})
		}
		return v
	}
	env := map[string]string{}
	for _, k := range []string{"PROJECT_ID", "SERVICE", "IMAGE", "REVISION"} {
		env[k] = expand(facts.Env[k])
	}
	return env
}

// checkService decodes a rendered service strictly into the Cloud Run Admin API's
// Service (serving.knative.dev/v1) and checks the settings WebSockets need.
func checkService(data []byte, r rendering) (*run.Service, error) {
	region := r.Region
	var s run.Service
	if err := decodeStrict(data, &s); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if s.ApiVersion != "serving.knative.dev/v1" || s.Kind != "Service" {
		return nil, fmt.Errorf("%s/%s, want serving.knative.dev/v1 Service", s.ApiVersion, s.Kind)
	}
	if s.Metadata == nil || s.Metadata.Name != r.Env["SERVICE"] {
		return nil, fmt.Errorf("metadata.name must be the service, %s", r.Env["SERVICE"])
	}
	if s.Spec == nil || s.Spec.Template == nil || s.Spec.Template.Metadata == nil || s.Spec.Template.Spec == nil {
		return nil, errors.New("spec.template (metadata and spec) missing")
	}
	a := s.Spec.Template.Metadata.Annotations
	want := map[string]string{
		"run.googleapis.com/sessionAffinity":       "true",
		"run.googleapis.com/cpu-throttling":        "false",
		"run.googleapis.com/vpc-access-egress":     "private-ranges-only",
		"run.googleapis.com/execution-environment": "gen2",
		"run.googleapis.com/startup-cpu-boost":     "true",
		"autoscaling.knative.dev/minScale":         "",
		"autoscaling.knative.dev/maxScale":         "",
		"run.googleapis.com/network-interfaces":    "",
	}
	for k, v := range want {
		got, ok := a[k]
		if !ok {
			return nil, fmt.Errorf("revision annotation %s missing", k)
		}
		if v != "" && got != v {
			return nil, fmt.Errorf("revision annotation %s=%q, want %q", k, got, v)
		}
	}
	if _, ok := a["run.googleapis.com/vpc-access-connector"]; ok {
		return nil, errors.New("a Serverless VPC Access connector: use Direct VPC egress (network-interfaces)")
	}
	if n, err := strconv.Atoi(a["autoscaling.knative.dev/minScale"]); err != nil || n < 1 {
		return nil, fmt.Errorf("minScale %q, want at least 1", a["autoscaling.knative.dev/minScale"])
	}
	var nics []struct {
		Network    string   `json:"network"`
		Subnetwork string   `json:"subnetwork"`
		Tags       []string `json:"tags"`
	}
	if err := json.Unmarshal([]byte(a["run.googleapis.com/network-interfaces"]), &nics); err != nil {
		return nil, fmt.Errorf("network-interfaces: %w", err)
	}
	if len(nics) != 1 || nics[0].Network == "" || nics[0].Subnetwork == "" {
		return nil, fmt.Errorf("network-interfaces %+v: want one network and subnetwork", nics)
	}

	rs := s.Spec.Template.Spec
	if rs.TimeoutSeconds != 3600 {
		return nil, fmt.Errorf("timeoutSeconds %d, want 3600", rs.TimeoutSeconds)
	}
	if rs.ContainerConcurrency < 1 || rs.ContainerConcurrency > 1000 {
		return nil, fmt.Errorf("containerConcurrency %d, want 1..1000", rs.ContainerConcurrency)
	}
	if len(rs.Containers) != 1 {
		return nil, fmt.Errorf("%d containers, want 1", len(rs.Containers))
	}
	c := rs.Containers[0]
	if c.Image == "" {
		return nil, errors.New("no image")
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http1" || c.Ports[0].ContainerPort != 8080 {
		return nil, errors.New("want one port, http1 (HTTP/1.1 for the WebSocket upgrade) on 8080")
	}
	if err := checkProbe("startupProbe", c.StartupProbe, "/readyz"); err != nil {
		return nil, err
	}
	if err := checkProbe("livenessProbe", c.LivenessProbe, "/healthz"); err != nil {
		return nil, err
	}
	env := map[string]*run.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if _, ok := env["PORT"]; ok {
		return nil, errors.New("env PORT is reserved on Cloud Run: it comes from containerPort")
	}
	if e := env["REGION"]; e == nil || e.Value != region {
		return nil, fmt.Errorf("env REGION must be %q", region)
	}
	if e := env["NATS_URL"]; e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Name != "nats-url-"+region || e.ValueFrom.SecretKeyRef.Key == "" {
		return nil, fmt.Errorf("env NATS_URL must come from secret nats-url-%s", region)
	}
	if s.Metadata.Labels["cloud.googleapis.com/location"] != region {
		return nil, fmt.Errorf("label cloud.googleapis.com/location must be %q", region)
	}
	if c.Image != r.Env["IMAGE"] {
		return nil, fmt.Errorf("image %q, want the pushed %q", c.Image, r.Env["IMAGE"])
	}
	if err := checkTraffic(&s, r); err != nil {
		return nil, err
	}
	return &s, nil
}

// checkTraffic checks what makes the rollout staged: the new revision is named (so
// that traffic can refer to it) and gets none, under the tag candidate; the serving
// revision keeps it all.
func checkTraffic(s *run.Service, r rendering) error {
	if got := s.Spec.Template.Metadata.Name; got != r.candidate() {
		return fmt.Errorf("spec.template.metadata.name %q, want the new revision %q", got, r.candidate())
	}
	var got []string
	for _, t := range s.Spec.Traffic {
		if t.LatestRevision {
			return errors.New("traffic to latestRevision: the new revision would take it before the smoke check")
		}
		got = append(got, fmt.Sprintf("%s %d%% tag=%q", t.RevisionName, t.Percent, t.Tag))
	}
	want := []string{
		fmt.Sprintf("%s 100%% tag=\"\"", r.Serving),
		fmt.Sprintf("%s 0%% tag=\"candidate\"", r.candidate()),
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("traffic %q, want %q", got, want)
	}
	return nil
}

func checkProbe(name string, p *run.Probe, path string) error {
	switch {
	case p == nil || p.HttpGet == nil:
		return fmt.Errorf("%s: want an HTTP probe of %s", name, path)
	case p.HttpGet.Path != path:
		return fmt.Errorf("%s: path %q, want %q", name, p.HttpGet.Path, path)
	case p.HttpGet.Port != 0 && p.HttpGet.Port != 8080:
		return fmt.Errorf("%s: port %d, want 8080", name, p.HttpGet.Port)
	case p.PeriodSeconds*max(p.FailureThreshold, 1) > 240 && name == "startupProbe":
		return fmt.Errorf("%s: periodSeconds × failureThreshold over Cloud Run's 240 s", name)
	case p.TimeoutSeconds > max(p.PeriodSeconds, 1):
		return fmt.Errorf("%s: timeoutSeconds over periodSeconds", name)
	}
	return nil
}

func TestCloudRunService(t *testing.T) {
	facts := loadCloudBuild(t)
	env := pipelineEnv(facts)
	cloudrun := filepath.Join(root, "infra", "cloudrun")
	if out, err := exec.Command("bash", "-n", filepath.Join(cloudrun, "rollout.sh")).CombinedOutput(); err != nil {
		t.Fatalf("bash -n rollout.sh: %v\n%s", err, out)
	}
	for _, region := range facts.Regions {
		for _, c := range []struct{ name, serving string }{
			{"update", env["SERVICE"] + "-00041-abc"},
			{"first deploy", env["SERVICE"] + "-" + env["REVISION"]},
		} {
			t.Run(region+"/"+c.name, func(t *testing.T) {
				r := rendering{Env: env, Region: region, Serving: c.serving}
				data, err := renderService(cloudrun, r)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := checkService(data, r); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestCloudRunServiceRejectsBrokenCopies renders broken copies of the service, and
// the real one with bad values: each must be refused, by rollout.sh or by the checks.
func TestCloudRunServiceRejectsBrokenCopies(t *testing.T) {
	good := string(readFile(t, filepath.Join(root, "infra", "cloudrun", "service.yaml")))
	script := readFile(t, filepath.Join(root, "infra", "cloudrun", "rollout.sh"))
	facts := loadCloudBuild(t)
	r := rendering{Env: pipelineEnv(facts), Region: facts.Regions[0], Serving: "groupcast-00041-abc"}

	// check renders tmpl as service.yaml beside a copy of rollout.sh and the region files.
	check := func(tmpl string, r rendering) error {
		dir := t.TempDir()
		cloudrun := filepath.Join(dir, "cloudrun")
		for _, f := range []struct {
			path string
			data []byte
		}{{"cloudrun/rollout.sh", script}, {"cloudrun/service.yaml", []byte(tmpl)}} {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f.path)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f.path), f.data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		regions, _ := natsRegions()
		for _, region := range regions {
			if err := copyFile(filepath.Join(root, "infra", "nats", "regions", region+".env"), filepath.Join(dir, "nats", "regions", region+".env")); err != nil {
				t.Fatal(err)
			}
		}
		data, err := renderService(cloudrun, r)
		if err != nil {
			return err
		}
		_, err = checkService(data, r)
		return err
	}
	if err := check(good, r); err != nil {
		t.Fatalf("the real service.yaml is refused: %v", err)
	}
	cases := []struct{ name, old, new string }{
		{"typo'd field", "timeoutSeconds: 3600", "timeoutSecond: 3600"},
		{"field in the wrong case", "containerConcurrency: 1000", "ContainerConcurrency: 1000"},
		{"typo'd probe field", "httpGet:\n              path: /readyz", "httpGET:\n              path: /readyz"},
		{"no session affinity", `run.googleapis.com/sessionAffinity: "true"`, `run.googleapis.com/sessionAffinity: "false"`},
		{"CPU throttled", `run.googleapis.com/cpu-throttling: "false"`, `run.googleapis.com/cpu-throttling: "true"`},
		{"scales to zero", `autoscaling.knative.dev/minScale: "1"`, `autoscaling.knative.dev/minScale: "0"`},
		{"no Direct VPC egress", `run.googleapis.com/network-interfaces:`, `run.googleapis.com/network-interface:`},
		{"short timeout", "timeoutSeconds: 3600", "timeoutSeconds: 300"},
		{"HTTP/2 end to end", "- name: http1", "- name: h2c"},
		{"startup probe on /healthz", "path: /readyz", "path: /healthz"},
		{"no startup probe", "          startupProbe:\n", "          readinessProbe:\n"},
		{"another region's secret", "name: nats-url-${REGION}", "name: nats-url-us-east1"},
		{"unknown placeholder", "image: ${IMAGE}", "image: ${IMAGE_URL}"},
		{"fixed image", "image: ${IMAGE}", "image: us-docker.pkg.dev/p/groupcast/groupcast:latest"},
		{"unnamed revision", "      name: ${SERVICE}-${REVISION}\n", ""},
		{"new revision takes the traffic", "    - revisionName: ${SERVING}\n      percent: 100", "    - latestRevision: true\n      percent: 100"},
		{"no tag for the smoke check", "      tag: candidate\n", ""},
		{"traffic split", "      tag: candidate\n      percent: 0", "      tag: candidate\n      percent: 10"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			broken := strings.Replace(good, c.old, c.new, 1)
			if broken == good {
				t.Fatalf("mutation %q does not apply to service.yaml", c.old)
			}
			err := check(broken, r)
			if err == nil {
				t.Fatal("broken service.yaml accepted")
			}
			t.Logf("refused: %v", err)
		})
	}
	values := []struct {
		name string
		edit func(*rendering)
	}{
		{"region without NATS configuration", func(r *rendering) { r.Region = "australia-southeast1" }},
		{"not a region", func(r *rendering) { r.Region = "us-central1; rm -rf /" }},
		{"image with a shell character", func(r *rendering) { r.Env["IMAGE"] += "&x" }},
		{"upper-case revision", func(r *rendering) { r.Env["REVISION"] = "B1" }},
		{"revision name too long", func(r *rendering) { r.Env["REVISION"] = strings.Repeat("a", 60) }},
		{"no project", func(r *rendering) { delete(r.Env, "PROJECT_ID") }},
		{"no serving revision", func(r *rendering) { r.Serving = "" }},
	}
	for _, v := range values {
		t.Run(v.name, func(t *testing.T) {
			bad := r
			bad.Env = maps.Clone(r.Env)
			v.edit(&bad)
			err := check(good, bad)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Logf("refused: %v", err)
		})
	}
}
