package systest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// Token is the admin token of every cluster, pod and proxy the harness
// starts; the components talk to each other with InternalToken, and
// ReadToken reads status, metrics and the map. Three tokens, so a
// component that sends the wrong one is refused in every test.
const (
	Token         = "bench-token"
	InternalToken = "bench-internal-token"
	ReadToken     = "bench-read-token"
)

// discordToken is the bot token the fake Discord accepts.
const discordToken = "fake-token"

// Start retries: at most startAttempts attempts, startRetryDelay apart, and
// only while the start fails with address-in-use.
const (
	startAttempts   = 50
	startRetryDelay = 100 * time.Millisecond
)

// addrInUse reports whether err is, somewhere in its chain, a listen that
// failed because the address is taken.
func addrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// retryAddrInUse calls start(0), start(1), … until it succeeds, fails with
// an error other than address-in-use (returned at once, unwrapped), or has
// been called attempts times.
func retryAddrInUse(attempts int, delay time.Duration, start func(attempt int) error) error {
	var err error
	for a := 0; a < attempts; a++ {
		if a > 0 {
			time.Sleep(delay)
		}
		if err = start(a); err == nil || !addrInUse(err) {
			return err
		}
	}
	return fmt.Errorf("address still in use after %d attempts: %w", attempts, err)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Poll checks cond every 5 ms until it holds, d has passed or ctx ends.
func Poll(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// TempDir makes a scratch directory outside a test (benchmarks); the
// function returned removes it.
func TempDir(name string) (string, func(), error) {
	d, err := os.MkdirTemp("", "modbot-bench-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	return d, func() { _ = os.RemoveAll(d) }, nil
}

// Ready reports whether the server at base (a URL such as
// http://127.0.0.1:9000) answers GET /readyz with 200.
func Ready(base string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(base + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Ready is the package's Ready for a component at addr (host:port) of
// this system, over its TLS when on.
func (s *System) Ready(addr string) bool {
	resp, err := s.HTTP.Get(s.TLS.Scheme() + "://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// URL is the base URL of a component of this system at addr (host:port).
func (s *System) URL(addr string) string { return s.TLS.Scheme() + "://" + addr }

// freshDir reports whether dir does not exist yet: a failed first start may
// then remove what it created before retrying.
// startFresh starts a new component, retrying on address-in-use with a
// fresh configuration each time (fresh ports); before each retry it removes
// the data directory the failed attempt created, since that attempt may have
// written its old address into it (Raft's bootstrap). start returns the data
// directory it used.
func startFresh(start func() (dataDir string, err error)) error {
	created := "" // the data directory the last attempt created
	return retryAddrInUse(startAttempts, startRetryDelay, func(int) error {
		if created != "" {
			if err := os.RemoveAll(created); err != nil {
				return err
			}
			created = ""
		}
		dir, err := start()
		if err != nil && addrInUse(err) && dir != "" {
			created = dir
		}
		return err
	})
}

func freshDir(dir string) bool {
	_, err := os.Stat(dir)
	return errors.Is(err, os.ErrNotExist)
}

// LockedBuffer is an io.Writer that tests read while the components (or a
// child process) write to it: collected logs.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
