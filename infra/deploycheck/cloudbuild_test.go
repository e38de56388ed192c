package deploycheck

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
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
	regionName           = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+$`)
	// A reference: $$ (an escaped dollar), $NAME, or ${NAME...} (bash-style operations
	// may follow the name inside the braces).
	substitutionRef = regexp.MustCompile(`\$\$|\$([A-Za-z_][A-Za-z0-9_]*)|\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}`)
)

// cloudBuildFacts is what checkCloudBuild extracts for the checks of the rendered
// Cloud Run service.
type cloudBuildFacts struct {
	Build   *cloudbuild.Build
	Image   string            // the image reference pushed and deployed, unexpanded
	Regions []string          // _REGIONS, in rollout order
	Env     map[string]string // what the rollout steps give rollout.sh, unexpanded
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
// groupcast's pipeline: tests, cached build, explicit push, staged rollout.
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
	if b.AvailableSecrets != nil {
		for _, sm := range b.AvailableSecrets.SecretManager {
			text = append(text, sm.VersionName)
		}
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

	facts := &cloudBuildFacts{Build: &b, Image: image}
	if err := checkRollout(&b, facts, push, waitsFor); err != nil {
		return nil, err
	}
	return facts, nil
}

// rolloutScript is what the rollout steps run.
const rolloutScript = "infra/cloudrun/rollout.sh"

// checkRollout checks the rollout: the service is applied only by rolloutScript
// (from infra/cloudrun/service.yaml), first to the first region of _REGIONS after
// the push and the smoke check's build, then to the others after that; every
// region of _REGIONS has its NATS configuration and every configured region is
// deployed; the steps get what the script reads.
func checkRollout(b *cloudbuild.Build, facts *cloudBuildFacts, push string, waitsFor func(id, dep string) bool) error {
	regions := strings.Fields(b.Substitutions["_REGIONS"])
	if len(regions) == 0 {
		return errors.New("no _REGIONS substitution: the regions to roll out to, in order")
	}
	for i, r := range regions {
		if !regionName.MatchString(r) {
			return fmt.Errorf("_REGIONS: %q is not a region name", r)
		}
		if slices.Contains(regions[:i], r) {
			return fmt.Errorf("_REGIONS names %s twice", r)
		}
	}
	configured, err := natsRegions()
	if err != nil {
		return err
	}
	for _, r := range regions {
		if !slices.Contains(configured, r) {
			return fmt.Errorf("_REGIONS names %s, which has no NATS configuration (infra/nats/regions/%s.env)", r, r)
		}
	}
	for _, r := range configured {
		if !slices.Contains(regions, r) {
			return fmt.Errorf("infra/nats/regions has %s, which _REGIONS does not roll out to", r)
		}
	}
	facts.Regions = regions

	if b.Options == nil || (b.Options.MachineType == "") == (b.Options.Pool == nil) {
		return errors.New("options: want exactly one of machineType (default pool) and pool (a private pool)")
	}
	secrets := map[string]bool{}
	if b.AvailableSecrets != nil {
		for _, s := range b.AvailableSecrets.SecretManager {
			secrets[s.Env] = true
		}
	}

	var smokeBuild, smokeBin string
	rollout := map[string]string{} // rollout.sh subcommand -> step id
	for _, s := range b.Steps {
		cmd := strings.Join(append([]string{s.Entrypoint}, s.Args...), " ") + " " + s.Script
		switch {
		case strings.Contains(cmd, "gcloud run") || s.Entrypoint == "gcloud" || strings.Contains(cmd, "run deploy"):
			return fmt.Errorf("step %q runs gcloud itself: the service is applied only by %s, from infra/cloudrun/service.yaml", s.Id, rolloutScript)
		case slices.Contains(s.Args, "./cmd/smoke") && len(s.Args) > 1 && s.Args[0] == "go" && s.Args[1] == "build":
			if !slices.Contains(s.Env, "CGO_ENABLED=0") {
				return fmt.Errorf("step %q: the smoke check runs in the Cloud SDK image: build it with CGO_ENABLED=0", s.Id)
			}
			smokeBuild = s.Id
			if i := slices.Index(s.Args, "-o"); i >= 0 && i+1 < len(s.Args) {
				smokeBin = s.Args[i+1]
			}
		case slices.Contains(s.Args, rolloutScript):
			i := slices.Index(s.Args, rolloutScript)
			if s.Entrypoint != "bash" || len(s.Args) != i+2 {
				return fmt.Errorf("step %q: want bash %s first|rest, got %s %q", s.Id, rolloutScript, s.Entrypoint, s.Args)
			}
			sub := s.Args[i+1]
			if sub != "first" && sub != "rest" {
				return fmt.Errorf("step %q: %s %s: want first or rest", s.Id, rolloutScript, sub)
			}
			if prev, dup := rollout[sub]; dup {
				return fmt.Errorf("steps %q and %q both run %s %s", prev, s.Id, rolloutScript, sub)
			}
			rollout[sub] = s.Id
			if !strings.HasPrefix(s.Name, "gcr.io/google.com/cloudsdktool/") {
				return fmt.Errorf("step %q: the rollout needs gcloud: run it in the Cloud SDK image, not %s", s.Id, s.Name)
			}
			env := stepEnv(b, s)
			want := map[string]string{
				"IMAGE":      facts.Image,
				"REGIONS":    "$_REGIONS",
				"SERVICE":    "$_SERVICE",
				"PROJECT_ID": "$PROJECT_ID",
				"REVISION":   "",
				"SMOKE":      "",
			}
			for k, v := range want {
				got, ok := env[k]
				switch {
				case !ok || got == "":
					return fmt.Errorf("step %q: %s reads %s, which the step does not set", s.Id, rolloutScript, k)
				case v != "" && got != v:
					return fmt.Errorf("step %q: %s=%s, want %s", s.Id, k, got, v)
				}
			}
			if !strings.Contains(env["REVISION"], "$BUILD_ID") {
				return fmt.Errorf("step %q: REVISION=%s: want one per build ($BUILD_ID)", s.Id, env["REVISION"])
			}
			facts.Env = env
			if !slices.Contains(s.SecretEnv, "API_KEY") || !secrets["API_KEY"] {
				return fmt.Errorf("step %q: the smoke check publishes with the API key: want secretEnv API_KEY from availableSecrets", s.Id)
			}
		}
	}
	first, rest := rollout["first"], rollout["rest"]
	switch {
	case first == "" || rest == "":
		return fmt.Errorf("want one step running %s first and one running %s rest", rolloutScript, rolloutScript)
	case smokeBuild == "":
		return errors.New("no step builds the smoke check (go build ./cmd/smoke)")
	case !waitsFor(first, push):
		return fmt.Errorf("step %q rolls out before the image is pushed", first)
	case !waitsFor(first, smokeBuild) || !waitsFor(rest, smokeBuild):
		return errors.New("a rollout step does not wait for the smoke check's build")
	case !waitsFor(rest, first):
		return fmt.Errorf("step %q does not wait for the first region (%q): every region would take the revision at once", rest, first)
	case facts.Env["SMOKE"] != smokeBin:
		return fmt.Errorf("SMOKE=%s, but the smoke check is built to %q", facts.Env["SMOKE"], smokeBin)
	}
	return nil
}

// stepEnv is a step's environment: options.env, then the step's own env.
func stepEnv(b *cloudbuild.Build, s *cloudbuild.BuildStep) map[string]string {
	env := map[string]string{}
	var all []string
	if b.Options != nil {
		all = append(all, b.Options.Env...)
	}
	for _, kv := range append(all, s.Env...) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

// natsRegions lists the regions that have a NATS configuration.
func natsRegions() ([]string, error) {
	files, err := filepath.Glob(filepath.Join(root, "infra", "nats", "regions", "*.env"))
	if err != nil {
		return nil, err
	}
	var regions []string
	for _, f := range files {
		regions = append(regions, strings.TrimSuffix(filepath.Base(f), ".env"))
	}
	if len(regions) == 0 {
		return nil, errors.New("no region has a NATS configuration in infra/nats/regions")
	}
	return regions, nil
}

// flags splits docker style arguments into --name=value and bare --name flags.
func flags(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if name, value, ok := strings.Cut(a, "="); ok && strings.HasPrefix(name, "--") {
			m[name] = value
		} else if strings.HasPrefix(a, "--") {
			m[a] = ""
		}
	}
	return m
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
	t.Logf("image %s rolled out to %v, in that order", facts.Image, facts.Regions)
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
		{"undeclared substitution", replace(`    - REGIONS=$_REGIONS`, `    - REGIONS=$_REGION_LIST`)},
		{"unused substitution", replace(`  _SERVICE: groupcast`, "  _SERVICE: groupcast\n  _UNUSED: x")},
		{"lower-case substitution", replace(`  _REPOSITORY: groupcast`, `  _repository: groupcast`)},
		{"shell variable not escaped", replace(`|| exit 0`, `|| echo $HOME`)},
		{"composed without dynamicSubstitutions", replace(`  dynamicSubstitutions: true`, `  dynamicSubstitutions: false`)},
		{"no cache pull", replace("    args: [\"-c\", \"docker pull $_IMAGE:latest || exit 0\"]", "    args: [\"-c\", \"true\"]")},
		{"race-less image", replace(`name: golang:1.26`+"\n    entrypoint: bash", `name: golang:1.26-alpine`+"\n    entrypoint: bash")},

		// The rollout.
		{"region without NATS configuration", replace(`asia-northeast1 # rolled out`, `asia-northeast1 australia-southeast1 # rolled out`)},
		{"NATS region not rolled out to", replace(` asia-northeast1 # rolled out`, ` # rolled out`)},
		{"region twice", replace(`us-central1 europe-west1`, `us-central1 us-central1 europe-west1`)},
		{"no regions", replace(`  _REGIONS: us-central1 europe-west1 asia-northeast1`, `  _REGIONS: ""`)},
		{"all regions at once", replace(`    waitFor: ["canary"]`, `    waitFor: ["push", "smoke-build"]`)},
		{"rollout before the push", replace(`    waitFor: ["push", "smoke-build"]`, `    waitFor: ["smoke-build"]`)},
		{"rollout before the smoke check is built", replace(`    waitFor: ["push", "smoke-build"]`, `    waitFor: ["push"]`)},
		{"no canary", replace(`args: ["infra/cloudrun/rollout.sh", "first"]`, `args: ["infra/cloudrun/rollout.sh", "rest"]`)},
		{"unknown rollout subcommand", replace(`rollout.sh", "rest"]`, `rollout.sh", "all"]`)},
		{"deploys the latest tag", replace(`    - IMAGE=$_IMAGE:$BUILD_ID`, `    - IMAGE=$_IMAGE:latest`)},
		{"one revision name for every build", replace(`    - REVISION=$BUILD_ID`, `    - REVISION=main`)},
		{"smoke binary elsewhere", replace(`    - SMOKE=bin/smoke`, `    - SMOKE=smoke`)},
		{"smoke binary needs libc", replace(`    env: ["CGO_ENABLED=0"]`+"\n", "")},
		{"no API key for the smoke check", replace(`    secretEnv: ["API_KEY"]`+"\n", "")},
		{"rollout without gcloud", replace(`    name: gcr.io/google.com/cloudsdktool/cloud-sdk:slim
    entrypoint: bash
    args: ["infra/cloudrun/rollout.sh", "first"]`, `    name: golang:1.26
    entrypoint: bash
    args: ["infra/cloudrun/rollout.sh", "first"]`)},
		{"a flag-by-flag deploy beside the rollout", replace("# Recorded as the build's", `  - id: deploy-more
    name: gcr.io/google.com/cloudsdktool/cloud-sdk:slim
    entrypoint: gcloud
    args: ["run", "deploy", "$_SERVICE", "--image=$_IMAGE:$BUILD_ID", "--region=us-central1"]
    waitFor: ["regions"]

# Recorded as the build's`)},
		{"both a machine type and a pool", replace(`  machineType: E2_HIGHCPU_8`, "  pool:\n    name: projects/p/locations/us-central1/workerPools/groupcast\n  machineType: E2_HIGHCPU_8")},
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
