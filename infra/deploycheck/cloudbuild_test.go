package deploycheck

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	cloudbuild "google.golang.org/api/cloudbuild/v1"
)

// builtinSubstitutions are the substitutions Cloud Build provides itself.
var builtinSubstitutions = []string{
	"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION",
	"TRIGGER_NAME", "COMMIT_SHA", "REVISION_ID", "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME",
	"BRANCH_NAME", "TAG_NAME", "REF_NAME", "TRIGGER_BUILD_CONFIG_PATH",
	"SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT",
}

var (
	userSubstitutionName = regexp.MustCompile(`^_[A-Z0-9_]+$`)
	regionSubstitution   = regexp.MustCompile(`^_REGION_[0-9]+$`)
	// A reference: $$ (an escaped dollar), $NAME, or ${NAME...} (bash-style operations
	// may follow the name inside the braces).
	substitutionRef = regexp.MustCompile(`\$\$|\$([A-Za-z_][A-Za-z0-9_]*)|\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}`)
)

// deployStep is one region's gcloud run deploy, its flags split.
type deployStep struct {
	ID     string
	Region string            // the region substitution it deploys to, e.g. $_REGION_1
	Flags  map[string]string // --name=value and bare --name (value "")
}

// cloudBuildFacts is what checkCloudBuild extracts for the comparison with the Cloud
// Run service.
type cloudBuildFacts struct {
	Build   *cloudbuild.Build
	Image   string // the image reference pushed and deployed, unexpanded
	Deploys []deployStep
}

// references returns the substitution names referenced in s.
func references(s string) []string {
	var names []string
	for _, m := range substitutionRef.FindAllStringSubmatch(s, -1) {
		if m[0] == "$$" {
			continue
		}
		names = append(names, m[1]+m[2])
	}
	return names
}

// stepText is every string of a step that Cloud Build substitutes into.
func stepText(s *cloudbuild.BuildStep) []string {
	text := []string{s.Name, s.Entrypoint, s.Dir, s.Script, s.Id, s.Timeout}
	text = append(text, s.Args...)
	text = append(text, s.Env...)
	text = append(text, s.WaitFor...)
	return text
}

