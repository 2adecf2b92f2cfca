package proxy

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
)

// /status is the cluster at a glance, for operators: rendered from this
// proxy's own watcher (and, for the Raft view, one status call to the
// config nodes made by the proxy, never by the browser), then kept live
// over Server-Sent Events from GET /status/events.

// ConfigStatus reads the control plane's status (leader, term, voters):
// assignments.Client.Status in production.
type ConfigStatus func(ctx context.Context) (assignments.Status, error)

// RebalanceStatus reads the leader's current or last rebalance or drain
// job: assignments.Client.RebalanceStatus in production.
type RebalanceStatus func(ctx context.Context) (assignments.RebalanceJob, error)

// snapshotter is the part of assignments.Watcher /status reads the whole
// map from; a Map without it shows pods only.
type snapshotter interface {
	Snapshot() assignments.Snapshot
}

const recentEvents = 30

// eventLog keeps the last change-stream events this proxy saw and wakes
// the /status streams on every change.
type eventLog struct {
	mu     sync.Mutex
	events []fsm.Event
	seq    uint64
	wake   chan struct{} // closed and replaced on every change
}

func newEventLog() *eventLog { return &eventLog{wake: make(chan struct{})} }

func (l *eventLog) add(rev uint64, evs []fsm.Event, relisted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if relisted {
		l.events = append(l.events, fsm.Event{Revision: rev, Type: "relisted", At: time.Now().UnixMilli(), Reason: "the map was listed again (changes may have been missed)"})
	}
	evs = evs[max(0, len(evs)-recentEvents):] // a placement is 10,000: only the last are kept
	l.events = append(l.events, evs...)
	if over := len(l.events) - recentEvents; over > 0 {
		l.events = append([]fsm.Event(nil), l.events[over:]...)
	}
	l.seq++
	close(l.wake)
	l.wake = make(chan struct{})
}

func (l *eventLog) snapshot() ([]fsm.Event, uint64, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]fsm.Event, len(l.events))
	for i, e := range l.events {
		out[len(out)-1-i] = e // newest first
	}
	return out, l.seq, l.wake
}

func (p *Proxy) followEvents() {
	ch, cancel := p.cfg.Map.Subscribe(256)
	defer cancel()
	for {
		select {
		case <-p.ctx.Done():
			return
		case c, ok := <-ch:
			if !ok {
				return
			}
			p.events.add(c.Revision, c.Events, c.Relisted)
		}
	}
}

// statusView is /status's model (also its JSON).
type statusView struct {
	Proxy       string              `json:"proxy"`
	Revision    uint64              `json:"revision"`
	At          time.Time           `json:"at"`
	Config      *assignments.Status `json:"config,omitempty"`
	ConfigError string              `json:"config_error,omitempty"`
	ConfigNodes []fsm.ConfigNode    `json:"config_nodes"`
	ShardCount  int                 `json:"shard_count"`
	Pods        []podStatus         `json:"pods"`
	Moves       []moveStatus        `json:"moves"`
	Failovers   int                 `json:"failovers_in_progress"`
	Rebalance   *rebalanceStatus    `json:"rebalance,omitempty"`
	Events      []eventLine         `json:"events"`
	MaxGuilds   int                 `json:"-"`
}

type podStatus struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Shards []int  `json:"shards"`
	Guilds int    `json:"guilds"`
	BarPct int    `json:"-"`
}

type moveStatus struct {
	Guild    uint64 `json:"guild,string"`
	From     string `json:"from"`
	To       string `json:"to"`
	Phase    string `json:"phase"`
	Step     int    `json:"step"` // 1-based position of Phase in movePhases (0: unknown)
	Steps    int    `json:"steps"`
	Failover bool   `json:"failover"`
	Elapsed  string `json:"elapsed"`
}

type rebalanceStatus struct {
	Kind    string `json:"kind"`
	Pod     string `json:"pod,omitempty"`
	Total   int    `json:"total"`
	Done    int    `json:"done"`
	Failed  int    `json:"failed"`
	Running int    `json:"running"`
	Active  bool   `json:"active"`
}

