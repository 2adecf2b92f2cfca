package assignments

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/modbot/modbot/fsm"
)

// The wire format of GET /v1/watch (DESIGN §6), defined once for the config
// node that writes it (confignode/watch.go), the Stream that reads it, the
// Watcher and `modbotctl watch`.
//
// A stream is Server-Sent Events of three kinds:
//
//	event: change    data: ChangeFrame   one revision's events, or a fragment of them
//	event: progress  data: Progress      the node is alive; what it knows of the cluster
//	event: gone      data: ErrorBody     the node can no longer serve this stream: relist
//
// A revision whose events do not fit in one frame is split over several
// consecutive change frames: every fragment but the last has More set and no
// `id:` line; the last carries `id: <revision>`, so Last-Event-ID names only
// revisions that were sent whole. A reader applies a revision only once its
// last fragment has arrived. Nothing else is sent between the fragments of
// one revision.
const (
	SSEChange   = "change"
	SSEProgress = "progress"
	SSEGone     = "gone"
)

// MaxFrameBytes bounds every line the config nodes write on a watch stream
// (the "data: …" line of one frame is the long one), and NewSSEReader reads
// lines up to this length. The server packs a revision's events into as few
// frames as fit under it, and splits a single event that would not fit on
// its own into base64 chunks, so no command the API accepts makes a frame a
// client cannot read.
const MaxFrameBytes = 1 << 20

// ChangeFrame is the data of one `event: change` frame.
type ChangeFrame struct {
	Revision uint64 `json:"revision"`
	// More is set on every fragment of a revision but the last.
	More   bool        `json:"more,omitempty"`
	Events []fsm.Event `json:"events"`
	// Chunk is a piece of the JSON encoding of one event too large for a
	// frame of its own; Chunks (set on each piece) says how many consecutive
	// frames carry that event. A frame with a chunk carries no Events.
	Chunk  []byte `json:"chunk,omitempty"`
	Chunks int    `json:"chunks,omitempty"`
}

// Progress is the data of an `event: progress` frame. A node sends one when
// the stream opens and at least every few seconds after, idle or not, and
// only between revisions.
type Progress struct {
	// Revision: the stream has delivered every change up to this revision.
	Revision uint64 `json:"revision"`
	Node     string `json:"node"`
	// Leader is the leader the node knows ("" when it knows none: it is cut
	// off from a majority, or an election is running).
	Leader string `json:"leader"`
	// NodeRevision is the revision of the node's own applied state when it
	// wrote this message (0 from nodes that predate the field). It is below
	// Revision when the client asked for a revision the node has not applied.
	NodeRevision uint64 `json:"node_revision,omitempty"`
	// Term is the node's Raft term (0 from nodes that predate the field).
	Term uint64 `json:"term,omitempty"`
	// LeaderContactMs is how long ago the node last heard from the leader: 0
	// on the leader itself (and from nodes that predate the field), -1 when
	// it knows no leader.
	LeaderContactMs int64 `json:"leader_contact_ms"`
}

// Learned is the newest a client has learned of the cluster from every node
// it talked to (lists, changes, progress): revisions and terms only grow, so
// a node reporting less than this is behind.
type Learned struct {
	Revision uint64
	Term     uint64
}

// Note raises l to what rev and term show.
func (l *Learned) Note(rev, term uint64) {
	l.Revision = max(l.Revision, rev)
	l.Term = max(l.Term, term)
}

// StateRevision is the revision of the node's applied state (Revision when
// the node predates NodeRevision).
func (p Progress) StateRevision() uint64 {
	if p.NodeRevision == 0 {
		return p.Revision
	}
	return p.NodeRevision
}

