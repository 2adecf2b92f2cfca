package systest

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/proxy"
)

// inUse is a listen error as net.Listen wraps it, wrapped once more the way
// the components do.
func inUse() error {
	return fmt.Errorf("listen on 127.0.0.1:1: %w", &net.OpError{Op: "listen", Net: "tcp",
		Err: os.NewSyscallError("bind", syscall.EADDRINUSE)})
}

func TestRetryAddrInUseRetriesOnlyAddressInUse(t *testing.T) {
	calls := 0
	err := retryAddrInUse(5, 0, func(int) error {
		calls++
		if calls < 3 {
			return inUse()
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("address-in-use twice then success: err %v after %d calls, want nil after 3", err, calls)
	}

	calls = 0
	other := errors.New("open raft log: permission denied")
	err = retryAddrInUse(5, time.Hour, func(int) error { calls++; return other })
	if !errors.Is(err, other) || calls != 1 {
		t.Fatalf("other error: err %v after %d calls, want it at once after 1", err, calls)
	}

	calls = 0
	err = retryAddrInUse(4, 0, func(int) error {
		calls++
		if calls == 2 {
			return other // address-in-use, then something else: stop there
		}
		return inUse()
	})
	if !errors.Is(err, other) || calls != 2 {
		t.Fatalf("address-in-use then other: err %v after %d calls, want the other error after 2", err, calls)
	}

	calls = 0
	err = retryAddrInUse(4, 0, func(int) error { calls++; return inUse() })
	if !errors.Is(err, syscall.EADDRINUSE) || calls != 4 {
		t.Fatalf("address always in use: err %v after %d calls, want EADDRINUSE after 4", err, calls)
	}
}

// TestStartErrorsKeepAddressInUse binds a port, starts each component on it
// and checks that its error still says address-in-use through the wrapping:
// the harness retries on nothing else.
func TestStartErrorsKeepAddressInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	free := func() string {
		a, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: started on a taken port", what)
		} else if !addrInUse(err) {
			t.Errorf("%s: error %q (%T) does not wrap syscall.EADDRINUSE", what, err, err)
		}
	}

	cfg := func(raft, api string) confignode.Config {
		return confignode.Config{ID: "config-0", DataDir: t.TempDir(), RaftAddr: raft, HTTPAddr: api,
			Token: Token, Shards: 4, Logger: quiet}
	}
	n, err := confignode.Start(cfg(addr, free()))
	if n != nil {
		n.Kill()
	}
	check("confignode.Start, Raft port taken", err)
	n, err = confignode.Start(cfg(free(), addr))
	if n != nil {
		n.Kill()
	}
	check("confignode.Start, API port taken", err)

	g, err := gatewaynode.Start(gatewaynode.Config{ID: "gateway-0", Ordinal: -1, DataDir: filepath.Join(t.TempDir(), "gateway-0"),
		HTTPAddr: addr, ConfigURLs: []string{"http://" + free()}, Token: Token,
		DiscordToken: discordToken, DiscordURL: "http://" + free(), Logger: quiet})
	if g != nil {
		g.Kill()
	}
	check("gatewaynode.Start", err)

	d, err := fakediscord.New(fakediscord.Config{Token: discordToken, Shards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, err = d.Start(addr)
	check("fakediscord Server.Start", err)

	cl, err := assignments.NewClient([]string{"http://" + free()}, Token)
	if err != nil {
		t.Fatal(err)
	}
	w := assignments.NewWatcher(cl, assignments.WatcherOptions{Logger: quiet, Name: "systest"}) // never run
	p, err := proxy.New(proxy.Config{Map: w, PublicKey: d.PublicKey(), Token: Token, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.Start(addr)
	check("proxy Proxy.Start", err)
}
