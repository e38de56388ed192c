package deploycheck

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/dockerignore"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	digest "github.com/opencontainers/go-digest"

	"github.com/groupcast/groupcast/infra"
)

const (
	runtimeImage = "gcr.io/distroless/static-debian12:nonroot"
	testVersion  = "infra-test-version"
)

// dockerfileFacts is what the checks extract from the Dockerfile's build stage.
type dockerfileFacts struct {
	Env     []string // NAME=value assignments in front of go build
	Args    []string // the arguments after "go build"
	Output  string   // the -o path, copied into the final stage
	Package string   // the package built
}

// offlineResolver answers BuildKit's base image look-ups without a registry: the
// linter needs an image config, not the image.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := `{"architecture":"amd64","os":"linux",` +
		`"config":{"Env":["PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},` +
		`"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	return ref, "", []byte(cfg), nil
}

// lintDockerfile runs BuildKit's Dockerfile rules (the ones `docker build --check`
// runs) and returns one line per warning.
func lintDockerfile(data []byte) ([]string, error) {
	var warnings []string
	opt := dockerfile2llb.ConvertOpt{
		AllStages:    true,
		MetaResolver: offlineResolver{},
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			warnings = append(warnings, fmt.Sprintf("line %d: %s: %s", line, rule, msg))
		},
	}
	_, err := dockerfile2llb.Dockerfile2Outline(context.Background(), data, opt)
	if err != nil && len(warnings) == 0 {
		return nil, err
	}
	return warnings, nil
}

// checkDockerfile parses the Dockerfile with BuildKit's parser, lints it with BuildKit's
// rules, and checks the shape groupcast relies on. buildArgs override ARG defaults.
func checkDockerfile(data []byte, buildArgs map[string]string) (*dockerfileFacts, error) {
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	for _, w := range res.Warnings {
		return nil, fmt.Errorf("parser warning: %s", w.Short)
	}
	warnings, err := lintDockerfile(data)
	if err != nil {
		return nil, fmt.Errorf("lint: %w", err)
	}
	if len(warnings) > 0 {
		return nil, fmt.Errorf("lint warnings:\n%s", strings.Join(warnings, "\n"))
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, fmt.Errorf("instructions: %w", err)
	}
	if len(stages) < 2 {
		return nil, fmt.Errorf("want a multi-stage build, got %d stage(s)", len(stages))
	}

	// The build stage: golang:1.26, one RUN that is exactly a go build.
	build := stages[0]
	if build.BaseName != "golang:1.26" {
		return nil, fmt.Errorf("build stage FROM %s, want golang:1.26", build.BaseName)
	}
	facts, err := buildCommand(build, buildArgs, res.EscapeToken)
	if err != nil {
		return nil, err
	}

	// The final stage: distroless static nonroot with the binary and nothing else.
	final := stages[len(stages)-1]
	if final.BaseName != runtimeImage {
		return nil, fmt.Errorf("final stage FROM %s, want %s", final.BaseName, runtimeImage)
	}
	var copied, user, entry string
	var exposed, portEnv bool
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.CopyCommand:
			if copied != "" {
				return nil, errors.New("final stage: more than one COPY; only the binary belongs there")
			}
			if c.From != build.Name || build.Name == "" {
				return nil, fmt.Errorf("final stage: COPY must come --from the build stage, got --from=%q", c.From)
			}
			if !slices.Equal(c.SourcePaths, []string{facts.Output}) {
				return nil, fmt.Errorf("final stage copies %v, want the build output %s", c.SourcePaths, facts.Output)
			}
			copied = c.DestPath
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			exposed = exposed || slices.Contains(c.Ports, "8080") || slices.Contains(c.Ports, "8080/tcp")
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				if kv.Key == "PORT" {
					portEnv = kv.Value == "8080"
				}
			}
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				return nil, fmt.Errorf("ENTRYPOINT %v is shell form; exec form gets SIGTERM", c.CmdLine)
			}
			if len(c.CmdLine) != 1 {
				return nil, fmt.Errorf("ENTRYPOINT %v: want just the binary", c.CmdLine)
			}
			entry = c.CmdLine[0]
		case *instructions.LabelCommand, *instructions.ArgCommand:
		default:
			return nil, fmt.Errorf("final stage: unexpected %s; only the binary belongs there", c.Name())
		}
	}
	switch {
	case copied == "":
		return nil, errors.New("final stage: the binary is not copied in")
	case entry != copied:
		return nil, fmt.Errorf("ENTRYPOINT %q is not the copied binary %q", entry, copied)
	case user != "nonroot:nonroot" && user != "nonroot" && user != "65532:65532":
		return nil, fmt.Errorf("final stage USER %q, want nonroot:nonroot", user)
	case !exposed:
		return nil, errors.New("final stage does not EXPOSE 8080")
	case !portEnv:
		return nil, errors.New("final stage does not set ENV PORT=8080")
	}
	return facts, nil
}

// buildCommand finds the build stage's go build and splits it as the shell would,
// expanding the ARG and ENV values in scope.
func buildCommand(stage instructions.Stage, buildArgs map[string]string, escape rune) (*dockerfileFacts, error) {
	var env []string
	var found *dockerfileFacts
	for _, c := range stage.Commands {
		switch c := c.(type) {
		case *instructions.ArgCommand:
			for _, a := range c.Args {
				v, ok := buildArgs[a.Key]
				if !ok {
					v = a.ValueString()
				}
				env = append(env, a.Key+"="+v)
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env = append(env, kv.Key+"="+kv.Value)
			}
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			if !strings.Contains(line, "go build") {
				continue
			}
			if found != nil {
				return nil, errors.New("more than one RUN with go build")
			}
			if !c.PrependShell {
				return nil, errors.New("the go build RUN must be shell form (it sets CGO_ENABLED=0 in front)")
			}
			words, err := shell.NewLex(escape).ProcessWords(line, shell.EnvsFromSlice(env))
			if err != nil {
				return nil, fmt.Errorf("go build line: %w", err)
			}
			f, err := splitGoBuild(words)
			if err != nil {
				return nil, err
			}
			found = f
		}
	}
	if found == nil {
		return nil, errors.New("build stage has no RUN with go build")
	}
	return found, nil
}

func splitGoBuild(words []string) (*dockerfileFacts, error) {
	f := &dockerfileFacts{}
	i := 0
	for ; i < len(words); i++ {
		name, _, ok := strings.Cut(words[i], "=")
		if !ok || name == "" || strings.HasPrefix(name, "-") {
			break
		}
		f.Env = append(f.Env, words[i])
	}
	if len(words) < i+2 || words[i] != "go" || words[i+1] != "build" {
		return nil, fmt.Errorf("the build RUN must be one go build command, got %q", words)
	}
	for _, w := range words {
		if w == "&&" || w == "||" || w == ";" || w == "|" {
			return nil, fmt.Errorf("the build RUN must be one go build command, got %q", words)
		}
	}
	f.Args = words[i+2:]
	if !slices.Contains(f.Env, "CGO_ENABLED=0") {
		return nil, fmt.Errorf("go build without CGO_ENABLED=0 (env %v)", f.Env)
	}
	if !slices.Contains(f.Args, "-trimpath") {
		return nil, errors.New("go build without -trimpath")
	}
	ldflags := ""
	for j := 0; j < len(f.Args); j++ {
		switch a := f.Args[j]; {
		case a == "-o" && j+1 < len(f.Args):
			f.Output = f.Args[j+1]
			j++
		case a == "-ldflags" && j+1 < len(f.Args):
			ldflags = f.Args[j+1]
			j++
		case strings.HasPrefix(a, "-ldflags="):
			ldflags = strings.TrimPrefix(a, "-ldflags=")
		case !strings.HasPrefix(a, "-"):
			f.Package = a
		}
	}
	if f.Output == "" {
		return nil, errors.New("go build without -o")
	}
	if f.Package != "./app" {
		return nil, fmt.Errorf("go build builds %q, want ./app", f.Package)
	}
	_, stamp, _ := strings.Cut(ldflags, "-X main.version=")
	if stamp, _, _ = strings.Cut(stamp, " "); stamp == "" {
		return nil, fmt.Errorf("go build -ldflags %q does not set main.version", ldflags)
	}
	return f, nil
}

func TestDockerfile(t *testing.T) {
	facts, err := checkDockerfile(readFile(t, filepath.Join(root, "Dockerfile")), map[string]string{"VERSION": testVersion})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build command: %s go build %s", strings.Join(facts.Env, " "), strings.Join(facts.Args, " "))
}

// TestDockerfileRejectsBrokenCopies feeds broken copies of the Dockerfile to the
// checks: each must be refused.
func TestDockerfileRejectsBrokenCopies(t *testing.T) {
	good := string(readFile(t, filepath.Join(root, "Dockerfile")))
	if _, err := checkDockerfile([]byte(good), nil); err != nil {
		t.Fatalf("the real Dockerfile is refused: %v", err)
	}
	cases := []struct{ name, old, new string }{
		{"shell-form entrypoint", `ENTRYPOINT ["/groupcast"]`, `ENTRYPOINT /groupcast`},
		{"cgo left on", `CGO_ENABLED=0 go build`, `go build`},
		{"no -trimpath", `go build -trimpath`, `go build`},
		{"no version stamp", `-X main.version=${VERSION}`, ``},
		{"runs as root", `USER nonroot:nonroot`, `USER root`},
		{"wrong port", `EXPOSE 8080`, `EXPOSE 8081`},
		{"single stage", "FROM " + runtimeImage + "\nCOPY --from=build /out/groupcast /groupcast\n", ""},
		{"fat runtime image", "FROM " + runtimeImage, "FROM golang:1.26"},
		{"extra file in image", "COPY --from=build /out/groupcast /groupcast\n", "COPY --from=build /out/groupcast /groupcast\nCOPY . /src\n"},
		{"lint: casing", "FROM golang:1.26 AS build", "from golang:1.26 as build"},
		{"lint: legacy ENV", "ENV PORT=8080", "ENV PORT 8080"},
		{"version from a misspelt ARG", "-X main.version=${VERSION}", "-X main.version=${VERSON}"},
		{"two commands in the build RUN", `-o /out/groupcast ./app`, `-o /out/groupcast ./app && true`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			broken := strings.Replace(good, c.old, c.new, 1)
			if broken == good {
				t.Fatalf("mutation %q does not apply to the Dockerfile", c.old)
			}
			if _, err := checkDockerfile([]byte(broken), nil); err == nil {
				t.Fatal("broken Dockerfile accepted")
			} else {
				t.Logf("refused: %v", err)
			}
		})
	}
}

// contextFiles lists the files of the repository that the build context keeps, given
// the .dockerignore patterns.
func contextFiles(repo string, ignore []byte) ([]string, error) {
	patterns, err := dockerignore.ReadAll(bytes.NewReader(ignore))
	if err != nil {
		return nil, err
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, err
	}
	var files []string
	err = filepath.WalkDir(repo, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repo, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if excluded && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		if !excluded && d.Type().IsRegular() {
			files = append(files, rel)
		}
		return nil
	})
	return files, err
}

// checkBuildInputs fails when .dockerignore drops a file that go build ./app needs.
func checkBuildInputs(repo string, ignore []byte) error {
	kept, err := contextFiles(repo, ignore)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if not .Standard}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}`,
		"./app")
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go list: %w", err)
	}
	abs, err := filepath.Abs(repo)
	if err != nil {
		return err
	}
	need := []string{"go.mod", "go.sum"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if rel, err := filepath.Rel(abs, line); err == nil && !strings.HasPrefix(rel, "..") {
			need = append(need, filepath.ToSlash(rel))
		}
	}
	for _, n := range need {
		if !slices.Contains(kept, n) {
			return fmt.Errorf(".dockerignore drops %s, which go build ./app needs", n)
		}
	}
	return nil
}

