package pgmirror

import (
	"fmt"
	"math"
	"time"

	"github.com/modbot/modbot/fsm"
)

// Event kinds of assignment_events.kind.
const (
	KindInit              = "init"
	KindGuildPlaced       = "guild_placed"
	KindGuildRemoved      = "guild_removed"
	KindGuildUpdated      = "guild_updated"
	KindMoveStarted       = "move_started"
	KindMovePhase         = "move_phase"
	KindMoveCompleted     = "move_completed"
	KindMoveAborted       = "move_aborted"
	KindPodRegistered     = "pod_registered"
	KindPodDown           = "pod_down"
	KindPodUp             = "pod_up"
	KindPodDraining       = "pod_draining"
	KindPodUpdated        = "pod_updated"
	KindPodRemoved        = "pod_removed"
	KindShardHolder       = "shard_holder"
	KindShardCheckpoint   = "shard_checkpoint"
	KindConfigNode        = "config_node"
	KindConfigNodeRemoved = "config_node_removed"
	KindResync            = "resync"
)

// guildRow is a row of guild_assignments.
type guildRow struct {
	ID        int64
	Owner     string
	State     string
	Epoch     int64
	MoveFrom  *string
	MoveTo    *string
	MoveEpoch *int64
	MovePhase *string
	MoveStart *time.Time
	MoveFail  *bool
	Revision  int64
	UpdatedAt time.Time
}

// podRow is a row of pods.
type podRow struct {
	ID        string
	Ordinal   int32
	Addr      string
	State     string
	Since     time.Time
	Drain     bool
	Guilds    int32
	Revision  int64
	UpdatedAt time.Time
}

// shardRow is a row of shard_assignments.
type shardRow struct {
	Shard     int32
	Holder    string
	Epoch     int64
	Revision  int64
	UpdatedAt time.Time
}

// eventRow is a row of assignment_events.
type eventRow struct {
	Revision   int64
	Seq        int32
	At         time.Time
	Kind       string
	Cause      string
	Guild      *int64
	Pod        *string
	Shard      *int32
	From, To   *string
	Epoch      *int64
	Phase      *string
	Reason     *string
	Failover   bool
	DurationMs *int64
	Detail     any
}

func ms(t int64) time.Time { return time.UnixMilli(t).UTC() }

func ptr[T any](v T) *T { return &v }

// sqlID converts a snowflake to Postgres' bigint. Discord snowflakes stay
// below 2^63 until 2084.
func sqlID(id uint64) (int64, error) {
	if id > math.MaxInt64 {
		return 0, fmt.Errorf("guild id %d does not fit a bigint", id)
	}
	return int64(id), nil
}

func guildRowOf(g *fsm.Guild, updated time.Time) (guildRow, error) {
	id, err := sqlID(g.ID)
	if err != nil {
		return guildRow{}, err
	}
	r := guildRow{ID: id, Owner: g.Owner, State: string(g.State), Epoch: int64(g.Epoch), Revision: int64(g.Revision), UpdatedAt: updated}
	if mg := g.Migration; mg != nil {
		r.MoveFrom, r.MoveTo, r.MoveEpoch, r.MovePhase = ptr(mg.From), ptr(mg.To), ptr(int64(mg.Epoch)), ptr(mg.Phase)
		r.MoveStart, r.MoveFail = ptr(ms(mg.StartedAt)), ptr(mg.Failover)
	}
	return r, nil
}

func podRowOf(p *fsm.Pod, rev uint64, updated time.Time, guilds int32) podRow {
	return podRow{ID: p.ID, Ordinal: int32(p.Ordinal), Addr: p.Addr, State: string(p.State), Since: ms(p.Since), Drain: p.Drain, Guilds: guilds, Revision: int64(rev), UpdatedAt: updated}
}

// classifyGuild names a guild event by comparing the row before it (nil:
// no such guild yet) with the guild after it, so the kind does not depend on
// which command caused it.
func classifyGuild(old *guildRow, e *fsm.Event, row *eventRow) {
	g := e.Guild
	id, _ := sqlID(g.ID)
	row.Guild = &id
	row.Pod = ptr(g.Owner)
	row.Epoch = ptr(int64(g.Epoch))
	wasMoving := old != nil && old.MoveTo != nil
	switch {
	case old == nil:
		row.Kind = KindGuildPlaced
	case !wasMoving && g.Migration != nil:
		row.Kind = KindMoveStarted
	case wasMoving && g.Migration == nil:
		row.From, row.To = old.MoveFrom, old.MoveTo
		if old.MoveFail != nil {
			row.Failover = *old.MoveFail
		}
		if g.Owner != old.Owner {
			row.Kind = KindMoveCompleted
		} else {
			row.Kind = KindMoveAborted
			reason := e.Reason
			if reason == "" {
				reason = string(e.Cause)
			}
			row.Reason = &reason
		}
		if old.MoveStart != nil {
			row.DurationMs = ptr(e.At - old.MoveStart.UnixMilli())
		}
		return
	case wasMoving && g.Migration != nil && int64(g.Migration.Epoch) != *old.MoveEpoch:
		// Aborted and restarted inside one batch's view: a new move.
		row.Kind = KindMoveStarted
	case wasMoving && g.Migration != nil:
		row.Kind = KindMovePhase
	default:
		row.Kind = KindGuildUpdated
	}
	if mg := g.Migration; mg != nil {
		row.From, row.To, row.Phase, row.Failover = ptr(mg.From), ptr(mg.To), ptr(mg.Phase), mg.Failover
	}
}

// classifyPod names a pod event by its state change.
func classifyPod(old *podRow, e *fsm.Event, row *eventRow) {
	p := e.Pod
	row.Pod = ptr(p.ID)
	switch {
	case e.Type == fsm.EventPodRemove:
		row.Kind = KindPodRemoved
	case old == nil || e.Cause == fsm.CmdRegisterPod:
		row.Kind = KindPodRegistered
	case p.State == fsm.PodDown && old.State != string(fsm.PodDown):
		row.Kind = KindPodDown
	case old.State == string(fsm.PodDown) && p.State != fsm.PodDown:
		row.Kind = KindPodUp
	case p.State == fsm.PodDraining && old.State != string(fsm.PodDraining):
		row.Kind = KindPodDraining
	default:
		row.Kind = KindPodUpdated
	}
	if old != nil {
		row.From = ptr(old.State)
	}
	row.To = ptr(string(p.State))
}
