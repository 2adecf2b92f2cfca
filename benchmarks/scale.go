package benchmarks

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/systest"
)

// ScaleOptions size the map-at-scale benchmark (issue 18).
type ScaleOptions struct {
	ModbotBinary  string // default bin/modbot
	Guilds        int    // placed before the figures are read (default 1,000,000)
	Batch         int    // guilds per placement request (default 10,000)
	RoutingTrials int    // extra batches timed from write to routable (default 5)
	Verbose       bool   // the processes log to stderr (else to files in the scratch dir)
	// CPUProfile, when set, is where 5 s of the leader's CPU profile from
	// the start of the placement is written (go tool pprof FILE).
	CPUProfile string
}

// ScaleResult is one run: 3 `modbot config-node` processes and one
// `modbot proxy` process watching them, the map grown to Guilds.
type ScaleResult struct {
	Guilds, Batch int
	// Resident set sizes (bytes, VmRSS) before the first placement and after
	// the last one, once the proxy routes the last guild.
	LeaderRSS, FollowerRSS, ProxyRSS [2]int64
	Place                            time.Duration // every batch, one after another, from one client
	// Routing: the leader acknowledged a batch → the proxy forwards a
	// request for its last guild (polled every 1 ms), over RoutingTrials
	// batches placed after the Guilds.
	Routing Percentiles
	// ProxyCatchUp: a restarted proxy process started → it routes the last
	// guild (its watcher lists the whole map).
	ProxyCatchUp time.Duration
	// FollowerCatchUp: a follower killed with SIGKILL is started again →
	// it reports every guild at the leader's revision.
	FollowerCatchUp time.Duration
	// Retries counts placements sent again after a 503 (leader change).
	Retries int
	// PlaceCPU is the CPU time (user + system) each process spent while
	// the Guilds were placed: where the two cores went.
	PlaceCPU struct{ Leader, Followers, Proxy, Bench time.Duration }
}

// PerGuild is the resident memory added per guild, from before to after.
func PerGuild(rss [2]int64, guilds int) float64 {
	if guilds == 0 {
		return 0
	}
	return float64(rss[1]-rss[0]) / float64(guilds)
}

const scaleToken = "scale-bench-token"