func TestDockerignore(t *testing.T) {
	if !appExists() {
		t.Skip("app/main.go does not exist yet")
	}
	good := readFile(t, filepath.Join(root, ".dockerignore"))
	if err := checkBuildInputs(root, good); err != nil {
		t.Fatal(err)
	}
	for _, extra := range []string{"app", "go.sum", "**/*.go", "broker"} {
		t.Run("ignores "+extra, func(t *testing.T) {
			if err := checkBuildInputs(root, append(slices.Clip(good), "\n"+extra+"\n"...)); err == nil {
				t.Fatalf(".dockerignore that drops %s accepted", extra)
			}
		})
	}
}

var builtBinary struct {
	once sync.Once
	path string
	err  error
}

// dockerfileBinary runs the Dockerfile's own go build command (its environment and
// flags, VERSION=testVersion) in a copy of the build context that .dockerignore
// leaves, once per test binary.
func dockerfileBinary(t *testing.T) string {
	t.Helper()
	if !appExists() {
		t.Skip("app/main.go does not exist yet")
	}
	builtBinary.once.Do(func() {
		builtBinary.path, builtBinary.err = runDockerfileBuild()
	})
	if builtBinary.err != nil {
		t.Fatal(builtBinary.err)
	}
	return builtBinary.path
}

