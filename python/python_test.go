// Package python_test runs the Python package's tests (python/tests) with
// Debian's /usr/bin/python3 against the real groupcast binary, so that
// `go test ./...` covers them too. It skips, saying why, when Python or one
// of the Debian packages the tests need is missing.
package python_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/apptest"
)

// python is the interpreter the package supports: Debian's, with Debian's
// python3-django, python3-django-channels, python3-jwt,
// python3-websockets and python3-pytest.
const python = "/usr/bin/python3"

func TestPython(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs pytest")
	}
	if _, err := os.Stat(python); err != nil {
		t.Skipf("%s is missing: apt-get install python3 to run the Python tests", python)
	}
	probe := "import django, channels, asgiref, jwt, websockets, pytest"
	if out, err := exec.Command(python, "-c", probe).CombinedOutput(); err != nil {
		t.Skipf("the Python tests need Debian's python3-django python3-django-channels python3-jwt python3-websockets python3-pytest (%v: %s)", err, out)
	}
	bin := apptest.Build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	if d, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(context.Background(), d.Add(-10*time.Second))
	}
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
	cmd.Env = append(os.Environ(), "GROUPCAST_BIN="+bin, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pytest: %v\n%s", err, out)
	}
	t.Logf("pytest:\n%s", out)
}
