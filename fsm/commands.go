package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
)

// CommandVersion is the newest command encoding this build understands, and
// the version the leader proposes.
//
//   - 1: the original commands.
//   - 2: shard holder epochs (a holder change at index I sets the shard's
//     epoch to I), fenced checkpoint saves (Checkpoint.Epoch must be the
//     shard's current epoch), CmdPodAlive, and the drain remembered across
//     a pod's down time (Pod.Drain).
//   - 3: failover moves (CmdStartMove with Failover: the owner is down and
//     the target imports the guild from the owner's replica).
//
// Apply keeps the exact version-1 meaning of version-1 entries (a holder
// change leaves the epoch alone, checkpoints are fenced by holder only, a
// pod marked down forgets its drain), so that a log written by an older build
// replays to the same state on every node, whether it starts from a version-1
// snapshot or from the beginning of the log.
const CommandVersion = 3

// CommandType names a state transition.
type CommandType string

const (
	CmdInit             CommandType = "init"               // ShardCount
	CmdRegisterPod      CommandType = "register_pod"       // Pod
	CmdMarkPodDown      CommandType = "mark_pod_down"      // PodID
	CmdDrainPod         CommandType = "drain_pod"          // PodID
	CmdRemovePod        CommandType = "remove_pod"         // PodID
	CmdPlaceGuilds      CommandType = "place_guilds"       // GuildIDs
	CmdStartMove        CommandType = "start_move"         // Guild, To
	CmdSetMovePhase     CommandType = "set_move_phase"     // Guild, Epoch, Phase
	CmdCompleteMove     CommandType = "complete_move"      // Guild, Epoch
	CmdAbortMove        CommandType = "abort_move"         // Guild, Epoch, Reason
	CmdRemoveGuilds     CommandType = "remove_guilds"      // GuildIDs (the bot left them)
	CmdSetConfigNode    CommandType = "set_config_node"    // ConfigNode: a config node's addresses
	CmdRemoveConfigNode CommandType = "remove_config_node" // PodID names the config node
	CmdSaveCheckpoints  CommandType = "save_checkpoints"   // PodID, Checkpoints (each with the holder epoch): the holder's resume points
	CmdPodAlive         CommandType = "pod_alive"          // PodID: a pod marked down is heard from again (v2)
	maxGuildsPerCmd                 = 100_000
)

// Command is one entry of the Raft log. Only the fields its Type names are
// used. At is the proposing leader's clock (unix milliseconds): Apply never
// reads a clock itself.
type Command struct {
	Version    int         `json:"v"`
	Type       CommandType `json:"type"`
	At         int64       `json:"at"`
	ShardCount int         `json:"shard_count,omitempty"`
	Pod        *PodSpec    `json:"pod,omitempty"`
	PodID      string      `json:"pod_id,omitempty"`
	GuildIDs   []uint64    `json:"guild_ids,omitempty"`
	Guild      uint64      `json:"guild,omitempty"`
	To         string      `json:"to,omitempty"`
	Epoch      uint64      `json:"epoch,omitempty"`
	Phase      string      `json:"phase,omitempty"`
	Reason     string      `json:"reason,omitempty"`
	ConfigNode *ConfigNode `json:"config_node,omitempty"`
	// Failover (CmdStartMove, v3) moves a guild off an owner that is down:
	// the target imports it from the owner's replica, and LossWindowMs is
	// how much the owner's replica may lack (its last reported replication
	// lag; -1 when unknown).
	Failover     bool  `json:"failover,omitempty"`
	LossWindowMs int64 `json:"loss_window_ms,omitempty"`
	// Checkpoints maps shard id → the resume point its holder has committed;
	// each carries the holder epoch the pod holds the shard at.
	Checkpoints map[int]Checkpoint `json:"checkpoints,omitempty"`
}

// PodSpec is what a pod says about itself when it registers.
type PodSpec struct {
	ID      string `json:"id"`
	Ordinal int    `json:"ordinal"`
	Addr    string `json:"addr"`
}

// Encode serialises a command for the Raft log.
func (c Command) Encode() ([]byte, error) {
	if c.Version == 0 {
		c.Version = CommandVersion
	}
	return json.Marshal(c)
}

// DecodeCommand parses a Raft log entry.
func DecodeCommand(b []byte) (Command, error) {
	if c, ok := decodeCommandFast(b); ok {
		return c, nil
	}
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return Command{}, fmt.Errorf("decode command: %w", err)
	}
	return c, nil
}

// Error kinds. Callers map them to HTTP statuses with errors.Is.
var (
	ErrInvalid      = errors.New("invalid command")             // 400
	ErrNotFound     = errors.New("not found")                   // 404
	ErrConflict     = errors.New("conflict")                    // 409
	ErrStaleEpoch   = errors.New("stale epoch")                 // 409
	ErrUnsupported  = errors.New("unsupported command version") // 400
	ErrNoActivePods = errors.New("no active pod")               // 409
)

// CommandError is a rejection with a message for the operator.
type CommandError struct {
	Kind error
	Msg  string
}

func (e *CommandError) Error() string { return e.Msg }
func (e *CommandError) Unwrap() error { return e.Kind }

func reject(kind error, format string, args ...any) error {
	return &CommandError{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
