package badinput

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

const (
	twoTo64  = "18446744073709551616" // 2^64: one more than a uint64 holds
	cfgNode  = "config node"
	podComp  = "gateway pod"
	proxComp = "proxy"
)

// toLeader sends a request to the config leader (body nil: none).
func toLeader(method, path string, body []byte) func(e *env) answer {
	return func(e *env) answer {
		return e.send(req{method: method, url: e.configURL(e.leader()) + e.expand(path), body: body})
	}
}

// toFollower sends a request to a follower, which forwards writes.
func toFollower(method, path string, body []byte) func(e *env) answer {
	return func(e *env) answer {
		return e.send(req{method: method, url: e.configURL(e.follower()) + e.expand(path), body: body})
	}
}

// expand replaces G0, G1 and GX in a path or body with the guild ids.
func (e *env) expand(s string) string {
	s = strings.ReplaceAll(s, "{G0}", strconv.FormatUint(e.g0, 10))
	s = strings.ReplaceAll(s, "{G1}", strconv.FormatUint(e.g1, 10))
	return strings.ReplaceAll(s, "{GX}", strconv.FormatUint(neverPlaced, 10))
}

// jsonTo sends a JSON body with {G0}/{G1}/{GX} placeholders.
func jsonTo(send func(method, path string, body []byte) func(e *env) answer, method, path, body string) func(e *env) answer {
	return func(e *env) answer { return send(method, path, []byte(e.expand(body)))(e) }
}

// bigPlace is a POST /v1/guilds body just over the config nodes' 4 MiB
// limit, listing GX again and again: accepted, it would place GX.
func bigPlace(e *env) []byte {
	item := `"` + strconv.FormatUint(neverPlaced, 10) + `",`
	n := (4<<20)/len(item) + 100
	return []byte(`{"guild_ids":[` + strings.Repeat(item, n) + `"1"]}`)
}