// Scale grows the map to o.Guilds through real processes and reads their
// memory from /proc; see docs/benchmarks.md, "Scale".
func Scale(ctx context.Context, o ScaleOptions) (ScaleResult, error) {
	if o.Guilds <= 0 {
		o.Guilds = 1_000_000
	}
	if o.Batch <= 0 {
		o.Batch = 10_000
	}
	if o.RoutingTrials <= 0 {
		o.RoutingTrials = 5
	}
	res := ScaleResult{Guilds: o.Guilds, Batch: o.Batch}
	bin := o.ModbotBinary
	if bin == "" {
		bin = filepath.Join("bin", "modbot")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return res, err
	}
	if _, err := os.Stat(bin); err != nil {
		return res, fmt.Errorf("the scale benchmark runs the modbot binary (make build): %w", err)
	}
	dir, cleanup, err := systest.TempDir("scale")
	if err != nil {
		return res, err
	}
	defer cleanup()
	ps := &procs{dir: dir, verbose: o.Verbose}
	defer ps.stopAll()

	// The control plane: config-0 bootstraps, the others join it.
	var urls []string
	var nodes []*proc
	for i := 0; i < 3; i++ {
		httpPort, err1 := systest.FreePort()
		raftPort, err2 := systest.FreePort()
		if err := errors.Join(err1, err2); err != nil {
			return res, err
		}
		url := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
		args := []string{"config-node", "--id", fmt.Sprintf("config-%d", i),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("config-%d", i)),
			"--raft-addr", fmt.Sprintf("127.0.0.1:%d", raftPort), "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
			"--token", scaleToken}
		if o.CPUProfile != "" {
			args = append(args, "--pprof")
		}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", urls[0])
		}
		p, err := ps.start(ctx, fmt.Sprintf("config-%d", i), bin, args...)
		if err != nil {
			return res, err
		}
		p.url = url
		nodes = append(nodes, p)
		urls = append(urls, url)
		if err := systest.Poll(ctx, 60*time.Second, p.name+" ready", func() bool { return p.alive() && systest.Ready(url) }); err != nil {
			return res, fmt.Errorf("%w (%s)", err, p.tail())
		}
	}
	cl, err := assignments.NewClient(urls, scaleToken)
	if err != nil {
		return res, err
	}
	if err := systest.Poll(ctx, 60*time.Second, "3 voters", func() bool {
		st, err := cl.Status(ctx)
		return err == nil && len(st.Servers) == 3 && st.Leader != ""
	}); err != nil {
		return res, err
	}

	// One pod, kept alive by heartbeats, answering every forwarded request.
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{}`)
	})}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	go func() { _ = backend.Serve(bl) }()
	defer backend.Close()
	if _, err := cl.RegisterPod(ctx, assignments.RegisterPodRequest{ID: "gateway-0", Addr: bl.Addr().String()}); err != nil {
		return res, fmt.Errorf("register the pod: %w", err)
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-t.C:
				_ = cl.Heartbeat(hbCtx, "gateway-0")
			}
		}
	}()

	// The proxy, a subscriber of the map.
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		return res, err
	}
	proxyPort, err := systest.FreePort()
	if err != nil {
		return res, err
	}
	proxyURL := fmt.Sprintf("http://127.0.0.1:%d", proxyPort)
	proxyArgs := []string{"proxy", "--http-addr", fmt.Sprintf("127.0.0.1:%d", proxyPort), "--config", strings.Join(urls, ","),
		"--discord-public-key", hex.EncodeToString(pub), "--token", scaleToken, "--name", "scale-proxy"}
	px, err := ps.start(ctx, "proxy", bin, proxyArgs...)
	if err != nil {
		return res, err
	}
	if err := systest.Poll(ctx, 60*time.Second, "the proxy ready", func() bool { return px.alive() && systest.Ready(proxyURL) }); err != nil {
		return res, fmt.Errorf("%w (%s)", err, px.tail())
	}
	leader, followers, err := leaderOf(ctx, nodes)
	if err != nil {
		return res, err
	}
	settle := func() { runtime.GC(); time.Sleep(2 * time.Second) }
	settle()
	res.LeaderRSS[0], res.FollowerRSS[0], res.ProxyRSS[0] = rss(leader.cmd), rss(followers[0].cmd), rss(px.cmd)

	// Place the guilds, one batch after another.
	hc := &http.Client{Timeout: 5 * time.Second}
	routes := func(guild string) bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, proxyURL+"/guild/"+guild+"/dashboard", nil)
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Authorization", "Bearer "+scaleToken)
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	next := 0
	batch := func() (string, error) {
		ids := make([]string, 0, o.Batch)
		for len(ids) < o.Batch {
			ids = append(ids, guildID(next))
			next++
		}
		// Placing is idempotent: a batch that met a leader change (2 cores
		// starved by 4 processes can cost the leader its term) is sent
		// again, as any client would, and counted.
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := cl.PlaceGuilds(ctx, ids)
			if err == nil {
				break
			}
			if !assignments.IsUnavailable(err) || time.Now().After(deadline) {
				return "", fmt.Errorf("place guilds %d–%d: %w", next-o.Batch, next-1, err)
			}
			res.Retries++
			time.Sleep(100 * time.Millisecond)
		}
		return ids[len(ids)-1], nil
	}
	cpu0 := [4]time.Duration{cpuTime(leader.cmd.Process.Pid), cpuTime(followers[0].cmd.Process.Pid) + cpuTime(followers[1].cmd.Process.Pid), cpuTime(px.cmd.Process.Pid), cpuTime(os.Getpid())}
	start := time.Now()
	profiled := profileCPU(ctx, o.CPUProfile, leader.url)
	var last string
	for next < o.Guilds {
		if last, err = batch(); err != nil {
			return res, err
		}
	}
	res.Place = time.Since(start)
	res.PlaceCPU.Leader = cpuTime(leader.cmd.Process.Pid) - cpu0[0]
	res.PlaceCPU.Followers = cpuTime(followers[0].cmd.Process.Pid) + cpuTime(followers[1].cmd.Process.Pid) - cpu0[1]
	res.PlaceCPU.Proxy = cpuTime(px.cmd.Process.Pid) - cpu0[2]
	res.PlaceCPU.Bench = cpuTime(os.Getpid()) - cpu0[3]
	if err := profiled(); err != nil {
		return res, err
	}
	if err := systest.Poll(ctx, 60*time.Second, "the proxy routing the last guild", func() bool { return routes(last) }); err != nil {
		return res, err
	}
	settle()
	res.LeaderRSS[1], res.FollowerRSS[1], res.ProxyRSS[1] = rss(leader.cmd), rss(followers[0].cmd), rss(px.cmd)

	// Write → routable through the proxy, polled every millisecond.
	var lat []time.Duration
	for i := 0; i < o.RoutingTrials; i++ {
		if last, err = batch(); err != nil {
			return res, err
		}
		acked := time.Now()
		deadline := acked.Add(10 * time.Second)
		for !routes(last) {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return res, fmt.Errorf("guild %s not routed by the proxy 10 s after its write", last)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(acked))
	}
	res.Routing = percentiles(lat)

	// A restarted proxy lists the whole map.
	px.stop()
	start = time.Now()
	if px, err = ps.start(ctx, "proxy-restarted", bin, proxyArgs...); err != nil {
		return res, err
	}
	if err := systest.Poll(ctx, 300*time.Second, "the restarted proxy routing the last guild", func() bool { return px.alive() && routes(last) }); err != nil {
		return res, fmt.Errorf("%w (the proxy's last word on its list: %s)", err, px.lastLine("list"))
	}
	res.ProxyCatchUp = time.Since(start)

	// A follower killed and started again: its Raft log (and snapshot, if
	// one was taken) replayed, then caught up from the leader.
	f := followers[0]
	want, err := nodeStatus(ctx, leader.url)
	if err != nil {
		return res, err
	}
	f.kill()
	start = time.Now()
	if _, err := ps.start(ctx, f.name+"-restarted", bin, f.args...); err != nil {
		return res, err
	}
	if err := systest.Poll(ctx, 300*time.Second, f.name+" caught up after a restart", func() bool {
		st, err := nodeStatus(ctx, f.url)
		return err == nil && st.Revision >= want.Revision && st.Guilds == want.Guilds
	}); err != nil {
		return res, err
	}
	res.FollowerCatchUp = time.Since(start)
	return res, nil
}

// leaderOf returns the process that leads and the others.
func leaderOf(ctx context.Context, nodes []*proc) (*proc, []*proc, error) {
	var leader *proc
	var others []*proc
	for _, p := range nodes {
		st, err := nodeStatus(ctx, p.url)
		if err != nil {
			return nil, nil, err
		}
		if st.State == "Leader" {
			leader = p
		} else {
			others = append(others, p)
		}
	}
	if leader == nil || len(others) == 0 {
		return nil, nil, errors.New("no leader among the config nodes")
	}
	return leader, others, nil
}

// nodeStatus is one node's own GET /v1/status.
func nodeStatus(ctx context.Context, url string) (assignments.Status, error) {
	c, err := assignments.NewClient([]string{url}, scaleToken)
	if err != nil {
		return assignments.Status{}, err
	}
	return c.Status(ctx)
}

// cpuTime is the user and system CPU time a process has used (0 when
// unreadable): /proc/PID/stat's utime and stime, in clock ticks of 1/100 s.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// rss is a process's resident set size in bytes (0 when unreadable).
func rss(cmd *exec.Cmd) int64 {
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// procs runs the benchmark's child processes and stops every one of them.
type procs struct {
	dir     string
	verbose bool
	all     []*proc
}

type proc struct {
	name, url string
	args      []string
	cmd       *exec.Cmd
	log       string
	done      chan struct{}
}

func (ps *procs) start(ctx context.Context, name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, args: args, done: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if ps.verbose {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	} else {
		p.log = filepath.Join(ps.dir, name+".log")
		f, err := os.Create(p.log)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); close(p.done) }()
	ps.all = append(ps.all, p)
	return p, nil
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to 10 s, then kills.
func (p *proc) stop() {
	if !p.alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

func (p *proc) kill() {
	if p.alive() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for an error message.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return p.name + " exited"
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return p.name + ": " + string(bytes.TrimSpace(b))
}

// lastLine is the last line of the process's log that mentions what.
func (p *proc) lastLine(what string) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return p.name + " left no log"
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], what) && !strings.Contains(lines[i], "msg=request") {
			return lines[i]
		}
	}
	return "none"
}

func (ps *procs) stopAll() {
	for _, p := range ps.all {
		p.stop()
	}
}

// ScaleMapResult is the map alone at one size, in this process: the FSM
// state built by the same commands Raft applies, then snapshotted and
// restored.
type ScaleMapResult struct {
	Guilds        int
	HeapPerGuild  float64 // live heap added per guild (after GC)
	SnapshotBytes int
	Snapshot      time.Duration // WriteSnapshot
	Restore       time.Duration // ReadSnapshot
}

// ScaleMap builds an FSM with guilds placed in batches of batch on three pods.
func ScaleMap(guilds, batch int) (ScaleMapResult, error) {
	res := ScaleMapResult{Guilds: guilds}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	s := fsm.New()
	idx := uint64(1)
	apply := func(c fsm.Command) error {
		c.Version = fsm.CommandVersion
		_, err := s.Apply(idx, c)
		idx++
		return err
	}
	if err := apply(fsm.Command{Type: fsm.CmdInit, ShardCount: 4}); err != nil {
		return res, fmt.Errorf("init: %w", err)
	}
	for i := 0; i < 3; i++ {
		if err := apply(fsm.Command{Type: fsm.CmdRegisterPod, Pod: &fsm.PodSpec{ID: fmt.Sprintf("gateway-%d", i), Ordinal: i, Addr: fmt.Sprintf("127.0.0.1:%d", 9000+i)}}); err != nil {
			return res, fmt.Errorf("register: %w", err)
		}
	}
	ids := make([]uint64, 0, batch)
	for n := 0; n < guilds; {
		ids = ids[:0]
		for len(ids) < batch && n < guilds {
			id, _ := strconv.ParseUint(guildID(n), 10, 64)
			ids = append(ids, id)
			n++
		}
		if err := apply(fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: ids}); err != nil {
			return res, fmt.Errorf("place: %w", err)
		}
	}
	res.HeapPerGuild = float64(heap()-before) / float64(guilds)
	var buf bytes.Buffer
	start := time.Now()
	if err := s.WriteSnapshot(&buf); err != nil {
		return res, err
	}
	res.Snapshot = time.Since(start)
	res.SnapshotBytes = buf.Len()
	start = time.Now()
	r, err := fsm.ReadSnapshot(&buf)
	if err != nil {
		return res, err
	}
	res.Restore = time.Since(start)
	if r.Revision != s.Revision || r.Guilds.Len() != s.Guilds.Len() {
		return res, fmt.Errorf("restored %d guilds at revision %d, want %d at %d", r.Guilds.Len(), r.Revision, s.Guilds.Len(), s.Revision)
	}
	runtime.KeepAlive(s)
	return res, nil
}

// PrintScale prints the process run and, when given, the in-process map runs.
func PrintScale(w io.Writer, r ScaleResult, maps []ScaleMapResult) {
	if r.Guilds > 0 {
		printScaleProcesses(w, r)
	}
	if len(maps) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The FSM alone (in this process: the commands Raft applies, then a snapshot and its restore):")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "guilds\tlive heap\tsnapshot\tencode\tdecode")
	for _, m := range maps {
		fmt.Fprintf(tw, "%d\t%.0f B/guild\t%.1f MiB\t%.2f s\t%.2f s\n", m.Guilds, m.HeapPerGuild, float64(m.SnapshotBytes)/(1<<20), m.Snapshot.Seconds(), m.Restore.Seconds())
	}
	tw.Flush()
}

func printScaleProcesses(w io.Writer, r ScaleResult) {
	fmt.Fprintf(w, "## Scale: %d guilds in the map (3 config-node processes, 1 proxy process; RSS from /proc)\n\n", r.Guilds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	fmt.Fprintln(tw, "measure\tresult")
	fmt.Fprintf(tw, "leader RSS before → after\t%s → %s: %.0f B/guild\n", mib(r.LeaderRSS[0]), mib(r.LeaderRSS[1]), PerGuild(r.LeaderRSS, r.Guilds))
	fmt.Fprintf(tw, "follower RSS before → after\t%s → %s: %.0f B/guild\n", mib(r.FollowerRSS[0]), mib(r.FollowerRSS[1]), PerGuild(r.FollowerRSS, r.Guilds))
	fmt.Fprintf(tw, "proxy RSS before → after\t%s → %s: %.0f B/guild\n", mib(r.ProxyRSS[0]), mib(r.ProxyRSS[1]), PerGuild(r.ProxyRSS, r.Guilds))
	fmt.Fprintf(tw, "placed in batches of %d, one client\t%.2f s (%.0f guilds/s; %d batches sent again after a leader change)\n", r.Batch, r.Place.Seconds(), float64(r.Guilds)/r.Place.Seconds(), r.Retries)
	c := r.PlaceCPU
	fmt.Fprintf(tw, "CPU while placing: leader, 2 followers, proxy, client\t%.2f s, %.2f s, %.2f s, %.2f s (%.0f%% of 2 cores)\n", c.Leader.Seconds(), c.Followers.Seconds(), c.Proxy.Seconds(), c.Bench.Seconds(),
		100*(c.Leader+c.Followers+c.Proxy+c.Bench).Seconds()/(2*r.Place.Seconds()))
	fmt.Fprintf(tw, "write → proxy routes the batch's last guild (%d batches)\tp50 %s, max %s\n", r.Routing.N, ms(r.Routing.P50), ms(r.Routing.Max))
	fmt.Fprintf(tw, "proxy restarted → routes the last guild\t%s\n", ms(r.ProxyCatchUp))
	fmt.Fprintf(tw, "follower kill -9, restarted → caught up\t%s\n", ms(r.FollowerCatchUp))
	tw.Flush()
}

// profileCPU records 5 s of the CPU profile of the config node at url (the
// placement's first 5 s) into file (nothing when file is ""); the function
// it returns waits for the file.
func profileCPU(ctx context.Context, file, url string) func() error {
	if file == "" {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/debug/pprof/profile?seconds=5", nil)
		req.Header.Set("Authorization", "Bearer "+scaleToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- fmt.Errorf("cpu profile of %s: %w", url, err)
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("cpu profile of %s: status %s: %s", url, resp.Status, b)
		}
		if err == nil {
			err = os.WriteFile(file, b, 0o644)
		}
		done <- err
	}()
	return func() error { return <-done }
}
