package deploycheck

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// root is the repository root, seen from this package's directory.
const root = "../.."

var scratch string // removed after the tests

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "groupcast-deploycheck-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scratch = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		// Every process and client the tests started must be gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// appExists reports whether the application's main package is there.
func appExists() bool {
	_, err := os.Stat(filepath.Join(root, "app", "main.go"))
	return err == nil
}