// checkCloudBuild decodes cloudbuild.yaml strictly into the Cloud Build API's Build
// and checks the rules Cloud Build enforces when the build is submitted, then
// groupcast's pipeline: tests, cached build, explicit push, one deploy per region.
func checkCloudBuild(data []byte) (*cloudBuildFacts, error) {
	var b cloudbuild.Build
	if err := decodeStrict(data, &b); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if len(b.Steps) == 0 {
		return nil, errors.New("no steps")
	}

	// Step ids are unique; waitFor names earlier steps or "-".
	seen := map[string]int{}
	for i, s := range b.Steps {
		if s.Name == "" {
			return nil, fmt.Errorf("step %d has no name (builder image)", i)
		}
		if s.Id == "" {
			return nil, fmt.Errorf("step %d (%s) has no id", i, s.Name)
		}
		if _, dup := seen[s.Id]; dup {
			return nil, fmt.Errorf("step id %q is used twice", s.Id)
		}
		for _, w := range s.WaitFor {
			if w == "-" {
				if len(s.WaitFor) > 1 {
					return nil, fmt.Errorf("step %q: waitFor \"-\" must stand alone", s.Id)
				}
				continue
			}
			if _, ok := seen[w]; !ok {
				return nil, fmt.Errorf("step %q waits for %q, which is not an earlier step", s.Id, w)
			}
		}
		seen[s.Id] = i
	}

	// Substitutions: valid names, every reference declared or built in, every
	// declaration used.
	used := map[string]bool{}
	var text []string
	for _, s := range b.Steps {
		text = append(text, stepText(s)...)
	}
	text = append(text, b.Images...)
	text = append(text, b.Tags...)
	if b.Options != nil {
		text = append(text, b.Options.Env...)
	}
	for _, k := range sortedKeys(b.Substitutions) {
		if !userSubstitutionName.MatchString(k) {
			return nil, fmt.Errorf("substitution %q does not match ^_[A-Z0-9_]+$", k)
		}
		if refs := references(b.Substitutions[k]); len(refs) > 0 {
			if b.Options == nil || !b.Options.DynamicSubstitutions {
				return nil, fmt.Errorf("substitution %s refers to %v without options.dynamicSubstitutions", k, refs)
			}
			text = append(text, b.Substitutions[k])
		}
	}
	for _, s := range text {
		for _, name := range references(s) {
			used[name] = true
			if strings.HasPrefix(name, "_") {
				if _, ok := b.Substitutions[name]; !ok {
					return nil, fmt.Errorf("$%s is used but not declared in substitutions", name)
				}
			} else if !slices.Contains(builtinSubstitutions, name) {
				return nil, fmt.Errorf("$%s is neither a user nor a built-in substitution (write $$ for a shell $)", name)
			}
		}
	}
	for k := range b.Substitutions {
		if !used[k] {
			return nil, fmt.Errorf("substitution %s is declared but not used", k)
		}
	}

	// waitsFor reports whether step id waits for dep, directly or through others.
	var waitsFor func(id, dep string) bool
	waitsFor = func(id, dep string) bool {
		s := b.Steps[seen[id]]
		if len(s.WaitFor) == 0 { // no waitFor: after every earlier step
			return seen[dep] < seen[id]
		}
		for _, w := range s.WaitFor {
			if w == dep || (w != "-" && waitsFor(w, dep)) {
				return true
			}
		}
		return false
	}

	var test, pull, build, push string
	var builtTags, pushed []string
	for _, s := range b.Steps {
		cmd := strings.Join(s.Args, " ")
		if s.Script != "" {
			cmd = s.Script
		}
		switch {
		case strings.Contains(cmd, "go test"):
			if !strings.Contains(cmd, "go vet ./...") || !strings.Contains(cmd, "go test -race ./...") {
				return nil, fmt.Errorf("step %q: want go vet ./... && go test -race ./..., got %q", s.Id, cmd)
			}
			if !strings.HasPrefix(s.Name, "golang:") || strings.Contains(s.Name, "alpine") {
				return nil, fmt.Errorf("step %q: -race needs cgo: use the full golang image, not %s", s.Id, s.Name)
			}
			test = s.Id
		case strings.Contains(cmd, "docker pull"):
			if !strings.Contains(cmd, "|| exit 0") {
				return nil, fmt.Errorf("step %q: the cache pull must not fail the first build (|| exit 0)", s.Id)
			}
			pull = s.Id
		case len(s.Args) > 0 && s.Args[0] == "build" && strings.Contains(s.Name, "docker"):
			build = s.Id
			fl := flags(s.Args)
			if !strings.HasSuffix(fl["--cache-from"], ":latest") {
				return nil, fmt.Errorf("step %q: docker build without --cache-from the :latest image", s.Id)
			}
			for _, a := range s.Args {
				if t, ok := strings.CutPrefix(a, "--tag="); ok {
					builtTags = append(builtTags, t)
				}
			}
		case strings.Contains(cmd, "docker push"):
			push = s.Id
			for _, f := range strings.Fields(cmd) {
				if strings.Contains(f, "$_") && f != "push" {
					pushed = append(pushed, strings.TrimRight(f, ";&"))
				}
			}
		}
	}
	switch {
	case test == "":
		return nil, errors.New("no test step (go vet, go test -race)")
	case pull == "":
		return nil, errors.New("no step pulls the previous image for --cache-from")
	case build == "":
		return nil, errors.New("no docker build step")
	case push == "":
		return nil, errors.New("no docker push step: images: are pushed only after every step, too late to deploy")
	case !waitsFor(build, pull):
		return nil, errors.New("the build does not wait for the cache pull")
	case !waitsFor(push, test) || !waitsFor(push, build):
		return nil, errors.New("the push does not wait for both the tests and the build")
	}
	var image, latest string
	for _, p := range pushed {
		if !slices.Contains(builtTags, p) {
			return nil, fmt.Errorf("pushes %s, which the build does not tag", p)
		}
		switch {
		case strings.HasSuffix(p, ":latest"):
			latest = p
		case strings.HasSuffix(p, ":$BUILD_ID") || strings.HasSuffix(p, ":$SHORT_SHA"):
			image = p
		}
	}
	if image == "" || latest == "" {
		return nil, fmt.Errorf("the push step pushes %v: want a per-build tag and :latest", pushed)
	}

	// One deploy per region substitution, each after the push, none after another.
	facts := &cloudBuildFacts{Build: &b, Image: image}
	regions := map[string]string{} // substitution reference -> deploy step id
	for k := range b.Substitutions {
		if regionSubstitution.MatchString(k) {
			regions["$"+k] = ""
		}
	}
	if len(regions) == 0 {
		return nil, errors.New("no _REGION_<n> substitutions")
	}
	for _, s := range b.Steps {
		if len(s.Args) < 2 || s.Args[0] != "run" || s.Args[1] != "deploy" {
			continue
		}
		fl := flags(s.Args)
		d := deployStep{ID: s.Id, Region: fl["--region"], Flags: fl}
		if prev, ok := regions[d.Region]; !ok {
			return nil, fmt.Errorf("step %q deploys to %q, not a region substitution", s.Id, d.Region)
		} else if prev != "" {
			return nil, fmt.Errorf("steps %q and %q both deploy to %s", prev, s.Id, d.Region)
		}
		regions[d.Region] = s.Id
		if !slices.Contains(s.WaitFor, push) {
			return nil, fmt.Errorf("step %q does not wait for the push %q", s.Id, push)
		}
		if err := checkDeployFlags(d, image); err != nil {
			return nil, fmt.Errorf("step %q: %w", s.Id, err)
		}
		facts.Deploys = append(facts.Deploys, d)
	}
	for _, r := range sortedKeys(regions) {
		if regions[r] == "" {
			return nil, fmt.Errorf("no deploy step for %s", r)
		}
	}
	first := facts.Deploys[0]
	for _, d := range facts.Deploys {
		if !maps.Equal(regionless(d), regionless(first)) {
			return nil, fmt.Errorf("deploys %q and %q differ in more than their region", first.ID, d.ID)
		}
		for _, e := range facts.Deploys {
			if d.ID != e.ID && waitsFor(d.ID, e.ID) {
				return nil, fmt.Errorf("deploy %q waits for deploy %q: regions should deploy in parallel", d.ID, e.ID)
			}
		}
	}
	return facts, nil
}

