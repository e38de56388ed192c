package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// scrapeClient fetches metrics and profiles: no proxy, no keep-alive (a
// scrape is rare, and an idle connection would linger in the server).
var scrapeClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// maxScrapeBytes bounds a /metrics or /varz answer.
const maxScrapeBytes = 8 << 20

// scrapeMetric returns the value of the unlabelled Prometheus metric name
// from the text exposition at url.
func scrapeMetric(ctx context.Context, url, name string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := get(ctx, url)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", url, name, err)
		}
		return int64(v), nil
	}
	return 0, fmt.Errorf("%s: no %s", url, name)
}

// varz holds the message counters of nats-server's /varz.
type varz struct {
	InMsgs  int64 `json:"in_msgs"`
	OutMsgs int64 `json:"out_msgs"`
}

// scrapeVarz reads base/varz; with base empty it returns zeros.
func scrapeVarz(ctx context.Context, base string) (varz, error) {
	var v varz
	if base == "" {
		return v, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := get(ctx, strings.TrimRight(base, "/")+"/varz")
	if err != nil {
		return v, err
	}
	err = json.Unmarshal(body, &v)
	return v, err
}

func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxScrapeBytes))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return body, nil
}

// fetchProfile saves what url (a net/http/pprof endpoint) answers to the
// file out, within timeout.
func fetchProfile(ctx context.Context, url, out string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, io.LimitReader(resp.Body, 1<<30)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
