package assignments

import (
	"fmt"
	"time"

	"github.com/modbot/modbot/fsm"
)

// Status is GET /v1/status: one config node's view of the cluster.
type Status struct {
	ID           string       `json:"id"`
	State        string       `json:"state"` // Leader, Follower, Candidate, Shutdown
	Leader       string       `json:"leader"`
	LeaderAddr   string       `json:"leader_addr"`
	Term         uint64       `json:"term"`
	AppliedIndex uint64       `json:"applied_index"`
	CommitIndex  uint64       `json:"commit_index"`
	Revision     uint64       `json:"revision"`
	ShardCount   int          `json:"shard_count"`
	Guilds       int          `json:"guilds"`
	Migrating    int          `json:"migrating"`
	Servers      []Server     `json:"servers"`
	Pods         []PodSummary `json:"pods"`
}

// Server is one Raft member.
type Server struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

// PodSummary is a pod with its load.
type PodSummary struct {
	fsm.Pod
	Guilds int   `json:"guilds"`
	Shards []int `json:"shards"`
	// LastHeartbeatMs is how long ago the leader heard from the pod (-1 when
	// unknown, e.g. on a follower).
	LastHeartbeatMs int64 `json:"last_heartbeat_ms"`
}

// PodList is GET /v1/pods.
type PodList struct {
	Revision uint64       `json:"revision"`
	Pods     []PodSummary `json:"pods"`
}

// GuildList is one page of GET /v1/guilds.
type GuildList struct {
	Revision uint64      `json:"revision"`
	Guilds   []fsm.Guild `json:"guilds"`
	// Next is the cursor for the following page ("" on the last page).
	Next string `json:"next,omitempty"`
}

// ShardList is GET /v1/shards.
type ShardList struct {
	Revision   uint64                `json:"revision"`
	ShardCount int                   `json:"shard_count"`
	Shards     []fsm.ShardAssignment `json:"shards"`
}

// Snapshot is GET /v1/snapshot: the whole map at one revision, the "list" of
// list+watch.
type Snapshot struct {
	Revision    uint64                `json:"revision"`
	ShardCount  int                   `json:"shard_count"`
	Pods        []fsm.Pod             `json:"pods"`
	Shards      []fsm.ShardAssignment `json:"shards"`
	Guilds      []fsm.Guild           `json:"guilds"`
	ConfigNodes []fsm.ConfigNode      `json:"config_nodes"`
}

// PlaceRequest is POST /v1/guilds.
type PlaceRequest struct {
	GuildIDs []string `json:"guild_ids"`
}

// PlaceResponse lists where each requested guild is now.
type PlaceResponse struct {
	Revision uint64      `json:"revision"`
	Guilds   []fsm.Guild `json:"guilds"`
}

// RegisterPodRequest is POST /v1/pods.
type RegisterPodRequest struct {
	ID      string `json:"id"`
	Addr    string `json:"addr"`
	Ordinal *int   `json:"ordinal,omitempty"` // default: the id's numeric suffix
}

// JoinRequest is POST /v1/cluster/join.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
}

// CheckpointRequest is POST /v1/shards/checkpoints: a holder saves the
// resume points of the shards it holds.
type CheckpointRequest struct {
	Pod         string                    `json:"pod"`
	Checkpoints map[string]fsm.Checkpoint `json:"checkpoints"` // shard id → checkpoint
}

// IdentifyRequest is POST /v1/identify: a pod asks for an identify slot.
type IdentifyRequest struct {
	Pod            string `json:"pod"`
	Shard          int    `json:"shard"`
	MaxConcurrency int    `json:"max_concurrency"`
	// Epoch is the holder epoch the pod holds the shard at (the shard's
	// "epoch" in /v1/shards and the watch stream). When sent, the slot is
	// refused (409) unless the pod holds the shard at exactly that epoch.
	Epoch uint64 `json:"epoch,omitempty"`
	// SessionStartLimit is Discord's daily identify budget as the pod read
	// it from GET /gateway/bot, and SessionStartLimitAt when (unix ms; 0:
	// just now). The leader keeps the newest report and refuses slots (429)
	// below its reserve.
	SessionStartLimit   *SessionStartLimit `json:"session_start_limit,omitempty"`
	SessionStartLimitAt int64              `json:"session_start_limit_at,omitempty"`
}

