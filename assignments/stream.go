package assignments

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modbot/modbot/fsm"
)

// Stream is one open GET /v1/watch on one config node, read as typed
// messages: Next reassembles a revision's fragments and returns it whole, or
// a progress message. It does not reconnect, and it does not judge whether
// the node is current (Progress.CheckCurrent does): the Watcher and
// `modbotctl watch` do both, each with its own policy. Not safe for
// concurrent use, except Idle and Close.
type Stream struct {
	node   string
	body   io.ReadCloser
	rd     *SSEReader
	act    *activityReader
	cancel context.CancelFunc
	idle   *idleWatchdog // nil without StreamOptions.IdleTimeout
	// pending is the revision whose fragments are being collected.
	pending *WatchChange
	chunk   []byte // the oversized event being collected
	chunks  int    // chunks of it still to come (0: none pending)
	frags   int    // fragments of pending received
}

// WatchChange is one revision with all its events, in order.
type WatchChange struct {
	Revision uint64
	Events   []fsm.Event
}

// WatchMessage is what Stream.Next returns: exactly one field is set.
type WatchMessage struct {
	Change   *WatchChange
	Progress *Progress
}

// StreamOptions say where a stream starts and when it gives up on a silent
// node.
type StreamOptions struct {
	// From: the stream starts after this revision. With FromNow it starts
	// at the node's current revision (the first progress says which).
	From    uint64
	FromNow bool
	// IdleTimeout ends the stream when the node sends nothing for this long
	// while the reader waits for it — before it answers, or between bytes;
	// not while the reader is busy with a large revision. Next then returns
	// an error that wraps ErrStreamIdle. 0: no limit.
	IdleTimeout time.Duration
}

// ErrStreamIdle is wrapped by the error of a stream ended by
// StreamOptions.IdleTimeout.
var ErrStreamIdle = errors.New("the config node sent nothing")

// OpenStream opens the change stream of the config node at base (one of the
// client's URLs, or another node's "http://host:port"). A 410 Gone answer
// (the node no longer has the revision) is an *APIError:
// IsStatus(err, http.StatusGone).
func (c *Client) OpenStream(ctx context.Context, base string, o StreamOptions) (*Stream, error) {
	path := "/v1/watch"
	if !o.FromNow {
		path += "?from=" + strconv.FormatUint(o.From, 10)
	}
	ctx, cancel := context.WithCancel(ctx)
	act := &activityReader{origin: time.Now()}
	act.waiting.Store(1) // waiting for the answer
	var idle *idleWatchdog
	if o.IdleTimeout > 0 {
		idle = startIdleWatchdog(act, o.IdleTimeout, cancel)
	}
	fail := func(err error) (*Stream, error) {
		if idle != nil && idle.stop() {
			err = fmt.Errorf("%w for %s: %w", ErrStreamIdle, o.IdleTimeout, err)
		}
		cancel()
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return fail(fmt.Errorf("build watch request: %w", err))
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fail(fmt.Errorf("GET %s%s: %w", base, path, err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return fail(DecodeError(resp))
	}
	act.r = resp.Body
	act.waiting.Store(0)
	return &Stream{node: base, body: resp.Body, rd: NewSSEReader(act), act: act, cancel: cancel, idle: idle}, nil
}

func newStream(node string, body io.ReadCloser) *Stream {
	act := &activityReader{r: body, origin: time.Now()}
	return &Stream{node: node, body: body, rd: NewSSEReader(act), act: act, cancel: func() {}}
}

// Node returns the base URL of the node the stream is open on.
func (s *Stream) Node() string { return s.node }

// Close ends the stream.
func (s *Stream) Close() error {
	if s.idle != nil {
		s.idle.stop()
	}
	s.cancel()
	return s.body.Close()
}

// Idle returns how long the stream has been waiting for the node's next
// byte: 0 while the reader is busy with what it got (decoding a large
// revision takes a while), the time since it started waiting otherwise.
func (s *Stream) Idle() time.Duration { return s.act.idle() }

// activityReader records since when its reader has waited for bytes.
type activityReader struct {
	r      io.Reader
	origin time.Time
	// waiting is the time since origin at which the current wait for bytes
	// began (plus one, so that 0 means "not waiting").
	waiting atomic.Int64
}

func (a *activityReader) Read(p []byte) (int, error) {
	a.waiting.CompareAndSwap(0, int64(time.Since(a.origin))+1)
	n, err := a.r.Read(p)
	if n > 0 || err != nil {
		a.waiting.Store(0)
	}
	return n, err
}

func (a *activityReader) idle() time.Duration {
	since := a.waiting.Load()
	if since == 0 {
		return 0
	}
	return max(time.Since(a.origin)-time.Duration(since-1), 0)
}

// idleWatchdog cancels a stream whose reader waited for limit.
type idleWatchdog struct {
	limit time.Duration
	mu    sync.Mutex
	timer *time.Timer
	fired bool
	done  bool
}

func startIdleWatchdog(a *activityReader, limit time.Duration, cancel context.CancelFunc) *idleWatchdog {
	d := &idleWatchdog{limit: limit}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timer = time.AfterFunc(limit, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.done {
			return
		}
		if idle := a.idle(); idle < limit {
			d.timer.Reset(limit - idle)
			return
		}
		d.fired = true
		cancel()
	})
	return d
}

// stop disarms the watchdog and reports whether it had fired.
func (d *idleWatchdog) stop() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.done = true
	d.timer.Stop()
	return d.fired
}

