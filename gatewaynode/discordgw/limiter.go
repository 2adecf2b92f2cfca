package discordgw

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Discord allows 120 gateway commands per 60 s per connection; exceeding it
// closes the connection (4008).
const (
	gatewayCommandLimit  = 120
	gatewayCommandWindow = 60 * time.Second
)

var errConnClosed = errors.New("discordgw: connection closed")

// limiter is a sliding-window limiter for one connection's commands. A share
// of the window is reserved for heartbeats, which never wait.
type limiter struct {
	limit  int
	window time.Duration

	mu      sync.Mutex
	reserve int
	sent    []time.Time
}

func newLimiter(limit int, window time.Duration) *limiter {
	return &limiter{limit: limit, window: window}
}

// reserveFor keeps room for the heartbeats sent at interval within a window
// (at most half the window's budget).
func (l *limiter) reserveFor(interval time.Duration) {
	n := int(l.window/interval) + 2
	l.mu.Lock()
	l.reserve = min(n, l.limit/2)
	l.mu.Unlock()
}

// wait blocks until a non-heartbeat command may be sent.
func (l *limiter) wait(ctx context.Context, closed <-chan struct{}) error {
	for {
		l.mu.Lock()
		now := time.Now()
		i := 0
		for i < len(l.sent) && now.Sub(l.sent[i]) >= l.window {
			i++
		}
		l.sent = l.sent[i:]
		if len(l.sent) < max(1, l.limit-l.reserve) {
			l.sent = append(l.sent, now)
			l.mu.Unlock()
			return nil
		}
		d := l.sent[0].Add(l.window).Sub(now)
		l.mu.Unlock()
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-closed:
			t.Stop()
			return errConnClosed
		}
	}
}
