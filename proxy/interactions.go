package proxy

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// Discord interaction and response types the proxy needs.
const (
	interactionPing  = 1
	responsePong     = 1
	responseDeferred = 5
)

var (
	pongBody     = []byte(`{"type":1}` + "\n")
	deferredBody = []byte(`{"type":5}` + "\n")
)

// InternalInteractionsPath is the gateway pods' endpoint for interactions.
const InternalInteractionsPath = podapi.PathInteractions

// verify checks Discord's signature headers over timestamp+body. It returns
// the decoded signature, and the reason for a refusal ("" when valid). With a
// nil body it checks only what the headers alone can show (every reason but
// bad_signature).
func verify(key ed25519.PublicKey, sigHex, ts string, body []byte) ([]byte, string) {
	switch {
	case sigHex == "":
		return nil, "missing_signature"
	case ts == "":
		return nil, "missing_timestamp"
	case len(sigHex) != 2*ed25519.SignatureSize:
		return nil, "malformed_signature"
	}
	sig := make([]byte, ed25519.SignatureSize)
	if _, err := hex.Decode(sig, []byte(sigHex)); err != nil {
		return nil, "malformed_signature"
	}
	if _, ok := parseTimestamp(ts); !ok {
		return nil, "malformed_timestamp"
	}
	if body == nil {
		return sig, ""
	}
	msg := make([]byte, 0, len(ts)+len(body))
	msg = append(append(msg, ts...), body...)
	if !ed25519.Verify(key, msg, sig) {
		return nil, "bad_signature"
	}
	return sig, ""
}

// webhookRefusal is the JSON body of every 401 on the webhook.
type webhookRefusal struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

// refuseWebhook answers 401 and counts the reason; the request is never
// forwarded.
func (p *Proxy) refuseWebhook(w http.ResponseWriter, reason, msg string) {
	p.m.sigFailures.WithLabelValues(reason).Inc()
	httpapi.WriteJSON(w, http.StatusUnauthorized, webhookRefusal{Error: msg, Reason: reason})
}

func (p *Proxy) unauthorized(w http.ResponseWriter, reason string) {
	msg := "invalid request signature (" + reason + ")"
	if reason == "malformed_timestamp" {
		msg = "X-Signature-Timestamp is not Unix seconds in decimal (" + reason + ")"
	}
	p.refuseWebhook(w, reason, msg)
}

