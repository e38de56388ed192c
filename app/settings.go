package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/groupcast/groupcast/broker"
)

// settings are the process's configuration, read from the environment.
type settings struct {
	Port            int
	NATSURL         string
	Region          string
	APIKeys         []string
	JWTSecret       string
	JWKSURL         string
	JWTIssuer       string
	JWTAudience     string
	JWTLeeway       time.Duration
	MaxConnections  int
	FramesPerSecond int
	HandshakesPerIP int
	TrustedProxies  int
	HookConnectURL  string
	HookJoinURL     string
	HookSendURL     string
	HookSecret      string
	HookTimeout     time.Duration
	HookConcurrency int
	NodeID          string
	NATSPrefix      string
	NATSCreds       string
	NATSNKey        string
	NATSToken       string
	NATSTLSCA       string
	NATSTLSCert     string
	NATSTLSKey      string
	NATSListen      string
	AllowedOrigins  []string
	ClientSend      bool
	Policies        []broker.PolicyRule
	HistorySize     int
	HistoryTTL      time.Duration
	FileStore       bool
	JetStreamDir    string
	DedupWindow     time.Duration
	Replicas        int
	HistoryRegion   string
	MaxReplays      int
	MaxPresence     int
	PresenceGroups  []string
	MaxFrameBytes   int
	MaxBodyBytes    int
	MaxGroups       int
	OutboxFrames    int
	OutboxBytes     int
	WriteTimeout    time.Duration
	WriteDelay      time.Duration
	PingInterval    time.Duration
	ShutdownTimeout time.Duration
	MaxConnAge      time.Duration
	NATSLossGrace   time.Duration
	PprofAddr       string
	TraceProject    string
	LogLevel        slog.Level
	LogFormat       string
}

// setting documents one environment variable; the README's table says the same.
type setting struct {
	name, def, doc string
	parse          func(s *settings, v string) error
}

