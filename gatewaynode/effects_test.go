package gatewaynode

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/gatewaynode/restlimit"
)

// restStub answers POST /channels/{id}/messages as Discord does with
// enforce_nonce: a nonce seen before returns the message it created.
// Its first failures answers fail with status (500: an error discordgo
// returns; 429: one it waits out and retries).
type restStub struct {
	mu       sync.Mutex
	status   int
	failures int
	attempts int
	created  []map[string]any
	byNonce  map[string]bool
	srv      *httptest.Server
}

func newRESTStub(t *testing.T, status, failures int) *restStub {
	s := &restStub{status: status, failures: failures, byNonce: map[string]bool{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/messages") {
			http.Error(w, `{"message":"not here","code":0}`, http.StatusNotFound)
			return
		}
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"message":"bad json","code":50109}`, http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.attempts++
		if s.failures > 0 {
			s.failures--
			w.Header().Set("Content-Type", "application/json")
			if s.status == http.StatusTooManyRequests {
				w.Header().Set("X-RateLimit-Scope", "user")
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(s.status)
				_, _ = w.Write([]byte(`{"message":"You are being rate limited.","retry_after":0.2,"global":false,"code":0}`))
				return
			}
			w.WriteHeader(s.status)
			_, _ = w.Write([]byte(`{"message":"500: Internal Server Error","code":0}`))
			return
		}
		nonce, _ := body["nonce"].(string)
		if enforce, _ := body["enforce_nonce"].(bool); !(enforce && nonce != "" && s.byNonce[nonce]) {
			s.byNonce[nonce] = true
			s.created = append(s.created, body)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"1058897343295918999","channel_id":"555","content":"ok"}`))
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *restStub) counts() (attempts int, created []map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts, append([]map[string]any(nil), s.created...)
}

// A report's mod-log post is owed until acknowledged: one whose sends fail
// is sent again, with the first attempt's nonce and enforce_nonce, until it
// lands — and then never again.
func TestAModlogPostThatFailsIsSentAgainUntilItLandsOnce(t *testing.T) {
	for _, tc := range []struct {
		name             string
		status, failures int
	}{
		{"server errors", http.StatusInternalServerError, 3},
		{"rate limited", http.StatusTooManyRequests, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rest := newRESTStub(t, tc.status, tc.failures)
			w := newMemWorld(t, 1)
			w.tweak = func(c *Config) {
				c.DiscordURL = rest.srv.URL
				c.PostRetryInterval = 50 * time.Millisecond
			}
			p := w.addPod("gateway-0")
			waitFor(t, 5*time.Second, "the pod holds the shard", func() bool { return w.cluster.ShardHolder(0) == "gateway-0" })
			g := guildOnShard(0, 1, 0)
			w.cluster.mustApply(t, fsm.Command{Type: fsm.CmdPlaceGuilds, GuildIDs: []uint64{g}})
			gi, _ := w.cluster.Lookup(g)
			// A report whose post was never acknowledged (its pod died, or
			// its send failed), a minute old.
			const report = 1058897343295918100
			ctx := context.Background()
			if _, err := p.store.Apply(ctx, guildstore.Write{Epoch: gi.Epoch, Op: guildstore.AddReport{Report: guildstore.Report{
				ID: report, GuildID: g, ReporterID: 1, TargetUserID: 2, Reason: "spam",
				CreatedAt: time.Now().Add(-time.Minute), ModlogChannelID: 555}}}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 15*time.Second, "the post acknowledged", func() bool {
				r, ok, err := p.store.Report(ctx, g, report)
				return err == nil && ok && !r.ModlogPostedAt.IsZero()
			})
			attempts, created := rest.counts()
			time.Sleep(300 * time.Millisecond) // six more retry rounds
			again, _ := rest.counts()
			if again != attempts {
				t.Fatalf("%d more sends after the post was acknowledged", again-attempts)
			}
			if len(created) != 1 || created[0]["nonce"] != "r1058897343295918100" || created[0]["enforce_nonce"] != true {
				t.Fatalf("messages created: %v; want one, with nonce r%d and enforce_nonce", created, uint64(report))
			}
			if attempts != tc.failures+1 {
				t.Fatalf("%d sends, want %d (the failures, then the one that landed)", attempts, tc.failures+1)
			}
		})
	}
}

// A pod's share of the global REST limit follows the map at once: when a
// pod joins, the others lower theirs within the change stream's delay, not
// at some later tick (a stale share is the newcomer and the old pods
// together over the limit; found by the REST benchmark: 58 requests in one
// second at a limit of 50).
func TestAPodsRESTShareFollowsTheMapAtOnce(t *testing.T) {
	w := newMemWorld(t, 2)
	p := w.addPod("gateway-0")
	waitFor(t, 5*time.Second, "the share of the only pod", func() bool { return p.RESTShare() == restlimit.Share(restlimit.DiscordGlobalLimit, 1) })
	if _, err := w.cluster.RegisterPod(context.Background(), assignments.RegisterPodRequest{ID: "gateway-1", Addr: "gateway-1.mem"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "the share halved", func() bool { return p.RESTShare() == restlimit.Share(restlimit.DiscordGlobalLimit, 2) })
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Fatalf("the share followed a new pod after %s", d)
	}
}
