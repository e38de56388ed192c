package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/groupcast/groupcast/broker"
	"github.com/groupcast/groupcast/web"
)

// settings are the process's configuration, read from the environment
// straight into the broker's and the web server's Config.
type settings struct {
	Port            int
	Broker          broker.Config
	Web             web.Config
	ShutdownTimeout time.Duration
	HTTPIdleTimeout time.Duration
	PprofAddr       string
	LogLevel        slog.Level
	LogFormat       string
}

// newSettings returns the defaults: the broker's and the web server's own
// (their DefaultConfig), and those of the process.
func newSettings() *settings {
	return &settings{
		Port:            8080,
		Broker:          broker.DefaultConfig(),
		Web:             web.DefaultConfig(),
		ShutdownTimeout: 8 * time.Second,
		HTTPIdleTimeout: 60 * time.Second,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "auto",
	}
}

// setting documents one environment variable; the README's table says the
// same (settings_test.go checks it).
type setting struct {
	name, doc string
	value
}

// value reads a variable into settings and shows what settings hold.
type value struct {
	set  func(s *settings, v string) error
	show func(s *settings) string
	// echo is how a refused value may appear in the error line; nil: not
	// at all (secrets, and values whose error shows them redacted).
	echo func(v string) string
}

// settingsTable lists every variable, how it is read and shown. Defaults
// are what newSettings holds.
var settingsTable = []setting{
	{"PORT", "the one port for HTTP and WebSocket", integer(func(s *settings) *int { return &s.Port }, 0, 65535)},
	{"NATS_URL", "unset: embedded NATS server; set: comma-separated nats:// or tls:// URLs of an external cluster", value{
		set:  func(s *settings, v string) error { s.Broker.URL = v; return checkNATSURLs(v) },
		show: func(s *settings) string { return s.Broker.URL },
	}},
	{"REGION", "this instance's region (letters, digits, - and _), in the welcome frame, deliveries, logs and the NATS connection name", value{
		set: func(s *settings, v string) error {
			s.Broker.Region, s.Web.Region = v, v
			return broker.CheckID(v)
		},
		show: func(s *settings) string { return s.Broker.Region },
		echo: strconv.Quote,
	}},
	{"API_KEY", "server API keys, comma-separated (several for rotation), each accepted as Authorization: Bearer; unset: loopback callers only", secret(list(func(s *settings) *[]string { return &s.Web.APIKeys }, nil))},
	{"JWT_SECRET", "shared secret for HS256 connection tokens; with it (or JWKS_URL) every WebSocket needs a token", value{
		set: func(s *settings, v string) error {
			s.Web.Auth.Secret = []byte(v)
			if len(v) < 32 {
				return errors.New("want at least 32 bytes")
			}
			return nil
		},
		show: func(s *settings) string { return string(s.Web.Auth.Secret) },
	}},
	{"JWKS_URL", "https URL of a JWK Set for RS256/ES256 connection tokens", httpURL(func(s *settings) *string { return &s.Web.Auth.JWKSURL })},
	{"JWT_ISSUER", "when set, tokens' iss must equal it", text(func(s *settings) *string { return &s.Web.Auth.Issuer }, nil)},
	{"JWT_AUDIENCE", "when set, tokens' aud must include it", text(func(s *settings) *string { return &s.Web.Auth.Audience }, nil)},
	{"JWT_LEEWAY", "clock skew allowed on tokens' exp and nbf", duration(func(s *settings) *time.Duration { return &s.Web.Auth.Leeway }, 1, 0)},
	{"JWT_ALLOW_NO_EXP", "accept connection tokens without exp, valid forever (false: exp is required)", boolean(func(s *settings) *bool { return &s.Web.Auth.AllowNoExpiry })},
	{"HOOK_CONNECT_URL", "POST connect decisions to this backend URL", httpURL(func(s *settings) *string { return &s.Web.Hooks.ConnectURL })},
	{"HOOK_JOIN_URL", "POST join decisions to this backend URL", httpURL(func(s *settings) *string { return &s.Web.Hooks.JoinURL })},
	{"HOOK_SEND_URL", "POST client sends to this backend URL (it may rewrite the data)", httpURL(func(s *settings) *string { return &s.Web.Hooks.SendURL })},
	{"HOOK_RECEIVE_URL", "POST client frames of the application's own types to this backend URL; its reply goes back to the client", httpURL(func(s *settings) *string { return &s.Web.Hooks.ReceiveURL })},
	{"HOOK_DISCONNECT_URL", "POST every closed connection (user, groups, close code) to this backend URL, off the socket's path", httpURL(func(s *settings) *string { return &s.Web.Hooks.DisconnectURL })},
	{"HOOK_DISCONNECT_QUEUE", "disconnect hook calls waiting to be sent; past it they are dropped, logged and counted", integer(func(s *settings) *int { return &s.Web.Hooks.DisconnectQueue }, 1, 10_000_000)},
	{"HOOK_HEADERS", "comma-separated headers of the WebSocket upgrade request copied onto every hook call of that connection (so the backend's session login works); none: forward none", value{
		set: func(s *settings, v string) error {
			if v == "none" {
				s.Web.Hooks.Headers = nil
				return nil
			}
			s.Web.Hooks.Headers = splitList(v)
			return web.CheckHookHeaders(s.Web.Hooks.Headers)
		},
		show: func(s *settings) string { return cmp.Or(strings.Join(s.Web.Hooks.Headers, ","), "none") },
		echo: strconv.Quote,
	}},
	{"HOOK_SECRET", "sent to the hook backend as Authorization: Bearer, so it can trust the calls", secret(text(func(s *settings) *string { return &s.Web.Hooks.Secret }, nil))},
	{"HOOK_TIMEOUT", "bound on one hook call; past it the decision is refused as unavailable", duration(func(s *settings) *time.Duration { return &s.Web.Hooks.Timeout }, 1, 0)},
	{"HOOK_CONCURRENCY", "hook calls in flight at once; past it decisions are refused as unavailable at once", integer(func(s *settings) *int { return &s.Web.Hooks.MaxConcurrent }, 1, 100_000)},
	{"MAX_CONNECTIONS", "connections (WebSockets and SSE streams) this instance takes; more get 503", integer(func(s *settings) *int { return &s.Web.MaxConnections }, 1, 10_000_000)},
	{"MAX_CONNECTIONS_PER_IP", "WebSockets one client IP (as TRUSTED_PROXIES sees it) may hold open; more get 429; loopback is not limited", integer(func(s *settings) *int { return &s.Web.MaxConnectionsPerIP }, 1, 10_000_000)},
	{"FRAMES_PER_SECOND", "client frames a connection may send per second (burst twice as many); over it: rate_limited, then close 1008", integer(func(s *settings) *float64 { return &s.Web.FramesPerSecond }, 1, 1_000_000)},
	{"HANDSHAKES_PER_SECOND", "new WebSockets per client IP per second (burst twice as many); more get 429", integer(func(s *settings) *float64 { return &s.Web.HandshakesPerSecond }, 1, 1_000_000)},
	{"TRUSTED_PROXIES", "proxies in front that append to X-Forwarded-For (0: use the TCP peer; 1 on Cloud Run; 2 behind Google's external Application Load Balancer)", integer(func(s *settings) *int { return &s.Web.TrustedProxies }, 0, 10)},
	{"NODE_ID", "this instance's id in channel names and subjects (letters, digits, - and _); unset: random", text(func(s *settings) *string { return &s.Broker.Node }, broker.CheckID)},
	{"NATS_PREFIX", "first tokens of every NATS subject", text(func(s *settings) *string { return &s.Broker.Prefix }, broker.CheckPrefix)},
	{"NATS_CREDS", "NATS credentials file (user JWT and seed)", file(func(s *settings) *string { return &s.Broker.CredsFile })},
	{"NATS_NKEY", "file holding an NATS nkey seed", file(func(s *settings) *string { return &s.Broker.NKeyFile })},
	{"NATS_TOKEN", "NATS authentication token", secret(text(func(s *settings) *string { return &s.Broker.Token }, nil))},
	{"NATS_TLS_CA", "PEM file of CAs for the NATS servers' certificates", file(func(s *settings) *string { return &s.Broker.TLSCA })},
	{"NATS_TLS_CERT", "PEM client certificate for NATS (with NATS_TLS_KEY)", file(func(s *settings) *string { return &s.Broker.TLSCert })},
	{"NATS_TLS_KEY", "PEM key of NATS_TLS_CERT", file(func(s *settings) *string { return &s.Broker.TLSKey })},
	{"NATS_LISTEN", "embedded mode: also listen for NATS clients on this host:port (e.g. 127.0.0.1:4222)", hostPort(func(s *settings) *string { return &s.Broker.ListenAddr })},
	{"ALLOWED_ORIGINS", "comma-separated origin patterns of other sites' pages allowed to connect: a bare host (e.g. *.example.com) admits https pages only, scheme://host (e.g. http://localhost:*) that scheme", list(func(s *settings) *[]string { return &s.Web.AllowedOrigins }, nil)},
	{"CLIENT_SEND", "let WebSocket clients publish with send frames", boolean(func(s *settings) *bool { return &s.Web.ClientSend })},
	{"PRESENCE_GROUPS", "comma-separated group patterns (e.g. room.*,lobby) whose members are tracked for presence; unset: none", list(func(s *settings) *[]string { return &s.Broker.Presence }, broker.CheckPresence)},
	{"MAX_PRESENCE_GROUPS", "presence groups one instance tracks members in; presence in one more is refused with unavailable", integer(func(s *settings) *int { return &s.Broker.MaxPresenceGroups }, 1, 1_000_000)},
	{"GROUP_POLICIES", "how groups keep messages: comma-separated pattern=policy, policy one of at-most-once, recoverable, latest; patterns (README: Group patterns) a group name, * or a prefix ending in .* (e.g. chat.*=recoverable,price.*=latest); first match wins; a recoverable or latest pattern overlapping an earlier one of another policy is refused; unset: every group at-most-once", value{
		set:  parsePolicies,
		show: func(s *settings) string { return showPolicies(s.Broker.Policies) },
		echo: strconv.Quote,
	}},
	{"HISTORY_SIZE", "messages a recoverable group keeps, and the most a resume replays", integer(func(s *settings) *int { return &s.Broker.HistorySize }, 1, 10_000_000)},
	{"HISTORY_TTL", "how long kept messages live", duration(func(s *settings) *time.Duration { return &s.Broker.HistoryTTL }, 1, 0)},
	{"HISTORY_STORE", "where history is kept: memory, or file (in JETSTREAM_DIR with the embedded server)", value{
		set: func(s *settings, v string) error {
			if v != "memory" && v != "file" {
				return errors.New("want memory or file")
			}
			s.Broker.FileStore = v == "file"
			return nil
		},
		show: func(s *settings) string { return map[bool]string{false: "memory", true: "file"}[s.Broker.FileStore] },
		echo: strconv.Quote,
	}},
	{"JETSTREAM_DIR", "the embedded server's JetStream directory; required with HISTORY_STORE=file and NATS_URL unset", text(func(s *settings) *string { return &s.Broker.StoreDir }, nil)},
	{"IDEMPOTENCY_WINDOW", "how long an Idempotency-Key is remembered", duration(func(s *settings) *time.Duration { return &s.Broker.DedupWindow }, 1, 0)},
	{"HISTORY_REPLICAS", "copies of the history streams in an external cluster (3 in a three-server region)", integer(func(s *settings) *int { return &s.Broker.Replicas }, 1, 5)},
	{"HISTORY_REGION", "in a supercluster, the NATS cluster (region) holding the history streams; the other regions keep and read mirrors of them", text(func(s *settings) *string { return &s.Broker.HistoryRegion }, nil)},
	{"MAX_REPLAYS", "history reads (resumes' replays, history API calls) one instance runs at once; more wait up to 1s, then are refused with unavailable", integer(func(s *settings) *int { return &s.Broker.MaxReplays }, 1, 1024)},
	{"MAX_FRAME_BYTES", "largest client frame; larger closes the socket with 1009", integer(func(s *settings) *int64 { return &s.Web.MaxFrameBytes }, 256, 64<<20)},
	{"MAX_BODY_BYTES", "largest server API body; larger gets 413", integer(func(s *settings) *int64 { return &s.Web.MaxBodyBytes }, 256, 64<<20)},
	{"HTTP_READ_TIMEOUT", "bound on a plain HTTP request (not a WebSocket) after its headers: a body not sent by then fails and the connection closes", duration(func(s *settings) *time.Duration { return &s.Web.ReadTimeout }, 1, 0)},
	{"HTTP_IDLE_TIMEOUT", "how long an idle keep-alive HTTP connection stays open", duration(func(s *settings) *time.Duration { return &s.HTTPIdleTimeout }, 1, 0)},
	{"MAX_GROUPS_PER_CONNECTION", "groups one connection may be in", integer(func(s *settings) *int { return &s.Web.MaxGroups }, 1, 1<<20)},
	{"OUTBOX_FRAMES", "frames queued for one connection before it is closed as a slow consumer (4008)", integer(func(s *settings) *int { return &s.Web.OutboxFrames }, 1, 1<<24)},
	{"OUTBOX_BYTES", "bytes queued for one connection before it is closed as a slow consumer (4008)", integer(func(s *settings) *int { return &s.Web.OutboxBytes }, 1024, 1<<30)},
	{"WRITE_TIMEOUT", "bound on one WebSocket write or ping", duration(func(s *settings) *time.Duration { return &s.Web.WriteTimeout }, 1, 0)},
	{"WRITE_DELAY", "how long a connection's messages are held so that more go out in one write (fewer system calls, for that much latency); 0: written at once, merged only when they queue up", duration(func(s *settings) *time.Duration { return &s.Web.WriteDelay }, 0, time.Second)},
	{"PING_INTERVAL", "how often idle WebSockets are pinged", duration(func(s *settings) *time.Duration { return &s.Web.PingInterval }, 1, 0)},
	{"MAX_CONNECTION_AGE", "WebSockets are closed with 1012 after this long (less up to a tenth, at random), before Cloud Run's request timeout cuts them", duration(func(s *settings) *time.Duration { return &s.Web.MaxConnectionAge }, 1, 0)},
	{"NATS_LOSS_GRACE", "how long NATS may be unavailable before every WebSocket is closed with 1012 (and new ones refused with 503) so clients reconnect where messages flow", duration(func(s *settings) *time.Duration { return &s.Web.NATSLossGrace }, 1, 0)},
	{"GOOGLE_CLOUD_PROJECT", "project id for Cloud Logging trace fields (logging.googleapis.com/trace)", text(func(s *settings) *string { return &s.Web.TraceProject }, nil)},
	{"SHUTDOWN_TIMEOUT", "bound on the graceful shutdown after SIGTERM", duration(func(s *settings) *time.Duration { return &s.ShutdownTimeout }, 1, 0)},
	{"DRAIN_PERIOD", "on SIGTERM, WebSockets are closed (1012) spread over this long, within SHUTDOWN_TIMEOUT less 2s, and told to spread their reconnects over as long again; 0: all at once", duration(func(s *settings) *time.Duration { return &s.Web.DrainPeriod }, 0, time.Minute)},
	{"PPROF_ADDR", "serve Go's profiler (net/http/pprof) on this separate host:port, e.g. 127.0.0.1:6060; off when unset", hostPort(func(s *settings) *string { return &s.PprofAddr })},
	{"LOG_LEVEL", "debug, info, warn or error", value{
		set: func(s *settings, v string) error {
			if err := s.LogLevel.UnmarshalText([]byte(v)); err != nil {
				return errors.New("want debug, info, warn or error")
			}
			return nil
		},
		show: func(s *settings) string { return strings.ToLower(s.LogLevel.String()) },
		echo: strconv.Quote,
	}},
	{"LOG_FORMAT", "json (Cloud Logging), text, or auto: text on a terminal, json otherwise", value{
		set: func(s *settings, v string) error {
			if v != "auto" && v != "json" && v != "text" {
				return errors.New("want auto, json or text")
			}
			s.LogFormat = v
			return nil
		},
		show: func(s *settings) string { return s.LogFormat },
		echo: strconv.Quote,
	}},
}