// settingsTable lists every variable, its default and how it is read.
var settingsTable = []setting{
	{"PORT", "8080", "the one port for HTTP and WebSocket", func(s *settings, v string) (err error) {
		s.Port, err = parseInt(v, 0, 65535)
		return err
	}},
	{"NATS_URL", "", "unset: embedded NATS server; set: comma-separated nats:// or tls:// URLs of an external cluster", func(s *settings, v string) error {
		s.NATSURL = v
		return checkNATSURLs(v)
	}},
	{"REGION", "", "this instance's region (letters, digits, - and _), in the welcome frame, deliveries, logs and the NATS connection name", func(s *settings, v string) error {
		s.Region = v
		if v != "" && !isToken(v) {
			return errors.New("want 1-64 letters, digits, '-' or '_'")
		}
		return nil
	}},
	{"API_KEY", "", "server API keys, comma-separated (several for rotation), each accepted as Authorization: Bearer; unset: loopback callers only", func(s *settings, v string) error { s.APIKeys = splitList(v); return nil }},
	{"JWT_SECRET", "", "shared secret for HS256 connection tokens; with it (or JWKS_URL) every WebSocket needs a token", func(s *settings, v string) error {
		s.JWTSecret = v
		if v != "" && len(v) < 32 {
			return errors.New("want at least 32 bytes")
		}
		return nil
	}},
	{"JWKS_URL", "", "https URL of a JWK Set for RS256/ES256 connection tokens", urlSetting(func(s *settings) *string { return &s.JWKSURL })},
	{"JWT_ISSUER", "", "when set, tokens' iss must equal it", func(s *settings, v string) error { s.JWTIssuer = v; return nil }},
	{"JWT_AUDIENCE", "", "when set, tokens' aud must include it", func(s *settings, v string) error { s.JWTAudience = v; return nil }},
	{"JWT_LEEWAY", "30s", "clock skew allowed on tokens' exp and nbf", durationSetting(func(s *settings) *time.Duration { return &s.JWTLeeway })},
	{"HOOK_CONNECT_URL", "", "POST connect decisions to this backend URL", urlSetting(func(s *settings) *string { return &s.HookConnectURL })},
	{"HOOK_JOIN_URL", "", "POST join decisions to this backend URL", urlSetting(func(s *settings) *string { return &s.HookJoinURL })},
	{"HOOK_SEND_URL", "", "POST client sends to this backend URL (it may rewrite the data)", urlSetting(func(s *settings) *string { return &s.HookSendURL })},
	{"HOOK_SECRET", "", "sent to the hook backend as Authorization: Bearer, so it can trust the calls", func(s *settings, v string) error { s.HookSecret = v; return nil }},
	{"HOOK_TIMEOUT", "2s", "bound on one hook call; past it the decision is refused as unavailable", durationSetting(func(s *settings) *time.Duration { return &s.HookTimeout })},
	{"HOOK_CONCURRENCY", "64", "hook calls in flight at once; past it decisions are refused as unavailable at once", intSetting(func(s *settings) *int { return &s.HookConcurrency }, 1, 100_000)},
	{"MAX_CONNECTIONS", "10000", "WebSockets this instance takes; more get 503", intSetting(func(s *settings) *int { return &s.MaxConnections }, 1, 10_000_000)},
	{"FRAMES_PER_SECOND", "20", "client frames a connection may send per second (burst twice as many); over it: rate_limited, then close 1008", intSetting(func(s *settings) *int { return &s.FramesPerSecond }, 1, 1_000_000)},
	{"HANDSHAKES_PER_SECOND", "10", "new WebSockets per client IP per second (burst twice as many); more get 429", intSetting(func(s *settings) *int { return &s.HandshakesPerIP }, 1, 1_000_000)},
	{"TRUSTED_PROXIES", "0", "proxies in front that append to X-Forwarded-For (0: use the TCP peer; 1 on Cloud Run; 2 behind Google's external Application Load Balancer)", intSetting(func(s *settings) *int { return &s.TrustedProxies }, 0, 10)},
	{"NODE_ID", "random", "this instance's id in channel names and subjects (letters, digits, - and _)", func(s *settings, v string) error {
		s.NodeID = v
		if v != "" && !isToken(v) {
			return errors.New("want 1-64 letters, digits, '-' or '_'")
		}
		return nil
	}},
	{"NATS_PREFIX", "groupcast", "first tokens of every NATS subject", func(s *settings, v string) error { s.NATSPrefix = v; return nil }},
	{"NATS_CREDS", "", "NATS credentials file (user JWT and seed)", readableFile(func(s *settings) *string { return &s.NATSCreds })},
	{"NATS_NKEY", "", "file holding an NATS nkey seed", readableFile(func(s *settings) *string { return &s.NATSNKey })},
	{"NATS_TOKEN", "", "NATS authentication token", func(s *settings, v string) error { s.NATSToken = v; return nil }},
	{"NATS_TLS_CA", "", "PEM file of CAs for the NATS servers' certificates", readableFile(func(s *settings) *string { return &s.NATSTLSCA })},
	{"NATS_TLS_CERT", "", "PEM client certificate for NATS (with NATS_TLS_KEY)", readableFile(func(s *settings) *string { return &s.NATSTLSCert })},
	{"NATS_TLS_KEY", "", "PEM key of NATS_TLS_CERT", readableFile(func(s *settings) *string { return &s.NATSTLSKey })},
	{"NATS_LISTEN", "", "embedded mode: also listen for NATS clients on this host:port (e.g. 127.0.0.1:4222)", hostPortSetting(func(s *settings) *string { return &s.NATSListen })},
	{"ALLOWED_ORIGINS", "", "comma-separated host patterns (e.g. *.example.com) of other sites' pages allowed to connect", func(s *settings, v string) error {
		s.AllowedOrigins = splitList(v)
		return nil
	}},
	{"CLIENT_SEND", "true", "let WebSocket clients publish with send frames", func(s *settings, v string) (err error) {
		s.ClientSend, err = strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		return nil
	}},
	{"PRESENCE_GROUPS", "", "comma-separated group names or prefixes ending in * (e.g. room.*,lobby) whose members are tracked for presence; unset: none", func(s *settings, v string) error {
		s.PresenceGroups = splitList(v)
		for _, p := range s.PresenceGroups {
			if !broker.ValidPresencePattern(p) {
				return fmt.Errorf("pattern %q: want a group name or a prefix ending in '*'", p)
			}
		}
		return nil
	}},
	{"GROUP_POLICIES", "", "how groups keep messages: comma-separated pattern=policy, policy one of at-most-once, recoverable, latest; patterns a group name, * or a prefix ending in .* (e.g. chat.*=recoverable,price.*=latest); first match wins; unset: every group at-most-once", func(s *settings, v string) error {
		for _, item := range splitList(v) {
			pattern, name, ok := strings.Cut(item, "=")
			policy, known := broker.ParsePolicy(strings.TrimSpace(name))
			pattern = strings.TrimSpace(pattern)
			if !ok || !known {
				return fmt.Errorf("%q: want pattern=at-most-once|recoverable|latest", item)
			}
			if !broker.ValidPolicyPattern(pattern) {
				return fmt.Errorf("pattern %q: want a group name, * or a prefix ending in .*", pattern)
			}
			s.Policies = append(s.Policies, broker.PolicyRule{Pattern: pattern, Policy: policy})
		}
		return nil
	}},
	{"HISTORY_SIZE", "1000", "messages a recoverable group keeps, and the most a resume replays", intSetting(func(s *settings) *int { return &s.HistorySize }, 1, 10_000_000)},
	{"HISTORY_TTL", "1h", "how long kept messages live", durationSetting(func(s *settings) *time.Duration { return &s.HistoryTTL })},
	{"HISTORY_STORE", "memory", "where history is kept: memory, or file (in JETSTREAM_DIR with the embedded server)", func(s *settings, v string) error {
		switch v {
		case "memory", "file":
			s.FileStore = v == "file"
			return nil
		}
		return errors.New("want memory or file")
	}},
	{"JETSTREAM_DIR", "", "the embedded server's JetStream directory; required with HISTORY_STORE=file and NATS_URL unset", func(s *settings, v string) error { s.JetStreamDir = v; return nil }},
	{"IDEMPOTENCY_WINDOW", "2m", "how long an Idempotency-Key is remembered", durationSetting(func(s *settings) *time.Duration { return &s.DedupWindow })},
	{"HISTORY_REPLICAS", "1", "copies of the history streams in an external cluster (3 in a three-server region)", intSetting(func(s *settings) *int { return &s.Replicas }, 1, 5)},
	{"HISTORY_REGION", "", "in a supercluster, the NATS cluster (region) holding the history streams; the other regions keep and read mirrors of them", func(s *settings, v string) error { s.HistoryRegion = v; return nil }},
	{"MAX_REPLAYS", "8", "history reads (resumes' replays, history API calls) one instance runs at once; more wait up to 1s, then are refused with unavailable", intSetting(func(s *settings) *int { return &s.MaxReplays }, 1, 1024)},
	{"MAX_PRESENCE_GROUPS", "10000", "presence groups one instance tracks members in; presence in one more is refused with unavailable", intSetting(func(s *settings) *int { return &s.MaxPresence }, 1, 1_000_000)},
	{"MAX_FRAME_BYTES", "65536", "largest client frame; larger closes the socket with 1009", intSetting(func(s *settings) *int { return &s.MaxFrameBytes }, 256, 64<<20)},
	{"MAX_BODY_BYTES", "1048576", "largest server API body; larger gets 413", intSetting(func(s *settings) *int { return &s.MaxBodyBytes }, 256, 64<<20)},
	{"MAX_GROUPS_PER_CONNECTION", "100", "groups one connection may be in", intSetting(func(s *settings) *int { return &s.MaxGroups }, 1, 1<<20)},
	{"OUTBOX_FRAMES", "1024", "frames queued for one connection before it is closed as a slow consumer (4008)", intSetting(func(s *settings) *int { return &s.OutboxFrames }, 1, 1<<24)},
	{"OUTBOX_BYTES", "1048576", "bytes queued for one connection before it is closed as a slow consumer (4008)", intSetting(func(s *settings) *int { return &s.OutboxBytes }, 1024, 1<<30)},
	{"WRITE_TIMEOUT", "10s", "bound on one WebSocket write or ping", durationSetting(func(s *settings) *time.Duration { return &s.WriteTimeout })},
	{"WRITE_DELAY", "0s", "how long a connection's messages are held so that more go out in one write (fewer system calls under heavy fan-out, for that much latency); 0: written at once", func(s *settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > time.Second {
			return errors.New("want a duration from 0 to 1s, such as 20ms")
		}
		s.WriteDelay = d
		return nil
	}},
	{"PING_INTERVAL", "25s", "how often idle WebSockets are pinged", durationSetting(func(s *settings) *time.Duration { return &s.PingInterval })},
	{"MAX_CONNECTION_AGE", "55m", "WebSockets are closed with 1012 after this long (less up to a tenth, at random), before Cloud Run's request timeout cuts them", durationSetting(func(s *settings) *time.Duration { return &s.MaxConnAge })},
	{"NATS_LOSS_GRACE", "5s", "how long NATS may be unavailable before every WebSocket is closed with 1012 (and new ones refused with 503) so clients reconnect where messages flow", durationSetting(func(s *settings) *time.Duration { return &s.NATSLossGrace })},
	{"GOOGLE_CLOUD_PROJECT", "", "project id for Cloud Logging trace fields (logging.googleapis.com/trace)", func(s *settings, v string) error { s.TraceProject = v; return nil }},
	{"SHUTDOWN_TIMEOUT", "8s", "bound on the graceful shutdown after SIGTERM", durationSetting(func(s *settings) *time.Duration { return &s.ShutdownTimeout })},
	{"PPROF_ADDR", "", "serve Go's profiler (net/http/pprof) on this separate host:port, e.g. 127.0.0.1:6060; off when unset", hostPortSetting(func(s *settings) *string { return &s.PprofAddr })},
	{"LOG_LEVEL", "info", "debug, info, warn or error", func(s *settings, v string) error {
		if err := s.LogLevel.UnmarshalText([]byte(v)); err != nil {
			return errors.New("want debug, info, warn or error")
		}
		return nil
	}},
	{"LOG_FORMAT", "auto", "json (Cloud Logging), text, or auto: text on a terminal, json otherwise", func(s *settings, v string) error {
		switch v {
		case "auto", "json", "text":
			s.LogFormat = v
			return nil
		}
		return errors.New("want auto, json or text")
	}},
}

