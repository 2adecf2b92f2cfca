package chaos

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// The short tier runs in make test; the long one is
//
//	make chaos   (go test ./chaos/ -run . -timeout 6h -args -lin-runs 20 -lin-duration 40s -seeds 200)
var (
	linRuns     = flag.Int("lin-runs", 1, "linearizability runs (each a fresh cluster)")
	linDuration = flag.Duration("lin-duration", 0, "length of each linearizability run (default 25s, 12s in -short)")
	linClients  = flag.Int("lin-clients", 6, "concurrent clients per linearizability run")
	seeds       = flag.Int("seeds", 0, "chaos schedules to run (default 3, 1 in -short)")
	seedFlag    = flag.Uint64("seed", 0, "run only this chaos schedule seed (printed by a failing run)")
	firstSeed   = flag.Uint64("first-seed", 1, "first seed of -seeds consecutive seeds")
	keepDirs    = flag.Bool("keep", false, "keep data and logs of passing runs too")
	reportFile  = flag.String("report", "", "append a JSON line per run to this file (docs/reliability.md's figures)")
	raceBin     = flag.Bool("race-bin", false, "build the components with the race detector and fail a run whose logs report a race")
)

var modbotBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "chaos: %v (CI=true: a missing dependency is a failure)\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "chaos: skipping the fault harness: %v\n", err)
		os.Exit(m.Run()) // tests skip themselves
	}
	dir, err := os.MkdirTemp("", "modbot-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	modbotBin, err = Build(dir, *raceBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	Sweep(slog.Default())
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needHarness skips a test when the harness cannot run here (never in CI:
// TestMain fails first).
func needHarness(t *testing.T) {
	t.Helper()
	if modbotBin == "" {
		t.Skip("network namespaces unavailable (needs root and iproute2)")
	}
}

// runDir is a directory for one run's data and logs: removed when the test
// passes, kept (and named in the log) when it fails.
func runDir(t *testing.T, name string) string {
	t.Helper()
	base := os.Getenv("CHAOS_DIR")
	if base == "" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "modbot-chaos-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || *keepDirs {
			t.Logf("data and logs of %s kept in %s", name, dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func logsHint(dir string) string { return filepath.Join(dir, "logs") }

// noRaces fails the test if a component's log reports a data race.
func noRaces(t *testing.T, s *System) {
	t.Helper()
	if logs := s.RacesIn(); len(logs) > 0 {
		t.Errorf("data race reported in %v", logs)
	}
}