// loadSettings reads every setting over the defaults. The error is one
// line that names the variable and never shows a secret.
func loadSettings(getenv func(string) string) (*settings, error) {
	s := newSettings()
	for _, st := range settingsTable {
		v := strings.TrimSpace(getenv(st.name))
		if v == "" {
			continue
		}
		if err := st.set(s, v); err != nil {
			if st.echo == nil {
				return nil, fmt.Errorf("%s: %v", st.name, err)
			}
			return nil, fmt.Errorf("%s=%s: %v", st.name, st.echo(v), err)
		}
	}
	if s.Broker.HistoryRegion != "" && s.Broker.URL == "" {
		return nil, errors.New("HISTORY_REGION: needs NATS_URL (a supercluster); the embedded server is one region")
	}
	if (s.Broker.TLSCert == "") != (s.Broker.TLSKey == "") {
		return nil, errors.New("NATS_TLS_CERT and NATS_TLS_KEY must be set together")
	}
	return s, nil
}

// parsePolicies reads GROUP_POLICIES: pattern=policy, comma-separated.
func parsePolicies(s *settings, v string) error {
	for _, item := range splitList(v) {
		pattern, name, ok := strings.Cut(item, "=")
		policy, known := broker.ParsePolicy(strings.TrimSpace(name))
		if !ok || !known {
			return fmt.Errorf("%q: want pattern=at-most-once|recoverable|latest", item)
		}
		s.Broker.Policies = append(s.Broker.Policies, broker.PolicyRule{Pattern: strings.TrimSpace(pattern), Policy: policy})
	}
	return broker.CheckPolicies(s.Broker.Policies)
}

