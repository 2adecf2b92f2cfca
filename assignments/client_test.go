package assignments

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// answering is a config node that answers every request with status and body,
// counting the requests.
func answering(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

const noLeaderBody = `{"error":"no leader is known (an election is in progress or a majority of voters is down); retry shortly","leader":""}`

// A follower cut off from the leader answers every write 503 "no leader is
// known" (it appended nothing). A pod whose client last talked to it must
// reach the healthy nodes, and stay there: from the review, 20 of 20
// heartbeats failed while the other node was fine.
func TestClientFailsOverWhenANodeKnowsNoLeader(t *testing.T) {
	partitioned, partitionedHits := answering(t, http.StatusServiceUnavailable, noLeaderBody)
	healthy, healthyHits := answering(t, http.StatusOK, `{"pod":"gateway-0","state":"active"}`)
	c, err := NewClient([]string{partitioned.URL, healthy.URL}, "t")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ { // 20 heartbeats = 20 s at the default interval, twice the pod timeout
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err := c.Heartbeat(ctx, "gateway-0")
		cancel()
		if err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
	}
	if got := healthyHits.Load(); got != 20 {
		t.Errorf("the healthy node got %d heartbeats, want 20", got)
	}
	// Only the first request went to the partitioned node: the client
	// remembers the node that answered.
	if got := partitionedHits.Load(); got != 1 {
		t.Errorf("the partitioned node got %d requests, want 1", got)
	}
}

func TestClientFailsOverOnEveryUnavailableStatus(t *testing.T) {
	for _, status := range []int{http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			bad, _ := answering(t, status, `{"error":"unavailable"}`)
			good, goodHits := answering(t, http.StatusOK, `{"revision":7}`)
			c, _ := NewClient([]string{bad.URL, good.URL}, "")
			var res WriteResult
			if err := c.Do(context.Background(), http.MethodPost, "/v1/pods", RegisterPodRequest{ID: "gateway-0"}, &res); err != nil {
				t.Fatal(err)
			}
			if res.Revision != 7 || goodHits.Load() != 1 {
				t.Fatalf("answer %+v after %d requests to the good node", res, goodHits.Load())
			}
		})
	}
}

// A 4xx is the same answer from every node, and a 500 is a bug to report:
// neither is retried elsewhere.
func TestClientAnswersOtherThanUnavailableAreFinal(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusInternalServerError} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			first, firstHits := answering(t, status, `{"error":"refused"}`)
			other, otherHits := answering(t, http.StatusOK, `{}`)
			c, _ := NewClient([]string{first.URL, other.URL}, "")
			for i := 0; i < 2; i++ {
				err := c.Do(context.Background(), http.MethodPost, "/v1/guilds/1/move", MoveRequest{To: "1"}, nil)
				if !IsStatus(err, status) || IsUnavailable(err) {
					t.Fatalf("error %v, want a final %d", err, status)
				}
			}
			if firstHits.Load() != 2 || otherHits.Load() != 0 {
				t.Fatalf("requests: first node %d, other %d; want 2 and 0", firstHits.Load(), otherHits.Load())
			}
		})
	}
}

func TestClientReportsEveryNodesAnswerWhenNoneCanServe(t *testing.T) {
	a, aHits := answering(t, http.StatusServiceUnavailable, noLeaderBody)
	b, bHits := answering(t, http.StatusServiceUnavailable, `{"error":"leadership is changing","leader":""}`)
	c, _ := NewClient([]string{a.URL, b.URL}, "")
	err := c.Heartbeat(context.Background(), "gateway-0")
	if !IsStatus(err, http.StatusServiceUnavailable) || !IsUnavailable(err) {
		t.Fatalf("error %v, want 503", err)
	}
	for _, want := range []string{"no config node answered", a.URL, b.URL, "no leader is known", "leadership is changing"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if aHits.Load() != 1 || bHits.Load() != 1 {
		t.Fatalf("requests %d and %d, want one each", aHits.Load(), bHits.Load())
	}
}

// A write the leader enqueued but could not commit in time may still be
// applied: sending it to another node could apply it twice, so the client
// hands the answer back (a 503 with maybe_applied) instead of failing over.
func TestClientNeverSendsAMaybeAppliedWriteElsewhere(t *testing.T) {
	first, firstHits := answering(t, http.StatusServiceUnavailable, `{"error":"no quorum: start_move was not committed within 5s; it may still be applied later","maybe_applied":true}`)
	other, otherHits := answering(t, http.StatusOK, `{}`)
	c, _ := NewClient([]string{first.URL, other.URL}, "")
	err := c.Do(context.Background(), http.MethodPost, "/v1/guilds/1/move", MoveRequest{To: "1"}, nil)
	var ae *APIError
	if !errors.As(err, &ae) || !ae.Body.MaybeApplied || !IsUnavailable(err) {
		t.Fatalf("error %v, want the maybe-applied 503 back", err)
	}
	if firstHits.Load() != 1 || otherHits.Load() != 0 {
		t.Fatalf("requests: first node %d, other %d; want 1 and 0", firstHits.Load(), otherHits.Load())
	}
}
