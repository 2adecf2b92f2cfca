package proxy

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
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// hopHeaders are the hop-by-hop headers (RFC 9110 §7.6.1) that a proxy must
// not forward, in canonical form.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// copyHeader copies src into dst without hop-by-hop headers, the headers
// src's Connection header names, and (when internal) the headers the proxy
// sets itself so a client cannot spoof them.
func copyHeader(dst, src http.Header, internal bool) {
	var conn []string
	if c := src["Connection"]; len(c) > 0 {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					conn = append(conn, http.CanonicalHeaderKey(f))
				}
			}
		}
	}
	for k, vv := range src {
		if hopHeaders[k] {
			continue
		}
		if internal && (k == "Authorization" || strings.HasPrefix(k, "X-Modbot-")) {
			continue
		}
		skip := false
		for _, c := range conn {
			if c == k {
				skip = true
				break
			}
		}
		if !skip {
			dst[k] = vv
		}
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// resolveError is an answer the proxy gives itself instead of forwarding.
type resolveError struct {
	status     int
	reason     string // forward error reason for metrics ("" = not a forward error)
	msg        string
	owner      string
	retryAfter bool
}

// resolve finds the owner pod of a guild, holding the request (until
// holdUntil) while the guild is migrating. With sendAnyway a guild still
// migrating at holdUntil goes to its current owner instead of failing.
func (p *Proxy) resolve(ctx context.Context, id uint64, holdUntil time.Time, sendAnyway bool) (fsm.Guild, fsm.Pod, *resolveError) {
	m := p.cfg.Map
	g, ok := m.Lookup(id)
	if !ok {
		return g, fsm.Pod{}, &resolveError{status: http.StatusNotFound, msg: "guild " + strconv.FormatUint(id, 10) + " is not placed on any pod"}
	}
	if g.State == fsm.GuildMigrating {
		start := time.Now()
		hctx, cancel := context.WithDeadline(ctx, holdUntil)
		active := waitFor(hctx, m, func() bool {
			cur, ok := m.Lookup(id)
			return !ok || cur.State != fsm.GuildMigrating
		})
		cancel()
		p.m.holdTime.Observe(time.Since(start).Seconds())
		g, ok = m.Lookup(id)
		switch {
		case ctx.Err() != nil:
			p.m.holds.WithLabelValues("canceled").Inc()
			return g, fsm.Pod{}, &resolveError{status: 499, msg: "client went away while the guild was migrating"}
		case active:
			p.m.holds.WithLabelValues("active").Inc()
			if !ok {
				return g, fsm.Pod{}, &resolveError{status: http.StatusNotFound, msg: "guild " + strconv.FormatUint(id, 10) + " is not placed on any pod"}
			}
		default:
			p.m.holds.WithLabelValues("timeout").Inc()
			if !sendAnyway {
				return g, fsm.Pod{}, &resolveError{status: http.StatusServiceUnavailable, owner: g.Owner, retryAfter: true,
					msg: "guild " + strconv.FormatUint(id, 10) + " is being moved to another pod; retry shortly"}
			}
		}
	}
	pod, ok := m.Pod(g.Owner)
	switch {
	case !ok:
		return g, pod, &resolveError{status: http.StatusServiceUnavailable, reason: "no_pod", owner: g.Owner, retryAfter: true,
			msg: "the owner pod " + g.Owner + " is not in the map"}
	case pod.State == fsm.PodDown:
		return g, pod, &resolveError{status: http.StatusServiceUnavailable, reason: "pod_down", owner: g.Owner, retryAfter: true,
			msg: "the owner pod " + g.Owner + " is down; its guilds are being taken over"}
	}
	return g, pod, nil
}

func (p *Proxy) fail(w http.ResponseWriter, e *resolveError) {
	if e.reason != "" {
		p.m.forwardErrs.WithLabelValues(e.reason).Inc()
	}
	if e.status == 499 {
		return // nobody is listening
	}
	if e.retryAfter {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((p.cfg.RetryAfter+time.Second-1)/time.Second))))
	}
	httpapi.WriteJSON(w, e.status, errorBody{Error: e.msg, Owner: e.owner})
}