func showPolicies(rules []broker.PolicyRule) string {
	items := make([]string, len(rules))
	for i, r := range rules {
		items[i] = r.Pattern + "=" + r.Policy.String()
	}
	return strings.Join(items, ",")
}

// secret keeps v's value out of error lines.
func secret(v value) value {
	v.echo = nil
	return v
}

func integer[T int | int64 | float64](field func(*settings) *T, lo, hi int) value {
	return value{
		set: func(s *settings, v string) error {
			n, err := parseInt(v, lo, hi)
			*field(s) = T(n)
			return err
		},
		show: func(s *settings) string { return fmt.Sprint(*field(s)) },
		echo: strconv.Quote,
	}
}

func parseInt(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("want a whole number from %d to %d", lo, hi)
	}
	return n, nil
}

// duration reads a duration from lo up to hi (0: no bound).
func duration(field func(*settings) *time.Duration, lo, hi time.Duration) value {
	want := "want a positive duration such as 10s or 500ms"
	if lo <= 0 {
		want = fmt.Sprintf("want a duration from 0 to %s, such as 20ms", showDuration(hi))
	}
	return value{
		set: func(s *settings, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < lo || hi > 0 && d > hi {
				return errors.New(want)
			}
			*field(s) = d
			return nil
		},
		show: func(s *settings) string { return showDuration(*field(s)) },
		echo: strconv.Quote,
	}
}

