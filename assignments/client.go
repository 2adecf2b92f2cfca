package assignments

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modbot/modbot/internal/tlsconfig"
)

// Client talks to the config nodes' admin API. It sends each request to the
// node that last answered and fails over to the others, in order, when a node
// cannot be reached or answers 502, 503 or 504: a node that is not the leader
// and cannot reach one (a follower cut off from the majority, an election),
// a node catching up, or a proxy in front of a dead node. Any other answer is
// final and returned as is (an *APIError for non-2xx): a 4xx would be the
// same from every node, and a 500 is a bug to report, not to hide.
//
// Retrying a write elsewhere is safe: confignode answers 503 to a write it
// did not append to the Raft log (no leader, not the leader, leadership
// moving), and also when a write it did append was not committed in time,
// which may still be applied; every write of the API converges when sent
// twice (registering, heartbeats, placing, checkpoints are idempotent; a
// second move of a guild is refused with 409 while the first runs).
type Client struct {
	urls  []string
	token string
	http  *http.Client
	last  atomic.Int32
}

// NewClient returns a client for the given base URLs ("http://host:port").
func NewClient(urls []string, token string) (*Client, error) {
	var clean []string
	for _, u := range urls {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		if _, err := url.Parse(u); err != nil {
			return nil, fmt.Errorf("config url %q: %w", u, err)
		}
		clean = append(clean, u)
	}
	if len(clean) == 0 {
		return nil, errors.New("no config node URL given (--config or MODBOT_CONFIG)")
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{urls: clean, token: token, http: &http.Client{Transport: tr}}, nil
}

// UseTLS makes the client verify the config nodes with r and present its
// certificate (mTLS); the URLs must be https. A nil r changes nothing.
func (c *Client) UseTLS(r *tlsconfig.Reloader) *Client {
	if r != nil {
		c.http.Transport = r.Transport(c.http.Transport.(*http.Transport))
	}
	return c
}

// scheme is the configured URLs' scheme ("http" or "https"): what the
// config nodes learnt from the map are dialled with.
func (c *Client) scheme() string {
	if u, err := url.Parse(c.urls[0]); err == nil && u.Scheme != "" {
		return u.Scheme
	}
	return "http"
}

// URLs returns the configured base URLs.
func (c *Client) URLs() []string { return append([]string(nil), c.urls...) }

// HTTP returns the underlying client (for streaming requests).
func (c *Client) HTTP() *http.Client { return c.http }

// Token returns the bearer token.
func (c *Client) Token() string { return c.token }

// Do sends a request and decodes a JSON answer into out (unless nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	}
	var errs []error
	start := int(c.last.Load())
	for i := range c.urls {
		idx := (start + i) % len(c.urls)
		err := c.doOne(ctx, c.urls[idx], method, path, body, out)
		if err == nil {
			c.last.Store(int32(idx))
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) && (!unavailable(apiErr.Status) || apiErr.Body.MaybeApplied) {
			// A final answer: this node serves requests, so keep using it.
			c.last.Store(int32(idx))
			return err
		}
		errs = append(errs, err)
	}
	// Every node failed: the errors, joined, keep IsStatus working.
	return fmt.Errorf("no config node answered %s %s: %w", method, path, errors.Join(errs...))
}