// readBody reads a request body up to the limit; it answers 413 itself.
func (p *Proxy) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := p.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		httpapi.WriteError(w, http.StatusRequestEntityTooLarge, "request body of %d bytes exceeds the %d byte limit", r.ContentLength, limit)
		return nil, false
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			httpapi.WriteError(w, http.StatusRequestEntityTooLarge, "request body exceeds the %d byte limit", limit)
			return nil, false
		}
		httpapi.WriteError(w, http.StatusBadRequest, "read request body: %v", err)
		return nil, false
	}
	return buf.Bytes(), true
}

// classify maps a transport error to the answer: 504 for timeouts, 502 for
// everything else (refused, reset).
func classify(err error) (int, string) {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return http.StatusGatewayTimeout, "timeout"
	}
	return http.StatusBadGateway, "refused"
}

// misdirected is a pod's 421 answer.
type misdirected struct {
	Error    string `json:"error"`
	Owner    string `json:"owner"`
	Revision uint64 `json:"revision"`
}

// awaitMap waits (bounded) until the map has caught up with what a pod that
// answered 421 knows: its revision, or a different owner for the guild.
func (p *Proxy) awaitMap(ctx context.Context, resp *http.Response, guild uint64, wrongPod string, limit time.Duration) {
	p.m.misdirected.Inc()
	var md misdirected
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(b, &md)
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	m := p.cfg.Map
	waitFor(wctx, m, func() bool {
		if md.Revision > 0 && m.Revision() >= md.Revision {
			return true
		}
		if guild == 0 {
			return md.Revision == 0
		}
		g, ok := m.Lookup(guild)
		return !ok || g.Owner != wrongPod
	})
}

// outbound builds the request to a pod with the internal headers.
func (p *Proxy) outbound(ctx context.Context, method, url string, src http.Header, body []byte, g fsm.Guild) (*http.Request, error) {
	return p.outboundAs(ctx, method, url, src, body, g, dashboardCaller{admin: true})
}

// outboundAs is outbound for a caller: the internal token only for the
// admin (and the proxy's own webhook traffic), the user assertion alone for
// a signed-in browser.
func (p *Proxy) outboundAs(ctx context.Context, method, url string, src http.Header, body []byte, g fsm.Guild, who dashboardCaller) (*http.Request, error) {
	var rd io.Reader = http.NoBody
	if len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	out, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	h := make(http.Header, len(src)+6)
	copyHeader(h, src, true)
	// The browser's cookies (the sealed session) are the proxy's business.
	h.Del("Cookie")
	switch {
	case who.assertion != "":
		h.Set(podapi.HeaderUserAssertion, who.assertion)
	case who.admin && p.cfg.InternalToken != "":
		h.Set("Authorization", "Bearer "+p.cfg.InternalToken)
	}
	if g.ID != 0 {
		h.Set(HeaderEpoch, strconv.FormatUint(g.Epoch, 10))
	}
	h.Set(HeaderRevision, strconv.FormatUint(p.cfg.Map.Revision(), 10))
	out.Header = h
	out.ContentLength = int64(len(body))
	return out, nil
}

