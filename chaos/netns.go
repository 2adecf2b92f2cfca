package chaos

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Net is a private network of hosts on this machine: one Linux network
// namespace per host, each joined by a veth pair to one bridge in the root
// namespace, which also holds an address so the test process reaches every
// host. Faults change routes inside the namespaces:
//
//   - Cut(a, b) sends a's packets for b to a neighbour that does not exist:
//     they vanish (no RST, no ICMP), and a connect from a fails only after
//     ARP gives up (~3 s) — a host alive but unreachable, not a refused port.
//   - Heal removes every cut.
//
// A Net deletes its namespaces, veths and bridge on Close, and Sweep removes
// those left by a test process that died (their names carry its pid).
type Net struct {
	prefix string // "mb<pid>"
	bridge string
	subnet netip.Prefix
	log    *slog.Logger

	mu    sync.Mutex
	hosts []*Host
	cuts  map[[2]int]bool // directed: packets from [0] to [1] vanish
}

// Host is one namespace with one address.
type Host struct {
	Name string
	NS   string
	IP   netip.Addr
	idx  int
	veth string
}

// Available says whether this process may create network namespaces (root
// with iproute2), and why not.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("iproute2's ip is not installed (apt-get install iproute2)")
	}
	return nil
}

// NewNet creates the bridge. Host addresses are 10.A.B.x/24 with A.B taken
// from the pid, so concurrent test processes do not collide.
func NewNet(log *slog.Logger) (*Net, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	pid := os.Getpid()
	Sweep(log)
	n := &Net{
		prefix: fmt.Sprintf("mb%d", pid),
		subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + (pid>>8)%100), byte(pid), 0}), 24),
		log:    log,
		cuts:   map[[2]int]bool{},
	}
	n.bridge = n.prefix + "br"
	gw := n.addr(254)
	if err := run("ip", "link", "add", n.bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	if err := firstErr(
		run("ip", "addr", "add", gw.String()+"/24", "dev", n.bridge),
		run("ip", "link", "set", n.bridge, "up"),
	); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Net) addr(last byte) netip.Addr {
	b := n.subnet.Addr().As4()
	b[3] = last
	return netip.AddrFrom4(b)
}

// AddHost creates a namespace named after name with the next address.
func (n *Net) AddHost(name string) (*Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := len(n.hosts)
	if i >= 200 {
		return nil, errors.New("at most 200 hosts per net")
	}
	h := &Host{Name: name, NS: fmt.Sprintf("%s-%d", n.prefix, i), IP: n.addr(byte(i + 1)), idx: i,
		veth: fmt.Sprintf("%sv%d", n.prefix, i)}
	if len(h.veth) > 15 {
		h.veth = h.veth[len(h.veth)-15:]
	}
	if err := run("ip", "netns", "add", h.NS); err != nil {
		return nil, err
	}
	n.hosts = append(n.hosts, h)
	if err := firstErr(
		run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS),
		run("ip", "link", "set", h.veth, "master", n.bridge, "up"),
		run("ip", "-n", h.NS, "addr", "add", h.IP.String()+"/24", "dev", "eth0"),
		run("ip", "-n", h.NS, "link", "set", "eth0", "up"),
		run("ip", "-n", h.NS, "link", "set", "lo", "up"),
	); err != nil {
		return nil, fmt.Errorf("set up host %s: %w", name, err)
	}
	return h, nil
}

// Hosts returns the hosts in creation order.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.hosts...)
}

// dead is the neighbour that never answers ARP: routes through it blackhole
// silently.
func (n *Net) dead() netip.Addr { return n.addr(253) }

// Cut makes packets from a to b vanish (one way: b's packets still reach a,
// but a's answers do not reach b, so TCP between them stalls both ways once
// established; new connections from b to a hang, from a to b fail after ARP
// gives up).
func (n *Net) Cut(a, b *Host) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := [2]int{a.idx, b.idx}
	if n.cuts[k] || a == b {
		return nil
	}
	if err := run("ip", "-n", a.NS, "route", "replace", b.IP.String()+"/32", "via", n.dead().String(), "dev", "eth0"); err != nil {
		return fmt.Errorf("cut %s → %s: %w", a.Name, b.Name, err)
	}
	n.cuts[k] = true
	return nil
}

// Partition cuts every pair across the two sides, both ways.
func (n *Net) Partition(side1, side2 []*Host) error {
	for _, a := range side1 {
		for _, b := range side2 {
			if err := firstErr(n.Cut(a, b), n.Cut(b, a)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Cuts returns how many directed cuts are in place.
func (n *Net) Cuts() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.cuts)
}

// Heal removes every cut.
func (n *Net) Heal() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for k := range n.cuts {
		a, b := n.hosts[k[0]], n.hosts[k[1]]
		if err := run("ip", "-n", a.NS, "route", "del", b.IP.String()+"/32"); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(n.cuts, k)
	}
	return errors.Join(errs...)
}

// Command returns a command that runs name inside h's namespace. The caller
// owns it like any exec.Cmd (the process id is the program's own: ip netns
// exec execs it).
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Close deletes every namespace, veth and the bridge.
func (n *Net) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, h := range n.hosts {
		_ = run("ip", "link", "del", h.veth)
		_ = run("ip", "netns", "del", h.NS)
	}
	n.hosts = nil
	_ = run("ip", "link", "del", n.bridge)
}

// Sweep deletes namespaces and links left behind by test processes that no
// longer run (names mb<pid>…).
func Sweep(log *slog.Logger) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			if stale(name) {
				if err := run("ip", "netns", "del", name); err == nil && log != nil {
					log.Info("removed a stale namespace", "ns", name)
				}
			}
		}
	}
	out, err = exec.Command("ip", "-o", "link", "show").Output()
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if stale(name) {
				_ = run("ip", "link", "del", name)
			}
		}
	}
}

// stale reports whether name is one of ours whose pid is gone.
func stale(name string) bool {
	if !strings.HasPrefix(name, "mb") {
		return false
	}
	digits := name[2:]
	end := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
	if end <= 0 {
		return false
	}
	var pid int
	if _, err := fmt.Sscan(digits[:end], &pid); err != nil || pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
