package infra

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// deployCheckDir is the module of the offline deploy checks.
const deployCheckDir = "deploycheck"

// TestDeployChecks runs the offline deploy checks (infra/deploycheck) with the go
// tool. They are a module of their own so that their dependencies (BuildKit, the
// Google API types) stay out of this module's go.mod; this test keeps them part of
// `go test ./...` here, with this run's -race, -short and -v.
func TestDeployChecks(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the deploy checks in infra/deploycheck need the go tool: %v", err)
	}
	// go test caches this test's result by the files it looks at: look at every
	// file of the repository, so that a change to any input of the checks (the
	// Dockerfile, cloudbuild.yaml, infra/cloudrun, the sources the image builds)
	// runs them again.
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			_, err = os.Stat(path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	args := []string{"test", "-count=1"}
	if raceEnabled() {
		args = append(args, "-race")
	}
	if testing.Short() {
		args = append(args, "-short")
	}
	if testing.Verbose() {
		args = append(args, "-v")
	}
	cmd := exec.Command(goTool, append(args, "./...")...)
	cmd.Dir = deployCheckDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v\n%s", cmd, deployCheckDir, err, out)
	}
	t.Logf("%s in %s:\n%s", cmd, deployCheckDir, out)
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}