func configRows(e *env) []row {
	post := func(path, body string) func(e *env) answer { return jsonTo(toLeader, http.MethodPost, path, body) }
	get := func(path string) func(e *env) answer { return toLeader(http.MethodGet, path, nil) }
	r := func(input string, do func(e *env) answer, want int, mention ...string) row {
		return row{component: cfgNode, input: input, do: do, want: want, mention: mention}
	}
	rows := []row{
		// Bodies.
		r("`POST /v1/guilds` malformed JSON `{\"guild_ids\": [`", post("/v1/guilds", `{"guild_ids": [`), 400, "malformed JSON"),
		r("`POST /v1/guilds` unknown field `{\"guild_ids\":[\"GX\"],\"dry_run\":true}`", post("/v1/guilds", `{"guild_ids":["{GX}"],"dry_run":true}`), 400, "unknown field", "dry_run"),
		r("`POST /v1/rebalance` misspelt field `{\"dryrun\":true}` (accepted, it would rebalance for real)", post("/v1/rebalance", `{"dryrun":true}`), 400, "unknown field", "dryrun"),
		r("`POST /v1/cluster/transfer-leadership` unknown field `{\"too\":\"config-1\"}`", post("/v1/cluster/transfer-leadership", `{"too":"config-1"}`), 400, "unknown field"),
		r("`POST /v1/guilds/G0/move` duplicate field `{\"to\":\"gateway-1\",\"to\":\"gateway-9\"}`", post("/v1/guilds/{G0}/move", `{"to":"gateway-1","to":"gateway-9"}`), 400, "duplicate", `"to"`),
		r("`POST /v1/guilds/G0/move` the same field in another case `{\"to\":\"gateway-1\",\"TO\":\"gateway-9\"}`", post("/v1/guilds/{G0}/move", `{"to":"gateway-1","TO":"gateway-9"}`), 400, "duplicate", `"TO"`),
		r("`POST /v1/shards/checkpoints` duplicate nested key (shard \"0\" twice)", post("/v1/shards/checkpoints",
			`{"pod":"gateway-0","checkpoints":{"0":{"session_id":"a","seq":1,"epoch":1},"0":{"session_id":"b","seq":2,"epoch":1}}}`), 400, "duplicate", `"0"`),
		r("`POST /v1/guilds` wrong type `{\"guild_ids\":\"GX\"}`", post("/v1/guilds", `{"guild_ids":"{GX}"}`), 400, "guild_ids", "string"),
		r("`POST /v1/guilds` ids as numbers `{\"guild_ids\":[GX]}`", post("/v1/guilds", `{"guild_ids":[{GX}]}`), 400, "guild_ids", "number"),
		r("`POST /v1/guilds/G0/move` wrong type `{\"to\":1}`", post("/v1/guilds/{G0}/move", `{"to":1}`), 400, "to", "number"),
		r("`POST /v1/guilds` empty body", toLeader(http.MethodPost, "/v1/guilds", []byte{}), 400, "empty"),
		r("`POST /v1/guilds` `null`", post("/v1/guilds", `null`), 400, "guild_ids"),
		r("`POST /v1/guilds` `{}`", post("/v1/guilds", `{}`), 400, "guild_ids is empty"),
		r("`POST /v1/guilds` body over the 4 MiB limit (GX listed 190,000 times)", func(e *env) answer {
			return e.send(req{method: http.MethodPost, url: e.configURL(e.leader()) + "/v1/guilds", body: bigPlace(e)})
		}, 413, "larger than 4194304 bytes"),
		r("`POST /v1/guilds/G0/move` two JSON values `{\"to\":\"gateway-1\"} {\"to\":\"gateway-1\"}`", post("/v1/guilds/{G0}/move", `{"to":"gateway-1"} {"to":"gateway-1"}`), 400, "more than one JSON value"),
		r("`POST /v1/guilds/G0/move` JSON then garbage `{\"to\":\"gateway-1\"}xyz`", post("/v1/guilds/{G0}/move", `{"to":"gateway-1"}xyz`), 400, "malformed JSON"),

		// Ids that are not snowflakes.
		r("`GET /v1/guilds/0`", get("/v1/guilds/0"), 400, "not a snowflake"),
		r("`GET /v1/guilds/-1`", get("/v1/guilds/-1"), 400, "not a snowflake"),
		r("`GET /v1/guilds/abc`", get("/v1/guilds/abc"), 400, "not a snowflake"),
		r("`GET /v1/guilds/18446744073709551616` (2^64)", get("/v1/guilds/"+twoTo64), 400, "not a snowflake"),
		r("`POST /v1/guilds` `{\"guild_ids\":[\"0\"]}`", post("/v1/guilds", `{"guild_ids":["0"]}`), 400, "not a snowflake"),
		r("`POST /v1/guilds` `{\"guild_ids\":[\"-1\"]}`", post("/v1/guilds", `{"guild_ids":["-1"]}`), 400, "not a snowflake"),
		r("`POST /v1/guilds` `{\"guild_ids\":[\"abc\"]}`", post("/v1/guilds", `{"guild_ids":["abc"]}`), 400, "not a snowflake"),
		r("`POST /v1/guilds` `{\"guild_ids\":[\"18446744073709551616\"]}` (2^64)", post("/v1/guilds", `{"guild_ids":["`+twoTo64+`"]}`), 400, "not a snowflake"),
		r("`POST /v1/guilds` a good id then a bad one `[\"GX\",\"abc\"]` (nothing placed)", post("/v1/guilds", `{"guild_ids":["{GX}","abc"]}`), 400, "not a snowflake"),
		r("`POST /v1/guilds/abc/move`", post("/v1/guilds/abc/move", `{"to":"gateway-1"}`), 400, "not a snowflake"),
		r("`GET /v1/guilds?after=abc`", get("/v1/guilds?after=abc"), 400, "after"),
		r("`GET /v1/guilds?limit=0`", get("/v1/guilds?limit=0"), 400, "limit"),
		r("`GET /v1/guilds?limit=abc`", get("/v1/guilds?limit=abc"), 400, "limit"),

		// Unknown guilds and pods.
		r("`GET /v1/guilds/GX` (never placed)", get("/v1/guilds/{GX}"), 404, "unknown guild"),
		r("`POST /v1/guilds/GX/move` `{\"to\":\"gateway-1\"}` (never placed)", post("/v1/guilds/{GX}/move", `{"to":"gateway-1"}`), 404, "unknown guild"),
		r("`GET /v1/guilds?pod=gateway-9`", get("/v1/guilds?pod=gateway-9"), 404, "unknown pod", "gateway-9"),
		r("`POST /v1/pods/gateway-9/heartbeat`", toLeader(http.MethodPost, "/v1/pods/gateway-9/heartbeat", nil), 404, "unknown pod", "gateway-9"),
		r("`POST /v1/pods/gateway-9/drain`", toLeader(http.MethodPost, "/v1/pods/gateway-9/drain", nil), 404, "unknown pod", "gateway-9"),

		// Invalid moves.
		r("move G0 to its owner `{\"to\":\"gateway-0\"}`", post("/v1/guilds/{G0}/move", `{"to":"gateway-0"}`), 409, "already owned by gateway-0"),
		r("move G0 to its owner by ordinal `{\"to\":\"0\"}`", post("/v1/guilds/{G0}/move", `{"to":"0"}`), 409, "already owned by gateway-0"),
		r("move G0 to an unknown pod `{\"to\":\"gateway-9\"}`", post("/v1/guilds/{G0}/move", `{"to":"gateway-9"}`), 404, "no pod", "gateway-9"),
		r("move G0 to an unknown ordinal `{\"to\":\"7\"}`", post("/v1/guilds/{G0}/move", `{"to":"7"}`), 404, "no pod", "7"),
		r("move G0 to the draining gateway-2", post("/v1/guilds/{G0}/move", `{"to":"gateway-2"}`), 400, "gateway-2", "draining"),
		r("move G0 without a target `{\"to\":\"\"}`", post("/v1/guilds/{G0}/move", `{"to":""}`), 400, `"to" is required`),

		// Checkpoints and identify slots: only the holder at its epoch.
		{component: cfgNode, input: "`POST /v1/shards/checkpoints` from shard 0's holder at an older epoch", want: 409, mention: []string{"stale"},
			do: func(e *env) answer {
				sl, err := e.shards()
				if err != nil {
					return answer{Err: err}
				}
				sh := sl.Shards[0]
				body := fmt.Sprintf(`{"pod":%q,"checkpoints":{"0":{"session_id":"forged","seq":1,"resume_url":"ws://x","epoch":%d}}}`, sh.Holder, sh.Epoch-1)
				return toLeader(http.MethodPost, "/v1/shards/checkpoints", []byte(body))(e)
			}},
		{component: cfgNode, input: "`POST /v1/shards/checkpoints` for shard 0 from a pod that does not hold it", want: 409, mention: []string{"does not hold shard 0"},
			do: func(e *env) answer {
				sl, err := e.shards()
				if err != nil {
					return answer{Err: err}
				}
				sh := sl.Shards[0]
				other := "gateway-0"
				if sh.Holder == other {
					other = "gateway-1"
				}
				body := fmt.Sprintf(`{"pod":%q,"checkpoints":{"0":{"session_id":"forged","seq":1,"resume_url":"ws://x","epoch":%d}}}`, other, sh.Epoch)
				return toLeader(http.MethodPost, "/v1/shards/checkpoints", []byte(body))(e)
			}},
		r("`POST /v1/shards/checkpoints` shard `\"abc\"`", post("/v1/shards/checkpoints", `{"pod":"gateway-0","checkpoints":{"abc":{"session_id":"a","seq":1,"epoch":1}}}`), 400, "shard", "abc"),
		r("`POST /v1/shards/checkpoints` shard `\"99\"` (4 shards)", post("/v1/shards/checkpoints", `{"pod":"gateway-0","checkpoints":{"99":{"session_id":"a","seq":1,"epoch":1}}}`), 400, "shard 99 out of range"),
		r("`POST /v1/shards/checkpoints` shard `\"-1\"`", post("/v1/shards/checkpoints", `{"pod":"gateway-0","checkpoints":{"-1":{"session_id":"a","seq":1,"epoch":1}}}`), 400, "out of range"),
		r("`POST /v1/shards/checkpoints` no checkpoints", post("/v1/shards/checkpoints", `{"pod":"gateway-0","checkpoints":{}}`), 400, "no checkpoints"),
		r("`POST /v1/shards/checkpoints` negative seq", post("/v1/shards/checkpoints", `{"pod":"gateway-0","checkpoints":{"0":{"session_id":"a","seq":-1,"epoch":1}}}`), 400, "seq"),
		r("`POST /v1/identify` from an unknown pod", post("/v1/identify", `{"pod":"gateway-9","shard":0,"max_concurrency":1}`), 409, "gateway-9"),
		r("`POST /v1/identify` shard 99 (4 shards)", post("/v1/identify", `{"pod":"gateway-0","shard":99,"max_concurrency":1}`), 400, "out of range"),
		r("`POST /v1/identify` shard -1", post("/v1/identify", `{"pod":"gateway-0","shard":-1,"max_concurrency":1}`), 400, "shard must be >= 0"),
		r("`POST /v1/identify` without a pod", post("/v1/identify", `{"shard":0}`), 400, "pod is required"),
		r("`POST /v1/identify` from an unknown pod reporting a budget of 5 left (accepted, it would stop every identify)",
			post("/v1/identify", `{"pod":"gateway-9","shard":0,"max_concurrency":1,"session_start_limit":{"total":1000,"remaining":5,"reset_after":1000,"max_concurrency":1}}`), 409, "gateway-9", "does not hold"),
		{component: cfgNode, input: "`POST /v1/identify` from shard 0's holder with an implausible budget report", want: 400, mention: []string{"not plausible"},
			do: func(e *env) answer {
				sl, err := e.shards()
				if err != nil {
					return answer{Err: err}
				}
				sh := sl.Shards[0]
				body := fmt.Sprintf(`{"pod":%q,"shard":0,"epoch":%d,"max_concurrency":1,"session_start_limit":{"total":10,"remaining":20}}`, sh.Holder, sh.Epoch)
				return toLeader(http.MethodPost, "/v1/identify", []byte(body))(e)
			}},

		// Pods and cluster membership.
		r("`POST /v1/pods` id with a space", post("/v1/pods", `{"id":"gateway 9","addr":"127.0.0.1:1","ordinal":9}`), 400, "spaces"),
		r("`POST /v1/pods` without an address", post("/v1/pods", `{"id":"gateway-9"}`), 400, "addr is required"),
		r("`POST /v1/pods` id without an ordinal", post("/v1/pods", `{"id":"gateway","addr":"127.0.0.1:1"}`), 400, "ordinal"),
		r("`POST /v1/pods` an ordinal already taken", post("/v1/pods", `{"id":"gateway-9","addr":"127.0.0.1:1","ordinal":0}`), 409, "ordinal 0 already belongs to gateway-0"),
		r("`POST /v1/pods` negative ordinal", post("/v1/pods", `{"id":"gateway-9","addr":"127.0.0.1:1","ordinal":-2}`), 400, "ordinal must be >= 0"),
		r("`POST /v1/cluster/join` raft_addr not host:port", post("/v1/cluster/join", `{"id":"config-9","raft_addr":"nowhere"}`), 400, "not host:port"),
		r("`POST /v1/cluster/join` without an id", post("/v1/cluster/join", `{"raft_addr":"127.0.0.1:1"}`), 400, "needs id"),
		r("`DELETE /v1/cluster/servers/config-9` (no such node)", toLeader(http.MethodDelete, "/v1/cluster/servers/config-9", nil), 404, "config-9"),
		r("`POST /v1/cluster/transfer-leadership` `{\"to\":\"config-9\"}`", post("/v1/cluster/transfer-leadership", `{"to":"config-9"}`), 404, "config-9"),

		// Watch positions.
		r("`GET /v1/watch?from=abc`", get("/v1/watch?from=abc"), 400, "from must be a revision"),
		r("`GET /v1/watch?from=-1`", get("/v1/watch?from=-1"), 400, "from must be a revision"),
		r("`GET /v1/watch?from=18446744073709551616` (2^64)", get("/v1/watch?from="+twoTo64), 400, "from must be a revision"),

		// Tokens, routes, methods.
		{component: cfgNode, input: "`GET /v1/status` without a token", want: 401, mention: []string{"missing bearer token"},
			do: func(e *env) answer {
				return e.send(req{method: http.MethodGet, url: e.configURL(e.leader()) + "/v1/status", noAuth: true})
			}},
		{component: cfgNode, input: "`POST /v1/guilds` `[\"GX\"]` with a wrong token", want: 401, mention: []string{"wrong bearer token"},
			do: func(e *env) answer {
				return e.send(req{method: http.MethodPost, url: e.configURL(e.leader()) + "/v1/guilds",
					body: []byte(e.expand(`{"guild_ids":["{GX}"]}`)), header: map[string]string{"Authorization": "Bearer nope"}})
			}},
		{component: cfgNode, input: "`POST /v1/guilds/G0/move` with `Authorization: Basic …`", want: 401, mention: []string{"wrong bearer token"},
			do: func(e *env) answer {
				return e.send(req{method: http.MethodPost, url: e.configURL(e.leader()) + e.expand("/v1/guilds/{G0}/move"),
					body: []byte(`{"to":"gateway-1"}`), header: map[string]string{"Authorization": "Basic YmVuY2g6dG9rZW4="}})
			}},
		r("`DELETE /v1/guilds`", toLeader(http.MethodDelete, "/v1/guilds", nil), 405, "method DELETE not allowed"),
		r("`GET /v1/nope`", get("/v1/nope"), 404, "no route"),

		// Through a follower, which forwards writes to the leader.
		r("via a follower: `POST /v1/guilds` malformed JSON", jsonTo(toFollower, http.MethodPost, "/v1/guilds", `{"guild_ids":`), 400, "malformed JSON"),
		r("via a follower: `POST /v1/guilds` unknown field", jsonTo(toFollower, http.MethodPost, "/v1/guilds", `{"guild_ids":["{GX}"],"x":1}`), 400, "unknown field"),
		r("via a follower: `POST /v1/guilds` body over 4 MiB", func(e *env) answer {
			return e.send(req{method: http.MethodPost, url: e.configURL(e.follower()) + "/v1/guilds", body: bigPlace(e)})
		}, 413, "larger than 4194304 bytes"),
		r("via a follower: move G0 to its owner", jsonTo(toFollower, http.MethodPost, "/v1/guilds/{G0}/move", `{"to":"gateway-0"}`), 409, "already owned"),
		r("via a follower: `GET /v1/guilds/abc?consistent=true`", toFollower(http.MethodGet, "/v1/guilds/abc?consistent=true", nil), 400, "not a snowflake"),
	}
	return rows
}
