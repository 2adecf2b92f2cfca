// Package podapi is the gateway pod's internal HTTP API as its callers see
// it — shard holders forwarding events to owners, the proxy, and the config
// leader's move orchestrator: the paths, headers, request and response
// types, and one client. The pod serves these routes (gatewaynode/api.go);
// everything here is the single definition both sides use.
//
// Every call carries the internal bearer token. A non-2xx answer is a
// *StatusError, so callers can tell a refusal (4xx: do not retry) from a
// failure that may pass (5xx, or no answer at all).
package podapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Routes (gorilla/mux patterns) and paths of the internal API.
const (
	PathEvents       = "/internal/events"       // POST ForwardRequest → ForwardResponse
	PathInteractions = "/internal/interactions" // POST a Discord interaction (the proxy's webhook) → the interaction response
	PathStatus       = "/internal/status"       // GET the pod's status
	PathDeadLetters  = "/internal/dead-letters" // GET [?guild=&after=&limit=]

	RouteDashboard        = "/guild/{id}/dashboard"
	RouteSettings         = "/guild/{id}/settings"               // POST the dashboard's settings form (mod-log channel, moderator role)
	RouteExport           = "/internal/guilds/{id}/export"       // GET ?epoch=E: the move's source streams the guild's rows
	RouteImport           = "/internal/guilds/{id}/import"       // POST ?epoch=E: the move's target pulls and imports them
	RouteGuild            = "/internal/guilds/{id}"              // DELETE ?epoch=E: drop a copy owned elsewhere
	RouteShardReleased    = "/internal/shards/{id}/released"     // GET ?wait_ms=N: a long poll by a shard's new holder
	RouteReplayDeadLetter = "/internal/dead-letters/{id}/replay" // POST
)

// Headers of the internal API.
const (
	HeaderChecksum   = "X-Modbot-Checksum"    // an export's SHA-256 over its canonical rows
	HeaderConfigNode = "X-Modbot-Config-Node" // the config node driving a move step
	HeaderEpoch      = "X-Modbot-Epoch"       // the guild's epoch in the caller's map
	HeaderRevision   = "X-Modbot-Revision"    // the caller's map revision
	HeaderDeadlineMs = "X-Modbot-Deadline-Ms" // how long the caller waits for an interaction's answer
)

// ExportPath and the others build the request paths of one guild's move.
func ExportPath(guild, epoch uint64) string {
	return fmt.Sprintf("/internal/guilds/%d/export?epoch=%d", guild, epoch)
}

func ImportPath(guild, epoch uint64) string {
	return fmt.Sprintf("/internal/guilds/%d/import?epoch=%d", guild, epoch)
}

func GuildPath(guild, epoch uint64) string {
	return fmt.Sprintf("/internal/guilds/%d?epoch=%d", guild, epoch)
}

func ShardReleasedPath(shard int, wait time.Duration) string {
	return fmt.Sprintf("/internal/shards/%d/released?wait_ms=%d", shard, wait.Milliseconds())
}

// Event is one gateway dispatch as it travels between pods (and as it sits
// in a pod's durable outbox).
type Event struct {
	Type       string          `json:"t"`
	Data       json.RawMessage `json:"d"`
	DeliveryID string          `json:"delivery_id,omitempty"`
	// ReceivedAt is when the shard holder read it from Discord (unix ms).
	ReceivedAt int64 `json:"received_at,omitempty"`
}

// ForwardRequest is POST /internal/events.
type ForwardRequest struct {
	Events []Event `json:"events"`
}

// ForwardResponse answers it: how many events the owner committed, and the
// indexes (ascending) of those it refused, which the sender keeps.
type ForwardResponse struct {
	Accepted int   `json:"accepted"`
	Refused  []int `json:"refused,omitempty"`
}

// ReleasedResponse answers GET /internal/shards/{id}/released.
type ReleasedResponse struct {
	Shard    int  `json:"shard"`
	Released bool `json:"released"`
	// ClosedSession is the last session of the shard this pod closed after
	// committing everything it had received ("" if none since it started):
	// any other session it ran was left resumable with its backlog.
	ClosedSession string `json:"closed_session,omitempty"`
}

// ImportResponse answers POST /internal/guilds/{id}/import.
type ImportResponse struct {
	GuildID  string         `json:"guild_id"`
	Rows     map[string]int `json:"rows"`
	Checksum string         `json:"checksum"`
	TookMs   int64          `json:"took_ms"`
}

// DeadLetter is one event a pod's handlers kept failing on (GET
// /internal/dead-letters lists them; POST …/{id}/replay routes one again).
type DeadLetter struct {
	ID            int64           `json:"id"` // local to the pod
	GuildID       uint64          `json:"guild_id,string"`
	Type          string          `json:"type"`
	Payload       json.RawMessage `json:"payload"`
	DeliveryID    string          `json:"delivery_id,omitempty"`
	Error         string          `json:"error"`
	Attempts      int             `json:"attempts"`
	FirstFailedAt time.Time       `json:"first_failed_at"`
	LastFailedAt  time.Time       `json:"last_failed_at"`
}

// DeadLetterList answers GET /internal/dead-letters.
type DeadLetterList struct {
	Pod         string       `json:"pod"`
	Total       int64        `json:"total"`
	DeadLetters []DeadLetter `json:"dead_letters"`
}

