// Package e2e runs the real components together on loopback, as package
// systest starts them: config nodes over Raft/TCP, the fake Discord speaking
// the real gateway and REST protocols, gateway pods with their own SQLite
// files, and the proxy.
package e2e

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/systest"
)

const token = systest.Token // the config nodes' and pods' bearer token

// system is systest.System (the whole of modbot in this process) with
// helpers that fail the test instead of returning errors.
type system struct {
	t *testing.T
	*systest.System
}

func quiet() *slog.Logger {
	if os.Getenv("MODBOT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newSystem starts 3 config nodes and the fake Discord with the given shard
// count; gateways are added with addGateway.
func newSystem(t *testing.T, shards int) *system {
	t.Helper()
	sys, err := systest.StartSystem(context.Background(), t.TempDir(), systest.SystemOptions{Shards: shards, Logger: quiet(), TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	return &system{t: t, System: sys}
}

func (s *system) addGateway() int {
	s.t.Helper()
	i, err := s.AddGateway()
	if err != nil {
		s.t.Fatal(err)
	}
	return i
}

func (s *system) startGateway(i int) {
	s.t.Helper()
	if err := s.StartGateway(i); err != nil {
		s.t.Fatal(err)
	}
}

func (s *system) killGateway(i int) { s.KillGateway(i) }

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
	if err := s.WaitSettled(context.Background(), d); err != nil {
		s.t.Fatal(err)
	}
}

// owner returns the guild's placement per the config nodes.
func (s *system) owner(g uint64) fsm.Guild {
	s.t.Helper()
	v, err := s.Owner(context.Background(), g)
	if err != nil {
		s.t.Fatalf("guild %d: %v", g, err)
	}
	return v.Guild
}

// rows counts a guild's rows of a table in gateway i's database, reading the
// SQLite file directly.
func (s *system) rows(i int, table string, guild uint64) int {
	s.t.Helper()
	var n int
	if err := s.db(i).QueryRow(`SELECT count(*) FROM `+table+` WHERE guild_id = ?`, int64(guild)).Scan(&n); err != nil {
		s.t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func (s *system) db(i int) *sql.DB {
	s.t.Helper()
	db, err := s.DB(i)
	if err != nil {
		s.t.Fatal(err)
	}
	return db
}

func (s *system) podIndex(id string) int {
	s.t.Helper()
	i := s.PodIndex(id)
	if i < 0 {
		s.t.Fatalf("no gateway %s", id)
	}
	return i
}

// fullSuite skips a long scenario in the inner loop (go test -short); make
// test runs it. The short tier keeps one test of each promise: every
// message lands once, slash commands, a move in dispatch order, a killed pod.
func fullSuite(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("long scenario: runs in the full suite (make test), not with -short")
	}
}