func (d *idleWatchdog) hasFired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fired
}

// errProtocol marks a stream that broke the framing rules of wire.go.
var errProtocol = errors.New("watch stream protocol violation")

// Next returns the next whole revision or progress message. It returns an
// *APIError with Status 410 when the node sends `event: gone` (the caller
// relists), and another error when the stream breaks or ends — never a
// revision of which a fragment is missing.
func (s *Stream) Next() (WatchMessage, error) {
	for {
		m, err := s.rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if s.idle != nil && s.idle.hasFired() {
				err = fmt.Errorf("%w for %s: %w", ErrStreamIdle, s.idle.limit, err)
			}
			if s.pending != nil {
				return WatchMessage{}, fmt.Errorf("watch %s: stream ended after %d fragments of revision %d, which is dropped whole: %w", s.node, s.frags, s.pending.Revision, err)
			}
			return WatchMessage{}, fmt.Errorf("watch %s: %w", s.node, err)
		}
		if s.pending != nil && m.Event != SSEChange {
			return WatchMessage{}, fmt.Errorf("watch %s: %w: %q message inside revision %d", s.node, errProtocol, m.Event, s.pending.Revision)
		}
		switch m.Event {
		case SSEChange:
			ch, err := s.fragment(m)
			if err != nil {
				return WatchMessage{}, err
			}
			if ch != nil {
				return WatchMessage{Change: ch}, nil
			}
		case SSEProgress:
			var p Progress
			if err := json.Unmarshal([]byte(m.Data), &p); err != nil {
				return WatchMessage{}, fmt.Errorf("watch %s: decode progress %q: %w", s.node, m.Data, err)
			}
			return WatchMessage{Progress: &p}, nil
		case SSEGone:
			e := &APIError{Status: http.StatusGone, URL: s.node + "/v1/watch"}
			if json.Unmarshal([]byte(m.Data), &e.Body) != nil || e.Body.Error == "" {
				e.Body.Error = m.Data
			}
			return WatchMessage{}, e
		default:
			// Unknown kinds are for newer clients.
		}
	}
}

// fragment adds one change frame to the pending revision and returns the
// revision once it is whole.
func (s *Stream) fragment(m SSEMessage) (*WatchChange, error) {
	var f ChangeFrame
	if err := DecodeChangeFrame([]byte(m.Data), &f); err != nil {
		return nil, fmt.Errorf("watch %s: decode change (id %q): %w", s.node, m.ID, err)
	}
	if s.pending == nil {
		s.pending = &WatchChange{Revision: f.Revision, Events: f.Events}
		s.frags = 0
	} else if f.Revision != s.pending.Revision {
		return nil, fmt.Errorf("watch %s: %w: a fragment of revision %d inside revision %d", s.node, errProtocol, f.Revision, s.pending.Revision)
	} else {
		s.pending.Events = append(s.pending.Events, f.Events...)
	}
	s.frags++
	if len(f.Chunk) > 0 {
		if s.chunks == 0 {
			s.chunks = f.Chunks
		}
		s.chunk = append(s.chunk, f.Chunk...)
		s.chunks--
		if s.chunks <= 0 {
			var e fsm.Event
			if err := json.Unmarshal(s.chunk, &e); err != nil {
				return nil, fmt.Errorf("watch %s: decode an event of revision %d sent in %d chunks: %w", s.node, f.Revision, f.Chunks, err)
			}
			s.pending.Events = append(s.pending.Events, e)
			s.chunk, s.chunks = nil, 0
		}
	} else if s.chunks > 0 {
		return nil, fmt.Errorf("watch %s: %w: revision %d: an event's chunks were interrupted", s.node, errProtocol, f.Revision)
	}
	if f.More {
		return nil, nil
	}
	if s.chunks > 0 {
		return nil, fmt.Errorf("watch %s: %w: revision %d ended inside an event's chunks", s.node, errProtocol, f.Revision)
	}
	if m.ID != "" && m.ID != strconv.FormatUint(f.Revision, 10) {
		return nil, fmt.Errorf("watch %s: %w: id %q on revision %d", s.node, errProtocol, m.ID, f.Revision)
	}
	ch := s.pending
	s.pending = nil
	return ch, nil
}
