package badinput

import (
	"bufio"
	"flag"
	"fmt"
	"github.com/modbot/modbot/systest"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite docs/bad-input.md from the results")

const docPath = "../docs/bad-input.md"

// row is one bad input against one component.
type row struct {
	component string // "config node", "gateway pod", "proxy"
	input     string // what is sent, deterministic
	// prepare runs before the "before" fingerprint (the first, valid
	// request of a replay).
	prepare func(e *env) error
	do      func(e *env) answer
	want    int      // the status expected
	mention []string // words the error text must contain (case-insensitive)
	// check replaces the JSON-error checks for a documented answer that is
	// not an error body; text then gives the answer column.
	check func(e *env, a answer) error
	text  func(e *env, a answer) string
	// relaxed compares the fingerprint without guild epochs and fences (an
	// aborted move bumps the epoch by design); note is then the last column.
	relaxed bool
	note    string
	// settle runs after the answer, before the "after" fingerprint.
	settle func(e *env) error
}

// result is one line of the table.
type result struct {
	component, input, answer, unchanged string
}

// TestBadInputTable sends every row's bad input to a running system and
// checks that each is refused with a clear error and changes nothing; the
// results must match docs/bad-input.md (-update rewrites it).
func TestBadInputTable(t *testing.T) {
	if testing.Short() {
		t.Skip("about 25 s against a whole system: runs without -short")
	}
	e := system(t)
	start := time.Now()
	// The slow ones run alongside the others: a header sent a byte a second
	// to each server, cut off by its ReadHeaderTimeout.
	slow := e.startSlowloris()
	rows := configRows(e)
	rows = append(rows, slow.row("config node", e.configURL(e.leader())))
	rows = append(rows, watcherRow())
	rows = append(rows, gatewayRows(e)...)
	rows = append(rows, slow.row("gateway pod", e.podURL(0)))
	rows = append(rows, proxyRows(e)...)
	rows = append(rows, slow.row("proxy", e.proxyURL))

	first, err := e.fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	var results []result
	relaxedSeen := false
	forwards := e.validForwards.Load()
	for _, r := range rows {
		res, ok := e.runRow(t, r)
		if !ok {
			continue
		}
		relaxedSeen = relaxedSeen || r.relaxed
		results = append(results, res)
	}
	// And across the whole run: only the aborted moves' epochs moved.
	last, err := e.fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	a, b := first, last
	if relaxedSeen {
		a, b = first.relaxed(), last.relaxed()
	}
	b.ProxyHits -= e.validForwards.Load() - forwards // the rows' valid first requests
	if d := a.diff(b); d != "" {
		t.Errorf("the whole run changed the system: %s", d)
	}
	t.Logf("%d rows in %s", len(results), time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		return
	}
	doc := renderTable(results)
	if *update {
		if err := os.WriteFile(docPath, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	old, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("%v (run go test ./badinput/ -run TestBadInputTable -update)", err)
	}
	if string(old) != doc {
		t.Errorf("docs/bad-input.md is out of date: run go test ./badinput/ -run TestBadInputTable -update\n%s", firstDiff(string(old), doc))
	}
}

// runRow runs one row and checks it.
func (e *env) runRow(t *testing.T, r row) (result, bool) {
	t.Helper()
	name := r.component + ": " + r.input
	if testing.Verbose() {
		t0 := time.Now()
		t.Logf("row %s", name)
		defer func() { t.Logf("row done in %s", time.Since(t0).Round(time.Millisecond)) }()
	}
	if r.prepare != nil {
		if err := r.prepare(e); err != nil {
			t.Errorf("%s: prepare: %v", name, err)
			return result{}, false
		}
	}
	before, err := e.fingerprint()
	if err != nil {
		t.Errorf("%s: fingerprint before: %v", name, err)
		return result{}, false
	}
	a := r.do(e)
	for try := 0; try < 3 && a.Status == http.StatusServiceUnavailable && strings.Contains(a.errorText(), "lead"); try++ {
		// An election in progress: nothing was done; ask again once there is a leader.
		t.Logf("%s: %s; retrying", name, a.errorText())
		e.leader()
		a = r.do(e)
	}
	ok := true
	if a.Err != nil && r.check == nil {
		t.Errorf("%s: no answer: %v", name, a.Err)
		ok = false
	}
	switch {
	case !ok:
	case r.check != nil:
		if err := r.check(e, a); err != nil {
			t.Errorf("%s: %v", name, err)
			ok = false
		}
	default:
		if err := checkRefusal(r, a, e.clean(a.errorText())); err != nil {
			t.Errorf("%s: %v (answer %d %s)", name, err, a.Status, strings.TrimSpace(string(a.Body)))
			ok = false
		}
	}
	if r.settle != nil {
		if err := r.settle(e); err != nil {
			t.Errorf("%s: %v", name, err)
			ok = false
		}
	}
	after, err := e.fingerprint()
	if err != nil {
		t.Errorf("%s: fingerprint after: %v", name, err)
		return result{}, false
	}
	if r.relaxed {
		before, after = before.relaxed(), after.relaxed()
	}
	if d := before.diff(after); d != "" {
		t.Errorf("%s: the refused request changed the system: %s", name, d)
		ok = false
	}
	if !ok {
		return result{}, false
	}
	res := result{component: r.component, input: r.input, unchanged: "✓"}
	if r.note != "" {
		res.unchanged = "✓ " + r.note
	}
	if r.text != nil {
		res.answer = r.text(e, a)
	} else {
		msg := e.clean(a.errorText())
		if reason := a.field("reason"); reason != "" {
			msg = reason + ": " + msg // the proxy's webhook refusals
		}
		res.answer = fmt.Sprintf("%d %s", a.Status, excerpt(msg))
	}
	return res, true
}

// checkRefusal: the expected 4xx status (never 5xx), a JSON body whose
// "error" is not empty and names what was wrong.
func checkRefusal(r row, a answer, msg string) error {
	if a.Status >= 500 {
		return fmt.Errorf("server error %d", a.Status)
	}
	if a.Status != r.want {
		return fmt.Errorf("status %d, want %d", a.Status, r.want)
	}
	if a.Status < 400 {
		return fmt.Errorf("status %d is not a refusal", a.Status)
	}
	if ct := a.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("Content-Type %q, want JSON", ct)
	}
	if strings.TrimSpace(msg) == "" {
		return fmt.Errorf("no error message in the JSON body")
	}
	for _, m := range r.mention {
		if !strings.Contains(strings.ToLower(msg), strings.ToLower(m)) {
			return fmt.Errorf("error %q does not mention %q", msg, m)
		}
	}
	return nil
}

// The answer column's text: deterministic (no ports, revisions, epochs or
// ids), at most ~80 characters.

var (
	reAddr     = regexp.MustCompile(`(http://)?127\.0\.0\.1:\d+`)
	reCounters = regexp.MustCompile(`\b(epoch|epochs|revision|index|term)( |=|: ?|": ?)\d+`)
	reSigned   = regexp.MustCompile(`signed [0-9hms.]+ (ago|in the future)`)
	reHex      = regexp.MustCompile(`\b[0-9a-f]{32,}\b`)
	reOffset   = regexp.MustCompile(`(offset|character) \d+`)
)

func (e *env) clean(s string) string {
	s = reAddr.ReplaceAllString(s, "ADDR")
	for id, name := range e.names() {
		s = strings.ReplaceAll(s, id, name)
	}
	s = reCounters.ReplaceAllString(s, "${1}${2}N")
	s = reSigned.ReplaceAllString(s, "signed T $1")
	s = reHex.ReplaceAllString(s, "HEX")
	s = reOffset.ReplaceAllString(s, "$1 N")
	return strings.Join(strings.Fields(s), " ")
}

// names are the placeholders of the guild ids in the table.
func (e *env) names() map[string]string {
	m := map[string]string{strconv.FormatUint(neverPlaced, 10): "GX"}
	for i, g := range e.all {
		m[strconv.FormatUint(g, 10)] = fmt.Sprintf("G%d", i)
	}
	return m
}

func excerpt(s string) string {
	const max = 80
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return strings.TrimSpace(string(r[:max-1])) + "…"
}

func renderTable(rs []result) string {
	var b strings.Builder
	b.WriteString(`# Bad input

What each component answers to bad input, and proof that the refused
request changed nothing. Generated by ` + "`go test ./badinput/ -run TestBadInputTable -update`" + `
against one running system (3 config nodes, gateway-0 and gateway-1 owning
guilds with rows, gateway-2 draining, a proxy); the test fails when this
file is out of date. Do not edit it by hand.

Every row checks the answer — the status shown, never a 5xx, no hang, and
for refusals a JSON ` + "`{\"error\": …}`" + ` naming what was wrong — and that
nothing changed: the map read linearizably (pods, shards, guilds with owner,
state, epoch; not the revision, which heartbeats move), the leader and the
voters, every table of every pod's SQLite file, and the number of requests
the proxy forwarded to pods (none, unless the row says so).

Names: G0 is a guild owned by gateway-0, G1 one owned by gateway-1, GX a
valid snowflake that was never placed; N stands for an epoch or revision,
ADDR for an address, T for a duration. Error texts are cut at 80
characters.

Choices: unknown fields are refused (400) by every JSON API; a repeated key
is refused by the config nodes' API and, on a pod's ` + "`/internal/events`" + `
(whose events carry Discord's payloads verbatim), takes the last value as
` + "`encoding/json`" + ` does. There is no limit on watch streams: 200 at once
leave a node responsive.

| component | input | answer | nothing changed |
|---|---|---|---|
`)
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", cell(r.component), cell(r.input), cell(r.answer), cell(r.unchanged))
	}
	return b.String()
}