// unavailable reports whether a status means "try another node".
func unavailable(status int) bool {
	switch status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// IsUnavailable reports whether err is an answer that another config node
// might not give (502, 503, 504), so that a caller should try another node
// or retry later, rather than give up.
func IsUnavailable(err error) bool {
	var e *APIError
	return errors.As(err, &e) && unavailable(e.Status)
}

func (c *Client) doOne(ctx context.Context, base, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return DecodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if u, ok := out.(json.Unmarshaler); ok {
		// A type that reads its own JSON (a placement's answer carries
		// 10,000 guilds) gets the body whole: encoding/json would scan it
		// twice before handing it over.
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			err = u.UnmarshalJSON(b)
		}
		if err != nil {
			return fmt.Errorf("decode answer of %s %s: %w", method, base+path, err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer of %s %s: %w", method, base+path, err)
	}
	return nil
}

// DecodeError turns a non-2xx response into an *APIError.
func DecodeError(resp *http.Response) error {
	e := &APIError{Status: resp.StatusCode, URL: resp.Request.URL.String()}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e.Body) != nil || e.Body.Error == "" {
		e.Body.Error = strings.TrimSpace(string(b))
		if e.Body.Error == "" {
			e.Body.Error = http.StatusText(resp.StatusCode)
		}
	}
	return e
}

// IsStatus reports whether err is an APIError with the given status.
func IsStatus(err error, status int) bool {
	var e *APIError
	return errors.As(err, &e) && e.Status == status
}

func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.Do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

func (c *Client) Servers(ctx context.Context) ([]Server, error) {
	var s []Server
	return s, c.Do(ctx, http.MethodGet, "/v1/cluster/servers", nil, &s)
}

func (c *Client) Join(ctx context.Context, r JoinRequest) (WriteResult, error) {
	var w WriteResult
	return w, c.Do(ctx, http.MethodPost, "/v1/cluster/join", r, &w)
}

func (c *Client) RemoveServer(ctx context.Context, id string) (WriteResult, error) {
	var w WriteResult
	return w, c.Do(ctx, http.MethodDelete, "/v1/cluster/servers/"+url.PathEscape(id), nil, &w)
}

func (c *Client) TransferLeadership(ctx context.Context, to string) (WriteResult, error) {
	var w WriteResult
	return w, c.Do(ctx, http.MethodPost, "/v1/cluster/transfer-leadership", TransferRequest{To: to}, &w)
}

func (c *Client) Pods(ctx context.Context) (PodList, error) {
	var p PodList
	return p, c.Do(ctx, http.MethodGet, "/v1/pods", nil, &p)
}

func (c *Client) RegisterPod(ctx context.Context, r RegisterPodRequest) (WriteResult, error) {
	var w WriteResult
	return w, c.Do(ctx, http.MethodPost, "/v1/pods", r, &w)
}

func (c *Client) Heartbeat(ctx context.Context, pod string) error {
	return c.HeartbeatWithLag(ctx, pod, -1)
}

// HeartbeatWithLag is a heartbeat that also reports the pod's replication
// lag in milliseconds (its sidecar's modbot_replication_lag_seconds; -1:
// unknown, not sent): the leader records it as the data-loss window of a
// failover of the pod.
func (c *Client) HeartbeatWithLag(ctx context.Context, pod string, replicationLagMs int64) error {
	path := "/v1/pods/" + url.PathEscape(pod) + "/heartbeat"
	if replicationLagMs >= 0 {
		path += "?replication_lag_ms=" + strconv.FormatInt(replicationLagMs, 10)
	}
	return c.Do(ctx, http.MethodPost, path, nil, nil)
}

// Drain marks the pod draining and starts moving its guilds away.
func (c *Client) Drain(ctx context.Context, pod string) (RebalanceJob, error) {
	var j RebalanceJob
	return j, c.Do(ctx, http.MethodPost, "/v1/pods/"+url.PathEscape(pod)+"/drain", nil, &j)
}

// Leave asks the leader to mark pod down before a planned stop: its shards
// move to the other pods now (POST /v1/pods/{id}/leave).
func (c *Client) Leave(ctx context.Context, pod string) error {
	return c.Do(ctx, http.MethodPost, "/v1/pods/"+url.PathEscape(pod)+"/leave", nil, nil)
}

// Move starts moving a guild to a pod (id or ordinal).
func (c *Client) Move(ctx context.Context, guild, to string) (MoveResponse, error) {
	var m MoveResponse
	return m, c.Do(ctx, http.MethodPost, "/v1/guilds/"+url.PathEscape(guild)+"/move", MoveRequest{To: to}, &m)
}

// Rebalance plans (dryRun) or starts a rebalance.
func (c *Client) Rebalance(ctx context.Context, dryRun bool) (RebalanceJob, error) {
	var j RebalanceJob
	return j, c.Do(ctx, http.MethodPost, "/v1/rebalance", RebalanceRequest{DryRun: dryRun}, &j)
}

// RebalanceStatus reports the current or last rebalance/drain.
func (c *Client) RebalanceStatus(ctx context.Context) (RebalanceJob, error) {
	var j RebalanceJob
	return j, c.Do(ctx, http.MethodGet, "/v1/rebalance", nil, &j)
}

func (c *Client) Shards(ctx context.Context) (ShardList, error) {
	var s ShardList
	return s, c.Do(ctx, http.MethodGet, "/v1/shards", nil, &s)
}

// Guilds follows every page of GET /v1/guilds (optionally one pod's).
func (c *Client) Guilds(ctx context.Context, pod string) (GuildList, error) {
	var all GuildList
	after := ""
	for {
		q := url.Values{}
		q.Set("limit", "5000")
		if pod != "" {
			q.Set("pod", pod)
		}
		if after != "" {
			q.Set("after", after)
		}
		var page GuildList
		if err := c.Do(ctx, http.MethodGet, "/v1/guilds?"+q.Encode(), nil, &page); err != nil {
			return all, err
		}
		all.Revision = page.Revision
		all.Guilds = append(all.Guilds, page.Guilds...)
		if page.Next == "" {
			return all, nil
		}
		after = page.Next
	}
}

func (c *Client) Guild(ctx context.Context, id string) (GuildView, error) {
	var g GuildView
	return g, c.Do(ctx, http.MethodGet, "/v1/guilds/"+url.PathEscape(id), nil, &g)
}

func (c *Client) PlaceGuilds(ctx context.Context, ids []string) (PlaceResponse, error) {
	var p PlaceResponse
	return p, c.Do(ctx, http.MethodPost, "/v1/guilds", PlaceRequest{GuildIDs: ids}, &p)
}

// SaveCheckpoints stores resume points for shards the pod holds.
func (c *Client) SaveCheckpoints(ctx context.Context, r CheckpointRequest) error {
	return c.Do(ctx, http.MethodPost, "/v1/shards/checkpoints", r, nil)
}

// IdentifySlot reserves the next identify slot of the shard's bucket.
func (c *Client) IdentifySlot(ctx context.Context, r IdentifyRequest) (IdentifySlot, error) {
	var s IdentifySlot
	return s, c.Do(ctx, http.MethodPost, "/v1/identify", r, &s)
}

func (c *Client) Snapshot(ctx context.Context) (Snapshot, error) {
	var s Snapshot
	return s, c.Do(ctx, http.MethodGet, "/v1/snapshot", nil, &s)
}
