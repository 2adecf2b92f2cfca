package assignments

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
)

// placement is one revision placing n guilds, the way fsm emits it.
func placement(rev uint64, n int) []fsm.Event { return placementFrom(rev, 0, n) }

// placementFrom places the n guilds snowflake(first) … snowflake(first+n-1).
func placementFrom(rev uint64, first, n int) []fsm.Event {
	evs := make([]fsm.Event, n)
	for i := range evs {
		id := snowflake(first + i)
		evs[i] = fsm.Event{Revision: rev, Type: fsm.EventGuild, At: 1_700_000_000_000, Cause: fsm.CmdPlaceGuilds,
			Guild: &fsm.Guild{ID: id, Owner: fmt.Sprintf("gateway-%d", i%3), State: fsm.GuildActive, Epoch: rev, Revision: rev}}
	}
	return evs
}

func snowflake(i int) uint64 { return uint64(1_000_000_000_000+i)<<22 | uint64(i%4096) }

// hugePod is an event larger than any frame on its own (the API accepts a
// 4 MiB body; nothing bounds a pod's address but that).
func hugePod(rev uint64, size int) fsm.Event {
	return fsm.Event{Revision: rev, Type: fsm.EventPod, Cause: fsm.CmdRegisterPod,
		Pod: &fsm.Pod{ID: "gateway-9", Ordinal: 9, Addr: `"é<` + strings.Repeat("a", size), State: fsm.PodActive}}
}

type rawFrame struct {
	lines []string
	msg   SSEMessage
}

// rawFrames splits an encoded stream into its frames, line by line, with
// no line limit.
func rawFrames(t *testing.T, b []byte) []rawFrame {
	t.Helper()
	var out []rawFrame
	var cur rawFrame
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			out = append(out, cur)
			cur = rawFrame{}
			continue
		}
		cur.lines = append(cur.lines, line)
		field, value, _ := strings.Cut(line, ": ")
		switch field {
		case "id":
			cur.msg.ID = value
		case "event":
			cur.msg.Event = value
		case "data":
			cur.msg.Data = value
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEveryFrameFitsTheReaderWhateverTheRevisionSize(t *testing.T) {
	cases := []struct {
		name   string
		events []fsm.Event
	}{
		{"empty", nil},
		{"one event", placement(7, 1)},
		{"the largest placement the API accepts", placement(7, 100_000)},
		{"an event larger than a frame, between others", append(append(placement(7, 10), hugePod(7, 3*MaxFrameBytes)), placement(7, 10)...)},
		{"an event larger than a frame, last", append(placement(7, 10), hugePod(7, 2*MaxFrameBytes+5))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, n, err := AppendChangeFrames(nil, 7, tc.events)
			if err != nil {
				t.Fatal(err)
			}
			frames := rawFrames(t, b)
			if len(frames) != n {
				t.Fatalf("%d frames, AppendChangeFrames said %d", len(frames), n)
			}
			longest := 0
			for i, f := range frames {
				for _, l := range f.lines {
					longest = max(longest, len(l))
				}
				last := i == len(frames)-1
				if (f.msg.ID != "") != last || (last && f.msg.ID != "7") || f.msg.Event != SSEChange {
					t.Fatalf("frame %d of %d: id %q event %q; want the id 7 on the last frame only", i, len(frames), f.msg.ID, f.msg.Event)
				}
			}
			if longest > MaxFrameBytes {
				t.Fatalf("a line of %d bytes, limit %d", longest, MaxFrameBytes)
			}
			t.Logf("%d events: %d bytes in %d frames, longest line %d bytes", len(tc.events), len(b), n, longest)
			// And the reader reads every one of them.
			rd := NewSSEReader(bytes.NewReader(b))
			for i := range frames {
				if _, err := rd.Next(); err != nil {
					t.Fatalf("reader on frame %d: %v", i, err)
				}
			}
		})
	}
}

func TestReaderReadsLinesUpToMaxFrameBytesAndNoLonger(t *testing.T) {
	line := func(n int) string { return "data: " + strings.Repeat("x", n-len("data: ")) + "\n\n" }
	m, err := NewSSEReader(strings.NewReader(line(MaxFrameBytes))).Next()
	if err != nil || len(m.Data) != MaxFrameBytes-len("data: ") {
		t.Fatalf("a line of MaxFrameBytes: %d bytes of data, %v", len(m.Data), err)
	}
	if _, err := NewSSEReader(strings.NewReader(line(MaxFrameBytes + 3))).Next(); !errors.Is(err, bufio.ErrTooLong) {
		t.Fatalf("a longer line: %v, want bufio.ErrTooLong", err)
	}
}

