package apptest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Build builds ./app of this module into the test's temporary directory
// and returns the binary's path. It skips with -short.
func Build(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin, err := build(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Binary is ./app of this module built once, on the first Path, for the
// tests of a package that runs it many times.
type Binary struct {
	Flags []string // go build flags, such as -trimpath
	Env   []string // KEY=value added to the build's environment, such as CGO_ENABLED=0
	Dir   string   // where the binary goes; "": a new temporary directory, which Clean removes

	once sync.Once
	temp string
	path string
	err  error
}

// Path builds the binary the first time and returns its path; a failed
// build fails every test that asks.
func (b *Binary) Path(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		dir := b.Dir
		if dir == "" {
			if dir, b.err = os.MkdirTemp("", "groupcast-test"); b.err != nil {
				return
			}
			b.temp = dir
		}
		b.path, b.err = build(dir, b.Flags, b.Env)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Clean removes the temporary directory Path made, if any: call it from
// TestMain after the tests have run.
func (b *Binary) Clean() {
	if b.temp != "" {
		os.RemoveAll(b.temp)
	}
}

// build runs go build for ./app of this module into dir.
func build(dir string, flags, env []string) (string, error) {
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..")
	bin := filepath.Join(dir, "groupcast")
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, "./app")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %v\n%s", cmd, err, out)
	}
	return bin, nil
}
