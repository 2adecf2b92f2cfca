package confignode

import (
	"context"
	"sync"
	"sync/atomic"
)

// term is one stretch of leadership of this node. Everything the leader does
// on its own — moves, rebalances, dropping copies, aborting orphans, pod
// liveness — runs as a task of the term: on the term's context, which ends
// when leadership is lost (or the node closes), and counted, so that the
// next term starts only after the previous one's tasks ended and Close
// returns only after every task ended.
type term struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// after is the term before this one: this term's leader duties start
	// once its tasks ended (the lead task clears it then).
	after *term
}

// leaderTasks tracks the terms and their tasks.
type leaderTasks struct {
	mu      sync.Mutex
	cur     *term
	last    *term
	closed  bool
	all     sync.WaitGroup
	running atomic.Int64
	// done, when set (tests), is called as each task ends, before it counts
	// as ended.
	done func(name string)
}

// begin starts a term, ending the current one if any. It returns nil once
// the node is closing.
func (lt *leaderTasks) begin(parent context.Context) *term {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.closed {
		return nil
	}
	lt.endLocked()
	t := &term{after: lt.last}
	t.ctx, t.cancel = context.WithCancel(parent)
	lt.cur, lt.last = t, t
	return t
}

// end ends the current term: its context is cancelled and its tasks stop.
func (lt *leaderTasks) end() {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	lt.endLocked()
}

func (lt *leaderTasks) endLocked() {
	if lt.cur != nil {
		lt.cur.cancel()
		lt.cur = nil
	}
}

// current returns the running term, or nil when this node does not lead.
func (lt *leaderTasks) current() *term {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if lt.cur == nil || lt.cur.ctx.Err() != nil {
		return nil
	}
	return lt.cur
}

// spawn runs f as a task of term t. It refuses (errNotLeader) when t has
// ended, so no task of a lost term starts late.
func (lt *leaderTasks) spawn(t *term, name string, f func(ctx context.Context)) error {
	lt.mu.Lock()
	if t == nil || lt.closed || t.ctx.Err() != nil {
		lt.mu.Unlock()
		return errNotLeaderf("%s: this node no longer leads", name)
	}
	t.wg.Add(1)
	lt.all.Add(1)
	lt.running.Add(1)
	lt.mu.Unlock()
	go func() {
		defer func() {
			if lt.done != nil {
				lt.done(name)
			}
			lt.running.Add(-1)
			t.wg.Done()
			lt.all.Done()
		}()
		f(t.ctx)
	}()
	return nil
}

// spawnCurrent runs f as a task of the current term.
func (lt *leaderTasks) spawnCurrent(name string, f func(ctx context.Context)) error {
	t := lt.current()
	if t == nil {
		return errNotLeaderf("%s: this node does not lead", name)
	}
	return lt.spawn(t, name, f)
}

// close ends the current term, refuses new tasks and waits for every task
// to end.
func (lt *leaderTasks) close() {
	lt.mu.Lock()
	lt.closed = true
	lt.endLocked()
	lt.mu.Unlock()
	lt.all.Wait()
}

// Running returns how many leader tasks are running (tests, metrics).
func (lt *leaderTasks) Running() int { return int(lt.running.Load()) }