// loadSettings reads every setting. The error names the variable.
func loadSettings(getenv func(string) string) (*settings, error) {
	s := &settings{}
	for _, st := range settingsTable {
		v := strings.TrimSpace(getenv(st.name))
		if v == "" && st.def != "random" {
			v = st.def
		}
		if err := st.parse(s, v); err != nil {
			if st.name == "NATS_URL" { // may hold credentials: the error shows it redacted
				return nil, fmt.Errorf("%s: %v", st.name, err)
			}
			return nil, fmt.Errorf("%s=%q: %v", st.name, v, err)
		}
	}
	if s.FileStore && s.NATSURL == "" && s.JetStreamDir == "" {
		return nil, errors.New("JETSTREAM_DIR: required with HISTORY_STORE=file and the embedded server")
	}
	if s.HistoryRegion != "" && s.NATSURL == "" {
		return nil, errors.New("HISTORY_REGION: needs NATS_URL (a supercluster); the embedded server is one region")
	}
	if (s.NATSTLSCert == "") != (s.NATSTLSKey == "") {
		return nil, errors.New("NATS_TLS_CERT and NATS_TLS_KEY must be set together")
	}
	return s, nil
}

func parseInt(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("want a whole number from %d to %d", lo, hi)
	}
	return n, nil
}

