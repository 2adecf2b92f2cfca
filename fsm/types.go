package fsm

import (
	"fmt"
	"strconv"
	"strings"
)

// PodState is the lifecycle state of a gateway pod.
type PodState string

const (
	PodActive   PodState = "active"   // heartbeating; holds shards and receives new guilds
	PodDown     PodState = "down"     // missed heartbeats; its shards were handed to live pods
	PodDraining PodState = "draining" // operator asked to empty it; holds no shards, gets no new guilds
)

// GuildState says whether a guild is served normally or being moved.
type GuildState string

const (
	GuildActive    GuildState = "active"
	GuildMigrating GuildState = "migrating"
)

// Pod is one gateway pod as the control plane knows it.
type Pod struct {
	ID      string   `json:"id"`
	Ordinal int      `json:"ordinal"`
	Addr    string   `json:"addr"`
	State   PodState `json:"state"`
	// Since is when the pod entered State (leader clock, unix milliseconds).
	Since int64 `json:"since"`
	// Drain is set only while the pod is down: it was draining when it was
	// marked down, so it comes back draining (not active) when it is heard
	// from again. An operator's drain is never cancelled by a missed
	// heartbeat.
	Drain bool `json:"drain,omitempty"`
}

// Migration is an in-flight move of one guild.
type Migration struct {
	From      string `json:"from"`
	To        string `json:"to"`
	Epoch     uint64 `json:"epoch"`
	Phase     string `json:"phase"`
	StartedAt int64  `json:"started_at"`
	// Failover marks a move off an owner that is down: the data comes from
	// the owner's replica, which may lack the last LossWindowMs of writes
	// (-1: unknown).
	Failover     bool  `json:"failover,omitempty"`
	LossWindowMs int64 `json:"loss_window_ms,omitempty"`
}

// Guild is one guild's placement.
type Guild struct {
	ID    uint64     `json:"id,string"`
	Owner string     `json:"owner"`
	State GuildState `json:"state"`
	// Epoch fences writes: only the owner at the current epoch may write.
	Epoch     uint64     `json:"epoch"`
	Migration *Migration `json:"migration,omitempty"`
	// Revision is the revision that last changed this guild.
	Revision uint64 `json:"revision"`
}

// ConfigNode is one member of the control plane, with the addresses peers and
// clients use to reach it. Keeping it in the FSM lets any node forward a write
// to the leader's HTTP address and lets watchers discover every config node.
type ConfigNode struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// Checkpoint is where a shard's Discord session can be resumed from: every
// dispatch up to Seq has been durably committed by its owner. A pod that takes
// the shard over RESUMEs from it, so nothing dispatched while the previous
// holder was dying is lost (replays are harmless: handlers are idempotent).
type Checkpoint struct {
	SessionID string `json:"session_id"`
	Seq       int64  `json:"seq"`
	ResumeURL string `json:"resume_url"`
	// Epoch fences the save: a holder sends the shard's holder epoch it
	// holds the shard at, and the save is refused unless that is the shard's
	// current epoch and the sender its current holder. A saved checkpoint
	// records the epoch it was saved at, so a pod taking the shard over can
	// tell its own session's checkpoint (Epoch == the shard's epoch) from its
	// predecessor's.
	Epoch uint64 `json:"epoch"`
	// Holder is the pod that saved it; At is the leader's clock then.
	Holder string `json:"holder"`
	At     int64  `json:"at"`
}

// ShardAssignment says which pod keeps the Discord session of one shard.
type ShardAssignment struct {
	Shard  int    `json:"shard"`
	Holder string `json:"holder"` // "" when no active pod exists
	// Epoch is the shard's holder epoch: the Raft index of the entry that
	// last changed its holder. It only grows, so it names one tenure of one
	// holder; only the holder at the current epoch may save checkpoints or
	// get identify slots for the shard.
	Epoch uint64 `json:"epoch"`
	// Checkpoint is the last saved resume point (nil before the first).
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`
}

// ShardOf returns the gateway shard that carries a guild's events.
func ShardOf(guildID uint64, shardCount int) int {
	if shardCount <= 0 {
		return 0
	}
	return int((guildID >> 22) % uint64(shardCount))
}

// OrdinalFromID extracts the StatefulSet ordinal from a pod id such as
// "gateway-1". It returns -1 when the id has no numeric suffix.
func OrdinalFromID(id string) int {
	i := strings.LastIndexByte(id, '-')
	n, err := strconv.Atoi(id[i+1:])
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// ParseGuildID parses a Discord snowflake given as a decimal string.
func ParseGuildID(s string) (uint64, error) {
	id, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("guild id %q is not a snowflake (a positive decimal integer)", s)
	}
	return id, nil
}
