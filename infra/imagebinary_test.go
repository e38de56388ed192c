package infra

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/groupcast/groupcast/internal/apptest"
)

var imageBinary struct {
	once sync.Once
	bin  *apptest.Binary
}

// buildImageBinary builds ./app as the image's build stage does (static, without
// cgo, -trimpath), once per test binary. The Dockerfile's own go build line is run
// and checked by the deploy checks (infra/deploycheck).
func buildImageBinary(t *testing.T) string {
	t.Helper()
	if !appExists() {
		t.Skip("app/main.go does not exist yet")
	}
	imageBinary.once.Do(func() { // scratch is set by TestMain
		imageBinary.bin = &apptest.Binary{Flags: []string{"-trimpath"}, Env: []string{"CGO_ENABLED=0"}, Dir: filepath.Join(scratch, "image")}
	})
	return imageBinary.bin.Path(t)
}
