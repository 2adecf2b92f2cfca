package confignode

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/fsm"
)

var (
	// errNotLeader: the write must go to the leader.
	errNotLeader = errors.New("this node is not the leader")
	// errNoQuorum: the write was not committed in time; it may still be.
	errNoQuorum = errors.New("no quorum")
)

// proposeResult is a committed write.
type proposeResult struct {
	Index  uint64
	Events []fsm.Event
}

// propose validates cmd against the current state, appends it to the Raft log
// and waits until it is applied here or WriteTimeout passes. Validation first
// means a bad request never reaches the log; Apply validates again because the
// state may change in between.
func (n *Node) propose(ctx context.Context, cmd fsm.Command) (proposeResult, error) {
	if h := n.cfg.hooks; h != nil && h.propose != nil {
		return h.propose(ctx, cmd, func() (proposeResult, error) { return n.proposeRaft(ctx, cmd) })
	}
	return n.proposeRaft(ctx, cmd)
}

func (n *Node) proposeRaft(ctx context.Context, cmd fsm.Command) (proposeResult, error) {
	if n.raft.State() != raft.Leader {
		return proposeResult{}, errNotLeader
	}
	cmd.Version = fsm.CommandVersion
	cmd.At = time.Now().UnixMilli()
	var verr error
	n.store.View(func(st *fsm.State) { verr = st.Validate(cmd) })
	if verr != nil {
		n.metrics.proposals.WithLabelValues(string(cmd.Type), "rejected").Inc()
		return proposeResult{}, verr
	}
	b, err := cmd.Encode()
	if err != nil {
		return proposeResult{}, fmt.Errorf("encode %s: %w", cmd, err)
	}
	start := time.Now()
	f := n.raft.Apply(b, n.cfg.WriteTimeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	timer := time.NewTimer(n.cfg.WriteTimeout)
	defer timer.Stop()
	select {
	case err = <-done:
	case <-timer.C:
		err = fmt.Errorf("%w: %s was not committed within %s (a majority of voters is unreachable); it may still be applied later", errNoQuorum, cmd.Type, n.cfg.WriteTimeout)
	case <-ctx.Done():
		err = fmt.Errorf("%w: %s: %v", errNoQuorum, cmd.Type, ctx.Err())
	}
	if err != nil {
		n.metrics.proposals.WithLabelValues(string(cmd.Type), "failed").Inc()
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return proposeResult{}, fmt.Errorf("%w: %s: %v", errNoQuorum, cmd.Type, err)
		case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrRaftShutdown):
			return proposeResult{}, fmt.Errorf("%w: %s: %v", errNoQuorum, cmd.Type, err)
		}
		return proposeResult{}, err
	}
	n.metrics.applyLatency.Observe(time.Since(start).Seconds())
	resp, _ := f.Response().(applyResponse)
	if resp.err != nil {
		n.metrics.proposals.WithLabelValues(string(cmd.Type), "rejected").Inc()
		return proposeResult{}, resp.err
	}
	n.metrics.proposals.WithLabelValues(string(cmd.Type), "ok").Inc()
	return proposeResult{Index: f.Index(), Events: resp.events}, nil
}
