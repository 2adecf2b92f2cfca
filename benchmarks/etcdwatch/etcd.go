package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/modbot/modbot/benchmarks"
)

// etcdCluster is etcd members embedded in this process, on loopback, with
// etcd's defaults (fsync on, 100 ms heartbeat): the reference the watch
// fan-out of modbot's config nodes is compared with.
type etcdCluster struct {
	members    []*embed.Etcd
	clientURLs []string
}

// freeLoopbackURL reserves a port on 127.0.0.1 and gives it back, for a
// member's peer or client listener (embed takes URLs, not listeners).
func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("reserve a loopback port: %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

// startEtcd starts size members under dir and waits until they serve.
func startEtcd(ctx context.Context, dir string, size int) (*etcdCluster, error) {
	cfgs := make([]*embed.Config, size)
	var initial []string
	for i := range cfgs {
		peer, err := freeLoopbackURL()
		if err != nil {
			return nil, err
		}
		client, err := freeLoopbackURL()
		if err != nil {
			return nil, err
		}
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("etcd-%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.InitialClusterToken = "modbot-etcdwatch"
		cfg.ClusterState = embed.ClusterStateFlagNew
		// Quiet: a member's failures reach us through StartEtcd, Err and
		// the clients; its shutdown logs errors for every closed listener.
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfgs[i] = cfg
		initial = append(initial, cfg.Name+"="+peer.String())
	}
	c := &etcdCluster{}
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("start etcd member %s: %w", cfg.Name, err)
		}
		c.members = append(c.members, e)
		c.clientURLs = append(c.clientURLs, cfg.AdvertiseClientUrls[0].String())
	}
	for _, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			c.Close()
			return nil, fmt.Errorf("etcd member %s: %w", e.Config().Name, err)
		case <-time.After(60 * time.Second):
			c.Close()
			return nil, errors.New("etcd members not ready after 60 s")
		case <-ctx.Done():
			c.Close()
			return nil, ctx.Err()
		}
	}
	return c, nil
}

// leader is the index of the member that is leader, or -1.
func (c *etcdCluster) leader() int {
	for i, e := range c.members {
		if e.Server.Leader() == e.Server.MemberID() {
			return i
		}
	}
	return -1
}

func (c *etcdCluster) Close() {
	for _, e := range c.members {
		e.Close()
	}
}

func (c *etcdCluster) client(endpoint string) (*clientv3.Client, error) {
	cl, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", endpoint, err)
	}
	return cl, nil
}

// etcdMode is how the etcd watchers connect.
type etcdMode int

const (
	// clientPerWatcher gives every watcher its own client (its own gRPC
	// connection), like every modbot watcher has its own SSE connection.
	clientPerWatcher etcdMode = iota
	// sharedClient has one client per member carrying that member's
	// watches on one gRPC stream: what etcd offers that modbot does not.
	sharedClient
)

func (m etcdMode) String() string {
	if m == sharedClient {
		return "shared client per member"
	}
	return "client per watcher"
}

// etcdWatchLatency measures commit → delivery on one fresh etcd cluster the
// way benchmarks.WatchLatencyWith does on modbot's: for each watcher count,
// watchers spread evenly over the members (watcher i on member i%3), then
// warmup+writes sequential Puts through the leader, each sent once every
// watcher has the previous one and o.Gap has passed; latency = just before
// the Put → the event received by the watcher (decoded by the client).
// Bounded by the counts and writes.
func etcdWatchLatency(ctx context.Context, dir string, counts []int, writes int, o benchmarks.WatchOptions, mode etcdMode) ([]benchmarks.WatchResult, error) {
	c, err := startEtcd(ctx, dir, 3)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var out []benchmarks.WatchResult
	for round, n := range counts {
		r, err := etcdWatchRound(ctx, c, fmt.Sprintf("/bench/%d/", round), n, writes, o, mode)
		if err != nil {
			return out, fmt.Errorf("etcd, %s, %d watchers: %w", mode, n, err)
		}
		out = append(out, r)
	}
	return out, nil
}

type etcdStamp struct {
	write int
	at    time.Time
}

