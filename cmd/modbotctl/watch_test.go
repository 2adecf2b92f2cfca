package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/systest"
)

// lines splits what the command printed into its lines.
func lines(out *systest.LockedBuffer) []string {
	var ls []string
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		ls = append(ls, sc.Text())
	}
	return ls
}

// watchNode serves GET /v1/watch with progress from p every 20 ms, after
// the frames of the revisions in changes that follow from.
func watchNode(t *testing.T, p assignments.Progress, changes map[uint64][]fsm.Event) string {
	t.Helper()
	frames := map[uint64][]byte{}
	for rev, evs := range changes {
		b, _, err := assignments.AppendChangeFrames(nil, rev, evs)
		if err != nil {
			t.Fatal(err)
		}
		frames[rev] = b
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		from, err := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for rev := from + 1; frames[rev] != nil; rev++ {
			if _, err := w.Write(frames[rev]); err != nil {
				return
			}
		}
		for {
			if _, err := w.Write(assignments.AppendProgressFrame(nil, p)); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// `modbotctl watch` prints every event of a revision split over several
// frames, and leaves a node that knows no leader for one that does.
func TestWatchPrintsWholeRevisionsFromANodeThatKnowsALeader(t *testing.T) {
	saved := watchStaleAfter
	watchStaleAfter = 200 * time.Millisecond
	t.Cleanup(func() { watchStaleAfter = saved })
	const n = 7_000 // two frames
	evs := make([]fsm.Event, n)
	for i := range evs {
		evs[i] = fsm.Event{Revision: 6, Type: fsm.EventGuild, Cause: fsm.CmdPlaceGuilds,
			Guild: &fsm.Guild{ID: uint64(1_000_000+i) << 22, Owner: "gateway-0", State: fsm.GuildActive, Epoch: 6, Revision: 6}}
	}
	if _, frames, _ := assignments.AppendChangeFrames(nil, 6, evs); frames < 2 {
		t.Fatalf("%d frames", frames)
	}
	cut := watchNode(t, assignments.Progress{Revision: 5, Node: "config-2", Leader: "", NodeRevision: 5, LeaderContactMs: -1}, nil)
	healthy := watchNode(t, assignments.Progress{Revision: 6, Node: "config-0", Leader: "config-0", NodeRevision: 6, Term: 2}, map[uint64][]fsm.Event{6: evs})
	client, err := assignments.NewClient([]string{cut, healthy}, "")
	if err != nil {
		t.Fatal(err)
	}
	out := &systest.LockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmdWatch(ctx, &ctl{client: client, output: "json", out: out}, []string{"--from", "5"}) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(lines(out)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d events printed, want %d", len(lines(out)), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i, l := range lines(out) {
		var e fsm.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.Revision != 6 || e.Guild == nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		seen[e.Guild.ID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct guilds printed, want %d", len(seen), n)
	}
}
