// Command playground runs groupcast's multi-region setup on one machine: the NATS
// supercluster from the files in infra/nats (three regions, each a cluster of
// nats-servers, joined by gateways) and one groupcast instance per region, on ports
// 8081, 8082 and 8083. Ctrl-C stops everything.
//
//	go run ./infra/playground
//	go run ./infra/playground -port 9001 -servers 1
//
// Run it from anywhere inside the repository; it builds ./app first unless -bin names
// a binary.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/groupcast/groupcast/infra"
)

func main() {
	port := flag.Int("port", 8081, "HTTP port of the first region's instance; the others follow")
	servers := flag.Int("servers", 3, "nats-servers per region")
	bin := flag.String("bin", "", "groupcast binary to run (default: build ./app)")
	natsLog := flag.Bool("nats-log", false, "show the nats-servers' notices, not only their warnings and errors")
	flag.Parse()
	if err := run(*port, *servers, *bin, *natsLog); err != nil {
		fmt.Fprintln(os.Stderr, "playground:", err)
		os.Exit(1)
	}
}

func run(port, servers int, bin string, natsLog bool) error {
	repo, err := moduleRoot()
	if err != nil {
		return err
	}
	natsDir := filepath.Join(repo, "infra", "nats")
	regions, err := infra.Regions(filepath.Join(natsDir, "regions", "us-central1.env"))
	if err != nil {
		return err
	}
	for i := range regions {
		if err := portFree(port + i); err != nil {
			return err
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if bin == "" {
		dir, err := os.MkdirTemp("", "groupcast-playground-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "groupcast")
		fmt.Println("building ./app ...")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./app")
		cmd.Dir, cmd.Stdout, cmd.Stderr = repo, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./app: %w", err)
		}
	}

	topo, err := infra.LoopbackTopology(regions, servers)
	if err != nil {
		return err
	}
	log := &natsLogger{verbose: natsLog}
	sc, err := infra.StartSupercluster(filepath.Join(natsDir, "nats-server.conf"), topo, log)
	if err != nil {
		return err
	}
	defer sc.Shutdown()
	jctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err = sc.WaitJoined(jctx)
	cancel()
	if err != nil {
		return err
	}
	log.joined.Store(true)

	apps := make([]*infra.App, len(regions))
	defer func() {
		var wg sync.WaitGroup
		for i, a := range apps {
			if a != nil {
				wg.Go(func() {
					if err := a.Stop(10 * time.Second); err != nil {
						fmt.Fprintf(os.Stderr, "%s: %v\n", regions[i], err)
					}
				})
			}
		}
		wg.Wait()
	}()
	exited := make(chan string, len(regions))
	for i, r := range regions {
		a, err := infra.StartApp(bin, port+i, map[string]string{
			"NATS_URL": sc.NATSURL(r),
			"REGION":   r,
		}, &prefixWriter{prefix: fmt.Sprintf("[%-15s] ", r), out: os.Stdout})
		if err != nil {
			return err
		}
		apps[i] = a
		go func() { <-a.Done(); exited <- r }()
	}
	for i, a := range apps {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := a.WaitReady(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", regions[i], err)
		}
	}

	fmt.Printf("\ngroupcast playground: %d regions, %d nats-servers each, joined by gateways\n\n", len(regions), servers)
	for i, r := range regions {
		fmt.Printf("  %-16s %s   ws%s/ws\n", r, apps[i].URL, strings.TrimPrefix(apps[i].URL, "http"))
		fmt.Printf("  %-16s NATS %s\n", "", strings.Join(sc.ClientURLs(r), ","))
	}
	fmt.Printf(`
NATS user %q, password %q (account GROUPCAST).
Open %s in a browser, or join a group on one region and publish on another:

  websocat %s/ws          then send {"type":"join","group":"demo","id":1}
  curl -H 'Content-Type: application/json' -d '{"hello":"world"}' %s/api/groups/demo/messages

Ctrl-C stops everything.
`, infra.AppUser, topo.AppPassword, apps[0].URL,
		"ws"+strings.TrimPrefix(apps[0].URL, "http"), apps[len(apps)-1].URL)

	select {
	case <-ctx.Done():
		fmt.Println("\nstopping ...")
		return nil
	case r := <-exited:
		return fmt.Errorf("the %s instance exited", r)
	}
}

// moduleRoot finds the repository root: the nearest directory upwards with groupcast's
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/groupcast/groupcast\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the playground inside the groupcast repository")
		}
		dir = parent
	}
}

func portFree(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return fmt.Errorf("port %d is taken (choose others with -port): %w", port, err)
	}
	return l.Close()
}

// prefixWriter writes each line with a prefix, so three instances' logs stay readable.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	out    io.Writer
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if _, err := fmt.Fprintf(w.out, "%s%s\n", w.prefix, w.buf[:i]); err != nil {
			return 0, err
		}
		w.buf = w.buf[i+1:]
	}
}

// natsLogger prints the nats-servers' warnings and errors once the supercluster has
// joined (servers starting one after another refuse each other for a moment), and
// everything from notices up if verbose.
type natsLogger struct {
	verbose bool
	joined  atomic.Bool
	mu      sync.Mutex
}

func (l *natsLogger) print(level, format string, v ...any) {
	if !l.verbose && !l.joined.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	w := bufio.NewWriter(os.Stderr)
	fmt.Fprintf(w, "[nats %s] %s\n", level, fmt.Sprintf(format, v...))
	_ = w.Flush()
}

func (l *natsLogger) Noticef(format string, v ...any) {
	if l.verbose {
		l.print("INF", format, v...)
	}
}
func (l *natsLogger) Warnf(format string, v ...any)  { l.print("WRN", format, v...) }
func (l *natsLogger) Errorf(format string, v ...any) { l.print("ERR", format, v...) }
func (l *natsLogger) Fatalf(format string, v ...any) { l.print("FTL", format, v...) }
func (l *natsLogger) Debugf(string, ...any)          {}
func (l *natsLogger) Tracef(string, ...any)          {}