// CheckCurrent says whether p proves that its node's state was the cluster's
// current state LeaderContactMs before it was written: the node knows a
// leader, heard from it within maxContact, is not at an older term than one
// seen elsewhere, and its revision is not below the newest the client has
// learned of from other nodes. It returns nil if so and, if not, why.
func (p Progress) CheckCurrent(l Learned, maxContact time.Duration) error {
	switch {
	case p.Leader == "":
		return fmt.Errorf("%s knows no leader (cut off from a majority, or an election is running)", p.Node)
	case p.LeaderContactMs < 0:
		return fmt.Errorf("%s has no contact with leader %s", p.Node, p.Leader)
	case time.Duration(p.LeaderContactMs)*time.Millisecond > maxContact:
		return fmt.Errorf("%s last heard from leader %s %s ago", p.Node, p.Leader, time.Duration(p.LeaderContactMs)*time.Millisecond)
	case p.Term != 0 && p.Term < l.Term:
		return fmt.Errorf("%s is at term %d, term %d was seen elsewhere", p.Node, p.Term, l.Term)
	case p.StateRevision() < l.Revision:
		return fmt.Errorf("%s is at revision %d, revision %d was seen elsewhere", p.Node, p.StateRevision(), l.Revision)
	}
	return nil
}

// ProvenAt is when p's node was last known to be current: when it was
// received, less the node's time since its last leader contact.
func (p Progress) ProvenAt(received time.Time) time.Time {
	return received.Add(-time.Duration(max(p.LeaderContactMs, 0)) * time.Millisecond)
}

// The encoders below are the server's half of the format.

// frameOverhead is the length of everything but the events on one
// fragment's data line, with the longer header (the one with "more").
func frameOverhead(rev uint64) int {
	return len(`data: {"revision":`) + len(strconv.FormatUint(rev, 10)) + len(`,"more":true,"events":[`) + len(`]}`)
}

// AppendChangeFrames appends the frames of one revision to dst and returns
// them with the number of frames. No line is longer than MaxFrameBytes.
func AppendChangeFrames(dst []byte, rev uint64, events []fsm.Event) ([]byte, int, error) {
	budget := MaxFrameBytes - frameOverhead(rev)
	frames := 0
	var body []byte // the encoded events of the fragment being packed, comma-separated
	count := 0      // events in body
	flush := func(last bool) {
		dst = appendFrameHead(dst, rev, last)
		dst = append(dst, `{"revision":`...)
		dst = strconv.AppendUint(dst, rev, 10)
		if !last {
			dst = append(dst, `,"more":true`...)
		}
		dst = append(dst, `,"events":[`...)
		dst = append(dst, body...)
		dst = append(dst, "]}\n\n"...)
		body, count = body[:0], 0
		frames++
	}
	var enc []byte // one event's encoding, reused
	for i := range events {
		var err error
		enc, err = fsm.AppendEventJSON(enc[:0], &events[i])
		if err != nil {
			return dst, frames, fmt.Errorf("encode event %d of revision %d: %w", i, rev, err)
		}
		if len(enc) > budget {
			// Too large for any frame: flush what is packed, then send
			// this event in chunks.
			if count > 0 {
				flush(false)
			}
			var n int
			dst, n, err = appendChunkFrames(dst, rev, enc, i == len(events)-1)
			frames += n
			if err != nil {
				return dst, frames, err
			}
			continue
		}
		extra := len(enc)
		if count > 0 {
			extra++ // the comma
		}
		if len(body)+extra > budget {
			flush(false)
			extra = len(enc)
		}
		if count > 0 {
			body = append(body, ',')
		}
		body = append(body, enc...)
		count++
	}
	if count > 0 || frames == 0 {
		flush(true)
	}
	return dst, frames, nil
}

// chunkBytes is how many raw bytes of an oversized event one chunk frame
// carries: their base64 encoding plus the frame's fields fit a line.
const chunkBytes = (MaxFrameBytes - 256) / 4 * 3

func appendChunkFrames(dst []byte, rev uint64, enc []byte, lastEvent bool) ([]byte, int, error) {
	n := (len(enc) + chunkBytes - 1) / chunkBytes
	for k := 0; k < n; k++ {
		piece := enc[k*chunkBytes : min((k+1)*chunkBytes, len(enc))]
		last := lastEvent && k == n-1
		b, err := json.Marshal(ChangeFrame{Revision: rev, More: !last, Events: []fsm.Event{}, Chunk: piece, Chunks: n})
		if err != nil {
			return dst, k, fmt.Errorf("encode chunk %d of an event of revision %d: %w", k, rev, err)
		}
		dst = appendFrameHead(dst, rev, last)
		dst = append(dst, b...)
		dst = append(dst, "\n\n"...)
	}
	return dst, n, nil
}

