package badinput

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/podapi"
)

// toPod sends a request to gateway-0's real internal API.
func toPod(method, path string, body []byte) func(e *env) answer {
	return func(e *env) answer {
		return e.send(req{method: method, url: e.podURL(0) + e.expand(path), body: body})
	}
}

// eventsTo posts a body with {G0}/{G1}/{GX} placeholders to gateway-0's
// /internal/events.
func eventsTo(body string) func(e *env) answer {
	return func(e *env) answer { return toPod(http.MethodPost, podapi.PathEvents, []byte(e.expand(body)))(e) }
}

// msgJSON is one MESSAGE_CREATE event for the guild placeholder, as JSON.
func msgJSON(guild string, id int) string {
	return fmt.Sprintf(`{"t":"MESSAGE_CREATE","d":{"id":"%d","guild_id":"%s","channel_id":"5","author":{"id":"4242"},"content":"bad input","timestamp":"2025-01-01T00:00:00Z"},"delivery_id":"badinput:%d"}`,
		id, guild, id)
}

// refusedAll checks the documented answer to events a pod does not take:
// 200 with every index refused (the sender keeps them).
func refusedAll(n int) func(e *env, a answer) error {
	return func(e *env, a answer) error {
		if a.Status != http.StatusOK {
			return fmt.Errorf("status %d, want 200 with the events refused: %s", a.Status, a.Body)
		}
		var fr podapi.ForwardResponse
		if err := json.Unmarshal(a.Body, &fr); err != nil {
			return fmt.Errorf("answer %q: %v", a.Body, err)
		}
		if fr.Accepted != 0 || len(fr.Refused) != n {
			return fmt.Errorf("accepted %d, refused %v; want 0 accepted, %d refused", fr.Accepted, fr.Refused, n)
		}
		return nil
	}
}

func bodyText(e *env, a answer) string {
	return fmt.Sprintf("%d `%s`", a.Status, excerpt(e.clean(strings.TrimSpace(string(a.Body)))))
}

// misdirected checks a pod's 421: not the owner, with the owner it knows.
func misdirected(owner string) func(e *env, a answer) error {
	return func(e *env, a answer) error {
		if a.Status != http.StatusMisdirectedRequest {
			return fmt.Errorf("status %d, want 421: %s", a.Status, a.Body)
		}
		var b struct {
			Error string `json:"error"`
			Owner string `json:"owner"`
		}
		if err := json.Unmarshal(a.Body, &b); err != nil || b.Error == "" || !strings.Contains(b.Error, "does not own") || b.Owner != owner {
			return fmt.Errorf("421 body %s: want an error and owner %q", a.Body, owner)
		}
		return nil
	}
}

// bigEvents is a /internal/events body just over the pod's 8 MiB limit:
// the same message of G0, again and again.
func bigEvents(e *env) []byte {
	item := e.expand(msgJSON("{G0}", 777)) + ","
	n := (8<<20)/len(item) + 100
	return []byte(`{"events":[` + strings.Repeat(item, n) + e.expand(msgJSON("{G0}", 777)) + `]}`)
}

// guildEpoch is the guild's current epoch.
func (e *env) guildEpoch(g uint64) uint64 {
	v, err := e.guildView(g)
	if err != nil {
		e.t.Errorf("read guild %d: %v", g, err)
	}
	return v.Epoch
}

// exportOf is a real export of guild g from pod i's store, for the
// truncated-export rows.
func (e *env) exportOf(i int, g uint64) []byte {
	var buf bytes.Buffer
	if _, err := e.sys.Gateways[i].Store().Export(e.ctx, g, &buf); err != nil {
		e.t.Errorf("export guild %d: %v", g, err)
	}
	return buf.Bytes()
}