// showDuration writes d as settings are written: 1h, 2m, 30s, 250ms.
func showDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func boolean(field func(*settings) *bool) value {
	return value{
		set: func(s *settings, v string) (err error) {
			if *field(s), err = strconv.ParseBool(v); err != nil {
				return errors.New("want true or false")
			}
			return nil
		},
		show: func(s *settings) string { return strconv.FormatBool(*field(s)) },
		echo: strconv.Quote,
	}
}

// text reads a string that check, when set, accepts.
func text(field func(*settings) *string, check func(string) error) value {
	return value{
		set: func(s *settings, v string) error {
			*field(s) = v
			if check == nil {
				return nil
			}
			return check(v)
		},
		show: func(s *settings) string { return *field(s) },
		echo: strconv.Quote,
	}
}

// list reads a comma-separated list that check, when set, accepts.
func list(field func(*settings) *[]string, check func([]string) error) value {
	return value{
		set: func(s *settings, v string) error {
			*field(s) = splitList(v)
			if check == nil {
				return nil
			}
			return check(*field(s))
		},
		show: func(s *settings) string { return strings.Join(*field(s), ",") },
		echo: strconv.Quote,
	}
}

// httpURL reads an http(s) URL; an error shows it without its password.
func httpURL(field func(*settings) *string) value {
	v := text(field, func(v string) error {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return errors.New("want an http(s) URL")
		}
		return nil
	})
	v.echo = func(v string) string {
		u, err := url.Parse(v)
		if err != nil {
			return "(not a URL)"
		}
		return strconv.Quote(redact(u))
	}
	return v
}