// appendFrameHead writes the lines before a change frame's data: the id only
// on a revision's last frame.
func appendFrameHead(dst []byte, rev uint64, last bool) []byte {
	if last {
		dst = append(dst, "id: "...)
		dst = strconv.AppendUint(dst, rev, 10)
		dst = append(dst, '\n')
	}
	return append(dst, "event: "+SSEChange+"\ndata: "...)
}

// AppendProgressFrame appends one progress frame.
func AppendProgressFrame(dst []byte, p Progress) []byte {
	b, err := json.Marshal(p)
	if err != nil { // cannot happen: strings and integers only
		b = []byte(`{"revision":` + strconv.FormatUint(p.Revision, 10) + `}`)
	}
	dst = append(dst, "event: "+SSEProgress+"\ndata: "...)
	dst = append(dst, b...)
	return append(dst, "\n\n"...)
}

// AppendGoneFrame appends the frame that ends a stream the node can no
// longer serve; the client relists.
func AppendGoneFrame(dst []byte, body ErrorBody) []byte {
	b, err := json.Marshal(body)
	if err != nil { // cannot happen: strings and integers only
		b = []byte(`{"error":"gone"}`)
	}
	dst = append(dst, "event: "+SSEGone+"\ndata: "...)
	dst = append(dst, b...)
	return append(dst, "\n\n"...)
}

// DecodeChangeFrame reads the data of an `event: change` frame. Frames in
// the form AppendChangeFrames writes are read without reflection (see
// fsm.ParseEventJSON); anything else goes to encoding/json, which the fast
// path never contradicts.
func DecodeChangeFrame(b []byte, f *ChangeFrame) error {
	if parseChangeFrame(b, f) {
		return nil
	}
	*f = ChangeFrame{}
	return json.Unmarshal(b, f)
}

