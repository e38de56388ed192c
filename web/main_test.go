package web

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/internal/apptest"
	"github.com/groupcast/groupcast/internal/natstest"
	"github.com/groupcast/groupcast/internal/wstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is one instance under test: a broker, a web.Server and an HTTP
// test server in front of it.
type env struct {
	t      testing.TB
	broker *broker.Broker
	srv    *Server
	http   *httptest.Server
}

// newEnv starts an instance on natsURL (embedded when empty). cfg may
// be nil for defaults (with client sends allowed); its logs go to the
// test's log unless it has a Logger.
func newEnv(t testing.TB, natsURL string, cfg *Config) *env {
	t.Helper()
	return newEnvBroker(t, broker.Config{URL: natsURL}, cfg)
}

// newEnvBroker is newEnv with more broker settings.
func newEnvBroker(t testing.TB, bc broker.Config, cfg *Config) *env {
	t.Helper()
	m := NewMetrics()
	bc.Logger, bc.ReconnectWait, bc.OnFanout = apptest.Logger(t), 50*time.Millisecond, m.ObserveFanout
	b, err := broker.New(bc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = &Config{ClientSend: true}
	}
	if cfg.Logger == nil {
		cfg.Logger = apptest.Logger(t)
	}
	cfg.Metrics = m
	if cfg.Region == "" {
		cfg.Region = "test-region"
	}
	s, err := New(b, *cfg)
	if err != nil {
		b.Close(context.Background())
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	e := &env{t: t, broker: b, srv: s, http: hs}
	t.Cleanup(e.close)
	waitFor(t, 5*time.Second, func() bool { return b.Ready() == nil })
	return e
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
	e.http.Close()
	e.broker.Close(ctx)
}

// post sends a JSON body to the server API and returns status and body.
func (e *env) post(path, body string, header ...string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.http.URL+path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var waitFor = natstest.WaitFor

// dial opens a WebSocket to the instance; header holds name, value pairs.
func (e *env) dial(header ...string) *wstest.Client {
	e.t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	return wstest.Dial(e.t, e.wsURL(), h)
}

func (e *env) wsURL() string { return "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws" }

// sessionInfo is the presence info of the session on channel.
func (e *env) sessionInfo(channel string) string {
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	if ss := e.srv.byChannel[channel]; ss != nil {
		return string(ss.info)
	}
	return ""
}
