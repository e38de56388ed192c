// Command smoke checks a running groupcast end to end, as the rollout in
// cloudbuild.yaml does with a new revision's tagged URL before that revision
// gets any traffic: GET /readyz answers 200, and a message published to a
// fresh group reaches a WebSocket that joined it through the same URL.
//
//	go run ./cmd/smoke -url https://candidate---groupcast-abc123-uc.a.run.app -region us-central1
//
// With API_KEY in the environment the message is published through the server
// API (POST /api/groups/{group}/messages with that key), which also proves the
// key; without it, with a WebSocket send, which needs CLIENT_SEND (the
// default). It logs each check and exits 0, or logs the check that failed and
// exits 1; bad flags exit 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole command: it parses args, runs the checks and returns the
// exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("smoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.StringVar(&cfg.base, "url", "", "base URL of the instance or revision (http:// or https://), without /ws")
	fs.StringVar(&cfg.region, "region", "", "region the welcome must name (empty: any)")
	fs.DurationVar(&cfg.timeout, "timeout", 3*time.Minute, "bound on the whole check, a cold start included")
	fs.DurationVar(&cfg.deliveryTimeout, "delivery-timeout", 10*time.Second, "how long the published message may take to arrive")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintf(stderr, "smoke: %v\n", err)
		fs.Usage()
		return 2
	}
	cfg.apiKey = getenv("API_KEY")

	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	if err := check(ctx, cfg, log); err != nil {
		log.Error("smoke check failed", "url", cfg.base, "err", err)
		return 1
	}
	log.Info("smoke check passed", "url", cfg.base)
	return 0
}

// config is what the flags and the environment say.
type config struct {
	base            string // http(s)://host[:port][/prefix], no trailing slash
	region          string
	timeout         time.Duration
	deliveryTimeout time.Duration
	apiKey          string
}

func (c *config) validate() error {
	if c.base == "" {
		return errors.New("-url is required")
	}
	u, err := url.Parse(c.base)
	if err != nil {
		return fmt.Errorf("-url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("-url %q: want http:// or https:// and a host, no query", c.base)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	c.base = u.String()
	if c.timeout <= 0 || c.deliveryTimeout <= 0 {
		return errors.New("-timeout and -delivery-timeout must be positive")
	}
	return nil
}