func parseChangeFrame(b []byte, f *ChangeFrame) bool {
	rev, rest, ok := cutUint(b, `{"revision":`)
	if !ok {
		return false
	}
	more := false
	if r, ok := bytes.CutPrefix(rest, []byte(`,"more":true`)); ok {
		more, rest = true, r
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"events":[`)); !ok {
		return false
	}
	events := make([]fsm.Event, 0, len(rest)/160+1) // a guild event is ~170 bytes
	for len(rest) > 0 && rest[0] != ']' {
		var e fsm.Event
		n, ok := fsm.ParseEventJSON(rest, &e)
		if !ok {
			return false
		}
		events = append(events, e)
		rest = rest[n:]
		if len(rest) > 1 && rest[0] == ',' && rest[1] != ']' {
			rest = rest[1:]
		} else if len(rest) == 0 || rest[0] != ']' {
			return false
		}
	}
	if !bytes.Equal(rest, []byte("]}")) {
		return false
	}
	*f = ChangeFrame{Revision: rev, More: more, Events: events}
	return true
}

// AppendSnapshotJSON appends json.Marshal(s), the guilds written by hand
// (fsm.AppendGuildJSON): GET /v1/snapshot carries every guild of the map.
func AppendSnapshotJSON(dst []byte, s *Snapshot) ([]byte, error) {
	w := &appendWriter{b: dst}
	var guilds iter.Seq[fsm.Guild]
	if s.Guilds != nil {
		guilds = slices.Values(s.Guilds)
	}
	err := WriteSnapshotJSON(w, s, guilds)
	return w.b, err
}

type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) { a.b = append(a.b, p...); return len(p), nil }

// SnapshotGuildsHeader carries the number of guilds of a streamed GET
// /v1/snapshot, whose length is not known before it is sent: the client
// sizes its buffer from it (snapshotBytesPerGuild each).
const (
	SnapshotGuildsHeader  = "Modbot-Snapshot-Guilds"
	snapshotBytesPerGuild = 104
)

// snapshotChunk is how much WriteSnapshotJSON buffers before a write.
const snapshotChunk = 64 << 10

// WriteSnapshotJSON writes to w what AppendSnapshotJSON appends, with the
// guilds taken from guilds (ascending ids; nil writes null) instead of
// s.Guilds, snapshotChunk bytes at a time: a list of ten million guilds is
// ~900 MB of JSON, never held whole.
func WriteSnapshotJSON(w io.Writer, s *Snapshot, guilds iter.Seq[fsm.Guild]) error {
	buf := make([]byte, 0, snapshotChunk+1024)
	flush := func() error {
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	part := func(key string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode snapshot %s: %w", key, err)
		}
		buf = append(append(buf, key...), b...)
		return nil
	}
	buf = strconv.AppendUint(append(buf, `{"revision":`...), s.Revision, 10)
	buf = strconv.AppendInt(append(buf, `,"shard_count":`...), int64(s.ShardCount), 10)
	if err := errors.Join(part(`,"pods":`, s.Pods), part(`,"shards":`, s.Shards)); err != nil {
		return err
	}
	buf = append(buf, `,"guilds":`...)
	if guilds == nil {
		buf = append(buf, "null"...)
	} else {
		buf = append(buf, '[')
		first := true
		for g := range guilds {
			if !first {
				buf = append(buf, ',')
			}
			first = false
			var err error
			if buf, err = fsm.AppendGuildJSON(buf, &g); err != nil {
				return fmt.Errorf("encode snapshot: guild %d: %w", g.ID, err)
			}
			if len(buf) >= snapshotChunk {
				if err := flush(); err != nil {
					return fmt.Errorf("write snapshot: %w", err)
				}
			}
		}
		buf = append(buf, ']')
	}
	if err := part(`,"config_nodes":`, s.ConfigNodes); err != nil {
		return err
	}
	buf = append(buf, '}')
	if err := flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// AppendGuildsJSON appends json.Marshal(gs) (see fsm.AppendGuildJSON).
func AppendGuildsJSON(dst []byte, gs []fsm.Guild) ([]byte, error) {
	if gs == nil {
		return append(dst, "null"...), nil
	}
	dst = append(dst, '[')
	for i := range gs {
		if i > 0 {
			dst = append(dst, ',')
		}
		var err error
		if dst, err = fsm.AppendGuildJSON(dst, &gs[i]); err != nil {
			return dst, fmt.Errorf("encode guild %d: %w", gs[i].ID, err)
		}
	}
	return append(dst, ']'), nil
}

// DecodeSnapshot reads a GET /v1/snapshot body. The form AppendSnapshotJSON
// writes is read with the guilds parsed by hand (fsm.ParseGuildJSON) and
// the rest by encoding/json; any other form goes to encoding/json whole.
func DecodeSnapshot(b []byte, s *Snapshot) error {
	if parseSnapshot(b, s) {
		return nil
	}
	*s = Snapshot{}
	return json.Unmarshal(b, s)
}

func parseSnapshot(b []byte, s *Snapshot) bool {
	var out Snapshot
	var ok bool
	var sc uint64
	var rest []byte
	if out.Revision, rest, ok = cutUint(b, `{"revision":`); !ok {
		return false
	}
	if sc, rest, ok = cutUint(rest, `,"shard_count":`); !ok || sc > math.MaxInt32 {
		return false
	}
	out.ShardCount = int(sc)
	// value decodes one JSON value after key with encoding/json.
	value := func(key string, v any) bool {
		if rest, ok = bytes.CutPrefix(rest, []byte(key)); !ok {
			return false
		}
		dec := json.NewDecoder(bytes.NewReader(rest))
		if dec.Decode(v) != nil {
			return false
		}
		rest = rest[dec.InputOffset():]
		return true
	}
	if !value(`,"pods":`, &out.Pods) || !value(`,"shards":`, &out.Shards) {
		return false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`,"guilds":`)); !ok {
		return false
	}
	if out.Guilds, rest, ok = parseGuilds(rest); !ok {
		return false
	}
	if !value(`,"config_nodes":`, &out.ConfigNodes) || !bytes.Equal(bytes.TrimRight(rest, " \t\r\n"), []byte("}")) {
		return false
	}
	*s = out
	return true
}

// parseGuilds reads a JSON array of guilds in the form AppendGuildsJSON
// writes by hand and returns what follows it.
func parseGuilds(b []byte) ([]fsm.Guild, []byte, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(`[`))
	if !ok {
		return nil, b, false
	}
	gs := make([]fsm.Guild, 0, bytes.Count(rest, []byte(`{"id":`)))
	for len(rest) > 0 && rest[0] != ']' {
		var g fsm.Guild
		n, ok := fsm.ParseGuildJSON(rest, &g)
		if !ok {
			return nil, b, false
		}
		gs = append(gs, g)
		rest = rest[n:]
		if len(rest) > 1 && rest[0] == ',' && rest[1] != ']' {
			rest = rest[1:]
		} else if len(rest) == 0 || rest[0] != ']' {
			return nil, b, false
		}
	}
	if len(rest) == 0 {
		return nil, b, false
	}
	return gs, rest[1:], true
}

// UnmarshalJSON reads a POST /v1/guilds answer; the form the config nodes
// write is read without reflection (a batch carries 10,000 guilds).
func (p *PlaceResponse) UnmarshalJSON(b []byte) error {
	if rev, rest, ok := cutUint(b, `{"revision":`); ok {
		if rest, ok = bytes.CutPrefix(rest, []byte(`,"guilds":`)); ok {
			if gs, rest, ok := parseGuilds(rest); ok && bytes.Equal(bytes.TrimRight(rest, " \t\r\n"), []byte("}")) {
				*p = PlaceResponse{Revision: rev, Guilds: gs}
				return nil
			}
		}
	}
	type plain PlaceResponse // without this method
	var v plain
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*p = PlaceResponse(v)
	return nil
}

// cutUint reads key and the JSON unsigned integer after it (no sign, no
// leading zero), as encoding/json would accept it, and returns what follows.
func cutUint(b []byte, key string) (uint64, []byte, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(key))
	if !ok {
		return 0, b, false
	}
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	if j == 0 || j > 1 && rest[0] == '0' {
		return 0, b, false
	}
	v, err := strconv.ParseUint(string(rest[:j]), 10, 64)
	if err != nil {
		return 0, b, false
	}
	return v, rest[j:], true
}

// ParsePlaceRequestIDs reads a POST /v1/guilds body in the form
// json.Marshal writes a PlaceRequest ({"guild_ids":["…",…]}, no whitespace
// but after it, plain decimal ids without leading zeros, none of them 0)
// without reflection: a batch carries 10,000. It reports false for
// anything else, which the server then reads with its strict decoder and
// fsm.ParseGuildID, for the same ids or a clear error.
func ParsePlaceRequestIDs(b []byte) ([]uint64, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(`{"guild_ids":[`))
	if !ok || len(rest) == 0 || rest[0] == ']' {
		return nil, false
	}
	ids := make([]uint64, 0, len(rest)/22+1)
	for {
		if len(rest) == 0 || rest[0] != '"' {
			return nil, false
		}
		j := 1
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 1 || rest[1] == '0' || j >= len(rest) || rest[j] != '"' {
			return nil, false
		}
		v, err := strconv.ParseUint(string(rest[1:j]), 10, 64)
		if err != nil {
			return nil, false
		}
		ids = append(ids, v)
		switch rest = rest[j+1:]; {
		case len(rest) > 0 && rest[0] == ',':
			rest = rest[1:]
		case bytes.Equal(bytes.TrimRight(rest, " \t\r\n"), []byte("]}")):
			return ids, true
		default:
			return nil, false
		}
	}
}
