package gatewaynode

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/gorilla/websocket"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/discordgw"
	"github.com/modbot/modbot/internal/podapi"
)

// The pod's seams. Each is the smallest surface the routing, outbox, shard
// and move code needs from the world outside the pod; production wires the
// real thing (the Watcher, the config client, HTTP to peers, discordgw), the
// unit tests wire the in-memory twins in inmem.go (the way hashicorp/raft
// pairs Transport with InmemTransport), so the invariants in doc.go are
// tested where they live, in milliseconds.

// mapView is the pod's local copy of the replicated map: answered without
// I/O, always a state at some revision, woken by changes.
type mapView interface {
	Lookup(guild uint64) (fsm.Guild, bool)
	Pod(id string) (fsm.Pod, bool)
	Pods() []fsm.Pod
	ShardCount() int
	ShardHolder(shard int) string
	Shard(shard int) (fsm.ShardAssignment, bool)
	GuildsOwnedBy(pod string) []uint64
	GuildCount(pod string) int
	Revision() uint64
	Staleness() time.Duration
	WaitSynced(ctx context.Context) error
	WaitRevision(ctx context.Context, rev uint64) error
	Subscribe(buffer int) (<-chan assignments.Change, func())
}

// controlPlane is what the pod asks of the config nodes.
type controlPlane interface {
	RegisterPod(ctx context.Context, r assignments.RegisterPodRequest) (assignments.WriteResult, error)
	HeartbeatWithLag(ctx context.Context, pod string, replicationLagMs int64) error
	// Leave marks the pod down at its own request (a planned stop).
	Leave(ctx context.Context, pod string) error
	PlaceGuilds(ctx context.Context, ids []string) (assignments.PlaceResponse, error)
	// ConsistentShards reads the shards (holders, epochs, checkpoints)
	// linearizably: a handoff or a resume must not act on a lagging copy.
	ConsistentShards(ctx context.Context) (assignments.ShardList, error)
	SaveCheckpoints(ctx context.Context, r assignments.CheckpointRequest) error
	IdentifySlot(ctx context.Context, r assignments.IdentifyRequest) (assignments.IdentifySlot, error)
}

// peerLink carries events from a shard holder to the guild's owner pod.
// Forward returns once the owner has committed every event it accepted; the
// ones it refused (it does not own the guild at its epoch, the guild is
// migrating, or older events of the guild wait elsewhere) are listed by
// index, in order, and stay the caller's to hold. A refusal of one event of
// a guild is a refusal of every later event of that guild in the batch.
//
// Released asks a shard's previous holder whether it still runs a session
// of the shard, waiting up to wait for it to let go (a long poll), and which
// session of the shard it last closed after committing its backlog.
type peerLink interface {
	Forward(ctx context.Context, owner fsm.Pod, evs []bot.Event) (refused []int, err error)
	Released(ctx context.Context, pod fsm.Pod, shard int, wait time.Duration) (podapi.ReleasedResponse, error)
}

// session is one shard's Discord gateway session (discordgw.Shard).
type session interface {
	Events() <-chan discordgw.Dispatch
	AckDispatch(d discordgw.Dispatch)
	Checkpoint() discordgw.Checkpoint
	Received() (sessionID string, seq int64)
	ResumeFailed() bool
	Err() error
	Close() error
	Detach() error
}

// discord is the pod's door to Discord's gateway: where to connect and how
// many identifies may run at once (REST GET /gateway/bot), and opening one
// shard session.
type discord interface {
	Gateway() (gatewayInfo, error)
	Open(ctx context.Context, cfg discordgw.Config) (session, error)
}

// gatewayInfo is GET /gateway/bot: the URL, how many identifies may run at
// once, and the day's identify budget (nil when not reported).
type gatewayInfo struct {
	URL            string
	MaxConcurrency int
	Limit          *assignments.SessionStartLimit
}

// realDiscord is discordgo's REST client plus discordgw sessions.
type realDiscord struct {
	rest   *discordgo.Session
	dialer *websocket.Dialer
}

func (d realDiscord) Gateway() (gatewayInfo, error) {
	gb, err := d.rest.GatewayBot()
	if err != nil {
		return gatewayInfo{}, fmt.Errorf("GET /gateway/bot: %w", err)
	}
	l := gb.SessionStartLimit
	return gatewayInfo{URL: gb.URL, MaxConcurrency: l.MaxConcurrency, Limit: &assignments.SessionStartLimit{
		Total: l.Total, Remaining: l.Remaining, ResetAfter: int64(l.ResetAfter), MaxConcurrency: l.MaxConcurrency}}, nil
}

func (d realDiscord) Open(ctx context.Context, cfg discordgw.Config) (session, error) {
	cfg.Dialer = d.dialer
	sh, err := discordgw.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return sh, nil
}

// configClient adapts *assignments.Client to controlPlane.
type configClient struct{ *assignments.Client }

func (c configClient) ConsistentShards(ctx context.Context) (assignments.ShardList, error) {
	var out assignments.ShardList
	err := c.Do(ctx, "GET", "/v1/shards?consistent=true", nil, &out)
	return out, err
}

// waitMap blocks until cond holds on the pod's map, re-checking it after
// every change the map reports (never on a timer), or until ctx ends.
func waitMap(ctx context.Context, m mapView, cond func() bool) error {
	ch, cancel := m.Subscribe(1) // a full buffer coalesces: no wake-up is lost
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-ch:
			if !ok {
				return errors.New("the map's change stream ended")
			}
		}
	}
	return nil
}