func hostPort(field func(*settings) *string) value {
	return text(field, func(v string) error {
		i := strings.LastIndexByte(v, ':')
		if i < 0 {
			return errors.New("want host:port")
		}
		_, err := parseInt(v[i+1:], 0, 65535)
		return err
	})
}

// file reads the name of a file that can be read now.
func file(field func(*settings) *string) value {
	return text(field, func(v string) error {
		f, err := os.Open(v)
		if err != nil {
			return fmt.Errorf("cannot read: %v", errors.Unwrap(err))
		}
		return f.Close()
	})
}

func checkNATSURLs(v string) error {
	for _, raw := range strings.Split(v, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			return errors.New("not a URL list")
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("URL %q: want scheme nats://, tls://, ws:// or wss://", redact(u))
		}
		if u.Hostname() == "" {
			return fmt.Errorf("URL %q: no host", redact(u))
		}
		if p := u.Port(); p != "" {
			if _, err := parseInt(p, 1, 65535); err != nil {
				return fmt.Errorf("URL %q: bad port", redact(u))
			}
		}
	}
	return nil
}

// redact shows u without its user information or query, where
// credentials travel.
func redact(u *url.URL) string {
	r := *u
	if r.User != nil {
		r.User = url.User("REDACTED")
	}
	if r.RawQuery != "" {
		r.RawQuery = "REDACTED"
	}
	return r.String()
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
