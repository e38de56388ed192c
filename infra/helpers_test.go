package infra

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"sigs.k8s.io/yaml"
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

// decodeStrict decodes YAML into v the way an API server would refuse it: duplicate
// keys, fields the type does not have (also when only the letter case differs, which
// encoding/json would forgive) and trailing documents are errors.
func decodeStrict(data []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one document")
	}
	var generic any
	if err := json.Unmarshal(j, &generic); err != nil {
		return err
	}
	return exactKeys(generic, reflect.TypeOf(v), "")
}

// exactKeys checks that every object key in v is a JSON field name of t, spelled
// exactly.
func exactKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch v := v.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Struct:
			fields := jsonFields(t)
			for _, k := range sortedKeys(v) {
				ft, ok := fields[k]
				if !ok {
					return fmt.Errorf("%s: unknown field %q", orRoot(path), k)
				}
				if err := exactKeys(v[k], ft, path+"."+k); err != nil {
					return err
				}
			}
		case reflect.Map:
			for _, k := range sortedKeys(v) {
				if err := exactKeys(v[k], t.Elem(), path+"."+k); err != nil {
					return err
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice {
			for i, e := range v {
				if err := exactKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					fields[k] = v
				}
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func orRoot(path string) string {
	if path == "" {
		return "(root)"
	}
	return path
}

// syncBuffer collects a child process's output for the test log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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
		logs := &syncBuffer{}
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
