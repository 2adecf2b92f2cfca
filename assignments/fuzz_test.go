package assignments

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/modbot/modbot/fsm"
)

// The fuzz targets of the watch stream's client side. Run one with
//
//	go test -run '^$' -fuzz '^FuzzSSEReader$' -fuzztime 10s ./assignments/

// chunkedReader returns at most step bytes per Read (and fewer, every
// other time), so a body reaches the reader in arbitrary pieces, as a
// network would deliver it.
type chunkedReader struct {
	b    []byte
	step int
	odd  bool
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.b), r.step)
	if r.odd && n > 1 {
		n = n/2 + 1
	}
	r.odd = !r.odd
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

func newChunkedReader(b []byte, step uint16) io.Reader {
	if step == 0 {
		return bytes.NewReader(b) // all at once
	}
	// At most ~128 reads of a large body: bufio.Scanner looks for the end
	// of the line in all it holds after every read, so reads of a few bytes
	// each make a 1 MiB line quadratic (a network delivers kilobytes).
	return &chunkedReader{b: b, step: max(int(step), len(b)/64)}
}

// expandBody turns a fuzz input into a response body: a NUL byte followed
// by k stands for k·8 KiB of "x", so that small inputs can reach lines
// around MaxFrameBytes. The body is at most 6 MiB.
func expandBody(tmpl []byte) []byte {
	const unit, limit = 8 << 10, 6 << 20
	var out []byte
	for i := 0; i < len(tmpl) && len(out) < limit; i++ {
		if tmpl[i] == 0 && i+1 < len(tmpl) {
			n := min(int(tmpl[i+1])*unit, limit-len(out))
			out = append(out, bytes.Repeat([]byte("x"), n)...)
			i++
			continue
		}
		out = append(out, tmpl[i])
	}
	return out
}

// sseLineLimit is the longest line NewSSEReader reads, counting its
// terminator: the scanner's buffer of MaxFrameBytes+2 (a line of
// MaxFrameBytes and its "\r\n").
const sseLineLimit = MaxFrameBytes + 2

// referenceSSE is an independent reading of the SSE subset SSEReader
// implements: lines end with "\n" (a "\r" before it is dropped); a blank
// line ends a message if any field line preceded it; ":" starts a comment;
// "field: value" (one space after the colon is dropped) sets id and event,
// and data lines are joined with "\n"; other fields only start a message. A
// message not ended by a blank line is incomplete and never returned (a
// final "\r" does end one: CR alone terminates a line in SSE). A
// line that does not fit sseLineLimit ends the stream with tooLong.
func referenceSSE(body []byte) (msgs []SSEMessage, tooLong bool) {
	var m SSEMessage
	var data []string
	seen := false
	for rest := body; len(rest) > 0; {
		i := bytes.IndexByte(rest[:min(len(rest), sseLineLimit)], '\n')
		var line string
		switch {
		case i >= 0:
			line = string(bytes.TrimSuffix(rest[:i], []byte("\r")))
			rest = rest[i+1:]
		case string(rest) == "\r":
			// A final "\r" ends a blank line (CR is an SSE line terminator).
			rest = nil
		default:
			// The last line, unterminated: it cannot complete a message.
			return msgs, len(rest) >= sseLineLimit
		}
		switch {
		case line == "":
			if seen {
				m.Data = strings.Join(data, "\n")
				msgs = append(msgs, m)
			}
			m, data, seen = SSEMessage{}, nil, false
		case line[0] == ':':
		default:
			seen = true
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				m.ID = value
			case "event":
				m.Event = value
			case "data":
				data = append(data, value)
			}
		}
	}
	return msgs, false
}

