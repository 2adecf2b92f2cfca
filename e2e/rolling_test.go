package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestARollingRestartLosesNoMessage restarts every gateway pod in turn as
// Kubernetes does (SIGTERM: the pod hands its shards over, stops, starts
// again) under 200 messages/s: every message is stored exactly once in its
// guild's owner. Each handoff must complete (Leave returns nil) and the
// largest delay from sending a message to its row existing is reported.
func TestARollingRestartLosesNoMessage(t *testing.T) {
	s := newSystem(t, 6)
	s.Discord.Seed(12)
	for i := 0; i < 3; i++ {
		s.addGateway()
	}
	s.waitSettled(30 * time.Second)
	guilds := s.Discord.Guilds()
	owner := map[uint64]int{}
	for _, g := range guilds {
		owner[g.ID] = s.podIndex(s.owner(g.ID).Owner)
	}

	// sentAt[i] holds the send times of guild i's messages, in order.
	var mu sync.Mutex
	sentAt := make([][]time.Time, len(guilds))
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // ~200 messages/s: 12 guilds every 60 ms; bounded
		defer wg.Done()
		tick := time.NewTicker(60 * time.Millisecond)
		defer tick.Stop()
		for round := 0; round < 3000; round++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for i, g := range guilds {
				if _, err := s.Discord.SendMessage(g.ID, 0, uint64(3000+round), "rolling"); err == nil {
					mu.Lock()
					sentAt[i] = append(sentAt[i], time.Now())
					mu.Unlock()
					sent.Add(1)
				}
			}
		}
	}()
	// The poller: when guild i's row count reaches c, messages up to c are
	// stored; their delay is now minus their send time (within 25 ms).
	var delays []time.Duration
	stored := make([]int, len(guilds))
	pollStop := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		for {
			select {
			case <-pollStop:
				return
			case <-time.After(25 * time.Millisecond):
			}
			for i, g := range guilds {
				db, err := s.DB(owner[g.ID])
				if err != nil {
					continue
				}
				var c int
				if db.QueryRow(`SELECT count(*) FROM messages WHERE guild_id = ?`, g.ID).Scan(&c) != nil {
					continue
				}
				now := time.Now()
				mu.Lock()
				for ; stored[i] < c && stored[i] < len(sentAt[i]); stored[i]++ {
					delays = append(delays, now.Sub(sentAt[i][stored[i]]))
				}
				mu.Unlock()
			}
		}
	}()

	waitFor(t, 10*time.Second, "traffic flowing", func() bool { return sent.Load() > 200 })
	for i := 0; i < 3; i++ {
		took, err := s.StopGateway(i, 20*time.Second)
		if err != nil {
			t.Fatalf("gateway-%d's shards were not handed over: %v", i, err)
		}
		sl, err := s.Client.Shards(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, sh := range sl.Shards {
			if sh.Holder == fmt.Sprintf("gateway-%d", i) || sh.Holder == "" {
				t.Fatalf("after gateway-%d left, shard %d is held by %q", i, sh.Shard, sh.Holder)
			}
		}
		t.Logf("gateway-%d handed its shards over in %s, at %d messages", i, took.Round(time.Millisecond), sent.Load())
		time.Sleep(time.Second) // down for a while, under traffic
		s.startGateway(i)
		s.waitSettled(30 * time.Second)
	}
	mark := sent.Load()
	waitFor(t, 10*time.Second, "traffic after the last restart", func() bool { return sent.Load() > mark+200 })
	close(stop)
	wg.Wait()

	deadline := time.Now().Add(60 * time.Second)
	for {
		var short []string
		mu.Lock()
		for i, g := range guilds {
			if got, want := s.rows(owner[g.ID], "messages", g.ID), len(sentAt[i]); got != want {
				short = append(short, fmt.Sprintf("guild %d on gateway-%d: %d rows of %d sent", g.ID, owner[g.ID], got, want))
			}
		}
		mu.Unlock()
		if len(short) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every message stored exactly once after 60s:\n%s", strings.Join(short, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(pollStop)
	<-pollDone
	for _, g := range guilds {
		if s.owner(g.ID).Owner != fmt.Sprintf("gateway-%d", owner[g.ID]) {
			t.Errorf("guild %d changed owner during a rolling restart", g.ID)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(delays)
	if len(delays) == 0 {
		t.Fatal("no delay measured")
	}
	p := func(q float64) time.Duration { return delays[int(q*float64(len(delays)-1))].Round(time.Millisecond) }
	t.Logf("%d messages, 0 lost, 0 duplicated; send → stored delay p50 %s, p99 %s, max %s", sent.Load(), p(0.5), p(0.99), p(1))
}
