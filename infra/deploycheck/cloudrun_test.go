package deploycheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	run "google.golang.org/api/run/v1"
)

// serviceVars are the placeholders of infra/cloudrun/service.yaml.
var serviceVars = []string{"PROJECT_ID", "REGION", "IMAGE"}

var placeholder = regexp.MustCompile(`\$\{([^}]*)\}`)

// renderService fills the service template's ${NAME} placeholders, as envsubst
// would; an unknown placeholder is an error.
func renderService(tmpl []byte, vars map[string]string) ([]byte, error) {
	var missing []string
	out := placeholder.ReplaceAllStringFunc(string(tmpl), func(ref string) string {
		name := ref[2 : len(ref)-1]
		v, ok := vars[name]
		if !ok || !slices.Contains(serviceVars, name) {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("unknown placeholders %v (known: %v)", missing, serviceVars)
	}
	return []byte(out), nil
}

// checkService decodes a rendered service strictly into the Cloud Run Admin API's
// Service (serving.knative.dev/v1) and checks the settings WebSockets need.
func checkService(data []byte, region string) (*run.Service, error) {
	var s run.Service
	if err := decodeStrict(data, &s); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if s.ApiVersion != "serving.knative.dev/v1" || s.Kind != "Service" {
		return nil, fmt.Errorf("%s/%s, want serving.knative.dev/v1 Service", s.ApiVersion, s.Kind)
	}
	if s.Metadata == nil || s.Metadata.Name == "" {
		return nil, errors.New("metadata.name missing")
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
	return &s, nil
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

// probeFlag renders a probe the way gcloud's --startup-probe/--liveness-probe take it.
func probeFlag(p *run.Probe) string {
	return fmt.Sprintf("httpGet.path=%s,httpGet.port=%d,periodSeconds=%d,timeoutSeconds=%d,failureThreshold=%d",
		p.HttpGet.Path, p.HttpGet.Port, p.PeriodSeconds, p.TimeoutSeconds, p.FailureThreshold)
}

// checkConsistent compares a rendered service with the matching deploy step of
// cloudbuild.yaml: one configuration, two ways to apply it.
func checkConsistent(s *run.Service, d deployStep, subst map[string]string) error {
	a := s.Spec.Template.Metadata.Annotations
	rs := s.Spec.Template.Spec
	c := rs.Containers[0]
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
	var nics []struct{ Network, Subnetwork string }
	_ = json.Unmarshal([]byte(a["run.googleapis.com/network-interfaces"]), &nics)
	var secrets []string
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secrets = append(secrets, e.Name+"="+e.ValueFrom.SecretKeyRef.Name+":"+e.ValueFrom.SecretKeyRef.Key)
		}
	}
	pairs := [][3]string{
		{"service name", s.Metadata.Name, expand(subst["_SERVICE"])},
		{"--concurrency", strconv.FormatInt(rs.ContainerConcurrency, 10), d.Flags["--concurrency"]},
		{"--timeout", strconv.FormatInt(rs.TimeoutSeconds, 10), d.Flags["--timeout"]},
		{"--min-instances", a["autoscaling.knative.dev/minScale"], d.Flags["--min-instances"]},
		{"--max-instances", a["autoscaling.knative.dev/maxScale"], d.Flags["--max-instances"]},
		{"--network", nics[0].Network, expand(d.Flags["--network"])},
		{"--subnet", nics[0].Subnetwork, expand(d.Flags["--subnet"])},
		{"--vpc-egress", a["run.googleapis.com/vpc-access-egress"], d.Flags["--vpc-egress"]},
		{"--execution-environment", a["run.googleapis.com/execution-environment"], d.Flags["--execution-environment"]},
		{"--service-account", rs.ServiceAccountName, expand(d.Flags["--service-account"])},
		{"--ingress", s.Metadata.Annotations["run.googleapis.com/ingress"], d.Flags["--ingress"]},
		{"--cpu", c.Resources.Limits["cpu"], d.Flags["--cpu"]},
		{"--memory", c.Resources.Limits["memory"], d.Flags["--memory"]},
		{"--port", strconv.FormatInt(c.Ports[0].ContainerPort, 10), d.Flags["--port"]},
		{"--startup-probe", probeFlag(c.StartupProbe), d.Flags["--startup-probe"]},
		{"--liveness-probe", probeFlag(c.LivenessProbe), d.Flags["--liveness-probe"]},
		{"--set-secrets", strings.Join(secrets, ","), expand(d.Flags["--set-secrets"])},
	}
	for _, p := range pairs {
		if p[1] != p[2] {
			return fmt.Errorf("%s: service.yaml has %q, cloudbuild.yaml %q", p[0], p[1], p[2])
		}
	}
	return nil
}

// renderFor renders the service template for a region of cloudbuild.yaml.
func renderFor(tmpl []byte, region string) ([]byte, error) {
	return renderService(tmpl, map[string]string{
		"PROJECT_ID": "my-project",
		"REGION":     region,
		"IMAGE":      "us-docker.pkg.dev/my-project/groupcast/groupcast:test",
	})
}

func TestCloudRunService(t *testing.T) {
	tmpl := readFile(t, filepath.Join(root, "infra", "cloudrun", "service.yaml"))
	facts := loadCloudBuild(t)
	subst := map[string]string{"PROJECT_ID": "my-project"}
	for k, v := range facts.Build.Substitutions {
		subst[k] = v
	}
	for _, d := range facts.Deploys {
		region := subst[strings.TrimPrefix(d.Region, "$")]
		t.Run(region, func(t *testing.T) {
			data, err := renderFor(tmpl, region)
			if err != nil {
				t.Fatal(err)
			}
			s, err := checkService(data, region)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkConsistent(s, d, subst); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCloudRunServiceRejectsBrokenCopies feeds broken copies of the service to the
// checks: each must be refused, by the service checks or by the comparison with
// cloudbuild.yaml.
func TestCloudRunServiceRejectsBrokenCopies(t *testing.T) {
	good := string(readFile(t, filepath.Join(root, "infra", "cloudrun", "service.yaml")))
	facts := loadCloudBuild(t)
	subst := map[string]string{"PROJECT_ID": "my-project"}
	for k, v := range facts.Build.Substitutions {
		subst[k] = v
	}
	d := facts.Deploys[0]
	region := subst[strings.TrimPrefix(d.Region, "$")]
	check := func(tmpl string) error {
		data, err := renderFor([]byte(tmpl), region)
		if err != nil {
			return err
		}
		s, err := checkService(data, region)
		if err != nil {
			return err
		}
		return checkConsistent(s, d, subst)
	}
	if err := check(good); err != nil {
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
		{"concurrency differs from cloudbuild.yaml", "containerConcurrency: 1000", "containerConcurrency: 80"},
		{"max instances differ from cloudbuild.yaml", `autoscaling.knative.dev/maxScale: "20"`, `autoscaling.knative.dev/maxScale: "10"`},
		{"probe differs from cloudbuild.yaml", "failureThreshold: 90", "failureThreshold: 30"},
		{"network differs from cloudbuild.yaml", `"network":"groupcast"`, `"network":"default"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			broken := strings.Replace(good, c.old, c.new, 1)
			if broken == good {
				t.Fatalf("mutation %q does not apply to service.yaml", c.old)
			}
			err := check(broken)
			if err == nil {
				t.Fatal("broken service.yaml accepted")
			}
			t.Logf("refused: %v", err)
		})
	}
}