// SessionStartLimit is Discord's session_start_limit object.
type SessionStartLimit struct {
	Total          int   `json:"total"`
	Remaining      int   `json:"remaining"`
	ResetAfter     int64 `json:"reset_after"` // milliseconds
	MaxConcurrency int   `json:"max_concurrency"`
}

// IdentifySlot says when the pod may send IDENTIFY, and what is left of the
// day's identify budget after it.
type IdentifySlot struct {
	Bucket          int   `json:"bucket"`
	WaitMs          int64 `json:"wait_ms"`
	At              int64 `json:"at"` // unix ms
	BudgetTotal     int   `json:"budget_total"`
	BudgetRemaining int   `json:"budget_remaining"` // after this identify
	BudgetReserve   int   `json:"budget_reserve"`
	BudgetResetAt   int64 `json:"budget_reset_at,omitempty"` // unix ms
}

// MoveRequest is POST /v1/guilds/{id}/move.
type MoveRequest struct {
	To string `json:"to"` // pod id (gateway-1) or ordinal (1)
}

// MoveResponse says which move started; its epoch fences it.
type MoveResponse struct {
	Guild    uint64 `json:"guild,string"`
	From     string `json:"from"`
	To       string `json:"to"`
	Epoch    uint64 `json:"epoch"`
	Revision uint64 `json:"revision"`
}

// RebalanceRequest is POST /v1/rebalance.
type RebalanceRequest struct {
	DryRun bool `json:"dry_run"`
}

// RebalanceJob is a rebalance or drain: its plan and progress.
type RebalanceJob struct {
	Kind       string    `json:"kind"` // rebalance or drain
	Pod        string    `json:"pod,omitempty"`
	Total      int       `json:"total"`
	Done       int       `json:"done"`
	Failed     int       `json:"failed"`
	Running    int       `json:"running"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Moves      []Move    `json:"moves"`
	Errors     []string  `json:"errors,omitempty"`
}

// TransferRequest is POST /v1/cluster/transfer-leadership.
type TransferRequest struct {
	To string `json:"to,omitempty"`
}

// WriteResult is the answer to a write that went through Raft.
type WriteResult struct {
	Revision uint64 `json:"revision"`
	Index    uint64 `json:"index"`
	Message  string `json:"message,omitempty"`
}

// ErrorBody is every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
	// Leader is set on 503s caused by leadership, when a leader is known.
	Leader string `json:"leader,omitempty"`
	// OldestRevision is set on 410 Gone from /v1/watch.
	OldestRevision uint64 `json:"oldest_revision,omitempty"`
	// MaybeApplied is set on a 503 for a write that reached the leader's log
	// but was not committed in time: it may still be applied. The client
	// does not send it to another node (that could apply it twice); the
	// caller re-reads what it wrote, or retries an idempotent write.
	MaybeApplied bool `json:"maybe_applied,omitempty"`
}

// APIError is a non-2xx answer from a config node.
type APIError struct {
	Status int
	Body   ErrorBody
	URL    string
	// RetryAfter is the answer's Retry-After (0 when absent).
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %d %s", e.URL, e.Status, e.Body.Error)
}

// GuildView is GET /v1/guilds/{id}: the guild with its shard and the shard's
// holder.
type GuildView struct {
	fsm.Guild
	Shard       int    `json:"shard"`
	ShardHolder string `json:"shard_holder"`
	OwnerAddr   string `json:"owner_addr"`
	MapRevision uint64 `json:"map_revision"`
}
