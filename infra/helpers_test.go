package infra

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/groupcast/groupcast/internal/apptest"

	"go.uber.org/goleak"
)

// root is the repository root, seen from this package's directory.
const root = ".."

var scratch string // removed after the tests

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "groupcast-infra-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	scratch = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		// Every server, client and socket the tests started must be gone.
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// appExists reports whether the application's main package is there yet.
func appExists() bool {
	_, err := os.Stat(filepath.Join(root, "app", "main.go"))
	return err == nil
}

// startRegionApps starts one app per region of sc, connected to that
// region's cluster, and waits until all are ready. Each is stopped when
// the test ends, its output logged if the test failed.
func startRegionApps(ctx context.Context, t *testing.T, bin string, sc *Supercluster, apiKey string, extra map[string]string) []*App {
	t.Helper()
	regions := sc.Topology.Regions
	ports, err := FreePorts(len(regions))
	if err != nil {
		t.Fatal(err)
	}
	apps := make([]*App, len(regions))
	for i, r := range regions {
		logs := &apptest.Buffer{}
		settings := map[string]string{"NATS_URL": sc.NATSURL(r), "REGION": r, "API_KEY": apiKey}
		maps.Copy(settings, extra)
		app, err := StartApp(bin, ports[i], settings, logs)
		if err != nil {
			t.Fatal(err)
		}
		apps[i] = app
		t.Cleanup(func() {
			if err := app.Stop(10 * time.Second); err != nil {
				t.Errorf("%s: %v", r, err)
			}
			if t.Failed() {
				t.Logf("%s output:\n%s", r, logs.String())
			}
		})
	}
	for i, app := range apps {
		if err := app.WaitReady(ctx); err != nil {
			t.Fatalf("%s: %v", regions[i], err)
		}
	}
	return apps
}
