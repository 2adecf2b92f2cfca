package confignode

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/fsm"
)

// leaderID returns the current leader's id ("" when none is known).
func (n *Node) leaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// leaderHTTP returns the leader's API address, from the FSM's config nodes.
func (n *Node) leaderHTTP() string {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return ""
	}
	var addr string
	n.store.View(func(st *fsm.State) { addr = st.ConfigNodes[string(id)].HTTPAddr })
	return addr
}

// leaderOnly runs h on the leader and forwards the request to the leader
// everywhere else, so clients may send writes to any config node.
func (n *Node) leaderOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n.raft.State() == raft.Leader {
			h(w, r)
			return
		}
		n.forward(w, r)
	}
}

func (n *Node) forward(w http.ResponseWriter, r *http.Request) {
	if by := r.Header.Get(hdrForwarded); by != "" {
		// The node that forwarded this thought we lead: leadership is moving.
		n.fail(w, r, errNotLeaderf("leadership is changing (forwarded by %s to a node that no longer leads); retry", by))
		return
	}
	addr := n.leaderHTTP()
	if addr == "" {
		n.fail(w, r, errNotLeaderf("no leader is known (an election is in progress or a majority of voters is down); retry shortly"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, n.cfg.MaxBodyBytes)
	out, err := http.NewRequestWithContext(r.Context(), r.Method, n.cfg.TLS.Scheme()+"://"+addr+r.URL.RequestURI(), r.Body)
	if err != nil {
		n.fail(w, r, err)
		return
	}
	out.Header = r.Header.Clone()
	out.Header.Set(hdrForwarded, n.cfg.ID)
	out.ContentLength = r.ContentLength
	resp, err := n.peers.Do(out)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		n.fail(w, r, fmt.Errorf("request body is larger than %d bytes: %w", n.cfg.MaxBodyBytes, mbe))
		return
	}
	if err != nil {
		n.fail(w, r, errNotLeaderf("forward to leader %s at %s: %v", n.leaderID(), addr, err))
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	n.metrics.forwarded.Inc()
}

type notLeaderError struct{ msg string }

func (e *notLeaderError) Error() string { return e.msg }
func (e *notLeaderError) Unwrap() error { return errNotLeader }

func errNotLeaderf(msg string, args ...any) error {
	if len(args) > 0 {
		msg = fmt.Sprintf(msg, args...)
	}
	return &notLeaderError{msg: msg}
}
