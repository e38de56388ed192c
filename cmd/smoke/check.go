package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/groupcast/groupcast/client"
)

// pollInterval is the wait between two /readyz attempts.
const pollInterval = time.Second

// check runs the checks in order and returns the first failure.
func check(ctx context.Context, cfg config, log *slog.Logger) error {
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	hc := &http.Client{Transport: transport, Timeout: 10 * time.Second}

	start := time.Now()
	if err := waitReady(ctx, hc, cfg.base); err != nil {
		return err
	}
	log.Info("ready", "path", "/readyz", "after", time.Since(start).Round(time.Millisecond))

	wsURL := "ws" + strings.TrimPrefix(cfg.base, "http") + "/ws"
	c, err := client.Dial(ctx, wsURL, &client.Options{HTTPClient: hc})
	if err != nil {
		return fmt.Errorf("WebSocket %s: %w", wsURL, err)
	}
	defer c.Close()
	w := c.Welcome()
	log.Info("welcomed", "node", w.Node, "region", w.Region)
	if cfg.region != "" && w.Region != cfg.region {
		return fmt.Errorf("the welcome names region %q, want %q: the instance runs with another region's settings", w.Region, cfg.region)
	}

	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	group := "smoke." + hex.EncodeToString(nonce)
	type payload struct {
		Smoke string `json:"smoke"`
	}
	want := payload{Smoke: hex.EncodeToString(nonce)}
	got := make(chan struct{}, 1)
	err = c.Join(ctx, group, func(m client.Message) {
		var p payload
		if json.Unmarshal(m.Data, &p) == nil && p == want {
			select {
			case got <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return fmt.Errorf("join %s: %w", group, err)
	}
	log.Info("joined", "group", group)

	sent := time.Now()
	via := "WebSocket send"
	if cfg.apiKey != "" {
		via = "server API"
		err = publish(ctx, hc, cfg.base, cfg.apiKey, group, want)
	} else {
		err = c.Send(ctx, group, want)
	}
	if err != nil {
		return fmt.Errorf("publish to %s through the %s: %w", group, via, err)
	}
	t := time.NewTimer(cfg.deliveryTimeout)
	defer t.Stop()
	select {
	case <-got:
		log.Info("delivered", "group", group, "via", via, "latency", time.Since(sent).Round(time.Microsecond))
		return nil
	case <-t.C:
		return fmt.Errorf("no delivery: the message published to %s through the %s did not reach the joined WebSocket within %v", group, via, cfg.deliveryTimeout)
	case <-ctx.Done():
		return fmt.Errorf("no delivery before the check's deadline: %w", ctx.Err())
	}
}

// waitReady polls base/readyz until it answers 200 or ctx ends; the error then
// carries the last answer.
func waitReady(ctx context.Context, hc *http.Client, base string) error {
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
			if resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusNotFound {
				last += " (a Cloud Run service whose ingress does not admit this caller answers so: " +
					"run the check from inside the service's VPC, see infra/README.md)"
			}
		} else if ctx.Err() == nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s/readyz: not ready before the deadline; last answer: %s", base, last)
		case <-time.After(pollInterval):
		}
	}
}

// publish posts data to group through the server API and wants 202.
func publish(ctx context.Context, hc *http.Client, base, apiKey, group string, data any) error {
	body, err := json.Marshal(data)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/groups/"+group+"/messages", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusAccepted {
		return errors.New(resp.Status + ": " + strings.TrimSpace(string(answer)))
	}
	return nil
}