// regionless returns a deploy's flags with its region substitution replaced by a
// placeholder, for comparing regions.
func regionless(d deployStep) map[string]string {
	m := map[string]string{}
	for k, v := range d.Flags {
		m[k] = strings.ReplaceAll(v, d.Region, "$REGION")
	}
	return m
}

// flags splits gcloud/docker style arguments into --name=value (or --name value) and
// bare --name flags.
func flags(args []string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		if name, value, ok := strings.Cut(a, "="); ok {
			m[name] = value
		} else if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && !slices.Contains(bareFlags, a) {
			m[a] = args[i+1]
			i++
		} else {
			m[a] = ""
		}
	}
	return m
}

// bareFlags take no value.
var bareFlags = []string{
	"--session-affinity", "--no-cpu-throttling", "--cpu-boost", "--allow-unauthenticated",
	"--use-http2", "--no-use-http2", "--cpu-throttling", "--no-session-affinity",
}

// checkDeployFlags checks the Cloud Run settings WebSockets need.
func checkDeployFlags(d deployStep, image string) error {
	f := d.Flags
	region := strings.TrimPrefix(d.Region, "$")
	want := map[string]string{
		"--image":                 image,
		"--timeout":               "3600",
		"--vpc-egress":            "private-ranges-only",
		"--set-env-vars":          "REGION=$" + region,
		"--execution-environment": "gen2",
		"--session-affinity":      "",
		"--no-cpu-throttling":     "",
		"--port":                  "8080",
		"--concurrency":           "",
		"--min-instances":         "",
		"--network":               "",
		"--subnet":                "",
		"--startup-probe":         "",
		"--liveness-probe":        "",
		"--set-secrets":           "",
		"--service-account":       "",
		"--max-instances":         "",
		"--ingress":               "",
		"--allow-unauthenticated": "",
		"--cpu":                   "",
		"--memory":                "",
		"--cpu-boost":             "",
		"--region":                d.Region,
	}
	for name, value := range want {
		got, ok := f[name]
		if !ok {
			return fmt.Errorf("missing %s", name)
		}
		if value != "" && got != value {
			return fmt.Errorf("%s=%q, want %q", name, got, value)
		}
	}
	for _, bad := range []string{"--use-http2", "--cpu-throttling", "--no-session-affinity"} {
		if _, ok := f[bad]; ok {
			return fmt.Errorf("%s breaks WebSockets on Cloud Run", bad)
		}
	}
	if n, err := strconv.Atoi(f["--min-instances"]); err != nil || n < 1 {
		return fmt.Errorf("--min-instances=%q, want at least 1", f["--min-instances"])
	}
	if n, err := strconv.Atoi(f["--concurrency"]); err != nil || n < 1 || n > 1000 {
		return fmt.Errorf("--concurrency=%q, want 1..1000", f["--concurrency"])
	}
	if !strings.Contains(f["--startup-probe"], "httpGet.path=/readyz") {
		return fmt.Errorf("--startup-probe=%q, want an HTTP probe of /readyz", f["--startup-probe"])
	}
	if !strings.Contains(f["--liveness-probe"], "httpGet.path=/healthz") {
		return fmt.Errorf("--liveness-probe=%q, want an HTTP probe of /healthz", f["--liveness-probe"])
	}
	secrets := strings.Split(f["--set-secrets"], ",")
	if !slices.Contains(secrets, "NATS_URL=nats-url-$"+region+":latest") {
		return fmt.Errorf("--set-secrets=%q: want NATS_URL=nats-url-$%s:latest", f["--set-secrets"], region)
	}
	return nil
}

