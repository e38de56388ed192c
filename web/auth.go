package web

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/groupcast/groupcast/broker"
)

// AuthConfig configures connection tokens (JWTs). With neither Secret nor
// JWKSURL set, connections are anonymous and may join any group.
type AuthConfig struct {
	// Secret verifies HS256 tokens.
	Secret []byte
	// JWKSURL is where RS256 and ES256 keys are fetched from. The set is
	// cached, refreshed hourly, and refetched (at most every 10 s) when a
	// token names a key id it does not hold. When it cannot be fetched at
	// start, it is retried in the background (1 s, doubling to 30 s):
	// until it loads /readyz answers 503 and tokens it would verify are
	// refused "unavailable" (503), not "unauthorized".
	JWKSURL string
	// Issuer and Audience, when set, must match the iss and aud claims.
	Issuer, Audience string
	// Leeway is the clock skew allowed on exp and nbf. Default 30s.
	Leeway time.Duration
	// AllowNoExpiry accepts tokens without an exp claim, good forever.
	// Default false: a token must say when it expires.
	AllowNoExpiry bool
}

// Enabled reports whether tokens are required.
func (c AuthConfig) Enabled() bool { return len(c.Secret) > 0 || c.JWKSURL != "" }

// Claims are what a groupcast token says, beside the registered claims
// (sub, exp, nbf, iss, aud). Permissions are group patterns (see
// broker.ValidPattern): "room.*" covers "room.lobby"; "*" every group.
type Claims struct {
	jwt.RegisteredClaims
	// Join lists the groups the connection may join.
	Join []string `json:"join,omitempty"`
	// Send lists the groups the connection may send to.
	Send []string `json:"send,omitempty"`
	// Group makes a per-group token: it lets the connection of user sub
	// join this one group (given in the join frame's "token").
	Group string `json:"group,omitempty"`
	// Info is what presence shows of the connection (one JSON value of at
	// most 1 KiB, say a display name).
	Info json.RawMessage `json:"info,omitempty"`
}

// identity is who a connection is and what it may do.
type identity struct {
	user    string
	join    []string
	send    []string
	info    json.RawMessage
	expires time.Time // zero: never
}

// Errors of token verification, all refused as "unauthorized".
var (
	errNoToken      = refuse(CodeUnauthorized, "a token is required: ?token= or Authorization: Bearer")
	errTokenInvalid = refuse(CodeUnauthorized, "the token is invalid or expired")
)

// authenticator verifies tokens.
type authenticator struct {
	cfg    AuthConfig
	parser *jwt.Parser
	log    *slog.Logger
	jwks   atomic.Pointer[keyfunc.Keyfunc] // nil until the JWK Set has loaded
	stop   context.CancelFunc
	done   chan struct{} // closed when the JWKS loader has returned

	stopKeys context.CancelFunc // ends keyfunc's refresh goroutine; set before jwks
}

// errKeysMissing refuses a token signed for the JWKS while the set has not
// loaded yet: the token may be good, so the client is told to retry rather
// than that its token is bad.
var errKeysMissing = refuse(CodeUnavailable, "the token keys (JWKS) are not loaded yet; retry later")

// JWKS retry bounds: the first retry after jwksRetryMin, doubling to
// jwksRetryMax, until the set loads.
const (
	jwksRetryMin = time.Second
	jwksRetryMax = 30 * time.Second
)

// newAuthenticator returns nil when cfg does not enable tokens. With a
// JWKS URL it fetches the set once; when that fails it goes on trying in
// the background (tokens of the set are refused "unavailable" meanwhile).
// Either way keyfunc's refresh goroutine runs once the set has loaded;
// close stops both.
func newAuthenticator(cfg AuthConfig, log *slog.Logger) (*authenticator, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	cfg.Leeway = cmp.Or(max(cfg.Leeway, 0), DefaultConfig().Auth.Leeway)
	var methods []string
	if len(cfg.Secret) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSURL != "" {
		if u, err := url.Parse(cfg.JWKSURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, errors.New("JWKS URL: want an http(s) URL")
		}
		methods = append(methods, jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg())
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(cfg.Leeway), jwt.WithIssuedAt()}
	if !cfg.AllowNoExpiry {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &authenticator{cfg: cfg, parser: jwt.NewParser(opts...), log: log, stop: cancel, done: make(chan struct{})}
	if cfg.JWKSURL == "" || a.loadJWKS(ctx) == nil {
		close(a.done)
		return a, nil
	}
	go a.retryJWKS(ctx)
	return a, nil
}

// loadJWKS fetches the JWK Set once and, when that works, keeps it (with
// keyfunc's refresh goroutine, stopped by ctx).
func (a *authenticator) loadJWKS(ctx context.Context) error {
	kctx, cancel := context.WithCancel(ctx)
	noWait := false
	jwks, err := keyfunc.NewDefaultOverrideCtx(kctx, []string{a.cfg.JWKSURL}, keyfunc.Override{
		HTTPTimeout: 5 * time.Second,
		// Past the limit an unknown kid fails at once (the limiter does
		// not wait when the next token is further away than this); a
		// bound of a millisecond could run out under load before the
		// limiter is even asked, refusing a key that has just rotated.
		RateLimitWaitMax:          100 * time.Millisecond,
		RefreshUnknownKID:         rate.NewLimiter(rate.Every(10*time.Second), 1),
		NoErrorReturnFirstHTTPReq: &noWait,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) { a.log.Warn("JWKS refresh failed", "url", u, "error", err) }
		},
	})
	if err != nil {
		cancel()
		a.log.Warn("JWKS cannot be fetched; tokens it signs are refused as unavailable until it loads",
			"url", a.cfg.JWKSURL, "error", err)
		return err
	}
	a.stopKeys = cancel
	a.jwks.Store(&jwks)
	return nil
}