func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n- %s\n+ %s", i+1, x, y)
		}
	}
	return ""
}

// Slowloris: one connection per server, a header byte a second.

type slowResult struct {
	took time.Duration
	got  string
	err  error
}

type slowRuns struct {
	mu  sync.Mutex
	chs map[string]chan slowResult
}

func (e *env) startSlowloris() *slowRuns {
	s := &slowRuns{chs: map[string]chan slowResult{}}
	for _, base := range []string{e.configURL(e.leader()), e.podURL(0), e.proxyURL} {
		ch := make(chan slowResult, 1)
		s.chs[base] = ch
		go func() {
			took, got, err := slowloris(hostOf(base), 15*time.Second)
			ch <- slowResult{took, got, err}
		}()
	}
	return s
}

// readHeaderTimeout is what every server sets (confignode/node.go,
// gatewaynode/node.go, proxy/proxy.go).
const readHeaderTimeout = 5 * time.Second

func (s *slowRuns) row(component, base string) row {
	var res slowResult
	return row{
		component: component,
		input:     "slowloris: request headers sent one byte a second",
		do: func(e *env) answer {
			res = <-s.chs[base]
			return answer{Err: res.err, Took: res.took}
		},
		check: func(e *env, a answer) error {
			switch {
			case res.err != nil:
				return res.err
			case res.took < readHeaderTimeout-time.Second || res.took > readHeaderTimeout+3*time.Second:
				return fmt.Errorf("connection closed after %s, want about %s (ReadHeaderTimeout)", res.took, readHeaderTimeout)
			case res.got != "" && !strings.HasPrefix(res.got, "HTTP/1.1 4"):
				return fmt.Errorf("answered %q", res.got)
			}
			return nil
		},
		text: func(e *env, a answer) string {
			what := "no response"
			if res.got != "" {
				what = strings.SplitN(res.got, "\r\n", 2)[0]
			}
			return fmt.Sprintf("connection closed by the server after the 5 s ReadHeaderTimeout (%s)", what)
		},
	}
}