func loadCloudBuild(t *testing.T) *cloudBuildFacts {
	t.Helper()
	facts, err := checkCloudBuild(readFile(t, filepath.Join(root, "cloudbuild.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	return facts
}

func TestCloudBuild(t *testing.T) {
	facts := loadCloudBuild(t)
	var regions []string
	for _, d := range facts.Deploys {
		regions = append(regions, facts.Build.Substitutions[strings.TrimPrefix(d.Region, "$")])
	}
	t.Logf("image %s deployed to %v", facts.Image, regions)
}

// TestCloudBuildRejectsBrokenCopies feeds broken copies of cloudbuild.yaml to the
// checks: each must be refused.
func TestCloudBuildRejectsBrokenCopies(t *testing.T) {
	good := string(readFile(t, filepath.Join(root, "cloudbuild.yaml")))
	pushStep := `  - id: push
    name: gcr.io/cloud-builders/docker
    entrypoint: bash
    args: ["-c", "docker push $_IMAGE:$BUILD_ID && docker push $_IMAGE:latest"]
    waitFor: ["test", "build"]
`
	if _, err := checkCloudBuild([]byte(good)); err != nil {
		t.Fatalf("the real cloudbuild.yaml is refused: %v", err)
	}
	cases := []struct {
		name string
		edit func(string) string
	}{
		{"typo'd field", replace(`    waitFor: ["pull-cache"]`, `    waitFr: ["pull-cache"]`)},
		{"field in the wrong case", replace(`    waitFor: ["pull-cache"]`, `    waitfor: ["pull-cache"]`)},
		{"typo'd option", replace(`dynamicSubstitutions: true`, `dynamicSubstitution: true`)},
		{"duplicate key", replace(`  _SERVICE: groupcast`, "  _SERVICE: groupcast\n  _SERVICE: other")},
		{"missing push step", replace(pushStep, "")},
		{"push before the tests pass", replace(`waitFor: ["test", "build"]`, `waitFor: ["build"]`)},
		{"waitFor a later step", replace(`    waitFor: ["pull-cache"]`, `    waitFor: ["push"]`)},
		{"waitFor an unknown step", replace(`    waitFor: ["pull-cache"]`, `    waitFor: ["pull"]`)},
		{"duplicate step id", replace(`  - id: pull-cache`, `  - id: test`)},
		{"undeclared substitution", replace(`--region=$_REGION_2`, `--region=$_REGION_4`)},
		{"unused substitution", replace(`  _SERVICE: groupcast`, "  _SERVICE: groupcast\n  _UNUSED: x")},
		{"lower-case substitution", replace(`  _NETWORK: groupcast`, `  _network: groupcast`)},
		{"shell variable not escaped", replace(`|| exit 0`, `|| echo $HOME`)},
		{"composed without dynamicSubstitutions", replace(`  dynamicSubstitutions: true`, `  dynamicSubstitutions: false`)},
		{"region without a deploy", func(s string) string {
			s = strings.Replace(s, "  _REGION_3: asia-northeast1", "  _REGION_3: asia-northeast1\n  _REGION_4: australia-southeast1", 1)
			return strings.Replace(s, `    entrypoint: bash
    args: ["-c", "go vet`, `    entrypoint: bash
    env: ["REGIONS=$_REGION_4"]
    args: ["-c", "go vet`, 1)
		}},
		{"two deploys to one region", replace(`--region=$_REGION_3`, `--region=$_REGION_1`)},
		{"deploy not waiting for the push", replace("      - --liveness-probe=httpGet.path=/healthz,httpGet.port=8080,periodSeconds=10,timeoutSeconds=2,failureThreshold=3\n    waitFor: [\"push\"]\n\n  - id: deploy-region-2", "      - --liveness-probe=httpGet.path=/healthz,httpGet.port=8080,periodSeconds=10,timeoutSeconds=2,failureThreshold=3\n    waitFor: [\"build\"]\n\n  - id: deploy-region-2")},
		{"deploys the latest tag", replace(`--image=$_IMAGE:$BUILD_ID`, `--image=$_IMAGE:latest`)},
		{"deploys another image", replace(`--image=$_IMAGE:$BUILD_ID`, `--image=gcr.io/$PROJECT_ID/other:$BUILD_ID`)},
		{"no session affinity", replace(`      - --session-affinity`+"\n", "")},
		{"CPU throttled", replace(`      - --no-cpu-throttling`, `      - --cpu-throttling`)},
		{"short timeout", replace(`      - --timeout=3600`, `      - --timeout=300`)},
		{"no min instances", replace(`      - --min-instances=1`, `      - --min-instances=0`)},
		{"HTTP/2 end to end", replace(`      - --session-affinity`+"\n", "      - --session-affinity\n      - --use-http2\n")},
		{"all egress through the VPC", replace(`--vpc-egress=private-ranges-only`, `--vpc-egress=all-traffic`)},
		{"startup probe on /healthz", replace(`--startup-probe=httpGet.path=/readyz`, `--startup-probe=httpGet.path=/healthz`)},
		{"another region's NATS secret", replace(`NATS_URL=nats-url-$_REGION_2:latest`, `NATS_URL=nats-url-$_REGION_1:latest`)},
		{"no cache pull", replace("    args: [\"-c\", \"docker pull $_IMAGE:latest || exit 0\"]", "    args: [\"-c\", \"true\"]")},
		{"regions deployed differently", replace("--region=$_REGION_2\n", "--region=$_REGION_2\n      - --labels=canary=true\n")},
		{"race-less image", replace(`name: golang:1.26`, `name: golang:1.26-alpine`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			broken := c.edit(good)
			if broken == good {
				t.Fatal("mutation does not apply to cloudbuild.yaml")
			}
			if _, err := checkCloudBuild([]byte(broken)); err == nil {
				t.Fatal("broken cloudbuild.yaml accepted")
			} else {
				t.Logf("refused: %v", err)
			}
		})
	}
}

func replace(old, new string) func(string) string {
	return func(s string) string { return strings.Replace(s, old, new, 1) }
}
