package infra

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Environment variables that infra/nats/nats-server.conf reads. Every server of every
// region runs the same file; these carry what differs between them.
const (
	EnvServerName    = "NATS_SERVER_NAME"    // unique server name
	EnvRegion        = "NATS_REGION"         // cluster and gateway name
	EnvClientListen  = "NATS_CLIENT_LISTEN"  // host:port for clients
	EnvHTTPListen    = "NATS_HTTP_LISTEN"    // host:port for monitoring
	EnvClusterListen = "NATS_CLUSTER_LISTEN" // host:port for routes
	EnvClusterRoutes = "NATS_CLUSTER_ROUTES" // [url, ...] of the region's servers
	EnvGatewayListen = "NATS_GATEWAY_LISTEN" // host:port for gateways
	EnvStoreDir      = "NATS_STORE_DIR"      // JetStream's directory
	EnvAppPassword   = "NATS_APP_PASSWORD"   // password of AppUser
	EnvSysPassword   = "NATS_SYS_PASSWORD"   // password of SysUser
)

// GatewaySlots is the number of gateway entries in nats-server.conf: the supercluster
// has exactly this many regions.
const GatewaySlots = 3

// AppUser is the NATS user (account AppAccount) that groupcast instances connect as;
// SysUser belongs to the system account, SysAccount. All are defined in
// infra/nats/accounts.conf.
const (
	AppUser    = "groupcast"
	SysUser    = "sys"
	AppAccount = "GROUPCAST"
	SysAccount = "SYS"
)

// EnvGatewayName names the variable holding the region name of gateway entry n (1-based).
func EnvGatewayName(n int) string { return fmt.Sprintf("NATS_GATEWAY_%d_NAME", n) }

// EnvGatewayURLs names the variable holding the gateway URLs of entry n (1-based).
func EnvGatewayURLs(n int) string { return fmt.Sprintf("NATS_GATEWAY_%d_URLS", n) }

// ConfigList renders values as a NATS configuration list, the form that list-valued
// variables such as NATS_CLUSTER_ROUTES take: [a, b, c].
func ConfigList(values []string) string {
	return "[" + strings.Join(values, ",") + "]"
}

// ReadEnvFile reads a file of KEY=value lines, such as infra/nats/regions/*.env.
// Blank lines and lines starting with # are skipped; quotes are refused, since
// systemd, docker --env-file and kubectl would each treat them differently.
func ReadEnvFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env, err := ParseEnvFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return env, nil
}

// ParseEnvFile parses the contents of an env file; see ReadEnvFile.
func ParseEnvFile(data []byte) (map[string]string, error) {
	env := map[string]string{}
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(v, `"'`) {
			return nil, fmt.Errorf("line %d: want KEY=value without quotes: %q", n+1, line)
		}
		if _, dup := env[k]; dup {
			return nil, fmt.Errorf("line %d: %s set twice", n+1, k)
		}
		env[k] = v
	}
	return env, nil
}

// Regions returns the supercluster's regions in gateway order, as the region file
// infra/nats/regions/<any region>.env lists them.
func Regions(regionFile string) ([]string, error) {
	env, err := ReadEnvFile(regionFile)
	if err != nil {
		return nil, err
	}
	var regions []string
	for n := 1; n <= GatewaySlots; n++ {
		r := env[EnvGatewayName(n)]
		if r == "" {
			return nil, fmt.Errorf("%s: %s is not set", regionFile, EnvGatewayName(n))
		}
		regions = append(regions, r)
	}
	return regions, nil
}

// envMu serialises LoadNATSOptions: the configuration parser reads the process
// environment, so the overlay must not interleave.
var envMu sync.Mutex

// LoadNATSOptions parses a nats-server configuration file with nats-server's own parser,
// with env laid over the process environment for the duration of the parse. The
// returned options have NoSigs set, so an in-process server leaves signals to its host.
func LoadNATSOptions(confPath string, env map[string]string) (*server.Options, error) {
	envMu.Lock()
	defer envMu.Unlock()
	type saved struct {
		value string
		set   bool
	}
	old := make(map[string]saved, len(env))
	for k, v := range env {
		ov, ok := os.LookupEnv(k)
		old[k] = saved{ov, ok}
		if err := os.Setenv(k, v); err != nil {
			return nil, err
		}
	}
	defer func() {
		for k, s := range old {
			if s.set {
				_ = os.Setenv(k, s.value)
			} else {
				_ = os.Unsetenv(k)
			}
		}
	}()
	opts, err := server.ProcessConfigFile(confPath)
	if err != nil {
		return nil, err
	}
	opts.NoSigs = true
	return opts, nil
}

