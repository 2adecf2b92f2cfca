package confignode

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/fsm"
)

// applyResponse is what Store.Apply returns to the proposer through the Raft
// future.
type applyResponse struct {
	events []fsm.Event
	err    error
}

// Store adapts fsm.State to raft.FSM. Raft calls Apply, Snapshot and Restore
// from one goroutine; HTTP handlers read concurrently through View.
type Store struct {
	mu    sync.RWMutex
	state *fsm.State
	hist  *history
	// applied is called after each change (outside the lock) with its events.
	applied func([]fsm.Event)
	// beforeApply, when set (tests), runs before each command is applied.
	beforeApply func(fsm.Command)
}

func newStore(historySize int) *Store {
	return &Store{state: fsm.New(), hist: newHistory(historySize), applied: func([]fsm.Event) {}}
}

// View runs f with the state under a read lock. f must not keep references.
func (s *Store) View(f func(st *fsm.State)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f(s.state)
}

// Revision returns the revision of the last change.
func (s *Store) Revision() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.state.Revision
}

// Apply implements raft.FSM.
func (s *Store) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := fsm.DecodeCommand(l.Data)
	if err != nil {
		return applyResponse{err: fmt.Errorf("log index %d: %w", l.Index, err)}
	}
	if s.beforeApply != nil {
		s.beforeApply(cmd)
	}
	s.mu.Lock()
	events, err := s.state.Apply(l.Index, cmd)
	if len(events) > 0 {
		// Publishing under the lock keeps history and state in step: a
		// snapshot read at revision R is always followed, in the history, by
		// exactly the events after R.
		s.hist.append(events)
	}
	s.mu.Unlock()
	if len(events) > 0 {
		s.applied(events)
	}
	return applyResponse{events: events, err: err}
}

// Snapshot implements raft.FSM. The state is encoded while Apply is blocked
// (about 0.3 s per million guilds), so Persist only copies bytes.
func (s *Store) Snapshot() (raft.FSMSnapshot, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var buf bytes.Buffer
	if err := s.state.WriteSnapshot(&buf); err != nil {
		return nil, fmt.Errorf("snapshot fsm: %w", err)
	}
	return &fsmSnapshot{data: buf.Bytes()}, nil
}

// Restore implements raft.FSM.
func (s *Store) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := fsm.ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore fsm: %w", err)
	}
	s.mu.Lock()
	s.state = st
	s.hist.reset(st.Revision)
	s.mu.Unlock()
	s.applied(nil)
	return nil
}

type fsmSnapshot struct{ data []byte }

func (f *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(f.data); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (f *fsmSnapshot) Release() {}