// ReplayResponse answers POST /internal/dead-letters/{id}/replay.
type ReplayResponse struct {
	Replayed int64  `json:"replayed"`
	GuildID  string `json:"guild_id"`
	Type     string `json:"type"`
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Status int
	Msg    string
}

func (e *StatusError) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Msg) }

// IsStatus reports whether err is a StatusError with that status.
func IsStatus(err error, status int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status == status
}

// Refused reports whether err is a 4xx answer: the pod refused the request
// for a reason retrying does not change.
func Refused(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Status >= 400 && se.Status < 500
}

// Client calls pods' internal APIs.
type Client struct {
	HTTP  *http.Client
	Token string
	// Caller, when set, is sent as HeaderConfigNode.
	Caller string
	// Scheme is "https" when the pods serve TLS (tlsconfig.Reloader.Scheme);
	// empty is "http".
	Scheme string
}

// Do sends one request to the pod at addr (host:port) and decodes a JSON
// answer into out (unless nil).
func (c Client) Do(ctx context.Context, method, addr, path string, in, out any) error {
	resp, err := c.send(ctx, method, addr, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("%s %s%s: decode the answer: %w", method, addr, path, err)
		}
	}
	return nil
}

// Stream sends a request and returns the open response of a 2xx answer; the
// caller reads and closes its body (an export).
func (c Client) Stream(ctx context.Context, method, addr, path string) (*http.Response, error) {
	return c.send(ctx, method, addr, path, nil)
}

func (c Client) send(ctx context.Context, method, addr, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	scheme := c.Scheme
	if scheme == "" {
		scheme = "http"
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+addr+path, body)
	if err != nil {
		return nil, fmt.Errorf("build %s %s%s: %w", method, addr, path, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if c.Caller != "" {
		req.Header.Set(HeaderConfigNode, c.Caller)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s%s: %w", method, addr, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct {
			Error string `json:"error"`
		}
		msg := string(bytes.TrimSpace(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("%s %s%s: %w", method, addr, path, &StatusError{Status: resp.StatusCode, Msg: msg})
	}
	return resp, nil
}

// Forward sends events to their owner, which commits what it accepts before
// answering.
func (c Client) Forward(ctx context.Context, addr string, evs []Event) (ForwardResponse, error) {
	var out ForwardResponse
	err := c.Do(ctx, http.MethodPost, addr, PathEvents, ForwardRequest{Events: evs}, &out)
	if err != nil {
		return out, err
	}
	for k, i := range out.Refused {
		if i < 0 || i >= len(evs) || (k > 0 && i <= out.Refused[k-1]) {
			return ForwardResponse{}, fmt.Errorf("forward %d events to %s: bad refused index %d", len(evs), addr, i)
		}
	}
	return out, nil
}

// Released asks a pod whether it runs no session of the shard any more,
// waiting up to wait for it to let go.
func (c Client) Released(ctx context.Context, addr string, shard int, wait time.Duration) (ReleasedResponse, error) {
	var out ReleasedResponse
	err := c.Do(ctx, http.MethodGet, addr, ShardReleasedPath(shard, wait), nil, &out)
	return out, err
}

// Import asks a move's target to pull the guild from the source and import it.
func (c Client) Import(ctx context.Context, addr string, guild, epoch uint64) (ImportResponse, error) {
	var out ImportResponse
	err := c.Do(ctx, http.MethodPost, addr, ImportPath(guild, epoch), nil, &out)
	return out, err
}

// ImportFromReplica asks a failover's target to import the guild from the
// dead owner's replica.
func (c Client) ImportFromReplica(ctx context.Context, addr string, guild, epoch uint64, replica string) (ImportResponse, error) {
	var out ImportResponse
	err := c.Do(ctx, http.MethodPost, addr, ImportPath(guild, epoch)+"&replica="+url.QueryEscape(replica), nil, &out)
	return out, err
}

// Export opens a move's export stream on the source.
func (c Client) Export(ctx context.Context, addr string, guild, epoch uint64) (*http.Response, error) {
	return c.Stream(ctx, http.MethodGet, addr, ExportPath(guild, epoch))
}

// DropCopy asks a pod to delete its copy of a guild owned elsewhere.
func (c Client) DropCopy(ctx context.Context, addr string, guild, epoch uint64) error {
	return c.Do(ctx, http.MethodDelete, addr, GuildPath(guild, epoch), nil, nil)
}

// DeadLetters lists a pod's dead letters (guild 0: every guild), paged by id.
func (c Client) DeadLetters(ctx context.Context, addr string, guild uint64, after int64, limit int) (DeadLetterList, error) {
	var out DeadLetterList
	path := fmt.Sprintf("%s?after=%d&limit=%d", PathDeadLetters, after, limit)
	if guild != 0 {
		path += fmt.Sprintf("&guild=%d", guild)
	}
	err := c.Do(ctx, http.MethodGet, addr, path, nil, &out)
	return out, err
}

// ReplayDeadLetter routes one dead letter again; it leaves the pod's table
// only once that is committed.
func (c Client) ReplayDeadLetter(ctx context.Context, addr string, id int64) (ReplayResponse, error) {
	var out ReplayResponse
	err := c.Do(ctx, http.MethodPost, addr, fmt.Sprintf("%s/%d/replay", PathDeadLetters, id), nil, &out)
	return out, err
}