// ServerSpec is one nats-server of a Topology.
type ServerSpec struct {
	Region      string            // region (cluster) the server belongs to
	Name        string            // server name
	ClientPort  int               // client port on 127.0.0.1
	ClusterPort int               // route port on 127.0.0.1
	GatewayPort int               // gateway port on 127.0.0.1
	Env         map[string]string // the variables nats-server.conf reads for this server

	// GatewayAdvertise, when set, is the host:port this server tells other servers to
	// reach its gateway at, instead of its listen address (gateway "advertise"). Tests
	// put a proxy there to cut or slow the links between regions.
	GatewayAdvertise string
	// ClusterAdvertise is the same for the server's route listener.
	ClusterAdvertise string
}

// Topology describes a supercluster on the loopback interface: its regions, in gateway
// order, and its servers.
type Topology struct {
	Regions     []string
	Servers     []ServerSpec
	AppPassword string
	SysPassword string
	// StoreDir holds each server's JetStream directory; Supercluster.Shutdown
	// removes it.
	StoreDir string
}

// LoopbackTopology plans a supercluster of GatewaySlots regions with perRegion servers
// each, all on 127.0.0.1. Client, route and gateway ports are picked free now, so that a
// server restarted with Supercluster.StartServer comes back where its clients and peers
// expect it; monitoring ports are left to the servers (-1, random), and passwords are
// random.
func LoopbackTopology(regions []string, perRegion int) (*Topology, error) {
	if len(regions) != GatewaySlots {
		return nil, fmt.Errorf("a supercluster has %d regions, got %d", GatewaySlots, len(regions))
	}
	if perRegion < 1 {
		return nil, errors.New("a region needs at least one server")
	}
	ports, err := FreePorts(3 * len(regions) * perRegion)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "groupcast-supercluster-")
	if err != nil {
		return nil, err
	}
	t := &Topology{Regions: slices.Clone(regions), AppPassword: randomHex(16), SysPassword: randomHex(16), StoreDir: dir}
	routes := map[string][]string{}
	gateways := map[string][]string{}
	for _, r := range regions {
		for i := range perRegion {
			s := ServerSpec{Region: r, Name: fmt.Sprintf("nats-%s-%d", r, i), ClientPort: ports[0], ClusterPort: ports[1], GatewayPort: ports[2]}
			ports = ports[3:]
			routes[r] = append(routes[r], fmt.Sprintf("nats://127.0.0.1:%d", s.ClusterPort))
			gateways[r] = append(gateways[r], fmt.Sprintf("nats://127.0.0.1:%d", s.GatewayPort))
			t.Servers = append(t.Servers, s)
		}
	}
	for i := range t.Servers {
		s := &t.Servers[i]
		s.Env = map[string]string{
			EnvServerName:    s.Name,
			EnvRegion:        s.Region,
			EnvClientListen:  fmt.Sprintf("127.0.0.1:%d", s.ClientPort),
			EnvHTTPListen:    "127.0.0.1:-1",
			EnvClusterListen: fmt.Sprintf("127.0.0.1:%d", s.ClusterPort),
			EnvClusterRoutes: ConfigList(routes[s.Region]),
			EnvGatewayListen: fmt.Sprintf("127.0.0.1:%d", s.GatewayPort),
			EnvStoreDir:      filepath.Join(dir, s.Name),
			EnvAppPassword:   t.AppPassword,
			EnvSysPassword:   t.SysPassword,
		}
		for n, r := range regions {
			s.Env[EnvGatewayName(n+1)] = r
			s.Env[EnvGatewayURLs(n+1)] = ConfigList(gateways[r])
		}
	}
	return t, nil
}

// Supercluster is a running set of in-process nats-servers, index-aligned with its
// Topology's servers. Its methods are not safe for concurrent use with StopServer and
// StartServer, which replace entries of Servers.
type Supercluster struct {
	Topology *Topology
	Servers  []*server.Server

	confPath string
	logger   server.Logger
}

// StartSupercluster starts every server of topo from the configuration file confPath
// and waits until each accepts clients; WaitJoined then waits for routes and gateways.
// It shortens the process-wide gateway solicit delay (server.SetGatewaysSolicitDelay),
// which only exists to stagger servers started together. logger may be nil (silent).
func StartSupercluster(confPath string, topo *Topology, logger server.Logger) (*Supercluster, error) {
	server.SetGatewaysSolicitDelay(10 * time.Millisecond)
	sc := &Supercluster{Topology: topo, Servers: make([]*server.Server, len(topo.Servers)), confPath: confPath, logger: logger}
	for i := range topo.Servers {
		s, err := sc.newServer(i)
		if err != nil {
			sc.Shutdown()
			return nil, err
		}
		sc.Servers[i] = s
		go s.Start()
	}
	for i, s := range sc.Servers {
		if !s.ReadyForConnections(10 * time.Second) {
			sc.Shutdown()
			return nil, fmt.Errorf("%s: not ready for connections", topo.Servers[i].Name)
		}
	}
	return sc, nil
}