func gatewayRows(e *env) []row {
	r := func(input string, do func(e *env) answer, want int, mention ...string) row {
		return row{component: podComp, input: input, do: do, want: want, mention: mention}
	}
	ev := "`POST /internal/events` "
	rows := []row{
		r(ev+"malformed JSON `{\"events\":[`", eventsTo(`{"events":[`), 400, "malformed JSON"),
		r(ev+"a G0 message with an unknown field `\"extra\":1` (accepted, it would be stored)",
			eventsTo(`{"events":[`+strings.Replace(msgJSON("{G0}", 901), `"t":`, `"extra":1,"t":`, 1)+`]}`), 400, "unknown field", "extra"),
		r(ev+"unknown top-level field `{\"events\":[],\"evnts\":[…]}`", eventsTo(`{"events":[],"evnts":[`+msgJSON("{G0}", 902)+`]}`), 400, "unknown field", "evnts"),
		{component: podComp, input: ev + "duplicate key `{\"events\":[a G0 message],\"events\":[]}`",
			do: eventsTo(`{"events":[` + msgJSON("{G0}", 903) + `],"events":[]}`), check: refusedAll(0), text: bodyText,
			note: "(the last `events` wins, as in `encoding/json`)"},
		r(ev+"wrong type `{\"events\":\"MESSAGE_CREATE\"}`", eventsTo(`{"events":"MESSAGE_CREATE"}`), 400, "events", "string"),
		r(ev+"wrong type in an event `{\"t\":1}`", eventsTo(`{"events":[{"t":1,"d":{}}]}`), 400, "string"),
		r(ev+"empty body", toPod(http.MethodPost, podapi.PathEvents, []byte{}), 400, "empty"),
		r(ev+"body over the 8 MiB limit (one G0 message, 30,000 times)", func(e *env) answer {
			return toPod(http.MethodPost, podapi.PathEvents, bigEvents(e))(e)
		}, 413, "larger than 8388608 bytes"),
		r(ev+"two JSON values `{\"events\":[]} {\"events\":[a G0 message]}`", eventsTo(`{"events":[]} {"events":[`+msgJSON("{G0}", 904)+`]}`), 400, "more than one JSON value"),
		r(ev+"an event without a guild", eventsTo(`{"events":[{"t":"MESSAGE_CREATE","d":{"id":"905","channel_id":"5"}}]}`), 400, "has no guild"),
		r(ev+"guild_id `\"abc\"`", eventsTo(`{"events":[`+msgJSON("abc", 906)+`]}`), 400, "has no guild"),
		r(ev+"guild_id `\"0\"`", eventsTo(`{"events":[`+msgJSON("0", 907)+`]}`), 400, "has no guild"),
		r(ev+"guild_id 2^64", eventsTo(`{"events":[`+msgJSON(twoTo64, 908)+`]}`), 400, "has no guild"),
		r(ev+"a good G0 message, then one without a guild (nothing stored)", eventsTo(`{"events":[`+msgJSON("{G0}", 909)+`,{"t":"MESSAGE_CREATE","d":{}}]}`), 400, "has no guild"),
		{component: podComp, input: ev + "a message of G1 (owned by gateway-1)", do: eventsTo(`{"events":[` + msgJSON("{G1}", 910) + `]}`),
			check: refusedAll(1), text: bodyText, note: "(refused for the sender to keep)"},
		{component: podComp, input: ev + "a message of GX (never placed)", do: eventsTo(`{"events":[` + msgJSON("{GX}", 911) + `]}`),
			check: refusedAll(1), text: bodyText, note: "(refused for the sender to keep)"},
		{component: podComp, input: ev + "without a token", want: 401, mention: []string{"missing bearer token"},
			do: func(e *env) answer {
				return e.send(req{method: http.MethodPost, url: e.podURL(0) + podapi.PathEvents, body: []byte(e.expand(`{"events":[` + msgJSON("{G0}", 912) + `]}`)), noAuth: true})
			}},
		{component: podComp, input: ev + "with a wrong token", want: 401, mention: []string{"wrong bearer token"},
			do: func(e *env) answer {
				return e.send(req{method: http.MethodPost, url: e.podURL(0) + podapi.PathEvents, body: []byte(e.expand(`{"events":[` + msgJSON("{G0}", 913) + `]}`)),
					header: map[string]string{"Authorization": "Bearer " + token + "x"}})
			}},
		r("`GET /internal/events`", toPod(http.MethodGet, podapi.PathEvents, nil), 405, "method GET not allowed"),

		// Interactions (the proxy's webhook, forwarded).
		r("`POST /internal/interactions` malformed JSON", toPod(http.MethodPost, podapi.PathInteractions, []byte(`{"id":`)), 400, "malformed interaction"),
		r("`POST /internal/interactions` empty body", toPod(http.MethodPost, podapi.PathInteractions, []byte{}), 400, "malformed interaction"),
		r("`POST /internal/interactions` body over the 1 MiB limit", func(e *env) answer {
			return toPod(http.MethodPost, podapi.PathInteractions, []byte(`{"id":"1","type":2,"x":"`+strings.Repeat("a", 1<<20)+`"}`))(e)
		}, 413, "too large"),
		{component: podComp, input: "`POST /internal/interactions` for G1 (owned by gateway-1)", check: misdirected("gateway-1"), text: bodyText,
			do: func(e *env) answer {
				body := e.expand(`{"id":"1300000000000000001","application_id":"1","type":2,"token":"t","guild_id":"{G1}","channel_id":"5","data":{"id":"1","name":"report","type":1},"member":{"user":{"id":"7"}}}`)
				return toPod(http.MethodPost, podapi.PathInteractions, []byte(body))(e)
			}},

		// Dashboards.
		r("`GET /guild/abc/dashboard`", toPod(http.MethodGet, "/guild/abc/dashboard", nil), 400, "not a snowflake"),
		r("`GET /guild/0/dashboard`", toPod(http.MethodGet, "/guild/0/dashboard", nil), 400, "not a snowflake"),
		r("`GET /guild/18446744073709551616/dashboard` (2^64)", toPod(http.MethodGet, "/guild/"+twoTo64+"/dashboard", nil), 400, "not a snowflake"),
		{component: podComp, input: "`GET /guild/G1/dashboard` (owned by gateway-1)", do: toPod(http.MethodGet, "/guild/{G1}/dashboard", nil),
			check: misdirected("gateway-1"), text: bodyText},
		{component: podComp, input: "`GET /guild/GX/dashboard` (never placed)", do: toPod(http.MethodGet, "/guild/{GX}/dashboard", nil),
			check: misdirected(""), text: bodyText},

		// Move steps with a wrong or stale epoch.
		r("`GET /internal/guilds/G0/export?epoch=1` (older than the guild's)", toPod(http.MethodGet, "/internal/guilds/{G0}/export?epoch=1", nil), 409, "stale"),
		r("`GET /internal/guilds/G0/export` without an epoch", toPod(http.MethodGet, "/internal/guilds/{G0}/export", nil), 400, "epoch"),
		r("`GET /internal/guilds/G0/export?epoch=abc`", toPod(http.MethodGet, "/internal/guilds/{G0}/export?epoch=abc", nil), 400, "epoch"),
		r("`GET /internal/guilds/G0/export?epoch=0`", toPod(http.MethodGet, "/internal/guilds/{G0}/export?epoch=0", nil), 400, "epoch"),
		r("`GET /internal/guilds/abc/export?epoch=1`", toPod(http.MethodGet, "/internal/guilds/abc/export?epoch=1", nil), 400, "not a snowflake"),
		{component: podComp, input: "`POST /internal/guilds/G1/import?epoch=1` with a truncated export of G1 as the body", want: 409, mention: []string{"stale"},
			do: func(e *env) answer {
				exp := e.exportOf(1, e.g1)
				return toPod(http.MethodPost, e.expand("/internal/guilds/{G1}/import?epoch=1"), exp[:len(exp)/2])(e)
			}, note: "(an import pulls from the source; a posted body is never read)"},
		r("`DELETE /internal/guilds/G0?epoch=1` on its owner", toPod(http.MethodDelete, "/internal/guilds/{G0}?epoch=1", nil), 409, "owns guild G0", "refusing to delete"),
		{component: podComp, input: "`DELETE /internal/guilds/G0?epoch=<current>` on its owner", want: 409, mention: []string{"refusing to delete"},
			do: func(e *env) answer {
				return toPod(http.MethodDelete, fmt.Sprintf("/internal/guilds/{G0}?epoch=%d", e.guildEpoch(e.g0)), nil)(e)
			}},
		r("`DELETE /internal/guilds/G1?epoch=0`", toPod(http.MethodDelete, "/internal/guilds/{G1}?epoch=0", nil), 400, "epoch"),
		r("`GET /internal/shards/abc/released`", toPod(http.MethodGet, "/internal/shards/abc/released", nil), 400, "shard must be"),
		r("`GET /internal/shards/-1/released`", toPod(http.MethodGet, "/internal/shards/-1/released", nil), 400, "shard must be"),
		r("`GET /internal/shards/0/released?wait_ms=-1`", toPod(http.MethodGet, "/internal/shards/0/released?wait_ms=-1", nil), 400, "wait_ms"),
		r("`GET /internal/dead-letters?limit=0`", toPod(http.MethodGet, "/internal/dead-letters?limit=0", nil), 400, "limit"),
		r("`GET /internal/dead-letters?guild=abc`", toPod(http.MethodGet, "/internal/dead-letters?guild=abc", nil), 400, "not a snowflake"),
		r("`GET /internal/dead-letters?after=-1`", toPod(http.MethodGet, "/internal/dead-letters?after=-1", nil), 400, "after"),
		r("`POST /internal/dead-letters/abc/replay`", toPod(http.MethodPost, "/internal/dead-letters/abc/replay", nil), 400, "dead-letter id"),
		r("`POST /internal/dead-letters/999/replay` (no such dead letter)", toPod(http.MethodPost, "/internal/dead-letters/999/replay", nil), 404, "no dead letter 999"),

		// A real move whose export arrives truncated.
		cutMove("export cut in the middle of a row", func(b []byte) []byte { return b[:len(b)/2] }),
		cutMove("export without its trailer line (every row intact)", func(b []byte) []byte {
			t := bytes.TrimRight(b, "\n")
			return b[:bytes.LastIndexByte(t, '\n')+1]
		}),
	}
	return rows
}

