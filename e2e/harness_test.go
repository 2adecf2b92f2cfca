// Package e2e runs the real components together on loopback: config nodes
// over Raft/TCP, the fake Discord speaking the real gateway and REST
// protocols, gateway pods with their own SQLite files, and (later) proxies.
package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/benchmarks"
	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode"
)

const token = "bench-token" // benchmarks.StartCluster's token

type system struct {
	t        *testing.T
	dir      string
	cluster  *benchmarks.Cluster
	discord  *fakediscord.Server
	discURL  string
	gwCfgs   []gatewaynode.Config
	gateways []*gatewaynode.Node
	client   *assignments.Client
	dbs      map[int]*sql.DB // read-only handles on the gateways' files
}

func quiet() *slog.Logger {
	if os.Getenv("MODBOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newSystem starts 3 config nodes and the fake Discord with the given shard
// count; gateways are added with addGateway.
func newSystem(t *testing.T, shards int) *system {
	t.Helper()
	ctx := context.Background()
	s := &system{t: t, dir: t.TempDir()}
	var err error
	s.cluster, err = benchmarks.StartCluster(ctx, filepath.Join(s.dir, "config"), 3, func(c *confignode.Config) {
		c.Shards = shards
		c.PodTimeout = 1500 * time.Millisecond
		c.IdentifyInterval = 50 * time.Millisecond
		c.Logger = quiet()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.cluster.Close)
	s.client = s.cluster.Client()
	s.discord, err = fakediscord.New(fakediscord.Config{
		Token: "fake-token", Shards: shards, MaxConcurrency: 16,
		IdentifyInterval: 50 * time.Millisecond, HeartbeatInterval: time.Second, Logger: quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.discURL, err = s.discord.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.discord.Close() })
	return s
}

func (s *system) addGateway() int {
	s.t.Helper()
	i := len(s.gwCfgs)
	cfg := gatewaynode.Config{
		ID: fmt.Sprintf("gateway-%d", i), Ordinal: -1, DataDir: filepath.Join(s.dir, fmt.Sprintf("gateway-%d", i)),
		HTTPAddr: freeAddr(s.t), ConfigURLs: s.cluster.URLs(), Token: token,
		DiscordToken: "fake-token", DiscordURL: s.discURL,
		HeartbeatInterval: 200 * time.Millisecond, CheckpointInterval: 200 * time.Millisecond,
		HandoffTimeout: 10 * time.Second, Logger: quiet().With("pod", fmt.Sprintf("gateway-%d", i)),
	}
	s.gwCfgs = append(s.gwCfgs, cfg)
	s.gateways = append(s.gateways, nil)
	s.startGateway(i)
	return i
}

func (s *system) startGateway(i int) {
	s.t.Helper()
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.gateways[i], err = gatewaynode.Start(s.gwCfgs[i])
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // the killed incarnation's port may linger
	}
	if err != nil {
		s.t.Fatalf("start gateway %d: %v", i, err)
	}
	n := s.gateways[i]
	s.t.Cleanup(func() { n.Kill() })
}

func (s *system) killGateway(i int) {
	s.gateways[i].Kill()
	s.gateways[i] = nil
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSettled waits until every shard is held by an active pod whose session
// is up, and every fake guild is placed.
func (s *system) waitSettled(d time.Duration) {
	s.t.Helper()
	ctx := context.Background()
	waitFor(s.t, d, "shards held and guilds placed", func() bool {
		st, err := s.client.Status(ctx)
		if err != nil || st.Guilds < len(s.discord.Guilds()) {
			return false
		}
		sl, err := s.client.Shards(ctx)
		if err != nil {
			return false
		}
		for _, sh := range sl.Shards {
			if sh.Holder == "" || sh.Checkpoint == nil || sh.Checkpoint.Holder != sh.Holder {
				return false
			}
		}
		for _, g := range s.gateways {
			if g != nil && !ready(g) {
				return false
			}
		}
		return true
	})
}

func ready(n *gatewaynode.Node) bool {
	resp, err := httpGet("http://" + n.Addr() + "/readyz")
	return err == nil && resp == 200
}

// owner returns the guild's owner per the leader.
func (s *system) owner(g uint64) fsm.Guild {
	s.t.Helper()
	v, err := s.client.Guild(context.Background(), strconv.FormatUint(g, 10))
	if err != nil {
		s.t.Fatalf("guild %d: %v", g, err)
	}
	return v.Guild
}

// rows counts a guild's rows of a table in gateway i's database, reading the
// SQLite file directly.
func (s *system) rows(i int, table string, guild uint64) int {
	s.t.Helper()
	db := s.db(i)
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM `+table+` WHERE guild_id = ?`, int64(guild)).Scan(&n); err != nil {
		s.t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func (s *system) db(i int) *sql.DB {
	s.t.Helper()
	if db, ok := s.dbs[i]; ok {
		return db
	}
	path := filepath.Join(s.gwCfgs[i].DataDir, "modbot.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro&_busy_timeout=5000")
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { db.Close() })
	if s.dbs == nil {
		s.dbs = map[int]*sql.DB{}
	}
	s.dbs[i] = db
	return db
}

func (s *system) podIndex(id string) int {
	for i, c := range s.gwCfgs {
		if c.ID == id {
			return i
		}
	}
	s.t.Fatalf("no gateway %s", id)
	return -1
}
