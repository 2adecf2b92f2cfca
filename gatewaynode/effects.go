package gatewaynode

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/bwmarrin/discordgo"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/gatewaynode/restlimit"
)

// REST effects. Everything the pod sends to Discord's REST API goes through
// its discordgo session, whose HTTP transport is a restlimit.Transport:
// globally limited requests wait for this pod's share of the token's global
// limit (the limit over the pods in the map, kept current by effectsLoop),
// route buckets are discordgo's (learned from the X-RateLimit-* headers),
// and a 429 is waited out by its retry_after and retried, never dropped.
//
// Mod-log posts are durable: a report row remembers that its post is owed
// until AckPosted records it delivered. A post that fails, or whose pod dies
// before acknowledging it, is sent again by the guild's owner — this pod
// after a restart, or the next owner, since the report row moves with the
// guild — from effectsLoop, with the nonce of the first attempt and
// enforce_nonce, so Discord keeps one message (within its nonce window, a
// few minutes).

// pendingPostAge is how old an unacknowledged post must be before
// effectsLoop sends it again (younger ones are still being sent by the
// handler's own attempt).
const pendingPostAge = 5 * time.Second

type postsInFlight struct {
	mu  sync.Mutex
	ids map[uint64]bool
}

// begin marks a report's post as being sent; false if it already is.
func (p *postsInFlight) begin(report uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ids == nil {
		p.ids = map[uint64]bool{}
	}
	if p.ids[report] {
		return false
	}
	p.ids[report] = true
	return true
}

func (p *postsInFlight) end(report uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ids, report)
}

// performEffects sends what handling an event produced through Discord's
// REST API: the answer to a gateway interaction and mod-log posts. A replayed
// interaction is not answered again (Discord accepts one callback).
func (n *Node) performEffects(ctx context.Context, in bot.Input, r bot.Result) {
	if r.Response != nil && !r.Duplicate && in.Event.Type == bot.EventInteractionCreate {
		var it discordgo.Interaction
		if err := json.Unmarshal(in.Event.Data, &it); err == nil {
			if err := n.rest.InteractionRespond(&it, r.Response, discordgo.WithContext(ctx)); err != nil {
				n.metrics.restErrors.WithLabelValues("interaction_callback").Inc()
				n.log.Warn("answer interaction", "guild", r.GuildID, "interaction", it.ID, "err", err)
			}
		}
	}
	n.post(ctx, r.GuildID, r.Posts, in.Epoch)
}

// messageCreate is POST /channels/{id}/messages with the fields discordgo's
// MessageSend lacks (nonce, enforce_nonce).
type messageCreate struct {
	Content         string                            `json:"content,omitempty"`
	Embeds          []*discordgo.MessageEmbed         `json:"embeds,omitempty"`
	AllowedMentions *discordgo.MessageAllowedMentions `json:"allowed_mentions,omitempty"`
	Nonce           string                            `json:"nonce,omitempty"`
	EnforceNonce    bool                              `json:"enforce_nonce,omitempty"`
}

// post queues mod-log messages for sending (postQueue) and returns: a post
// waiting for its channel's rate limit never holds up the events and
// interactions behind it.
func (n *Node) post(_ context.Context, guild uint64, posts []bot.PostMessage, epoch uint64) {
	for _, p := range posts {
		if p.ReportID != 0 && !n.inFlight.begin(p.ReportID) {
			continue // queued or being sent already
		}
		n.postQueue.add(postJob{guild: guild, post: p, epoch: epoch})
	}
}

type postJob struct {
	guild uint64
	post  bot.PostMessage
	epoch uint64
}

// postQueue sends posts in order per channel, one channel's posts at a time
// (a channel's bucket paces them), channels in parallel. A post that fails
// is left to effectsLoop (its report still owes it).
type postQueue struct {
	n  *Node
	mu sync.Mutex
	q  map[uint64][]postJob // by channel
}

func (q *postQueue) add(j postJob) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.q == nil {
		q.q = map[uint64][]postJob{}
	}
	ch := j.post.ChannelID
	q.q[ch] = append(q.q[ch], j)
	if len(q.q[ch]) == 1 {
		q.n.goRun("posts", func() { q.drain(ch) })
	}
}

// Queued is the number of posts waiting or being sent.
func (q *postQueue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, js := range q.q {
		n += len(js)
	}
	return n
}

