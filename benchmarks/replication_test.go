package benchmarks

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestReplicationSmoke runs a tiny replication benchmark so the code stays
// working; MODBOT_REPL_BENCH=1 runs the full-size one and prints the table.
func TestReplicationSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds bin/modbot and runs the sidecar")
	}
	bin := buildModbot(t)
	o := ReplicationOptions{ModbotBinary: bin, Rates: []int{500}, Duration: 3 * time.Second, RestoreMB: []int{5}}
	if os.Getenv("MODBOT_REPL_BENCH") == "1" {
		o = ReplicationOptions{ModbotBinary: bin}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r, err := Replication(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	PrintReplication(os.Stdout, r)
	if len(r.Lag) == 0 || len(r.Restores) != 2*max(1, len(o.RestoreMB)) {
		t.Fatalf("got %+v", r)
	}
}

// buildModbot builds the modbot binary the process benchmarks run.
func buildModbot(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "modbot")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/modbot/modbot/cmd/modbot").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