// handleGuild forwards GET /guild/{id}/… of an authorized request (the admin
// token) to the owner and streams the answer back unchanged. Credentials are
// checked first, so an anonymous client learns nothing, not even whether the
// guild is placed.
func (p *Proxy) handleGuild(w http.ResponseWriter, r *http.Request) {
	id, idErr := fsm.ParseGuildID(mux.Vars(r)["id"])
	who, ok := p.authorizeDashboard(w, r, id)
	if !ok {
		return
	}
	if idErr != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "%v", idErr)
		return
	}
	target, err := guildTarget(r.URL, mux.Vars(r)["id"])
	if err != nil {
		p.m.unsafePaths.Inc()
		httpapi.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	note(w, id, "")
	body, ok := p.readBody(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	holdUntil := time.Now().Add(p.cfg.HoldTimeout)
	for attempt := 0; ; attempt++ {
		g, pod, rerr := p.resolve(ctx, id, holdUntil, false)
		if rerr != nil {
			p.fail(w, rerr)
			return
		}
		note(w, 0, pod.ID)
		hdr := r.Header
		out, err := p.outboundAs(ctx, r.Method, p.podURL(pod.Addr)+target, hdr, body, g, who)
		if err != nil {
			httpapi.WriteError(w, http.StatusBadGateway, "build request to %s: %v", pod.ID, err)
			return
		}
		setForwarded(out.Header, r)
		resp, err := p.tr.RoundTrip(out)
		if err != nil {
			if ctx.Err() != nil {
				return // the client went away
			}
			status, reason := classify(err)
			p.m.forwardErrs.WithLabelValues(reason).Inc()
			p.log.Warn("forward failed", "guild", id, "pod", pod.ID, "addr", pod.Addr, "err", err)
			httpapi.WriteJSON(w, status, errorBody{Error: "owner pod " + pod.ID + " did not answer: " + err.Error(), Owner: pod.ID})
			return
		}
		if resp.StatusCode == http.StatusMisdirectedRequest {
			if attempt == 0 {
				p.awaitMap(ctx, resp, id, pod.ID, p.cfg.MisdirectWait)
				resp.Body.Close()
				continue
			}
			resp.Body.Close()
			p.fail(w, &resolveError{status: http.StatusServiceUnavailable, reason: "misdirected", owner: pod.ID, retryAfter: true,
				msg: "pod " + pod.ID + " says it does not own guild " + strconv.FormatUint(id, 10) + " and the map has not caught up"})
			return
		}
		p.copyResponse(w, resp)
		return
	}
}

// guildTarget is the request URI forwarded to the pod for a /guild/{id}/…
// request. Besides the check before routing (unsafePath), it makes sure the
// path the pod will decode stays under /guild/{id}: whatever slipped past,
// nothing outside it (the pod's /internal/… API) is ever requested.
func guildTarget(u *url.URL, id string) (string, error) {
	if why := unsafePath(u); why != "" {
		return "", fmt.Errorf("path refused (%s)", why)
	}
	prefix := "/guild/" + id
	dec := u.Path
	if dec != prefix && !strings.HasPrefix(dec, prefix+"/") {
		return "", fmt.Errorf("path %q is not under %s", dec, prefix)
	}
	if c := path.Clean(dec); c != dec && c+"/" != dec {
		return "", fmt.Errorf("path %q is not in canonical form", dec)
	}
	return u.RequestURI(), nil
}

func setForwarded(h http.Header, r *http.Request) {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			host = strings.Join(prior, ", ") + ", " + host
		}
		h.Set("X-Forwarded-For", host)
	}
	if h.Get("X-Forwarded-Host") == "" && r.Host != "" {
		h.Set("X-Forwarded-Host", r.Host)
	}
	if h.Get("X-Forwarded-Proto") == "" {
		proto := "http"
		if r.TLS != nil {
			proto = "https"
		}
		h.Set("X-Forwarded-Proto", proto)
	}
}

// copyResponse streams a pod's response to the client: status, headers
// without hop-by-hop ones, body (flushed as it comes when its length is
// unknown).
func (p *Proxy) copyResponse(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	copyHeader(w.Header(), resp.Header, false)
	w.WriteHeader(resp.StatusCode)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	if resp.ContentLength >= 0 {
		_, _ = io.CopyBuffer(writerOnly{w}, resp.Body, buf)
		return
	}
	rc := http.NewResponseController(w)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			return
		}
	}
}

// writerOnly hides ReadFrom so io.CopyBuffer uses the pooled buffer.
type writerOnly struct{ io.Writer }
