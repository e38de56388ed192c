package infra

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// appSettings are variables groupcast reads (besides every NATS_*); StartApp drops
// inherited values of them so that an instance sees only what it is given.
var appSettings = []string{"PORT", "REGION", "API_KEY", "NODE_ID"}

// App is a running groupcast process.
type App struct {
	URL  string // http://<host>:<PORT>
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the process's exit status, once done is closed
}

// StartApp runs the groupcast binary bin on 127.0.0.1:port with the given settings
// (NATS_URL, REGION, API_KEY, ...) on top of the process environment, the settings
// groupcast reads removed from it. The process's output goes to out (nil: discarded).
// On Unix the process gets its own process group, so terminal signals reach only the
// caller; Stop ends it.
func StartApp(bin string, port int, settings map[string]string, out io.Writer) (*App, error) {
	return startApp([]string{bin}, fmt.Sprintf("http://127.0.0.1:%d", port), port, settings, out)
}

// StartAppInNetns is StartApp for an instance inside the Linux network namespace netns
// (run with "ip netns exec", which needs root), listening on every address there;
// host is an address of the namespace that this process reaches it at.
func StartAppInNetns(netns, host, bin string, port int, settings map[string]string, out io.Writer) (*App, error) {
	return startApp([]string{"ip", "netns", "exec", netns, bin}, fmt.Sprintf("http://%s:%d", host, port), port, settings, out)
}

func startApp(argv []string, url string, port int, settings map[string]string, out io.Writer) (*App, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !isAppSetting(name) {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, fmt.Sprintf("PORT=%d", port))
	for k, v := range settings {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = out, out
	detach(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &App{URL: url, cmd: cmd, done: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

func isAppSetting(name string) bool {
	return strings.HasPrefix(name, "NATS_") || slices.Contains(appSettings, name)
}

// Done is closed when the process has exited.
func (a *App) Done() <-chan struct{} { return a.done }

// WaitReady polls GET /readyz until it answers 200. It fails at once if the process
// exits, and with the last answer when ctx ends.
func (a *App) WaitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	last := "no answer"
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-a.done:
			return fmt.Errorf("%s exited before it was ready: %v", a.URL, a.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %s", a.URL, last)
		case <-tick.C:
		}
	}
}

// Stop sends SIGTERM and waits up to grace for the process to exit. It returns the
// exit error, or an error if the process had to be killed.
func (a *App) Stop(grace time.Duration) error {
	select {
	case <-a.done:
		return a.err
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.err
	case <-time.After(grace):
		_ = a.cmd.Process.Kill()
		<-a.done
		return errors.New("did not exit within " + grace.String() + " of SIGTERM; killed")
	}
}
