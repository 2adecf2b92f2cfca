package proxy_test

import (
	"context"
	"crypto/ed25519"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/proxy"
	"github.com/modbot/modbot/systest"
)

// TestRoutesFromRealWatcher runs the proxy on a real assignments.Watcher fed
// by a real config node: guilds placed through the API are routed to their
// owners, and routing goes on from the last map once every config node is
// stopped.
func TestRoutesFromRealWatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a config node")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := systest.StartCluster(ctx, t.TempDir(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl := c.Client()

	pods := map[string]*httptest.Server{}
	for i := 0; i < 2; i++ {
		id := "gateway-" + strconv.Itoa(i)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Pod", id)
			w.Header().Set("Content-Type", "application/json")
			if r.URL.Path == proxy.InternalInteractionsPath {
				_, _ = io.WriteString(w, `{"type":4,"data":{"content":"`+id+`"}}`)
				return
			}
			_, _ = io.WriteString(w, `{"owner":"`+id+`"}`)
		}))
		t.Cleanup(srv.Close)
		pods[id] = srv
		if _, err := cl.RegisterPod(ctx, assignments.RegisterPodRequest{ID: id, Addr: srv.Listener.Addr().String()}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for i := 0; i < 16; i++ {
		ids = append(ids, strconv.FormatUint(uint64(1_100_000_000_000+i)<<22|uint64(i), 10))
	}
	placed, err := cl.PlaceGuilds(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}

	quiet := slog.New(slog.DiscardHandler)
	w := assignments.NewWatcher(cl, assignments.WatcherOptions{Logger: quiet, RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	wctx, stopWatcher := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(wctx)
	}()
	t.Cleanup(func() {
		stopWatcher()
		<-done
	})
	pub, _, _ := ed25519.GenerateKey(nil)
	p, err := proxy.New(proxy.Config{Map: w, PublicKey: pub, Token: "bench-token", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	url, err := p.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.WaitRevision(ctx, placed.Revision); err != nil {
		t.Fatal(err)
	}

	check := func(phase string) {
		t.Helper()
		for _, g := range placed.Guilds {
			req, err := http.NewRequest(http.MethodGet, url+"/guild/"+strconv.FormatUint(g.ID, 10)+"/dashboard", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer bench-token") // the admin token
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", phase, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-Pod") != g.Owner {
				t.Fatalf("%s: guild %d answered %d by %q, want its owner %s", phase, g.ID, resp.StatusCode, resp.Header.Get("X-Pod"), g.Owner)
			}
		}
	}
	owners := map[string]int{}
	for _, g := range placed.Guilds {
		owners[g.Owner]++
	}
	if len(owners) != 2 {
		t.Fatalf("placement %v: want guilds on both pods for a meaningful test", owners)
	}
	check("with the config node up")
	c.Close() // every config node stopped
	check("with every config node stopped")
	if got := w.Revision(); got < placed.Revision {
		t.Fatalf("watcher revision %d went below %d", got, placed.Revision)
	}
}
