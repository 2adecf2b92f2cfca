package chaos

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// Recorder collects a history of operations against the config nodes.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// Placed lists guilds whose placement returned, for clients to pick.
	placed []uint64
}

// NewRecorder starts the history's clock.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// pending marks an operation whose outcome is unknown: it may take effect at
// any time after its call, so it never returns.
const pending = math.MaxInt64

func (r *Recorder) add(client int, in Input, call int64, out Output, ret int64) {
	if out.Outcome == Unknown {
		if in.Kind == OpRead || in.Kind == OpReadPod {
			return // a read that failed changed nothing and saw nothing
		}
		ret = pending
	}
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	r.mu.Unlock()
}

// Ops returns the history.
func (r *Recorder) Ops() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]porcupine.Operation(nil), r.ops...)
}

func (r *Recorder) placedGuild(rng *rand.Rand) (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.placed) == 0 {
		return 0, false
	}
	return r.placed[rng.IntN(len(r.placed))], true
}

// classify turns an API answer into an outcome: a 4xx is the state
// machine's (or the API's) refusal, anything else may have been applied.
func classify(err error) (Outcome, string) {
	if err == nil {
		return OK, ""
	}
	var apiErr *assignments.APIError
	if errors.As(err, &apiErr) && apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != 408 && apiErr.Status != 429 {
		return Rejected, apiErr.Body.Error
	}
	return Unknown, err.Error()
}

// Client is one linearizability client: a config client of its own that
// starts at a different node than its neighbours.
type Client struct {
	ID   int
	api  *assignments.Client
	rec  *Recorder
	rng  *rand.Rand
	pods []string
	// Drains says whether this client may drain pods.
	Drains bool
	counts map[OpKind]int
}

// NewClient makes client id of rec.
func NewClient(id int, s *System, rec *Recorder, seed uint64) (*Client, error) {
	urls := append([]string(nil), s.ConfigURLs[id%len(s.ConfigURLs):]...)
	urls = append(urls, s.ConfigURLs[:id%len(s.ConfigURLs)]...)
	api, err := assignments.NewClient(urls, s.Token)
	if err != nil {
		return nil, err
	}
	var pods []string
	for _, g := range s.Gateways {
		pods = append(pods, g.Name)
	}
	return &Client{ID: id, api: api, rec: rec, rng: rand.New(rand.NewPCG(seed, uint64(id))), pods: pods, counts: map[OpKind]int{}}, nil
}

// Run issues operations until ctx ends; each waits at most 4 s.
func (c *Client) Run(ctx context.Context, guildBase uint64) {
	next := uint64(0)
	for ctx.Err() == nil {
		g, ok := c.rec.placedGuild(c.rng)
		p := c.rng.IntN(100)
		switch {
		case !ok || p < 8:
			next++
			// A snowflake whose shard bits vary: (id >> 22) % shards.
			c.place((guildBase + next) << 22)
		case p < 40:
			c.move(g, c.pods[c.rng.IntN(len(c.pods))])
		case p < 97 || !c.Drains:
			c.read(g)
		default:
			c.readPods()
		}
	}
}

func (c *Client) call(ctx context.Context, in Input, do func(context.Context) Output) {
	opCtx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	call := c.rec.now()
	out := do(opCtx)
	c.rec.add(c.ID, in, call, out, c.rec.now())
	c.counts[in.Kind]++
}

func guildOutput(g fsm.Guild) Output {
	o := Output{Found: true, Owner: g.Owner, Mig: g.Migration != nil, Epoch: g.Epoch}
	if g.Migration != nil {
		o.From, o.To = g.Migration.From, g.Migration.To
	}
	return o
}

func (c *Client) place(id uint64) {
	c.call(context.Background(), Input{Kind: OpPlace, Guild: id}, func(ctx context.Context) Output {
		res, err := c.api.PlaceGuilds(ctx, []string{fmt.Sprint(id)})
		out := Output{}
		out.Outcome, out.Reason = classify(err)
		if out.Outcome == OK {
			if len(res.Guilds) != 1 {
				return Output{Outcome: Unknown, Reason: "no guild in the answer"}
			}
			o := guildOutput(res.Guilds[0])
			c.rec.mu.Lock()
			c.rec.placed = append(c.rec.placed, id)
			c.rec.mu.Unlock()
			return o
		}
		return out
	})
}

func (c *Client) move(g uint64, to string) {
	c.call(context.Background(), Input{Kind: OpMove, Guild: g, Pod: to}, func(ctx context.Context) Output {
		res, err := c.api.Move(ctx, fmt.Sprint(g), to)
		out := Output{}
		out.Outcome, out.Reason = classify(err)
		if out.Outcome == OK {
			out.From, out.To, out.Epoch = res.From, res.To, res.Epoch
		}
		return out
	})
}

func (c *Client) read(g uint64) {
	c.call(context.Background(), Input{Kind: OpRead, Guild: g}, func(ctx context.Context) Output {
		var v assignments.GuildView
		err := c.api.Do(ctx, "GET", "/v1/guilds/"+fmt.Sprint(g)+"?consistent=true", nil, &v)
		if assignments.IsStatus(err, 404) {
			return Output{Outcome: OK, Found: false}
		}
		out := Output{}
		out.Outcome, out.Reason = classify(err)
		if out.Outcome == OK {
			o := guildOutput(v.Guild)
			return o
		}
		if out.Outcome == Rejected {
			out.Outcome = Unknown // a read refused for any reason saw nothing
		}
		return out
	})
}

// Drain drains pod (the test calls it once per run).
func (c *Client) Drain(pod string) {
	c.call(context.Background(), Input{Kind: OpDrain, Pod: pod}, func(ctx context.Context) Output {
		_, err := c.api.Drain(ctx, pod)
		out := Output{}
		out.Outcome, out.Reason = classify(err)
		return out
	})
}

func (c *Client) readPods() {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	call := c.rec.now()
	var pl assignments.PodList
	err := c.api.Do(ctx, "GET", "/v1/pods?consistent=true", nil, &pl)
	ret := c.rec.now()
	c.counts[OpReadPod]++
	if err != nil {
		return
	}
	for _, p := range pl.Pods {
		c.rec.add(c.ID, Input{Kind: OpReadPod, Pod: p.ID}, call, Output{Outcome: OK, PodSt: string(p.State)}, ret)
	}
}

// Counts returns how many operations of each kind the client issued.
func (c *Client) Counts() map[OpKind]int { return c.counts }