func intSetting(field func(*settings) *int, lo, hi int) func(*settings, string) error {
	return func(s *settings, v string) (err error) {
		*field(s), err = parseInt(v, lo, hi)
		return err
	}
}

func durationSetting(field func(*settings) *time.Duration) func(*settings, string) error {
	return func(s *settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 10s or 500ms")
		}
		*field(s) = d
		return nil
	}
}

func urlSetting(field func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		*field(s) = v
		if v == "" {
			return nil
		}
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return errors.New("want an http(s) URL")
		}
		return nil
	}
}

func hostPortSetting(field func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		*field(s) = v
		if v == "" {
			return nil
		}
		i := strings.LastIndexByte(v, ':')
		if i < 0 {
			return errors.New("want host:port")
		}
		_, err := parseInt(v[i+1:], 0, 65535)
		return err
	}
}

func readableFile(field func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		*field(s) = v
		if v == "" {
			return nil
		}
		f, err := os.Open(v)
		if err != nil {
			return fmt.Errorf("cannot read: %v", errors.Unwrap(err))
		}
		return f.Close()
	}
}

func checkNATSURLs(v string) error {
	if v == "" {
		return nil
	}
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

func redact(u *url.URL) string {
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	return u.String()
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

func isToken(v string) bool {
	if len(v) == 0 || len(v) > 64 {
		return false
	}
	for _, c := range []byte(v) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
