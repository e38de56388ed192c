package main

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// ipCmd runs ip(8) with args and returns an error with its output.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs a command inside a network namespace.
func inNetns(ns string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %s: %v: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// site is one emulated region: a network namespace holding the region's nats-servers
// (at the addresses of its file in infra/nats/regions) and groupcast instances.
//
// Two links leave it. "mgmt", a veth pair to the host namespace (10.200.<k>.0/24),
// carries the benchmark's own traffic without delay: the host routes the region's
// server subnet through it, so clients and publishers sit next to the region, as a
// backend in the region would. "wan", a TUN device read and written by the delay line
// (a process of its own, see runWANRole), carries everything between regions.
type site struct {
	Index   int          // 1-based
	Region  string       // e.g. us-central1
	Netns   string       // gcb-<region>
	Servers []netip.Addr // the region's nats-server addresses in use
	Subnet  netip.Prefix // the /24 of the servers, routed between regions

	tun *os.File // in the delay line's process
}

func (s *site) hostIf() string { return fmt.Sprintf("gcb%d", s.Index) }
func (s *site) mgmtIP() string { return fmt.Sprintf("10.200.%d.2", s.Index) }

// setUp creates the namespace and its link to the host.
func (s *site) setUp() error {
	s.Netns = "gcb-" + s.Region
	steps := [][]string{
		{"netns", "add", s.Netns},
		{"-n", s.Netns, "link", "set", "lo", "up"},
		{"link", "add", s.hostIf(), "type", "veth", "peer", "name", "mgmt", "netns", s.Netns},
		{"addr", "add", fmt.Sprintf("10.200.%d.1/24", s.Index), "dev", s.hostIf()},
		{"link", "set", s.hostIf(), "up"},
		{"-n", s.Netns, "addr", "add", s.mgmtIP() + "/24", "dev", "mgmt"},
		{"-n", s.Netns, "link", "set", "mgmt", "up"},
		{"route", "add", s.Subnet.String(), "via", s.mgmtIP(), "dev", s.hostIf()},
	}
	for _, args := range steps {
		if err := ipCmd(args...); err != nil {
			return err
		}
	}
	return inNetns(s.Netns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
}

// attachWAN creates the site's TUN device in this process, moves it into the
// namespace (its file descriptor stays here) and gives it the region's server
// addresses and routes to the other regions' subnets, whose TCP connections use the
// congestion control cc. (A route's congctl, because a namespace other than the
// host's may only default to the algorithms the host allows unprivileged users.)
func (s *site) attachWAN(others []netip.Prefix, cc string) error {
	name := fmt.Sprintf("gcbw%d", s.Index)
	tun, err := openTUN(name)
	if err != nil {
		return err
	}
	s.tun = tun
	steps := [][]string{
		{"link", "set", name, "netns", s.Netns},
		{"-n", s.Netns, "link", "set", name, "name", "wan"},
		{"-n", s.Netns, "link", "set", "wan", "mtu", "1500", "up"},
	}
	for _, a := range s.Servers {
		steps = append(steps, []string{"-n", s.Netns, "addr", "add", a.String() + "/32", "dev", "wan"})
	}
	for _, p := range others {
		steps = append(steps, []string{"-n", s.Netns, "route", "add", p.String(), "dev", "wan", "congctl", cc})
	}
	for _, args := range steps {
		if err := ipCmd(args...); err != nil {
			return err
		}
	}
	for _, kv := range []string{"net.ipv4.conf.wan.rp_filter=0", "net.ipv6.conf.wan.disable_ipv6=1"} {
		if err := inNetns(s.Netns, "sysctl", "-qw", kv); err != nil {
			return err
		}
	}
	return nil
}

// tearDown deletes the namespace (and with it the links inside) and the host's end.
func (s *site) tearDown() {
	_ = ipCmd("route", "del", s.Subnet.String())
	_ = ipCmd("link", "del", s.hostIf())
	_ = ipCmd("netns", "del", s.Netns)
}

// openTUN creates a layer-3 TUN device without packet information headers and returns
// it as a non-blocking file served by the runtime's poller.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// staleNamespaces lists namespaces a crashed run left behind.
func staleNamespaces() []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var stale []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "gcb-") {
			stale = append(stale, f[0])
		}
	}
	return stale
}
