package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/benchmarks"
)

// TestCompareWatchDeliversEveryWriteToEveryWatcher runs the side-by-side
// harness at toy size: 10 watchers over the 3 nodes of each system, a few
// writes. Each system's measurement fails unless every watcher received
// every write (etcd: exactly once), so a full sample count for both means
// the harness measured what it says.
func TestCompareWatchDeliversEveryWriteToEveryWatcher(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := compareOptions{Watchers: []int{10}, Writes: 5, Runs: 1, Shared: true,
		Watch: benchmarks.WatchOptions{Warmup: 2, Gap: time.Millisecond, IdleFor: 100 * time.Millisecond}}
	systems, err := compareWatch(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(systems) != 3 {
		t.Fatalf("%d systems measured, want modbot and two etcd modes", len(systems))
	}
	for _, s := range systems {
		r := s.runs[0][0]
		if r.Latency.N != 10*5 {
			t.Errorf("%s: %d samples, want %d (10 watchers × 5 writes)", s.name, r.Latency.N, 10*5)
		}
		if r.OnLeader.N == 0 || r.OnFollowers.N == 0 {
			t.Errorf("%s: watchers on leader %d, on followers %d samples: want both", s.name, r.OnLeader.N, r.OnFollowers.N)
		}
		if r.IdleCPU <= 0 {
			t.Errorf("%s: idle CPU %v not measured", s.name, r.IdleCPU)
		}
		if r.Latency.P50 <= 0 || r.Latency.P99 < r.Latency.P50 {
			t.Errorf("%s: p50 %s, p99 %s", s.name, r.Latency.P50, r.Latency.P99)
		}
	}
	var b strings.Builder
	printComparison(&b, o, systems)
	if !strings.Contains(b.String(), "p99 ratio modbot/etcd") {
		t.Errorf("table without the ratio column:\n%s", b.String())
	}
	t.Log("\n" + b.String())
}

// TestEtcdWatchRoundFailsOnAForeignEvent checks the etcd side's
// own check of what it receives: an event under the round's prefix that is
// not one of its writes fails the round instead of being counted.
func TestEtcdWatchRoundFailsOnAForeignEvent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := startEtcd(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	// A value outside the round's range is refused by every watcher.
	cl, err := c.client(c.clientURLs[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	done := make(chan error, 1)
	go func() {
		_, err := etcdWatchRound(ctx, c, "/t/", 3, 50, benchmarks.WatchOptions{Gap: 20 * time.Millisecond}, clientPerWatcher)
		done <- err
	}()
	// Once the round is writing, put a foreign value under its prefix.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := cl.Get(ctx, "/t/k")
		if err == nil && len(resp.Kvs) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the round never wrote")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := cl.Put(ctx, "/t/k", "not-a-write"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "unexpected value") {
			t.Fatalf("round error = %v, want an unexpected value", err)
		}
	case <-ctx.Done():
		t.Fatal("round did not end")
	}
}