// newServer creates (without starting) server i from the configuration file.
func (sc *Supercluster) newServer(i int) (*server.Server, error) {
	spec := sc.Topology.Servers[i]
	opts, err := LoadNATSOptions(sc.confPath, spec.Env)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	if spec.GatewayAdvertise != "" {
		opts.Gateway.Advertise = spec.GatewayAdvertise
	}
	if spec.ClusterAdvertise != "" {
		opts.Cluster.Advertise = spec.ClusterAdvertise
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	if sc.logger != nil {
		s.SetLoggerV2(sc.logger, false, false, false)
	}
	return s, nil
}

// StopServer shuts server i down, as a crash or a stopped VM would (no lame-duck
// mode), and waits until it has stopped. Its clients, routes and gateways see their
// connections close.
func (sc *Supercluster) StopServer(i int) {
	sc.Servers[i].Shutdown()
	sc.Servers[i].WaitForShutdown()
}

// StartServer starts server i afresh from the configuration file, on the ports it had,
// and waits until it accepts clients. Its routes and gateways reconnect on their own.
func (sc *Supercluster) StartServer(i int) error {
	s, err := sc.newServer(i)
	if err != nil {
		return err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		s.WaitForShutdown()
		return fmt.Errorf("%s: not ready for connections", sc.Topology.Servers[i].Name)
	}
	sc.Servers[i] = s
	return nil
}

// Joined reports nil when every server has a route to every other server of its region
// and one outbound gateway to each other region, and each region's servers together
// accept one inbound gateway from every server of every other region; otherwise an
// error that says what is missing.
func (sc *Supercluster) Joined() error {
	perRegion := map[string]int{}
	for _, spec := range sc.Topology.Servers {
		perRegion[spec.Region]++
	}
	inbound := map[[2]string]int{} // {from, to} -> connections
	var problems []string
	for i, s := range sc.Servers {
		spec := sc.Topology.Servers[i]
		rz, err := s.Routez(nil)
		if err != nil {
			return err
		}
		peers := map[string]bool{}
		for _, r := range rz.Routes {
			peers[r.RemoteName] = true
		}
		if want := perRegion[spec.Region] - 1; len(peers) != want {
			problems = append(problems, fmt.Sprintf("%s: routes to %d servers, want %d", spec.Name, len(peers), want))
		}
		gz, err := s.Gatewayz(nil)
		if err != nil {
			return err
		}
		for _, r := range sc.Topology.Regions {
			if r != spec.Region && gz.OutboundGateways[r] == nil {
				problems = append(problems, fmt.Sprintf("%s: no outbound gateway to %s", spec.Name, r))
			}
		}
		for name := range gz.OutboundGateways {
			if !slices.Contains(sc.Topology.Regions, name) || name == spec.Region {
				problems = append(problems, fmt.Sprintf("%s: unexpected outbound gateway %q", spec.Name, name))
			}
		}
		for from, conns := range gz.InboundGateways {
			inbound[[2]string{from, spec.Region}] += len(conns)
		}
	}
	for _, from := range sc.Topology.Regions {
		for _, to := range sc.Topology.Regions {
			if from == to {
				continue
			}
			if got := inbound[[2]string{from, to}]; got != perRegion[from] {
				problems = append(problems, fmt.Sprintf("%s accepts %d gateways from %s, want %d", to, got, from, perRegion[from]))
			}
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// WaitJoined polls Joined until it reports nil or ctx ends, and then returns the last
// error.
func (sc *Supercluster) WaitJoined(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := sc.Joined()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("supercluster not joined: %w", err)
		case <-tick.C:
		}
	}
}

// ClientURLs returns the client URLs of the servers in region, without credentials.
func (sc *Supercluster) ClientURLs(region string) []string {
	var urls []string
	for i, spec := range sc.Topology.Servers {
		if spec.Region == region {
			urls = append(urls, sc.clientURL(i))
		}
	}
	return urls
}

// clientURL is server i's client URL, known from its spec even while it is stopped.
func (sc *Supercluster) clientURL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", sc.Topology.Servers[i].ClientPort)
}

// NATSURL returns the value of groupcast's NATS_URL setting for an instance in region:
// the region's servers, comma-separated, with AppUser's credentials.
func (sc *Supercluster) NATSURL(region string) string {
	var urls []string
	for i, spec := range sc.Topology.Servers {
		if spec.Region == region {
			urls = append(urls, sc.ServerNATSURL(i))
		}
	}
	return strings.Join(urls, ",")
}

// ServerNATSURL returns a NATS_URL naming server i alone, with AppUser's credentials.
func (sc *Supercluster) ServerNATSURL(i int) string {
	u, err := url.Parse(sc.clientURL(i))
	if err != nil {
		return ""
	}
	u.User = url.UserPassword(AppUser, sc.Topology.AppPassword)
	return u.String()
}

// Shutdown stops every server and waits for them to finish.
func (sc *Supercluster) Shutdown() {
	var wg sync.WaitGroup
	for _, s := range sc.Servers {
		if s == nil {
			continue
		}
		wg.Go(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
	}
	wg.Wait()
	if sc.Topology.StoreDir != "" {
		_ = os.RemoveAll(sc.Topology.StoreDir)
	}
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