// FuzzSSEReader gives arbitrary bytes, as a response body delivered in
// arbitrary pieces, to the SSE reader of the watch stream. Properties:
// it never panics and always ends with an error (io.EOF, or
// bufio.ErrTooLong for a line over the documented MaxFrameBytes bound,
// after which it returns nothing more); it returns exactly the messages an
// independent reading of the format finds, however the body is split
// across reads (so a message split over reads is reassembled whole, and an
// unterminated one is never returned); and no message carries a line
// beyond the bound: a message with one data line has at most MaxFrameBytes
// of data.
func FuzzSSEReader(f *testing.F) {
	var stream []byte
	stream = AppendProgressFrame(stream, Progress{Revision: 4, Node: "config-0", Leader: "config-0", Term: 2})
	stream, _, _ = AppendChangeFrames(stream, 5, placement(5, 3))
	stream = AppendGoneFrame(stream, ErrorBody{Error: "history compacted; relist", OldestRevision: 40})
	f.Add(stream, uint16(0))
	f.Add(stream, uint16(7))
	f.Add(stream[:len(stream)-1], uint16(1))
	f.Add([]byte(": comment\r\nid: 9\r\nevent: change\r\ndata: a\r\ndata:b\r\nretry: 5\r\n\r\n\n\nevent\n\n"), uint16(3))
	f.Add([]byte("data: \x00\x80\n\n"), uint16(0))                       // a line of MaxFrameBytes-ish
	f.Add([]byte("data: \x00\x80\x00\x01\n\n"), uint16(4096))            // over the bound
	f.Add([]byte("data: \x00\x7f\x00\x01data: \x00\x50\n\n"), uint16(0)) // near the bound
	f.Add([]byte("data: x\n\ndata: \x00\xff"), uint16(100))              // a long unterminated tail

	f.Fuzz(func(t *testing.T, tmpl []byte, step uint16) {
		body := expandBody(tmpl)
		want, tooLong := referenceSSE(body)
		rd := NewSSEReader(newChunkedReader(body, step))
		var got []SSEMessage
		var err error
		for range len(body) + 2 {
			var m SSEMessage
			if m, err = rd.Next(); err != nil {
				break
			}
			got = append(got, m)
		}
		if err == nil {
			t.Fatalf("%d messages from %d bytes and still no end", len(got), len(body))
		}
		switch {
		case tooLong && !errors.Is(err, bufio.ErrTooLong):
			t.Fatalf("a line over the bound: err %v, want bufio.ErrTooLong", err)
		case !tooLong && !errors.Is(err, io.EOF):
			t.Fatalf("end of the body: err %v, want io.EOF", err)
		}
		if _, again := rd.Next(); again == nil {
			t.Fatal("a message after the end")
		}
		if len(got) != len(want) {
			t.Fatalf("%d messages, want %d:\ngot  %.300q\nwant %.300q", len(got), len(want), got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("message %d: got %.200q, want %.200q", i, got[i], want[i])
			}
			if !strings.Contains(got[i].Data, "\n") && len(got[i].Data) > MaxFrameBytes {
				t.Fatalf("message %d: %d bytes of data from one line, bound %d", i, len(got[i].Data), MaxFrameBytes)
			}
		}
	})
}

// finalRevisions lists, in order, the revisions of the change frames of a
// body that end a revision (no "more"), per the reference reading.
func finalRevisions(body []byte) map[uint64]int {
	out := map[uint64]int{}
	msgs, _ := referenceSSE(body)
	for _, m := range msgs {
		var f ChangeFrame
		if m.Event == SSEChange && json.Unmarshal([]byte(m.Data), &f) == nil && !f.More {
			out[f.Revision]++
		}
	}
	return out
}

// FuzzStream gives arbitrary bytes, as a response body, to Stream.Next,
// which reassembles a revision's fragments and chunks. Properties: it never
// panics and ends with an error; every message has exactly one of Change
// and Progress; a returned revision is one whose last fragment (a change
// frame without "more") is in the body, never one cut short; `event:
// gone` is a 410 *APIError.
func FuzzStream(f *testing.F) {
	var b []byte
	b = AppendProgressFrame(b, Progress{Revision: 4, Node: "config-0", Leader: "config-0", NodeRevision: 4, Term: 2, LeaderContactMs: 3})
	b, _, _ = AppendChangeFrames(b, 5, placement(5, 2))
	b, _, _ = AppendChangeFrames(b, 6, nil)
	f.Add(b, uint16(0))
	f.Add(AppendGoneFrame(nil, ErrorBody{Error: "history compacted; relist", OldestRevision: 40}), uint16(5))
	// Hand-made fragments and chunks (the server's look the same, but its
	// chunks are only used for events over 1 MiB).
	ev, _ := json.Marshal(placement(7, 1)[0])
	half := len(ev) / 2
	chunk := func(piece []byte, more bool) []byte {
		fr, _ := json.Marshal(ChangeFrame{Revision: 7, More: more, Events: []fsm.Event{}, Chunk: piece, Chunks: 2})
		head := "event: change\n"
		if !more {
			head = "id: 7\n" + head
		}
		return []byte(head + "data: " + string(fr) + "\n\n")
	}
	frag := []byte("event: change\ndata: {\"revision\":7,\"more\":true,\"events\":[" + string(ev) + "]}\n\n")
	chunked := append(append(append([]byte(nil), frag...), chunk(ev[:half], true)...), chunk(ev[half:], false)...)
	f.Add(chunked, uint16(0))
	f.Add(chunked[:len(chunked)-3], uint16(2))
	f.Add(append(append([]byte(nil), frag...), AppendProgressFrame(nil, Progress{Revision: 7})...), uint16(0))
	f.Add([]byte("event: change\ndata: {\"revision\":7,\"chunk\":\"e30=\",\"chunks\":-3}\n\nid: 8\nevent: change\ndata: {\"revision\":7}\n\n"), uint16(0))
	f.Add([]byte("event: progress\ndata: nope\n\nevent: unknown\ndata: {}\n\n"), uint16(1))

	f.Fuzz(func(t *testing.T, tmpl []byte, step uint16) {
		body := expandBody(tmpl)
		finals := finalRevisions(body)
		s := newStream("fuzz", io.NopCloser(newChunkedReader(body, step)))
		var err error
		for range len(body) + 2 {
			var m WatchMessage
			if m, err = s.Next(); err != nil {
				break
			}
			if (m.Change == nil) == (m.Progress == nil) {
				t.Fatalf("message %+v: want exactly one of Change and Progress", m)
			}
			if c := m.Change; c != nil {
				if finals[c.Revision] == 0 {
					t.Fatalf("revision %d returned, but no frame of the body ends it", c.Revision)
				}
				finals[c.Revision]--
			}
		}
		if err == nil {
			t.Fatal("no end")
		}
		if err.Error() == "" {
			t.Fatal("an error without a message")
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) && apiErr.Status != 410 {
			t.Fatalf("API error %+v from a stream", apiErr)
		}
	})
}

