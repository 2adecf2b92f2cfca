package badinput

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// fingerprint is what a refused request must not change: the map's content
// (read linearizably; the revision is left out, heartbeats and checkpoints
// move it), the leader and voters, every table of every pod's SQLite file,
// and how many requests the proxy forwarded.
type fingerprint struct {
	Map       string            // the map without revision and checkpoints
	Leader    string            // and the voters
	Tables    map[string]string // "gateway-0/messages" → row count and hash
	ProxyHits int64
}

// relaxed drops what an aborted move changes by design: guild epochs and
// revisions, and the fences (guild_epochs) of the pods.
func (f fingerprint) relaxed() fingerprint {
	var m mapContent
	_ = json.Unmarshal([]byte(f.Map), &m)
	for i := range m.Guilds {
		m.Guilds[i].Epoch, m.Guilds[i].Revision = 0, 0
	}
	b, _ := json.Marshal(m)
	out := fingerprint{Map: string(b), Leader: f.Leader, Tables: map[string]string{}, ProxyHits: f.ProxyHits}
	for k, v := range f.Tables {
		if !strings.HasSuffix(k, "/guild_epochs") {
			out.Tables[k] = v
		}
	}
	return out
}

type shardContent struct {
	Shard  int    `json:"shard"`
	Holder string `json:"holder"`
	Epoch  uint64 `json:"epoch"`
}

type mapContent struct {
	ShardCount  int              `json:"shard_count"`
	Pods        []fsm.Pod        `json:"pods"`
	Shards      []shardContent   `json:"shards"`
	Guilds      []fsm.Guild      `json:"guilds"`
	ConfigNodes []fsm.ConfigNode `json:"config_nodes"`
}

func (e *env) fingerprint() (fingerprint, error) {
	f := fingerprint{Tables: map[string]string{}, ProxyHits: e.proxyHits.Load()}
	var snap assignments.Snapshot
	var err error
	// Through an election (503), retried until a leader answers.
	_ = e.poll(15*time.Second, func() bool {
		err = e.sys.Client.Do(e.ctx, http.MethodGet, "/v1/snapshot?consistent=true", nil, &snap)
		return !assignments.IsUnavailable(err)
	})
	if err != nil {
		return f, fmt.Errorf("snapshot: %w", err)
	}
	m := mapContent{ShardCount: snap.ShardCount, Pods: snap.Pods, Guilds: snap.Guilds, ConfigNodes: snap.ConfigNodes}
	for _, s := range snap.Shards {
		m.Shards = append(m.Shards, shardContent{Shard: s.Shard, Holder: s.Holder, Epoch: s.Epoch})
	}
	sort.Slice(m.ConfigNodes, func(i, j int) bool { return m.ConfigNodes[i].ID < m.ConfigNodes[j].ID })
	b, _ := json.Marshal(m)
	f.Map = string(b)
	srv, err := e.sys.Client.Servers(e.ctx)
	if err != nil {
		return f, fmt.Errorf("servers: %w", err)
	}
	var voters []string
	for _, s := range srv {
		v := s.ID + "/" + s.Suffrage
		if s.Leader {
			v += "/leader"
		}
		voters = append(voters, v)
	}
	sort.Strings(voters)
	f.Leader = strings.Join(voters, ",")
	for i, cfg := range e.sys.Cfgs {
		db, err := e.sys.DB(i)
		if err != nil {
			return f, err
		}
		tables, err := tableNames(db)
		if err != nil {
			return f, fmt.Errorf("%s: %w", cfg.ID, err)
		}
		for _, t := range tables {
			h, err := tableHash(db, t)
			if err != nil {
				return f, fmt.Errorf("%s %s: %w", cfg.ID, t, err)
			}
			f.Tables[cfg.ID+"/"+t] = h
		}
	}
	return f, nil
}

func tableNames(db *sql.DB) ([]string, error) {
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// tableHash is "rows=N sha256=…" over every row of the table, order-free.
func tableHash(db *sql.DB, table string) (string, error) {
	rows, err := db.Query(`SELECT * FROM "` + table + `"`)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return "", err
	}
	var lines []string
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return "", err
		}
		var sb strings.Builder
		for _, v := range vals {
			if b, ok := v.([]byte); ok {
				v = string(b)
			}
			fmt.Fprintf(&sb, "%v\x1f", v)
		}
		lines = append(lines, sb.String())
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	sort.Strings(lines)
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
		h.Write([]byte{'\n'})
	}
	return fmt.Sprintf("rows=%d sha256=%s", len(lines), hex.EncodeToString(h.Sum(nil))[:16]), nil
}

// diff describes how b differs from a ("" when it does not).
func (a fingerprint) diff(b fingerprint) string {
	var out []string
	if a.Map != b.Map {
		out = append(out, "map: "+jsonDiff(a.Map, b.Map))
	}
	if a.Leader != b.Leader {
		out = append(out, fmt.Sprintf("voters: %s → %s", a.Leader, b.Leader))
	}
	keys := map[string]bool{}
	for k := range a.Tables {
		keys[k] = true
	}
	for k := range b.Tables {
		keys[k] = true
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		if a.Tables[k] != b.Tables[k] {
			out = append(out, fmt.Sprintf("%s: %s → %s", k, a.Tables[k], b.Tables[k]))
		}
	}
	// The identify budget is not compared: the pods' own identifies (a
	// session that reconnects under load) and a leader change move it while
	// a row runs. TestRefusedIdentifyLeavesTheBudgetAlone checks that a
	// refused identify leaves it alone.
	if a.ProxyHits != b.ProxyHits {
		out = append(out, fmt.Sprintf("the proxy forwarded %d request(s) to pods", b.ProxyHits-a.ProxyHits))
	}
	return strings.Join(out, "; ")
}

// jsonDiff shows the first place two JSON strings differ.
func jsonDiff(a, b string) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	from := max(0, i-80)
	return fmt.Sprintf("…%s… → …%s…", a[from:min(len(a), i+120)], b[from:min(len(b), i+120)])
}