type eventLine struct {
	Revision uint64 `json:"revision"`
	At       string `json:"at"`
	Type     string `json:"type"`
	What     string `json:"what"`
}

// movePhases are a move's phases in order (fsm.Migration.Phase).
var movePhases = []string{"started", "copying", "committing"}

func phaseStep(phase string) int {
	for i, p := range movePhases {
		if strings.EqualFold(p, phase) {
			return i + 1
		}
	}
	return 0
}

func (p *Proxy) configStatus(ctx context.Context) (*assignments.Status, error) {
	if p.cfg.ConfigStatus == nil {
		return nil, nil
	}
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	if time.Since(p.statusAt) < time.Second {
		return p.statusLast, p.statusErr
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.cfg.ConfigStatus(cctx)
	p.statusAt = time.Now()
	if err != nil {
		p.statusLast, p.statusErr = nil, err
	} else {
		p.statusLast, p.statusErr = &st, nil
	}
	p.rebalanceLast = nil
	if p.cfg.RebalanceStatus != nil {
		if job, err := p.cfg.RebalanceStatus(cctx); err == nil && job.Total > 0 {
			p.rebalanceLast = &rebalanceStatus{Kind: job.Kind, Pod: job.Pod, Total: job.Total, Done: job.Done, Failed: job.Failed,
				Running: job.Running, Active: job.FinishedAt.IsZero()}
		}
	}
	return p.statusLast, p.statusErr
}

func (p *Proxy) buildStatus(ctx context.Context) statusView {
	v := statusView{Proxy: p.cfg.Name, Revision: p.cfg.Map.Revision(), At: time.Now().UTC()}
	if st, err := p.configStatus(ctx); err != nil {
		v.ConfigError = err.Error()
	} else {
		v.Config = st
	}
	p.statusMu.Lock()
	v.Rebalance = p.rebalanceLast
	p.statusMu.Unlock()
	var snap assignments.Snapshot
	if s, ok := p.cfg.Map.(snapshotter); ok {
		snap = s.Snapshot()
	} else {
		snap = assignments.Snapshot{Revision: v.Revision, Pods: p.cfg.Map.Pods()}
	}
	v.ConfigNodes, v.ShardCount = snap.ConfigNodes, snap.ShardCount
	byPod := map[string]*podStatus{}
	for _, pod := range snap.Pods {
		v.Pods = append(v.Pods, podStatus{ID: pod.ID, State: string(pod.State), Shards: []int{}})
	}
	for i := range v.Pods {
		byPod[v.Pods[i].ID] = &v.Pods[i]
	}
	for _, sh := range snap.Shards {
		if ps := byPod[sh.Holder]; ps != nil {
			ps.Shards = append(ps.Shards, sh.Shard)
		}
	}
	now := time.Now()
	for _, g := range snap.Guilds {
		if ps := byPod[g.Owner]; ps != nil {
			ps.Guilds++
		}
		if g.State == fsm.GuildMigrating {
			m := g.Migration
			if m == nil {
				m = &fsm.Migration{From: g.Owner, To: "?", Phase: "unknown", StartedAt: now.UnixMilli()}
			}
			v.Moves = append(v.Moves, moveStatus{Guild: g.ID, From: m.From, To: m.To, Phase: m.Phase, Step: phaseStep(m.Phase),
				Steps: len(movePhases), Failover: m.Failover, Elapsed: now.Sub(time.UnixMilli(m.StartedAt)).Round(100 * time.Millisecond).String()})
			if m.Failover {
				v.Failovers++
			}
		}
	}
	sort.Slice(v.Moves, func(i, j int) bool { return v.Moves[i].Guild < v.Moves[j].Guild })
	for _, ps := range v.Pods {
		v.MaxGuilds = max(v.MaxGuilds, ps.Guilds)
	}
	for i := range v.Pods {
		if v.MaxGuilds > 0 {
			v.Pods[i].BarPct = v.Pods[i].Guilds * 100 / v.MaxGuilds
		}
	}
	evs, _, _ := p.events.snapshot()
	for _, e := range evs {
		v.Events = append(v.Events, describeEvent(e))
	}
	return v
}

func describeEvent(e fsm.Event) eventLine {
	l := eventLine{Revision: e.Revision, Type: string(e.Type), At: time.UnixMilli(e.At).UTC().Format("15:04:05")}
	switch {
	case e.Guild != nil:
		l.What = fmt.Sprintf("guild %d → %s (%s)", e.Guild.ID, e.Guild.Owner, e.Guild.State)
		if m := e.Guild.Migration; m != nil {
			l.What += fmt.Sprintf(", move %s→%s %s", m.From, m.To, m.Phase)
		}
	case e.Pod != nil:
		l.What = fmt.Sprintf("pod %s %s", e.Pod.ID, e.Pod.State)
	case e.Shard != nil:
		l.What = fmt.Sprintf("shard %d held by %s", e.Shard.Shard, e.Shard.Holder)
	case e.ConfigNode != nil:
		l.What = "config node " + e.ConfigNode.ID
	}
	if e.Reason != "" && l.What != "" {
		l.What += ": " + e.Reason
	} else if e.Reason != "" {
		l.What = e.Reason
	}
	return l
}

var statusBody = template.Must(template.New("body").Parse(`<p class="k">proxy {{.Proxy}} · map revision <b id="revision">{{.Revision}}</b> · {{.At.Format "15:04:05"}} UTC</p>
<h2>Config nodes</h2>
{{with .Config}}<p>leader <b id="leader">{{.Leader}}</b> · term {{.Term}} · revision {{.Revision}} · applied {{.AppliedIndex}}</p>
<table><tr><th>id</th><th>raft</th><th>http</th><th>suffrage</th><th></th></tr>{{range .Servers}}<tr><td>{{.ID}}</td><td>{{.RaftAddr}}</td><td>{{.HTTPAddr}}</td><td>{{.Suffrage}}</td><td>{{if .Leader}}leader{{end}}</td></tr>{{end}}</table>
{{else}}<p class="k">{{if .ConfigError}}config nodes unreachable: {{.ConfigError}} (routing continues from the last map){{end}}</p>
<ul>{{range .ConfigNodes}}<li>{{.ID}} {{.HTTPAddr}}</li>{{end}}</ul>{{end}}
<h2>Gateway pods</h2><p class="k">{{.ShardCount}} shards</p>
<table id="pods"><tr><th>pod</th><th>state</th><th>shards</th><th>guilds</th><th></th></tr>
{{range .Pods}}<tr><td>{{.ID}}</td><td>{{.State}}</td><td>{{range .Shards}}<span class="shard">{{.}}</span>{{end}}</td><td class="num" data-pod="{{.ID}}">{{.Guilds}}</td>
<td><svg width="300" height="14" role="img" aria-label="{{.Guilds}} guilds"><rect width="300" height="14" fill="#eee"/><rect width="{{.BarPct}}%" height="14" fill="#2e86de"/></svg></td></tr>{{end}}</table>
{{with .Rebalance}}<h2>{{.Kind}}{{with .Pod}} of {{.}}{{end}} {{if .Active}}in progress{{else}}finished{{end}}</h2>
<p id="rebalance"><progress max="{{.Total}}" value="{{.Done}}"></progress> {{.Done}}/{{.Total}} moves done · {{.Running}} running · {{.Failed}} failed</p>{{end}}
<h2>Moves in progress <span id="move-count">{{len .Moves}}</span>{{if .Failovers}} · {{.Failovers}} failovers{{end}}</h2>
<table id="moves"><tr><th>guild</th><th>from → to</th><th>phase</th><th>progress</th><th>elapsed</th></tr>
{{range .Moves}}<tr class="move" data-guild="{{.Guild}}"><td>{{.Guild}}</td><td>{{.From}} → {{.To}}{{if .Failover}} (failover){{end}}</td><td>{{.Phase}}</td>
<td><progress max="{{.Steps}}" value="{{.Step}}"></progress> {{.Step}}/{{.Steps}}</td><td>{{.Elapsed}}</td></tr>{{else}}<tr><td colspan=5 id="no-moves">none</td></tr>{{end}}</table>
<h2>Last events</h2><table id="events"><tr><th>rev</th><th>at</th><th>type</th><th></th></tr>
{{range .Events}}<tr><td>{{.Revision}}</td><td>{{.At}}</td><td>{{.Type}}</td><td>{{.What}}</td></tr>{{else}}<tr><td colspan=4>none since this proxy started</td></tr>{{end}}</table>`))

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot · cluster status</title>
<style>body{font:15px system-ui,sans-serif;margin:2rem;color:#222;max-width:64rem}table{border-collapse:collapse;margin:.5rem 0 1rem}
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}.k{color:#666}.shard{display:inline-block;background:#eef;border-radius:3px;padding:0 .3rem;margin:0 .1rem;font-size:.85em}</style></head>
<body><h1>Cluster status <small class="k" id="live">(static)</small></h1>
<div id="status">{{.}}</div>
<script>
// Live updates: the server re-renders the section above on every change.
(function(){if(!window.EventSource)return;var es=new EventSource("/status/events");var live=document.getElementById("live");
es.addEventListener("status",function(e){document.getElementById("status").innerHTML=e.data;live.textContent="(live)";});
es.onerror=function(){live.textContent="(reconnecting)";};})();
</script></body></html>`))

func (p *Proxy) renderStatusBody(ctx context.Context) (template.HTML, error) {
	var b bytes.Buffer
	if err := statusBody.Execute(&b, p.buildStatus(ctx)); err != nil {
		return "", fmt.Errorf("render status: %w", err)
	}
	return template.HTML(b.String()), nil //nolint:gosec // rendered by html/template
}

// authorizeOperator lets the admin or read token, or a signed-in
// operator, through.
func (p *Proxy) authorizeOperator(w http.ResponseWriter, r *http.Request) bool {
	switch scope, why := p.auth.ScopeOf(r); {
	case scope >= httpapi.ScopeRead:
		return true
	case why == httpapi.RefusedWrong:
		p.auth.Refuse(httpapi.ScopeRead, why)
		w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
		httpapi.WriteError(w, http.StatusUnauthorized, "wrong credentials: /status takes the admin or read token, or a signed-in operator")
		return false
	}
	s, ok := p.sessionOf(r)
	if !ok {
		p.refuseAnonymous(w, r, "anonymous")
		return false
	}
	for _, id := range p.cfg.Operators {
		if id == s.UserID {
			return true
		}
	}
	if wantsHTML(r) {
		writePage(w, http.StatusForbidden, "Operators only", fmt.Sprintf("%s, /status is for the cluster's operators (--operators).", s.Username), "/logout", "Sign out")
		return false
	}
	httpapi.WriteError(w, http.StatusForbidden, "user %d is not an operator", s.UserID)
	return false
}

func (p *Proxy) handleStatusPage(w http.ResponseWriter, r *http.Request) {
	if !p.authorizeOperator(w, r) {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if !wantsHTML(r) {
		httpapi.WriteJSON(w, http.StatusOK, p.buildStatus(r.Context()))
		return
	}
	body, err := p.renderStatusBody(r.Context())
	if err != nil {
		httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusPage.Execute(w, body)
}

// handleStatusEvents streams the re-rendered status section as SSE
// "status" events: at once, then on every change of the map (coalesced to
// at most four a second) and every few seconds (elapsed times, the Raft
// view).
func (p *Proxy) handleStatusEvents(w http.ResponseWriter, r *http.Request) {
	if !p.authorizeOperator(w, r) {
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	tick := time.NewTicker(3 * time.Second)
	defer tick.Stop()
	for {
		body, err := p.renderStatusBody(r.Context())
		if err != nil {
			return
		}
		var b strings.Builder
		b.WriteString("event: status\n")
		for _, line := range strings.Split(string(body), "\n") {
			b.WriteString("data: ")
			b.WriteString(line)
			b.WriteString("\n")
		}
		b.WriteString("\n")
		if _, err := w.Write([]byte(b.String())); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		_, _, wake := p.events.snapshot()
		select {
		case <-r.Context().Done():
			return
		case <-p.ctx.Done():
			return
		case <-p.stopStreams:
			return
		case <-wake:
			select { // coalesce bursts
			case <-time.After(250 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		case <-tick.C:
		}
	}
}