func TestFragmentsReassembleIntoTheRevisionTheServerEncoded(t *testing.T) {
	revs := [][]fsm.Event{
		placement(5, 3),
		placement(6, 6_500), // two frames
		append(append(placement(7, 2), hugePod(7, 2*MaxFrameBytes)), placement(7, 2)...),
		{hugePod(8, MaxFrameBytes+1)},
		nil,
	}
	var b []byte
	b = AppendProgressFrame(b, Progress{Revision: 4, Node: "config-0", Leader: "config-0"})
	for i, evs := range revs {
		var err error
		if b, _, err = AppendChangeFrames(b, uint64(5+i), evs); err != nil {
			t.Fatal(err)
		}
	}
	b = AppendProgressFrame(b, Progress{Revision: 9, Node: "config-0", Leader: "config-0", NodeRevision: 9, Term: 3, LeaderContactMs: 12})
	s := newStream("test", io.NopCloser(bytes.NewReader(b)))
	m, err := s.Next()
	if err != nil || m.Progress == nil || m.Progress.Revision != 4 {
		t.Fatalf("first message %+v, %v; want progress at 4", m, err)
	}
	for i, want := range revs {
		m, err := s.Next()
		if err != nil || m.Change == nil {
			t.Fatalf("revision %d: %+v, %v", 5+i, m, err)
		}
		if m.Change.Revision != uint64(5+i) || len(m.Change.Events) != len(want) || (len(want) > 0 && !reflect.DeepEqual(m.Change.Events, want)) {
			t.Fatalf("revision %d: got revision %d with %d events, want %d events as encoded", 5+i, m.Change.Revision, len(m.Change.Events), len(want))
		}
	}
	m, err = s.Next()
	if err != nil || m.Progress == nil || *m.Progress != (Progress{Revision: 9, Node: "config-0", Leader: "config-0", NodeRevision: 9, Term: 3, LeaderContactMs: 12}) {
		t.Fatalf("last message %+v, %v", m.Progress, err)
	}
	if _, err := s.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("after the end: %v", err)
	}
}

func TestStreamRefusesARevisionThatEndsOrIsInterruptedBeforeItsLastFragment(t *testing.T) {
	// Cheap to decode: a few events, then one event in four chunks.
	big, n, err := AppendChangeFrames(nil, 6, append(placement(6, 10), hugePod(6, 3*MaxFrameBytes)))
	if err != nil || n < 3 {
		t.Fatalf("%d frames, %v", n, err)
	}
	frames := bytes.SplitAfter(big, []byte("\n\n"))
	cut := bytes.Join(frames[:2], nil)
	cases := map[string][]byte{
		"the stream ends":          cut,
		"a progress interrupts it": AppendProgressFrame(append([]byte(nil), cut...), Progress{Revision: 5}),
		"another revision starts":  append(append([]byte(nil), cut...), must(AppendChangeFrames(nil, 7, placement(7, 1)))...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			s := newStream("test", io.NopCloser(bytes.NewReader(b)))
			m, err := s.Next()
			if err == nil {
				t.Fatalf("got %+v, want an error", m)
			}
			if !strings.Contains(err.Error(), "revision 6") {
				t.Fatalf("error %q does not name revision 6", err)
			}
		})
	}
}

func must(b []byte, _ int, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestGoneEndsTheStreamAs410(t *testing.T) {
	b := AppendGoneFrame(nil, ErrorBody{Error: "history compacted; relist", OldestRevision: 40})
	_, err := newStream("http://node", io.NopCloser(bytes.NewReader(b))).Next()
	var apiErr *APIError
	if !IsStatus(err, 410) || !errors.As(err, &apiErr) || apiErr.Body.OldestRevision != 40 {
		t.Fatalf("error %v, want 410 with oldest revision 40", err)
	}
}

func TestProgressProvesCurrencyOnlyWithALeaderAndNoLag(t *testing.T) {
	learned := Learned{Revision: 50, Term: 4}
	cases := []struct {
		p    Progress
		want string // "" when current; else a part of the reason
	}{
		{Progress{Node: "c0", Leader: "c0", Revision: 50, NodeRevision: 50, Term: 4}, ""},
		{Progress{Node: "c1", Leader: "c0", Revision: 50, NodeRevision: 60, Term: 5, LeaderContactMs: 40}, ""},
		{Progress{Node: "c1", Leader: "c0", Revision: 50}, ""}, // a node predating the new fields
		{Progress{Node: "c2", Leader: "", Revision: 50, NodeRevision: 50, Term: 4, LeaderContactMs: -1}, "knows no leader"},
		{Progress{Node: "c2", Leader: "c0", Revision: 50, NodeRevision: 50, Term: 4, LeaderContactMs: -1}, "no contact"},
		{Progress{Node: "c2", Leader: "c0", Revision: 50, NodeRevision: 50, Term: 4, LeaderContactMs: 11_000}, "last heard"},
		{Progress{Node: "c2", Leader: "c0", Revision: 50, NodeRevision: 50, Term: 3}, "term 3"},
		{Progress{Node: "c2", Leader: "c0", Revision: 50, NodeRevision: 49, Term: 4}, "revision 49"},
		{Progress{Node: "c2", Leader: "c0", Revision: 5, Term: 4}, "revision 5"},
	}
	for i, tc := range cases {
		err := tc.p.CheckCurrent(learned, 10*time.Second)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("case %d %+v: %v, want current", i, tc.p, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("case %d %+v: %v, want %q", i, tc.p, err, tc.want)
		}
	}
	at := time.Now()
	if got := (Progress{LeaderContactMs: 250}).ProvenAt(at); at.Sub(got) != 250*time.Millisecond {
		t.Errorf("ProvenAt %s before receipt, want 250ms", at.Sub(got))
	}
	if got := (Progress{LeaderContactMs: -1}).ProvenAt(at); !got.Equal(at) {
		t.Errorf("ProvenAt with unknown contact moved by %s", at.Sub(got))
	}
}