// retryJWKS tries to load the JWK Set, backing off, until it loads or ctx
// ends.
func (a *authenticator) retryJWKS(ctx context.Context) {
	defer close(a.done)
	wait := jwksRetryMin
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if a.loadJWKS(ctx) == nil {
			a.log.Info("JWKS loaded", "url", a.cfg.JWKSURL)
			return
		}
		wait = min(2*wait, jwksRetryMax)
	}
}

// ready reports why tokens cannot all be verified yet: the JWK Set has
// not loaded.
func (a *authenticator) ready() error {
	if a == nil || a.cfg.JWKSURL == "" || a.jwks.Load() != nil {
		return nil
	}
	return errors.New("the token keys (JWKS) are not loaded yet")
}

func (a *authenticator) close() {
	if a != nil {
		a.stop()
		<-a.done
		if a.stopKeys != nil {
			a.stopKeys()
		}
	}
}

// key picks the verification key by algorithm, so that an HS256 token is
// only ever checked against the shared secret and an RS256/ES256 token
// only against the JWKS: no key of one kind is used as the other.
func (a *authenticator) key(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(a.cfg.Secret) == 0 {
			return nil, errors.New("HS256 not accepted")
		}
		return a.cfg.Secret, nil
	case *jwt.SigningMethodRSA, *jwt.SigningMethodECDSA:
		if a.cfg.JWKSURL == "" {
			return nil, errors.New("no JWKS configured")
		}
		jwks := a.jwks.Load()
		if jwks == nil {
			return nil, errKeysMissing
		}
		return (*jwks).Keyfunc(t)
	}
	return nil, errors.New("unsupported algorithm")
}

func (a *authenticator) parse(token string) (*Claims, error) {
	if len(token) > maxTokenBytes {
		return nil, errTokenInvalid
	}
	var c Claims
	if _, err := a.parser.ParseWithClaims(token, &c, a.key); err != nil {
		if errors.Is(err, errKeysMissing) {
			return nil, errKeysMissing
		}
		return nil, fmt.Errorf("%w: %v", errTokenInvalid, err)
	}
	return &c, nil
}

// maxTokenBytes bounds a token; longer ones are refused unread.
const maxTokenBytes = 8 << 10

// connection verifies a connection token and returns its identity.
func (a *authenticator) connection(token string) (*identity, error) {
	if token == "" {
		return nil, errNoToken
	}
	c, err := a.parse(token)
	if err != nil {
		return nil, err
	}
	if c.Group != "" {
		return nil, fmt.Errorf("%w: a per-group token cannot open a connection", errTokenInvalid)
	}
	for _, p := range append(c.Join, c.Send...) {
		if !broker.ValidPattern(p) {
			return nil, fmt.Errorf("%w: bad group pattern %q", errTokenInvalid, p)
		}
	}
	id := &identity{user: c.Subject, join: c.Join, send: c.Send, info: c.Info}
	if c.ExpiresAt != nil {
		id.expires = c.ExpiresAt.Time.Add(a.cfg.Leeway)
	}
	return id, nil
}

// groupToken verifies a per-group token for user's join of group.
func (a *authenticator) groupToken(token, user, group string) error {
	c, err := a.parse(token)
	if err != nil {
		return err
	}
	if c.Group != group || c.Subject != user {
		return refuse(CodeForbidden, "the token is for another group or user")
	}
	return nil
}

// requestToken is the token of an upgrade request: ?token= or a Bearer
// Authorization header.
func requestToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return h[7:]
	}
	return ""
}

// connectBound is what a refresh must stay within: the permissions
// Connect decided when they differ from the token's, else nil.
func connectBound(token Permissions, decided *Permissions) *Permissions {
	if decided == nil || slices.Equal(token.Join, decided.Join) && slices.Equal(token.Send, decided.Send) {
		return nil
	}
	return &Permissions{Join: slices.Clone(decided.Join), Send: slices.Clone(decided.Send)}
}

// intersect returns the patterns that allow exactly the groups both a and
// b allow. Of two patterns that overlap, one covers the other (a group
// matching both has both prefixes), and the narrower one is kept.
func intersect(a, b []string) []string {
	var out []string
	for _, p := range a {
		for _, q := range b {
			var keep string
			switch {
			case broker.MatchPattern(q, p):
				keep = p
			case broker.MatchPattern(p, q):
				keep = q
			default:
				continue
			}
			if !slices.Contains(out, keep) {
				out = append(out, keep)
			}
		}
	}
	return out
}