func runDockerfileBuild() (string, error) {
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		return "", err
	}
	facts, err := checkDockerfile(data, map[string]string{"VERSION": testVersion})
	if err != nil {
		return "", err
	}
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		return "", err
	}
	files, err := contextFiles(root, ignore)
	if err != nil {
		return "", err
	}
	ctxDir := filepath.Join(scratch, "context")
	for _, f := range files {
		if err := copyFile(filepath.Join(root, f), filepath.Join(ctxDir, f)); err != nil {
			return "", err
		}
	}
	out := filepath.Join(scratch, "image", "groupcast")
	args := slices.Clone(facts.Args)
	for i := range args {
		if i > 0 && args[i-1] == "-o" {
			args[i] = out
		}
	}
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), facts.Env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %v\n%s", cmd, err, b)
	}
	return out, nil
}

func copyFile(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		return err
	}
	return dst.Close()
}

// checkStatic fails unless the ELF file at path is statically linked: no program
// interpreter and no shared libraries, so it runs on distroless/static.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("has a program interpreter (PT_INTERP): dynamically linked")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return err
	}
	if len(libs) > 0 {
		return fmt.Errorf("needs shared libraries %v", libs)
	}
	return nil
}

// TestImageBinary builds the binary exactly as the image does, checks that it is
// static and stamped, then runs it as Cloud Run would: PORT set, NATS_URL unset
// (embedded NATS), ready on /readyz, gone within 10 s of SIGTERM.
func TestImageBinary(t *testing.T) {
	bin := dockerfileBinary(t)
	if err := checkStatic(bin); err != nil {
		t.Fatal(err)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q, want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}
	if b, err := os.ReadFile(bin); err != nil {
		t.Fatal(err)
	} else if !bytes.Contains(b, []byte(testVersion)) {
		t.Errorf("the binary does not contain the version %q: does package main declare var version?", testVersion)
	}

	ports, err := infra.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	app, err := infra.StartApp(bin, ports[0], map[string]string{"REGION": "local"}, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := app.WaitReady(ctx); err != nil {
		_ = app.Stop(time.Second)
		t.Fatal(err)
	}
	start := time.Now()
	if err := app.Stop(10 * time.Second); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	t.Logf("ready, then exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}
