package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"github.com/modbot/modbot/internal/ctxsleep"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // the slow-disk fault holds a pod's write lock
)

// Fault is one kind of failure the nemesis injects.
type Fault string

const (
	KillLeader      Fault = "kill -9 leader"
	KillFollower    Fault = "kill -9 follower"
	PauseLeader     Fault = "SIGSTOP leader"
	PauseFollower   Fault = "SIGSTOP follower"
	IsolateLeader   Fault = "partition leader from followers"
	IsolateFollower Fault = "partition follower"
	OneWayLeader    Fault = "one-way: leader cannot send"
	OneWayFollower  Fault = "one-way: follower cannot send"

	KillGateway        Fault = "kill -9 gateway"
	KillGatewayMidMove Fault = "kill -9 gateway mid-move"
	KillMidHandoff     Fault = "kill -9 gateway mid-handoff"
	PauseGateway       Fault = "SIGSTOP gateway"
	GatewayFromConfig  Fault = "partition gateway from config plane"
	GatewayFromPeers   Fault = "partition gateway from other gateways"
	SlowDisk           Fault = "slow disk (SQLite write lock held)"
	RestartProxy       Fault = "kill -9 proxy"
	MoveDuringFaults   Fault = "operator move"
)

// Counter counts faults by kind.
type Counter struct {
	mu sync.Mutex
	n  map[Fault]int
}

// Add counts one fault.
func (c *Counter) Add(f Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[Fault]int{}
	}
	c.n[f]++
}

// Merge adds every count of o.
func (c *Counter) Merge(o *Counter) {
	o.mu.Lock()
	m := make(map[Fault]int, len(o.n))
	for k, v := range o.n {
		m[k] = v
	}
	o.mu.Unlock()
	for k, v := range m {
		for range v {
			c.Add(k)
		}
	}
}

// Total is the number of faults.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := 0
	for _, v := range c.n {
		t += v
	}
	return t
}

// String lists the counts, most frequent first.
func (c *Counter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	type kv struct {
		k Fault
		v int
	}
	var all []kv
	for k, v := range c.n {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].v != all[j].v {
			return all[i].v > all[j].v
		}
		return all[i].k < all[j].k
	})
	var b strings.Builder
	for i, e := range all {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", e.k, e.v)
	}
	return b.String()
}

// ControlNemesis injects control-plane faults into s until ctx ends: each
// fault lasts hold, then is healed (a killed node restarts on its data),
// then the cluster gets settle to recover.
type ControlNemesis struct {
	S      *System
	Rng    *rand.Rand
	Faults Counter
	Log    func(format string, args ...any)
}

var controlFaults = []Fault{KillLeader, KillFollower, PauseLeader, PauseFollower, IsolateLeader, IsolateFollower, OneWayLeader, OneWayFollower}

// Run injects faults until ctx ends, and heals everything before it returns.
func (n *ControlNemesis) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if !sleep(ctx, jitter(n.Rng, 500*time.Millisecond, 2*time.Second)) {
			break
		}
		f := controlFaults[n.Rng.IntN(len(controlFaults))]
		heal, err := n.inject(ctx, f)
		if err != nil {
			n.Log("nemesis: %s: %v", f, err)
			continue
		}
		n.Faults.Add(f)
		sleep(ctx, jitter(n.Rng, time.Second, 4*time.Second))
		if err := heal(); err != nil {
			n.Log("nemesis: heal %s: %v", f, err)
		}
	}
}

// target picks the leader or a follower; -1 when no leader is known.
func (n *ControlNemesis) target(ctx context.Context, leader bool) int {
	l := n.S.Leader(ctx)
	if l < 0 {
		return -1
	}
	if leader {
		return l
	}
	f := n.Rng.IntN(len(n.S.Config) - 1)
	if f >= l {
		f++
	}
	return f
}

func (n *ControlNemesis) inject(ctx context.Context, f Fault) (func() error, error) {
	leader := f == KillLeader || f == PauseLeader || f == IsolateLeader || f == OneWayLeader
	i := n.target(ctx, leader)
	if i < 0 {
		return nil, fmt.Errorf("no leader known")
	}
	return InjectNode(n.S, n.S.Config, i, f)
}

// InjectNode applies a kill, pause or partition fault to procs[i], isolating
// it from the other processes of procs; the returned function heals it.
func InjectNode(s *System, procs []*Proc, i int, f Fault) (func() error, error) {
	p := procs[i]
	var others []*Host
	for j, q := range procs {
		if j != i {
			others = append(others, q.Host)
		}
	}
	switch f {
	case KillLeader, KillFollower, KillGateway, KillGatewayMidMove, RestartProxy:
		if err := p.Kill(); err != nil {
			return nil, err
		}
		return p.Start, nil
	case PauseLeader, PauseFollower, PauseGateway:
		if err := p.Pause(); err != nil {
			return nil, err
		}
		return p.Resume, nil
	case IsolateLeader, IsolateFollower:
		if err := s.Net.Partition([]*Host{p.Host}, others); err != nil {
			return nil, err
		}
		return s.Net.Heal, nil
	case OneWayLeader, OneWayFollower:
		for _, o := range others {
			if err := s.Net.Cut(p.Host, o); err != nil {
				return nil, err
			}
		}
		return s.Net.Heal, nil
	}
	return nil, fmt.Errorf("InjectNode cannot inject %q", f)
}

// HoldWriteLock takes the SQLite write lock of the database at path from
// this process (BEGIN IMMEDIATE) — what a stalled disk, a long checkpoint or
// a backup does to the pod's single writer — and returns the release.
func HoldWriteLock(ctx context.Context, path string) (func() error, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=10000&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		conn.Close()
		db.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() {
			_, err = conn.ExecContext(context.Background(), "ROLLBACK")
			conn.Close()
			db.Close()
		})
		return err
	}, nil
}

func jitter(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)+1))
}

var sleep = ctxsleep.Sleep