func etcdWatchRound(ctx context.Context, c *etcdCluster, prefix string, n, writes int, o benchmarks.WatchOptions, mode etcdMode) (benchmarks.WatchResult, error) {
	res := benchmarks.WatchResult{Watchers: n, Writes: writes}
	total := o.Warmup + writes
	// remaining[k] counts the watchers that have not yet seen write k;
	// the last one closes done[k].
	remaining := make([]atomic.Int64, total)
	done := make([]chan struct{}, total)
	for k := range done {
		remaining[k].Store(int64(n))
		done[k] = make(chan struct{})
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var clients []*clientv3.Client
	defer func() {
		stop()
		wg.Wait()
		for _, cl := range clients {
			_ = cl.Close()
		}
	}()
	shared := make([]*clientv3.Client, len(c.clientURLs))
	if mode == sharedClient {
		for i, u := range c.clientURLs {
			cl, err := c.client(u)
			if err != nil {
				return res, err
			}
			shared[i] = cl
			clients = append(clients, cl)
		}
	}
	stamps := make([][]etcdStamp, n)
	watchErr := make(chan error, n)
	start := time.Now()
	created := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		cl := shared[i%3]
		if mode == clientPerWatcher {
			var err error
			if cl, err = c.client(c.clientURLs[i%3]); err != nil {
				return res, err
			}
			clients = append(clients, cl)
		}
		wch := cl.Watch(rctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		stamps[i] = make([]etcdStamp, 0, total)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wr := range wch {
				if err := wr.Err(); err != nil {
					if rctx.Err() == nil {
						watchErr <- fmt.Errorf("watcher %d: %w", i, err)
					}
					return
				}
				if wr.Created {
					created <- struct{}{}
					continue
				}
				at := time.Now()
				for _, ev := range wr.Events {
					k, err := strconv.Atoi(string(ev.Kv.Value))
					if err != nil || k < 0 || k >= total {
						watchErr <- fmt.Errorf("watcher %d: unexpected value %q", i, ev.Kv.Value)
						return
					}
					stamps[i] = append(stamps[i], etcdStamp{k, at})
					if remaining[k].Add(-1) == 0 {
						close(done[k])
					}
				}
			}
		}()
	}
	syncCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for i := 0; i < n; i++ {
		select {
		case <-created:
		case err := <-watchErr:
			return res, err
		case <-syncCtx.Done():
			return res, fmt.Errorf("watches created: %d of %d: %w", i, n, syncCtx.Err())
		}
	}
	res.Setup = time.Since(start)
	idle, err := benchmarks.MeasureIdleCPU(ctx, o.IdleFor)
	if err != nil {
		return res, err
	}
	res.IdleCPU = idle

	leader := c.leader()
	if leader < 0 {
		return res, errors.New("no etcd leader")
	}
	writer, err := c.client(c.clientURLs[leader])
	if err != nil {
		return res, err
	}
	clients = append(clients, writer)
	sent := make([]time.Time, total)
	var writeDur []time.Duration
	var cpu0 time.Duration
	for k := 0; k < total; k++ {
		if k == o.Warmup {
			cpu0 = benchmarks.ProcessCPU()
		}
		t0 := time.Now()
		if _, err := writer.Put(ctx, prefix+"k", strconv.Itoa(k)); err != nil {
			return res, fmt.Errorf("write %d: %w", k, err)
		}
		if k >= o.Warmup {
			writeDur = append(writeDur, time.Since(t0))
		}
		sent[k] = t0
		select {
		case <-done[k]:
		case err := <-watchErr:
			return res, err
		case <-time.After(30 * time.Second):
			return res, fmt.Errorf("delivery of write %d: %d watchers still waiting after 30 s", k, remaining[k].Load())
		case <-ctx.Done():
			return res, ctx.Err()
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(o.Gap):
		}
	}
	res.CPU = benchmarks.ProcessCPU() - cpu0
	stop()
	wg.Wait()
	var lat, onLeader, onFollowers []time.Duration
	for i := range stamps {
		seen := make([]bool, total)
		for _, s := range stamps[i] {
			if seen[s.write] {
				return res, fmt.Errorf("watcher %d got write %d twice", i, s.write)
			}
			seen[s.write] = true
			if s.write < o.Warmup {
				continue
			}
			d := s.at.Sub(sent[s.write])
			lat = append(lat, d)
			if i%3 == leader {
				onLeader = append(onLeader, d)
			} else {
				onFollowers = append(onFollowers, d)
			}
		}
		if len(stamps[i]) != total {
			return res, fmt.Errorf("watcher %d got %d of %d writes", i, len(stamps[i]), total)
		}
	}
	res.Latency = benchmarks.PercentilesOf(lat)
	res.OnLeader, res.OnFollowers = benchmarks.PercentilesOf(onLeader), benchmarks.PercentilesOf(onFollowers)
	res.Write = benchmarks.PercentilesOf(writeDur)
	return res, nil
}
