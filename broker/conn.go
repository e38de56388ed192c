package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// connect returns a NATS connection: to the external cluster in cfg.URL, or,
// when it is empty, to an embedded server started here (returned too, so
// that Close can stop it).
func connect(cfg *Config, handlers []nats.Option) (*nats.Conn, *server.Server, error) {
	var ns *server.Server
	if cfg.URL == "" {
		var err error
		if ns, err = startEmbedded(cfg); err != nil {
			return nil, nil, err
		}
	}
	nc, err := dial(cfg, ns, "", handlers)
	if err != nil {
		if ns != nil {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
		return nil, nil, err
	}
	return nc, ns, nil
}

// dial opens one connection: to ns when it is set, else to the external
// cluster. A role, when given, ends the connection's name, so that a
// node's connections tell apart in the servers' monitoring.
func dial(cfg *Config, ns *server.Server, role string, handlers []nats.Option) (*nats.Conn, error) {
	name := "groupcast " + cfg.Node
	if cfg.Region != "" {
		name += " " + cfg.Region
	}
	if role != "" {
		name += " " + role
	}
	opts := append([]nats.Option{
		nats.Name(name),
		nats.PingInterval(cfg.PingInterval),
		nats.MaxPingsOutstanding(2),
		nats.DrainTimeout(cfg.DrainTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.ReconnectJitter(cfg.ReconnectWait, cfg.ReconnectWait),
		// Publishing while disconnected fails at once instead of being
		// buffered and maybe lost: callers answer "unavailable".
		nats.ReconnectBufSize(-1),
	}, handlers...)

	if ns != nil {
		nc, err := nats.Connect("", append(opts, nats.InProcessServer(ns))...)
		if err != nil {
			return nil, fmt.Errorf("broker: connect to embedded NATS: %w", err)
		}
		return nc, nil
	}

	opts = append(opts, nats.Timeout(cfg.ConnectTimeout), nats.RetryOnFailedConnect(true))
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("broker: nkey seed: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("broker: connect to %s: %w", redactURLs(cfg.URL), err)
	}
	return nc, nil
}

// startEmbedded starts a standalone nats-server in this process. It listens
// on TCP only when cfg.ListenAddr asks for it, installs no signal handlers,
// and logs through cfg.Logger.
func startEmbedded(cfg *Config) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "groupcast-" + cfg.Node,
		NoSigs:     true,
		DontListen: cfg.ListenAddr == "",
		MaxPayload: int32(cfg.MaxPayload),
		JetStream:  cfg.needsJetStream(),
		StoreDir:   cfg.StoreDir,
	}
	if cfg.ListenAddr != "" {
		host, port, err := splitHostPort(cfg.ListenAddr)
		if err != nil {
			return nil, err
		}
		if port == 0 {
			port = server.RANDOM_PORT // nats-server reads 0 as its default port, 4222
		}
		opts.Host, opts.Port = host, port
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("broker: embedded NATS: %w", err)
	}
	ns.SetLoggerV2(serverLog{cfg.Logger.With("component", "nats-server")}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("broker: embedded NATS did not start")
	}
	return ns, nil
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("broker: listen address %q: want host:port", addr)
	}
	var port int
	if _, err := fmt.Sscanf(addr[i+1:], "%d", &port); err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("broker: listen address %q: bad port", addr)
	}
	return strings.Trim(addr[:i], "[]"), port, nil
}

// redactURLs hides credentials embedded in NATS URLs.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndexByte(u, '@'); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				parts[i] = u[:s+3] + "REDACTED" + u[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// serverLog bridges nats-server's logger to slog. Notices are chatty (a
// banner at every start), so they go to Debug, except the server's reason
// for cutting a slow consumer (Info: it explains a disconnect); warnings
// and errors keep their level.
type serverLog struct{ log *slog.Logger }

func (l serverLog) Noticef(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if strings.Contains(msg, "Slow Consumer") {
		l.log.Info(msg)
		return
	}
	l.log.Debug(msg)
}

func (l serverLog) Warnf(format string, v ...any)  { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l serverLog) Errorf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLog) Debugf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l serverLog) Tracef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }

// Fatalf logs at Error level. The embedded server calls it on conditions
// it cannot survive; it must not exit the process, so they are logged and
// the broker goes unready when its connection ends.
func (l serverLog) Fatalf(format string, v ...any) { l.log.Error(fmt.Sprintf(format, v...)) }

// closeConn drains nc (unsubscribing everything and flushing what was
// published), waits for it to close or for ctx, then stops ns if it is set.
func closeConn(ctx context.Context, nc *nats.Conn, closed <-chan struct{}, ns *server.Server) error {
	var err error
	if nc.IsConnected() { // nothing to drain while reconnecting
		err = nc.Drain()
	}
	if err == nil && nc.IsDraining() {
		select {
		case <-closed:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	nc.Close()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("broker: drain: %w", err)
	}
	return nil
}