// handleInteraction is POST /webhooks/discord: verify, answer PING, route
// everything else to the guild's owner within the budget, defer if needed.
func (p *Proxy) handleInteraction(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sigHex, ts := r.Header.Get(HeaderSignature), r.Header.Get(HeaderTimestamp)
	// Header checks first: a request that cannot be valid is refused before
	// its body is read.
	if _, reason := verify(p.cfg.PublicKey, sigHex, ts, nil); reason != "" {
		p.unauthorized(w, reason)
		return
	}
	body, ok := p.readBody(w, r)
	if !ok {
		return
	}
	if body == nil {
		body = []byte{} // verify the signature over the timestamp alone
	}
	sig, reason := verify(p.cfg.PublicKey, sigHex, ts, body)
	if reason != "" {
		p.unauthorized(w, reason)
		return
	}
	// Freshness after the signature: a stale_timestamp count then means
	// requests Discord really signed (replays, or this host's clock is off),
	// not forgeries.
	signedAt, _ := parseTimestamp(ts)
	now := time.Now()
	if why := freshness(signedAt, now, p.cfg.WebhookMaxSkew); why != "" {
		p.log.Debug("webhook refused: timestamp outside the window", "signed_at", signedAt.UTC(), "max_skew", p.cfg.WebhookMaxSkew)
		p.refuseWebhook(w, "stale_timestamp", "X-Signature-Timestamp "+why+
			": refused as a possible replay (if Discord's own requests are refused, check this host's clock)")
		return
	}
	var in struct {
		ID      string `json:"id"`
		Type    int    `json:"type"`
		GuildID string `json:"guild_id"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "interaction is not JSON: %v", err)
		return
	}
	if in.Type == interactionPing {
		// Answered here and never forwarded, so a repeated PING changes
		// nothing: it skips the replay cache.
		p.m.interactions.WithLabelValues("pong").Inc()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(pongBody)
		return
	}
	// Recorded before forwarding, so of two identical requests racing only
	// one is forwarded. Kept even if the forward fails: Discord does not
	// retry a webhook, only a replay would repeat it.
	if !p.replay.firstUse(keyOf(in.ID, sig), signedAt.Add(p.cfg.WebhookMaxSkew), now) {
		p.log.Debug("webhook refused: replay of an interaction already accepted", "signed_at", signedAt.UTC())
		p.refuseWebhook(w, "replayed", "this signed interaction was already accepted by this proxy; a replay is never forwarded")
		return
	}
	var guild uint64
	if in.GuildID != "" {
		id, err := fsm.ParseGuildID(in.GuildID)
		if err != nil {
			httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
			return
		}
		guild = id
		note(w, guild, "")
	}
	deadline := start.Add(p.cfg.InteractionBudget)
	ctx, cancel := context.WithDeadline(r.Context(), deadline)
	defer cancel()
	for attempt := 0; ; attempt++ {
		g, pod, rerr := p.interactionTarget(ctx, guild, start.Add(p.cfg.InteractionHold))
		if rerr != nil {
			p.m.interactions.WithLabelValues("failed").Inc()
			p.fail(w, rerr)
			return
		}
		note(w, 0, pod.ID)
		resp, wrote, err := p.postInteraction(ctx, pod, g, r.Header, body, deadline)
		if err != nil {
			switch {
			case r.Context().Err() != nil:
				return // Discord went away
			case errors.Is(ctx.Err(), context.DeadlineExceeded) && wrote:
				p.deferResponse(w, guild, pod.ID)
			default:
				status, reason := classify(err)
				p.m.forwardErrs.WithLabelValues(reason).Inc()
				p.m.interactions.WithLabelValues("failed").Inc()
				p.log.Warn("interaction forward failed", "guild", guild, "pod", pod.ID, "addr", pod.Addr, "err", err)
				httpapi.WriteJSON(w, status, errorBody{Error: "owner pod " + pod.ID + " did not take the interaction: " + err.Error(), Owner: pod.ID})
			}
			return
		}
		if resp.StatusCode == http.StatusMisdirectedRequest && attempt == 0 {
			p.awaitMap(ctx, resp, guild, pod.ID, min(p.cfg.MisdirectWait, time.Until(deadline)))
			resp.Body.Close()
			if time.Until(deadline) > 0 {
				continue
			}
		}
		if resp.StatusCode == http.StatusMisdirectedRequest {
			resp.Body.Close()
			p.m.interactions.WithLabelValues("failed").Inc()
			p.fail(w, &resolveError{status: http.StatusServiceUnavailable, reason: "misdirected", owner: pod.ID, retryAfter: true,
				msg: "pod " + pod.ID + " does not own the interaction's guild and the map has not caught up"})
			return
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, p.cfg.MaxBodyBytes))
		resp.Body.Close()
		if err != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil {
				p.deferResponse(w, guild, pod.ID)
			}
			return
		}
		if resp.StatusCode == http.StatusOK {
			p.m.interactions.WithLabelValues("answered").Inc()
		} else {
			p.m.interactions.WithLabelValues("failed").Inc()
		}
		ct := resp.Header.Get("Content-Type")
		if ct == "" {
			ct = "application/json"
		}
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(b)
		return
	}
}

// deferResponse answers Discord with a deferred response: the owner has the
// interaction and follows up through the webhook.
func (p *Proxy) deferResponse(w http.ResponseWriter, guild uint64, pod string) {
	p.m.deferred.Inc()
	p.m.interactions.WithLabelValues("deferred").Inc()
	p.log.Info("owner did not answer within the budget; deferred", "guild", guild, "pod", pod, "budget", p.cfg.InteractionBudget)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(deferredBody)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(deferredBody)
}

// interactionTarget is the owner of the guild (held while migrating, up to
// holdUntil, then the current owner anyway), or the default pod for
// interactions without a guild and for guilds not placed yet.
func (p *Proxy) interactionTarget(ctx context.Context, guild uint64, holdUntil time.Time) (fsm.Guild, fsm.Pod, *resolveError) {
	if guild != 0 {
		g, pod, rerr := p.resolve(ctx, guild, holdUntil, true)
		if rerr == nil || rerr.status != http.StatusNotFound {
			return g, pod, rerr
		}
	}
	pod, ok := defaultPod(p.cfg.Map)
	if !ok {
		return fsm.Guild{}, pod, &resolveError{status: http.StatusServiceUnavailable, reason: "no_pod", retryAfter: true,
			msg: "no active gateway pod to take the interaction"}
	}
	return fsm.Guild{}, pod, nil
}

// postInteraction sends the raw interaction to a pod. wrote reports whether
// the whole request reached the pod's socket (so the pod can follow up if
// the proxy stops waiting).
func (p *Proxy) postInteraction(ctx context.Context, pod fsm.Pod, g fsm.Guild, src http.Header, body []byte, deadline time.Time) (*http.Response, bool, error) {
	var wrote atomic.Bool
	tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				wrote.Store(true)
			}
		},
	})
	hdr := http.Header{}
	for _, k := range []string{"User-Agent", HeaderTimestamp, HeaderSignature} {
		if v := src.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	out, err := p.outbound(tctx, http.MethodPost, p.podURL(pod.Addr)+InternalInteractionsPath, hdr, body, g)
	if err != nil {
		return nil, false, err
	}
	out.Header.Set("Content-Type", "application/json")
	out.Header.Set(HeaderDeadlineMs, strconv.FormatInt(max(0, time.Until(deadline).Milliseconds()), 10))
	resp, err := p.tr.RoundTrip(out)
	return resp, wrote.Load(), err
}
