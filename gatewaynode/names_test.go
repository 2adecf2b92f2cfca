package gatewaynode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestANameLookupIsOneCallPerTTLWhateverItsAnswer: a name Discord gives
// and one it refuses (a deleted user) each cost one call however many
// pages ask, at once or one after another, until their TTL runs out; a
// lookup the page abandoned is not remembered as Discord's answer.
func TestANameLookupIsOneCallPerTTLWhateverItsAnswer(t *testing.T) {
	var clock atomic.Int64
	c := newNameCache(nil, time.Minute)
	c.now = func() time.Time { return time.Unix(0, clock.Load()) }
	var calls sync.Map
	count := func(key string) int64 {
		v, _ := calls.LoadOrStore(key, new(atomic.Int64))
		return v.(*atomic.Int64).Load()
	}
	lookup := func(key string, err error) func() (any, error) {
		return func() (any, error) {
			v, _ := calls.LoadOrStore(key, new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
			time.Sleep(5 * time.Millisecond) // a REST round trip: the others arrive meanwhile
			if err != nil {
				return nil, err
			}
			return "name of " + key, nil
		}
	}
	gone := errors.New("HTTP 404 Not Found, {\"message\": \"Unknown User\", \"code\": 10013}")
	pages := func() {
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if v, ok := c.cached("u:1", lookup("u:1", nil)); !ok || v != "name of u:1" {
					t.Errorf("known user: %v %v", v, ok)
				}
				if v, ok := c.cached("u:2", lookup("u:2", gone)); ok || v != nil {
					t.Errorf("deleted user: %v %v", v, ok)
				}
			}()
		}
		wg.Wait()
	}
	for range 5 {
		pages()
	}
	if n1, n2 := count("u:1"), count("u:2"); n1 != 1 || n2 != 1 {
		t.Fatalf("80 page loads called Discord %d times for a known name and %d for a deleted user, want once each", n1, n2)
	}
	clock.Add(int64(c.failTTL))
	pages()
	if n1, n2 := count("u:1"), count("u:2"); n1 != 1 || n2 != 2 {
		t.Fatalf("after the failure TTL: %d and %d calls, want 1 and 2", n1, n2)
	}
	clock.Add(int64(c.ttl))
	pages()
	if n1, n2 := count("u:1"), count("u:2"); n1 != 2 || n2 != 3 {
		t.Fatalf("after the TTL: %d and %d calls, want 2 and 3", n1, n2)
	}
	for i := range 3 {
		if _, ok := c.cached("u:3", lookup("u:3", fmt.Errorf("page closed: %w", context.Canceled))); ok {
			t.Fatal("a cancelled lookup answered")
		}
		if n := count("u:3"); n != int64(i+1) {
			t.Fatalf("a cancelled lookup was remembered: %d calls after %d pages", n, i+1)
		}
	}
}