// Watch streams: no limit; 200 at once and the node still answers.

const watchers = 200

func watcherRow() row {
	var subsBefore float64
	return row{
		component: "config node",
		input:     fmt.Sprintf("%d `GET /v1/watch` streams open at once (there is no limit)", watchers),
		do: func(e *env) answer {
			base := e.configURL(e.leader())
			subsBefore = e.metric(base, "modbot_config_watch_subscribers")
			var wg sync.WaitGroup
			errs := make(chan error, watchers)
			stop := make(chan struct{})
			var opened sync.WaitGroup
			opened.Add(watchers)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
			for i := 0; i < watchers; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					once := sync.OnceFunc(opened.Done)
					defer once()
					hr, _ := http.NewRequestWithContext(e.ctx, http.MethodGet, base+"/v1/watch", nil)
					hr.Header.Set("Authorization", "Bearer "+token)
					resp, err := client.Do(hr)
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						errs <- fmt.Errorf("watch answered %d", resp.StatusCode)
						return
					}
					br := bufio.NewReader(resp.Body)
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							errs <- fmt.Errorf("watch stream: %w", err)
							return
						}
						if strings.HasPrefix(line, "event: progress") {
							break
						}
					}
					once()
					<-stop
				}()
			}
			opened.Wait()
			// With every stream open: a read, a linearizable read and the
			// metrics still answer promptly.
			t0 := time.Now()
			st := e.send(req{method: http.MethodGet, url: base + "/v1/status"})
			cr := e.send(req{method: http.MethodGet, url: base + "/v1/guilds/" + strconv.FormatUint(e.g0, 10) + "?consistent=true"})
			took := time.Since(t0)
			open := e.metric(base, "modbot_config_watch_subscribers") - subsBefore
			close(stop)
			wg.Wait()
			client.CloseIdleConnections()
			close(errs)
			var err error
			for x := range errs {
				err = x
			}
			switch {
			case err != nil:
			case st.Status != 200 || cr.Status != 200:
				err = fmt.Errorf("status %d, consistent read %d while %d watchers were open", st.Status, cr.Status, watchers)
			case took > 3*time.Second:
				err = fmt.Errorf("reads took %s while %d watchers were open", took, watchers)
			case open < watchers:
				err = fmt.Errorf("modbot_config_watch_subscribers rose by %v, want %d", open, watchers)
			}
			return answer{Status: st.Status, Err: err}
		},
		check: func(e *env, a answer) error { return a.Err },
		settle: func(e *env) error {
			base := e.configURL(e.leader())
			deadline := time.Now().Add(10 * time.Second)
			for e.metric(base, "modbot_config_watch_subscribers") > subsBefore {
				if time.Now().After(deadline) {
					return fmt.Errorf("watch streams not released after the clients closed them")
				}
				time.Sleep(20 * time.Millisecond)
			}
			return nil
		},
		text: func(e *env, a answer) string {
			return "200 and a progress frame on each; meanwhile `/v1/status` and a consistent read answer 200 in < 3 s"
		},
		note: "(all released when the clients leave)",
	}
}

// metric reads one unlabelled gauge from a /metrics page (-1 if absent).
func (e *env) metric(base, name string) float64 {
	// /metrics takes the read token (the harness sets one of its own).
	a := e.send(req{method: http.MethodGet, url: base + "/metrics", header: map[string]string{"Authorization": "Bearer " + systest.ReadToken}})
	for _, line := range strings.Split(string(a.Body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}