func (q *postQueue) drain(ch uint64) {
	n := q.n
	for {
		q.mu.Lock()
		j := q.q[ch][0]
		q.mu.Unlock()
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Minute)
		err := n.postOne(ctx, j.guild, j.post, j.epoch)
		cancel()
		if j.post.ReportID != 0 {
			n.inFlight.end(j.post.ReportID)
		}
		if err != nil {
			n.metrics.restErrors.WithLabelValues("post_message").Inc()
			n.log.Warn("post to mod-log; it is sent again later", "guild", j.guild, "channel", ch, "report", j.post.ReportID, "err", err)
		}
		q.mu.Lock()
		q.q[ch] = q.q[ch][1:]
		if len(q.q[ch]) == 0 {
			delete(q.q, ch)
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
	}
}

func (n *Node) postOne(ctx context.Context, guild uint64, p bot.PostMessage, epoch uint64) error {
	ch := strconv.FormatUint(p.ChannelID, 10)
	body := messageCreate{Content: p.Content, Embeds: p.Embeds, AllowedMentions: p.AllowedMentions, Nonce: p.Nonce, EnforceNonce: p.Nonce != ""}
	url := discordgo.EndpointChannelMessages(ch)
	if _, err := n.rest.RequestWithBucketID("POST", url, body, url, discordgo.WithContext(ctx)); err != nil {
		return fmt.Errorf("post to channel %s: %w", ch, err)
	}
	n.metrics.posts.Inc()
	if p.ReportID != 0 {
		if err := n.bot.AckPosted(ctx, guild, p.ReportID, epoch); err != nil {
			return fmt.Errorf("posted, but recording it failed (the nonce stops a repeat): %w", err)
		}
	}
	return nil
}

// effectsLoop keeps the pod's share of the global REST limit current and,
// every PostRetryInterval, sends the mod-log posts still owed by the guilds
// this pod owns.
func (n *Node) effectsLoop() {
	// The share follows the map: every change (a pod registered or removed)
	// recomputes it at once, not at the next tick — a share a second stale
	// is a second of a new pod and the old ones together over the limit.
	changes, cancel := n.watch.Subscribe(1) // a full buffer coalesces
	defer cancel()
	t := time.NewTicker(n.cfg.PostRetryInterval)
	defer t.Stop()
	n.updateRESTShare()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-changes:
			n.updateRESTShare()
		case <-t.C:
			n.updateRESTShare()
			n.sendPendingPosts(n.ctx)
		}
	}
}

// updateRESTShare sets this pod's share of the global limit: the limit over
// every pod in the map (down ones keep theirs until removed: a pod wrongly
// marked down still sends).
func (n *Node) updateRESTShare() {
	pods := len(n.watch.Pods())
	if _, ok := n.watch.Pod(n.cfg.ID); !ok {
		pods++ // not registered yet: count ourselves
	}
	share := restlimit.Share(n.cfg.DiscordGlobalLimit, pods)
	if n.watch.Revision() == 0 {
		share = restlimit.UnknownShare // the map is not read yet: how many pods share the token is unknown
	}
	if share != n.restLimit.Share() {
		n.restLimit.SetShare(share)
		n.log.Info("share of Discord's global REST limit", "requests_per_second", share, "pods", pods)
	}
	n.restMetrics.ShareGauge.Set(share)
}

// sendPendingPosts posts what the guilds this pod owns (settled, at their
// current epoch) still owe their mod-log channels.
func (n *Node) sendPendingPosts(ctx context.Context) {
	before := time.Now().Add(-pendingPostAge)
	for _, g := range n.watch.GuildsOwnedBy(n.cfg.ID) {
		gi, ok := n.watch.Lookup(g)
		if !ok || gi.Owner != n.cfg.ID || gi.Migration != nil || gi.State != fsm.GuildActive {
			continue
		}
		posts, err := n.bot.PendingPosts(ctx, g, before, 100)
		if err != nil {
			n.log.Warn("read the mod-log posts still owed", "guild", g, "err", err)
			continue
		}
		if len(posts) > 0 {
			n.log.Info("sending mod-log posts still owed", "guild", g, "posts", len(posts))
			n.metrics.postsRetried.Add(float64(len(posts)))
			n.post(ctx, g, posts, gi.Epoch)
		}
		if ctx.Err() != nil {
			return
		}
	}
}
