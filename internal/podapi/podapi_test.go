package podapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func server(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// A refusal (4xx) and a failure that may pass (5xx) are told apart, and the
// pod's JSON error message is kept.
func TestRefusalsAreToldApartFromFailures(t *testing.T) {
	status := http.StatusConflict
	addr := server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get(HeaderConfigNode) != "config-0" {
			t.Errorf("headers %v", r.Header)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"error":"guild 1 came back here"}`))
	})
	c := Client{Token: "tok", Caller: "config-0"}
	err := c.DropCopy(context.Background(), addr, 1, 2)
	if !Refused(err) || !IsStatus(err, http.StatusConflict) || !strings.Contains(err.Error(), "came back here") {
		t.Fatalf("409: %v", err)
	}
	status = http.StatusInternalServerError
	if err := c.DropCopy(context.Background(), addr, 1, 2); Refused(err) || !IsStatus(err, 500) {
		t.Fatalf("500: %v", err)
	}
}

// An owner's answer naming events the sender did not send is an error, not
// a partial acknowledgement.
func TestForwardRejectsRefusedIndexesOutOfRange(t *testing.T) {
	answer := ForwardResponse{Accepted: 1, Refused: []int{1}}
	addr := server(t, func(w http.ResponseWriter, r *http.Request) {
		var req ForwardRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Events) != 2 || r.URL.Path != PathEvents {
			t.Errorf("request %s: %+v %v", r.URL.Path, req, err)
		}
		_ = json.NewEncoder(w).Encode(answer)
	})
	evs := []Event{{Type: "MESSAGE_CREATE", Data: json.RawMessage(`{}`)}, {Type: "MESSAGE_CREATE", Data: json.RawMessage(`{}`)}}
	res, err := Client{}.Forward(context.Background(), addr, evs)
	if err != nil || len(res.Refused) != 1 || res.Refused[0] != 1 {
		t.Fatalf("valid answer: %+v %v", res, err)
	}
	for _, bad := range [][]int{{2}, {-1}, {1, 1}, {1, 0}} {
		answer.Refused = bad
		if _, err := (Client{}).Forward(context.Background(), addr, evs); err == nil {
			t.Fatalf("refused %v accepted", bad)
		}
	}
}
