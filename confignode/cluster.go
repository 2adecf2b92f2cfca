package confignode

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// join adds a voter. It is idempotent: the same id at the same address is
// already done. A conflicting entry is replaced when it is evidently stale —
// the same address under another id (the machine was re-created), or the same
// id at an address nobody answers on (the pod moved) — and refused with 409
// when the other server is alive, since replacing it would split the cluster.
func (n *Node) join(ctx context.Context, req assignments.JoinRequest) (assignments.WriteResult, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return assignments.WriteResult{}, fmt.Errorf("read raft configuration: %w", err)
	}
	msg := fmt.Sprintf("%s joined at %s", req.ID, req.RaftAddr)
	for _, s := range f.Configuration().Servers {
		sameID, sameAddr := string(s.ID) == req.ID, string(s.Address) == req.RaftAddr
		switch {
		case sameID && sameAddr:
			msg = fmt.Sprintf("%s is already a member at %s; nothing to do", req.ID, req.RaftAddr)
			if err := n.recordConfigNode(ctx, req); err != nil {
				return assignments.WriteResult{}, err
			}
			return assignments.WriteResult{Revision: n.store.Revision(), Message: msg}, nil
		case sameID:
			if string(s.ID) == n.cfg.ID || reachable(string(s.Address)) {
				return assignments.WriteResult{}, &fsm.CommandError{Kind: fsm.ErrConflict, Msg: fmt.Sprintf(
					"id %s already belongs to a live server at %s; pick another id, or remove it first (modbotctl config-node remove %s)", req.ID, s.Address, req.ID)}
			}
			if err := n.raft.RemoveServer(s.ID, 0, n.cfg.WriteTimeout).Error(); err != nil {
				return assignments.WriteResult{}, fmt.Errorf("%w: replace %s at %s: %v", errNoQuorum, s.ID, s.Address, err)
			}
			msg = fmt.Sprintf("%s moved from %s to %s (old address unreachable; replaced)", req.ID, s.Address, req.RaftAddr)
		case sameAddr:
			if string(s.ID) == n.cfg.ID {
				return assignments.WriteResult{}, &fsm.CommandError{Kind: fsm.ErrConflict, Msg: fmt.Sprintf(
					"address %s belongs to the leader %s; a new node needs its own raft address", req.RaftAddr, s.ID)}
			}
			if err := n.raft.RemoveServer(s.ID, 0, n.cfg.WriteTimeout).Error(); err != nil {
				return assignments.WriteResult{}, fmt.Errorf("%w: replace %s at %s: %v", errNoQuorum, s.ID, s.Address, err)
			}
			if _, ok := n.configNode(string(s.ID)); ok {
				_, _ = n.propose(ctx, fsm.Command{Type: fsm.CmdRemoveConfigNode, PodID: string(s.ID)})
			}
			msg = fmt.Sprintf("%s replaced %s at %s", req.ID, s.ID, req.RaftAddr)
		}
	}
	fut := n.raft.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.RaftAddr), 0, n.cfg.WriteTimeout)
	if err := fut.Error(); err != nil {
		return assignments.WriteResult{}, fmt.Errorf("%w: add voter %s: %v", errNoQuorum, req.ID, err)
	}
	if err := n.recordConfigNode(ctx, req); err != nil {
		return assignments.WriteResult{}, err
	}
	n.log.Info("config node joined", "id", req.ID, "raft_addr", req.RaftAddr, "http_addr", req.HTTPAddr)
	return assignments.WriteResult{Revision: n.store.Revision(), Index: fut.Index(), Message: msg}, nil
}

func (n *Node) recordConfigNode(ctx context.Context, req assignments.JoinRequest) error {
	if req.HTTPAddr == "" {
		return nil
	}
	_, err := n.propose(ctx, fsm.Command{Type: fsm.CmdSetConfigNode, ConfigNode: &fsm.ConfigNode{ID: req.ID, RaftAddr: req.RaftAddr, HTTPAddr: req.HTTPAddr}})
	return err
}

func (n *Node) configNode(id string) (fsm.ConfigNode, bool) {
	var c fsm.ConfigNode
	var ok bool
	n.store.View(func(s *fsm.State) { c, ok = s.ConfigNodes[id] })
	return c, ok
}

func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func (n *Node) removeServer(ctx context.Context, id string) (assignments.WriteResult, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return assignments.WriteResult{}, fmt.Errorf("read raft configuration: %w", err)
	}
	found := false
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			found = true
		}
	}
	if !found {
		return assignments.WriteResult{}, &fsm.CommandError{Kind: fsm.ErrNotFound, Msg: fmt.Sprintf("no config node %q in the raft configuration", id)}
	}
	if _, ok := n.configNode(id); ok {
		if _, err := n.propose(ctx, fsm.Command{Type: fsm.CmdRemoveConfigNode, PodID: id}); err != nil {
			return assignments.WriteResult{}, err
		}
	}
	fut := n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.WriteTimeout)
	if err := fut.Error(); err != nil {
		return assignments.WriteResult{}, fmt.Errorf("%w: remove %s: %v", errNoQuorum, id, err)
	}
	n.log.Info("config node removed", "id", id)
	return assignments.WriteResult{Revision: n.store.Revision(), Index: fut.Index(), Message: "removed " + id}, nil
}

func (n *Node) transferLeadership(to string) (assignments.WriteResult, error) {
	var fut raft.Future
	if to == "" {
		fut = n.raft.LeadershipTransfer()
	} else {
		f := n.raft.GetConfiguration()
		if err := f.Error(); err != nil {
			return assignments.WriteResult{}, err
		}
		var addr raft.ServerAddress
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == to {
				addr = s.Address
			}
		}
		if addr == "" {
			return assignments.WriteResult{}, &fsm.CommandError{Kind: fsm.ErrNotFound, Msg: fmt.Sprintf("no config node %q", to)}
		}
		if to == n.cfg.ID {
			return assignments.WriteResult{Message: to + " already leads"}, nil
		}
		fut = n.raft.LeadershipTransferToServer(raft.ServerID(to), addr)
	}
	if err := fut.Error(); err != nil {
		return assignments.WriteResult{}, fmt.Errorf("%w: leadership transfer: %v", errNoQuorum, err)
	}
	// Wait briefly for a new leader to be known so the answer names it.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if l := n.leaderID(); l != "" && l != n.cfg.ID {
			return assignments.WriteResult{Message: "leadership moved to " + l}, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return assignments.WriteResult{Message: "leadership transfer started"}, nil
}
