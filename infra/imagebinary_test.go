package infra

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var imageBinary struct {
	once sync.Once
	path string
	err  error
}

// buildImageBinary builds ./app as the image's build stage does (static, without
// cgo, -trimpath), once per test binary. The Dockerfile's own go build line is run
// and checked by the deploy checks (infra/deploycheck).
func buildImageBinary(t *testing.T) string {
	t.Helper()
	if !appExists() {
		t.Skip("app/main.go does not exist yet")
	}
	imageBinary.once.Do(func() {
		out := filepath.Join(scratch, "image", "groupcast")
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./app")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			imageBinary.err = fmt.Errorf("%s: %v\n%s", cmd, err, b)
			return
		}
		imageBinary.path = out
	})
	if imageBinary.err != nil {
		t.Fatal(imageBinary.err)
	}
	return imageBinary.path
}
