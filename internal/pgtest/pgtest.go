// Package pgtest gives a test a real PostgreSQL (internal/pgserver) in its
// temporary directory. Without the server binaries the test is skipped, with
// a message, except in CI (CI=true), where that is a failure.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modbot/modbot/internal/pgserver"
)

// Start starts a server of the test's own, stopped at cleanup.
func Start(t testing.TB) *pgserver.Server {
	t.Helper()
	if err := pgserver.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no PostgreSQL server: %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	s, err := pgserver.Start(context.Background(), pgserver.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = s.Kill() })
	return s
}

var dbSeq atomic.Int64

// Database creates a fresh database on s and returns its URL.
func Database(t testing.TB, s *pgserver.Server) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", dbSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "_", "#", "_", " ", "_").Replace(t.Name())))
	if len(name) > 60 {
		name = name[:60]
	}
	u, err := s.CreateDatabase(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