// roundTripScript turns fuzz bytes into the revisions and progress
// messages a config node would write.
type scriptItem struct {
	progress *Progress
	rev      uint64
	events   []fsm.Event
}

func roundTripScript(script []byte) []scriptItem {
	var items []scriptItem
	rev := uint64(100)
	huge, bulk := false, false
	cur := -1
	str := func(i int) string {
		// Valid UTF-8 with what JSON escapes: API input always is.
		return strings.ToValidUTF8(string(script[i:min(len(script), i+6)]), "?") + `"é<\`
	}
	for i := 0; i < len(script); i++ {
		b := script[i]
		if cur < 0 && b%8 != 7 {
			rev++
			items = append(items, scriptItem{rev: rev})
			cur = len(items) - 1
		}
		switch b % 8 {
		case 0: // end this revision
			cur = -1
		case 1, 2: // a guild event
			items[cur].events = append(items[cur].events, fsm.Event{Revision: rev, Type: fsm.EventGuild, At: int64(b), Cause: fsm.CmdPlaceGuilds,
				Guild: &fsm.Guild{ID: uint64(i+1) << 22, Owner: "gateway-" + strconv.Itoa(int(b)%3), State: fsm.GuildActive, Epoch: rev, Revision: rev}})
		case 3: // a pod event with an odd address
			items[cur].events = append(items[cur].events, fsm.Event{Revision: rev, Type: fsm.EventPod, Cause: fsm.CmdRegisterPod,
				Pod: &fsm.Pod{ID: "gateway-" + strconv.Itoa(i), Ordinal: i, Addr: str(i), State: fsm.PodActive}})
		case 4: // a placement of several guilds; byte 4 itself (once per input): so many that it takes two frames
			n := int(b / 8)
			if b == 4 && !bulk {
				bulk, n = true, 7000
			}
			items[cur].events = append(items[cur].events, placementFrom(rev, i*10_000, n)...)
		case 5: // a large pod event; byte 5 itself (once per input): larger than a frame, sent in chunks
			size := int(b) * 64
			if b == 5 && !huge {
				huge, size = true, MaxFrameBytes+int(script[(i+1)%len(script)])*1024
			}
			items[cur].events = append(items[cur].events, hugePod(rev, size))
		case 6: // a shard event with a checkpoint
			items[cur].events = append(items[cur].events, fsm.Event{Revision: rev, Type: fsm.EventShard, Cause: fsm.CmdSaveCheckpoints,
				Shard: &fsm.ShardAssignment{Shard: int(b), Holder: "gateway-1", Epoch: rev, Checkpoint: &fsm.Checkpoint{SessionID: str(i), Seq: int64(i), Holder: "gateway-1"}}})
		case 7: // a progress message between revisions
			if cur < 0 {
				items = append(items, scriptItem{progress: &Progress{Revision: rev, Node: "config-1", Leader: "config-0", NodeRevision: rev, Term: uint64(b), LeaderContactMs: int64(i) - 1}})
			}
		}
	}
	return items
}

// FuzzStreamRoundTrip encodes revisions and progress messages with the
// server's encoders (AppendChangeFrames and AppendProgressFrame, which
// confignode/watch.go writes), cuts the stream at an arbitrary byte, and
// delivers it in arbitrary pieces. Properties: the Stream returns exactly
// the messages whose last frame is whole before the cut, each revision with
// every event as encoded and in order (fragments and chunks reassembled),
// and then an error — never a part of a revision; uncut, the whole stream
// comes back and ends with io.ErrUnexpectedEOF.
func FuzzStreamRoundTrip(f *testing.F) {
	f.Add([]byte{1, 2, 0, 7, 3, 6, 0}, uint32(1<<31), uint16(0))
	f.Add([]byte{1, 2, 0, 7, 3, 6, 0}, uint32(120), uint16(9))
	f.Add([]byte{4, 1, 0, 7, 0x24, 0}, uint32(1<<31), uint16(4096)) // several frames
	f.Add([]byte{1, 5, 2, 0, 7}, uint32(1<<31), uint16(0))          // chunks between events
	f.Add([]byte{1, 5, 2, 0, 7}, uint32(1<<20+100), uint16(0))      // cut inside the chunks
	f.Add([]byte{5, 0, 7, 4}, uint32(1<<31), uint16(60000))         // chunked event last
	f.Add([]byte{0, 0, 7, 7}, uint32(1<<31), uint16(1))             // empty revisions

	f.Fuzz(func(t *testing.T, script []byte, cut uint32, step uint16) {
		if len(script) > 64 {
			script = script[:64]
		}
		items := roundTripScript(script)
		var body []byte
		ends := make([]int, len(items)) // where each message's last frame ends
		for i, it := range items {
			if it.progress != nil {
				body = AppendProgressFrame(body, *it.progress)
			} else {
				var err error
				if body, _, err = AppendChangeFrames(body, it.rev, it.events); err != nil {
					t.Fatal(err)
				}
			}
			ends[i] = len(body)
		}
		whole := int(cut) >= len(body)
		if !whole {
			body = body[:cut]
		}
		s := newStream("fuzz", io.NopCloser(newChunkedReader(body, step)))
		for i, it := range items {
			if ends[i] > len(body) {
				break
			}
			m, err := s.Next()
			if err != nil {
				t.Fatalf("message %d of %d (ends at %d of %d bytes): %v", i, len(items), ends[i], len(body), err)
			}
			if it.progress != nil {
				if m.Progress == nil || *m.Progress != *it.progress {
					t.Fatalf("message %d: %+v, want progress %+v", i, m, *it.progress)
				}
				continue
			}
			if m.Change == nil || m.Change.Revision != it.rev || len(m.Change.Events) != len(it.events) {
				t.Fatalf("message %d: %+v, want revision %d with %d events", i, m, it.rev, len(it.events))
			}
			if len(it.events) > 0 && !reflect.DeepEqual(m.Change.Events, it.events) {
				for k := range it.events {
					if !reflect.DeepEqual(m.Change.Events[k], it.events[k]) {
						t.Fatalf("revision %d event %d: got %+v, want %+v", it.rev, k, m.Change.Events[k], it.events[k])
					}
				}
			}
		}
		m, err := s.Next()
		if err == nil {
			t.Fatalf("after every whole message: %+v, want an error", m)
		}
		if whole && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("the end of a whole stream: %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

// Checks that the helpers above can fail: the reference reading is not a
// copy of the reader (it finds what the format says), and the round trip
// sees a lost event.
func TestFuzzHelpersAreNotVacuous(t *testing.T) {
	msgs, tooLong := referenceSSE([]byte("id: 1\r\nevent: change\ndata: a\ndata: b\n\n: c\n\nx\n\ndata: tail"))
	want := []SSEMessage{{ID: "1", Event: "change", Data: "a\nb"}, {}}
	if tooLong || !reflect.DeepEqual(msgs, want) {
		t.Fatalf("reference reading %q (too long %v), want %q", msgs, tooLong, want)
	}
	if _, tooLong := referenceSSE([]byte("data: " + strings.Repeat("x", MaxFrameBytes) + "\n\n")); !tooLong {
		t.Fatal("a line over the bound is not too long for the reference")
	}
	items := roundTripScript([]byte{1, 2, 0, 7, 4, 0})
	if len(items) != 3 || len(items[0].events) != 2 || items[1].progress == nil || len(items[2].events) != 7000 {
		t.Fatalf("script items %+v", items)
	}
	if fmt.Sprint(finalRevisions(must(AppendChangeFrames(nil, 9, placement(9, 7000))))) != "map[9:1]" {
		t.Fatal("a revision in two frames has not exactly one final frame")
	}
}