// cutMove moves G1 from gateway-1 to gateway-0 with the export cut on its
// way: the target must refuse the import (422), the leader abort the move,
// and G1 stay on gateway-1 with every row.
func cutMove(what string, cut func([]byte) []byte) row {
	var seen int
	var dst *interceptor
	return row{
		component: podComp,
		input:     "a real move of G1 to gateway-0 whose " + what,
		do: func(e *env) answer {
			src := e.interceptorOf("gateway-1")
			dst = e.interceptorOf("gateway-0")
			seen = dst.callCount()
			src.cut.Store(&cut)
			defer src.cut.Store(nil)
			a := e.send(req{method: http.MethodPost, url: e.configURL(e.leader()) + e.expand("/v1/guilds/{G1}/move"), body: []byte(`{"to":"gateway-0"}`)})
			if a.Status != http.StatusAccepted {
				return answer{Err: fmt.Errorf("move answered %d %s", a.Status, a.Body)}
			}
			var imp answer
			err := e.poll(30*time.Second, func() bool {
				for _, c := range dst.callsSince(seen) {
					if strings.HasSuffix(c.path, "/import") {
						imp = c.answer
					}
				}
				g, err := e.guildView(e.g1)
				return imp.Status != 0 && err == nil && g.State == fsm.GuildActive
			})
			if err != nil {
				return answer{Err: fmt.Errorf("the move did not settle (import answered %d): %v", imp.Status, err)}
			}
			return imp
		},
		// The leader drops the target's copy after the abort: wait for it,
		// so that its fence lands before the next row.
		settle: func(e *env) error {
			return e.poll(30*time.Second, func() bool {
				for _, c := range dst.callsSince(seen) {
					if c.method == http.MethodDelete {
						return true
					}
				}
				return false
			})
		},
		check: func(e *env, a answer) error {
			if a.Err != nil {
				return a.Err
			}
			if a.Status != http.StatusUnprocessableEntity {
				return fmt.Errorf("the target answered the import with %d %s, want 422", a.Status, a.Body)
			}
			if !strings.Contains(a.errorText(), "malformed export") {
				return fmt.Errorf("import error %q does not say the export is malformed", a.errorText())
			}
			g, err := e.guildView(e.g1)
			if err != nil || g.Owner != "gateway-1" || g.State != fsm.GuildActive {
				return fmt.Errorf("after the aborted move G1 is %+v (%v), want active on gateway-1", g, err)
			}
			return nil
		},
		text: func(e *env, a answer) string {
			return "move 202, then the target's import " + strconv.Itoa(a.Status) + " " + excerpt(e.clean(a.errorText())) + "; move aborted"
		},
		relaxed: true,
		note:    "(owner, state and rows; the abort raises the epoch by design)",
	}
}
