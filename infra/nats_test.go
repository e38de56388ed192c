package infra

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

var (
	natsConf    = filepath.Join(root, "infra", "nats", "nats-server.conf")
	regionsDir  = filepath.Join(root, "infra", "nats", "regions")
	testSecrets = map[string]string{EnvAppPassword: "app-secret", EnvSysPassword: "sys-secret"}
)

func readRegionFiles(t *testing.T) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(regionsDir, "*.env"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no region files in %s: %v", regionsDir, err)
	}
	files := map[string][]byte{}
	for _, p := range paths {
		files[strings.TrimSuffix(filepath.Base(p), ".env")] = readFile(t, p)
	}
	return files
}

// listenPort returns the port of a host:port setting.
func listenPort(hostport string) (string, error) {
	_, port, err := net.SplitHostPort(hostport)
	return port, err
}

// urlHosts returns the host:port of each URL.
func urlHosts(urls []*url.URL) []string {
	var hosts []string
	for _, u := range urls {
		hosts = append(hosts, u.Host)
	}
	return hosts
}

// checkNATSRegions parses the configuration for every server of every region file
// (one server per route of its region) with nats-server's own parser and checks that
// the regions fit together: names, routes, gateways pointing at each region's
// servers, accounts.
func checkNATSRegions(conf string, files map[string][]byte) error {
	envs := map[string]map[string]string{}
	for region, data := range files {
		env, err := ParseEnvFile(data)
		if err != nil {
			return fmt.Errorf("%s.env: %w", region, err)
		}
		envs[region] = env
	}
	if len(envs) != GatewaySlots {
		return fmt.Errorf("%d region files, want %d", len(envs), GatewaySlots)
	}
	// Where each region's servers are, from its own file.
	servers := map[string][]string{} // region -> route hosts (without ports)
	gatewayPort := map[string]string{}
	for region, env := range envs {
		if env[EnvRegion] != region {
			return fmt.Errorf("%s.env: %s=%q, want the file's region", region, EnvRegion, env[EnvRegion])
		}
		opts, err := LoadNATSOptions(conf, withServer(env, "probe"))
		if err != nil {
			return fmt.Errorf("%s: %w", region, err)
		}
		for _, u := range opts.Routes {
			servers[region] = append(servers[region], u.Hostname())
		}
		if gatewayPort[region], err = listenPort(env[EnvGatewayListen]); err != nil {
			return fmt.Errorf("%s.env: %s: %w", region, EnvGatewayListen, err)
		}
	}
	for _, region := range sortedKeys(envs) {
		env := envs[region]
		if len(servers[region]) == 0 {
			return fmt.Errorf("%s: no cluster routes", region)
		}
		for i := range servers[region] {
			name := fmt.Sprintf("nats-%s-%d", region, i)
			opts, err := LoadNATSOptions(conf, withServer(env, name))
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := checkServerOptions(opts, region, env, envs, servers, gatewayPort); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return nil
}

func withServer(env map[string]string, name string) map[string]string {
	m := maps.Clone(env)
	maps.Copy(m, testSecrets)
	m[EnvServerName] = name
	return m
}

func checkServerOptions(opts *server.Options, region string, env map[string]string, envs map[string]map[string]string,
	servers map[string][]string, gatewayPort map[string]string) error {
	switch {
	case opts.Cluster.Name != region || opts.Gateway.Name != region:
		return fmt.Errorf("cluster %q and gateway %q must both be named %q", opts.Cluster.Name, opts.Gateway.Name, region)
	case opts.Port != 4222:
		return fmt.Errorf("client port %d, want 4222 (the port in every NATS_URL secret)", opts.Port)
	case opts.SystemAccount != "SYS":
		return fmt.Errorf("system account %q, want SYS", opts.SystemAccount)
	}
	clusterPort, _ := listenPort(env[EnvClusterListen])
	for _, u := range opts.Routes {
		if u.Port() != clusterPort {
			return fmt.Errorf("route %s: port is not the cluster port %s", u, clusterPort)
		}
	}
	var names []string
	for _, g := range opts.Gateway.Gateways {
		names = append(names, g.Name)
		other, ok := envs[g.Name]
		if !ok {
			return fmt.Errorf("gateway %q: no such region", g.Name)
		}
		var want []string
		for _, h := range servers[g.Name] {
			want = append(want, net.JoinHostPort(h, gatewayPort[g.Name]))
		}
		if got := urlHosts(g.URLs); !slices.Equal(got, want) {
			return fmt.Errorf("gateway %q URLs %v, want %s's servers %v (from %s.env)", g.Name, got, g.Name, want, other[EnvRegion])
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, sortedKeys(envs)) {
		return fmt.Errorf("gateways %v, want every region %v", names, sortedKeys(envs))
	}
	users := map[string]string{}
	for _, u := range opts.Users {
		if u.Account != nil {
			users[u.Username] = u.Account.Name
		}
	}
	if users[AppUser] != "GROUPCAST" || users[SysUser] != "SYS" {
		return fmt.Errorf("users %v: want %s in GROUPCAST and %s in SYS", users, AppUser, SysUser)
	}
	return nil
}

// TestNATSConfigParses parses one server's configuration with nats-server's parser,
// its variables set the way a VM or pod sets them.
func TestNATSConfigParses(t *testing.T) {
	env, err := ParseEnvFile(readRegionFiles(t)["europe-west1"])
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range withServer(env, "nats-europe-west1-0") {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(natsConf)
	if err != nil {
		t.Fatal(err)
	}
	if opts.ServerName != "nats-europe-west1-0" || opts.Gateway.Name != "europe-west1" || len(opts.Routes) != 3 {
		t.Fatalf("server %q, gateway %q, %d routes", opts.ServerName, opts.Gateway.Name, len(opts.Routes))
	}
	t.Setenv(EnvGatewayURLs(2), "")
	os.Unsetenv(EnvGatewayURLs(2))
	if _, err := server.ProcessConfigFile(natsConf); err == nil {
		t.Fatal("parsed with a variable missing")
	}
}

func TestNATSRegions(t *testing.T) {
	if err := checkNATSRegions(natsConf, readRegionFiles(t)); err != nil {
		t.Fatal(err)
	}
}

// TestNATSRegionsRejectBrokenCopies feeds broken copies of the region files and of
// the configuration to the checks: each must be refused.
func TestNATSRegionsRejectBrokenCopies(t *testing.T) {
	files := readRegionFiles(t)
	conf := string(readFile(t, natsConf))
	accounts := readFile(t, filepath.Join(root, "infra", "nats", "accounts.conf"))
	cases := []struct {
		name, file, old, new string
	}{
		{"bad gateway URL", "us-central1", "nats://10.20.0.11:7222", "nats://10.20.0.11:7223"},
		{"gateway URL of the wrong region", "asia-northeast1", "NATS_GATEWAY_2_URLS=[nats://10.20.0.10:7222", "NATS_GATEWAY_2_URLS=[nats://10.30.0.10:7222"},
		{"misspelt gateway name", "europe-west1", "NATS_GATEWAY_3_NAME=asia-northeast1", "NATS_GATEWAY_3_NAME=asia-northeast2"},
		{"region file for the wrong region", "europe-west1", "NATS_REGION=europe-west1", "NATS_REGION=europe-west2"},
		{"route on the gateway port", "us-central1", "nats://10.10.0.12:6222]", "nats://10.10.0.12:7222]"},
		{"client port moved", "us-central1", "NATS_CLIENT_LISTEN=0.0.0.0:4222", "NATS_CLIENT_LISTEN=0.0.0.0:4223"},
		{"variable missing", "us-central1", "NATS_GATEWAY_LISTEN=0.0.0.0:7222\n", ""},
		{"quoted value", "us-central1", "NATS_CLIENT_LISTEN=0.0.0.0:4222", `NATS_CLIENT_LISTEN="0.0.0.0:4222"`},
		{"conf: entry reads the wrong variable", "nats-server.conf", "urls: $NATS_GATEWAY_2_URLS", "urls: $NATS_GATEWAY_3_URLS"},
		{"conf: gateway named apart from cluster", "nats-server.conf", "  name: $NATS_REGION\n  listen: $NATS_GATEWAY_LISTEN", "  name: $NATS_SERVER_NAME\n  listen: $NATS_GATEWAY_LISTEN"},
		{"conf: typo'd key", "nats-server.conf", "routes: $NATS_CLUSTER_ROUTES", "route: $NATS_CLUSTER_ROUTES"},
		{"conf: no system account", "nats-server.conf", "include ./accounts.conf\n", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "accounts.conf"), accounts, 0o644); err != nil {
				t.Fatal(err)
			}
			broken := maps.Clone(files)
			brokenConf := conf
			if c.file == "nats-server.conf" {
				brokenConf = strings.Replace(conf, c.old, c.new, 1)
				if brokenConf == conf {
					t.Fatalf("mutation %q does not apply", c.old)
				}
			} else {
				b := bytes.Replace(files[c.file], []byte(c.old), []byte(c.new), 1)
				if bytes.Equal(b, files[c.file]) {
					t.Fatalf("mutation %q does not apply to %s.env", c.old, c.file)
				}
				broken[c.file] = b
			}
			path := filepath.Join(dir, "nats-server.conf")
			if err := os.WriteFile(path, []byte(brokenConf), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := checkNATSRegions(path, files); c.file != "nats-server.conf" && err != nil {
				t.Fatalf("the real files are refused: %v", err)
			}
			if err := checkNATSRegions(path, broken); err == nil {
				t.Fatal("broken NATS configuration accepted")
			} else {
				t.Logf("refused: %v", err)
			}
		})
	}
}

// gatewayOrder returns the regions in the order of the gateway entries.
func gatewayOrder(t *testing.T) []string {
	t.Helper()
	regions, err := Regions(filepath.Join(regionsDir, "us-central1.env"))
	if err != nil {
		t.Fatal(err)
	}
	return regions
}

// startSupercluster boots the configuration in infra/nats on loopback and waits for
// every route and gateway.
func startSupercluster(t *testing.T, perRegion int) *Supercluster {
	t.Helper()
	// The ports FreePorts found can be taken by another socket before a
	// server binds them (tests run side by side); such a start fails, and
	// is tried again on other ports.
	var topo *Topology
	var sc *Supercluster
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if topo, err = LoopbackTopology(gatewayOrder(t), perRegion); err != nil {
			t.Fatal(err)
		}
		if sc, err = StartSupercluster(natsConf, topo, nil); err == nil {
			break
		}
		t.Logf("supercluster start, attempt %d: %v", attempt+1, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	if err := sc.WaitJoined(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d servers in %d regions joined in %v", len(sc.Servers), len(topo.Regions), time.Since(start).Round(time.Millisecond))
	return sc
}

// TestSupercluster boots three regions of three servers from infra/nats and sends a
// message from one region to subscribers in all three through the gateways.
func TestSupercluster(t *testing.T) {
	sc := startSupercluster(t, 3)
	regions := sc.Topology.Regions

	// Authentication is on: no user, or a wrong password, is refused.
	if nc, err := nats.Connect(sc.ClientURLs(regions[0])[0], nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected without credentials")
	}
	if nc, err := nats.Connect(sc.ClientURLs(regions[0])[0], nats.UserInfo(AppUser, "wrong"), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected with a wrong password")
	}

	subject := "infra.check"
	var subs []*nats.Subscription
	var conns []*nats.Conn
	for _, r := range regions {
		nc, err := nats.Connect(sc.NATSURL(r), nats.Name("infra-test-"+r))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		sub, err := nc.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		subs = append(subs, sub)
	}
	// Interest crosses gateways asynchronously: publish markers until every region
	// has one, then one message that each region must get exactly once.
	pub := conns[0]
	deadline := time.Now().Add(10 * time.Second)
	got := make([]bool, len(subs))
	for n := 0; !allTrue(got); n++ {
		if time.Now().After(deadline) {
			t.Fatalf("markers reached regions %v only", got)
		}
		if err := pub.Publish(subject, []byte("marker-"+strconv.Itoa(n))); err != nil {
			t.Fatal(err)
		}
		for i, s := range subs {
			if m, err := s.NextMsg(20 * time.Millisecond); err == nil && strings.HasPrefix(string(m.Data), "marker-") {
				got[i] = true
			}
		}
	}
	if err := pub.Publish(subject, []byte("the message")); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		count := 0
		for {
			m, err := s.NextMsg(300 * time.Millisecond)
			if err != nil {
				break
			}
			if string(m.Data) == "the message" {
				count++
			}
		}
		if count != 1 {
			t.Errorf("region %s got the message %d times, want 1", regions[i], count)
		}
	}
}

func allTrue(b []bool) bool {
	for _, v := range b {
		if !v {
			return false
		}
	}
	return true
}

// TestSuperclusterWithBadGatewayURLs boots a copy in which every gateway URL between
// one region and the others points at a port where nothing listens: the supercluster
// must not join. A partly wrong copy would join: servers learn gateway URLs from
// inbound connections and from other regions' gossip, which is also why
// TestNATSRegions checks every URL statically (a wrong one stays hidden until the
// paths that mask it fail).
func TestSuperclusterWithBadGatewayURLs(t *testing.T) {
	topo, err := LoopbackTopology(gatewayOrder(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	b := topo.Regions[1]
	for _, s := range topo.Servers {
		for n := 1; n <= GatewaySlots; n++ {
			if name := s.Env[EnvGatewayName(n)]; name != s.Region && (s.Region == b || name == b) {
				s.Env[EnvGatewayURLs(n)] = ConfigList([]string{fmt.Sprintf("nats://127.0.0.1:%d", dead[0])})
			}
		}
	}
	sc, err := StartSupercluster(natsConf, topo, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = sc.WaitJoined(ctx)
	if err == nil {
		t.Fatal("joined with bad gateway URLs")
	}
	if want := fmt.Sprintf("no outbound gateway to %s", b); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	t.Logf("refused: %v", err)
}

// TestVMStartupScript checks the VM startup script's syntax and that it installs the
// nats-server release whose parser and server these tests run.
func TestVMStartupScript(t *testing.T) {
	path := filepath.Join(root, "infra", "nats", "vm-startup.sh")
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	var version string
	for _, line := range strings.Split(string(readFile(t, filepath.Join(root, "go.mod"))), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/nats-io/nats-server/v2" {
			version = strings.TrimPrefix(f[1], "v")
		}
	}
	if want := "NATS_VERSION=" + version + "\n"; version == "" || !bytes.Contains(readFile(t, path), []byte(want)) {
		t.Fatalf("vm-startup.sh must install nats-server %s, the version the tests run (want %q)", version, want)
	}
}
