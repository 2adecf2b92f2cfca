package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// TestControlPlaneIsLinearizableUnderFaults: clients place, move and read
// guilds (and drain a pod) against three config nodes — separate processes
// in their own network namespaces — while a nemesis kills (-9), pauses
// (SIGSTOP) and partitions the leader and followers, symmetric and one way.
// Porcupine checks the history against the guild map's model (model.go).
func TestControlPlaneIsLinearizableUnderFaults(t *testing.T) {
	needHarness(t)
	d := *linDuration
	if d == 0 {
		d = 25 * time.Second
		if testing.Short() {
			d = 12 * time.Second
		}
	}
	total := &linResult{Faults: &Counter{}}
	for run := 0; run < *linRuns; run++ {
		seed := uint64(time.Now().UnixNano())
		r := linRun(t, run, seed, d)
		total.add(r)
		t.Logf("run %d (seed %d): %d operations checked (%d of unknown outcome), faults: %s; result %s in %s",
			run, seed, r.Ops, r.Unknown, r.Faults.String(), r.Result, r.CheckTime.Round(time.Millisecond))
		report(t, "linearizability", r)
		if r.Result == porcupine.Illegal {
			t.Fatalf("run %d: the history is not linearizable (visualization: %s)", run, r.Visualization)
		}
		if t.Failed() {
			return
		}
	}
	t.Logf("linearizability: %d runs, %d operations checked, %d faults (%s), %d violations, %d partitions unknown",
		*linRuns, total.Ops, total.Faults.Total(), total.Faults.String(), total.Violations, total.Undecided)
	if total.Ops < 200*(*linRuns) {
		t.Fatalf("only %d operations in %d runs: the clients did not get through", total.Ops, *linRuns)
	}
}

type linResult struct {
	Seed          uint64
	Ops           int
	Unknown       int
	Faults        *Counter `json:"-"`
	FaultText     string   `json:"faults"`
	Result        porcupine.CheckResult
	Violations    int
	Undecided     int
	CheckTime     time.Duration
	Visualization string `json:",omitempty"`
}

func (t *linResult) add(r *linResult) {
	t.Ops += r.Ops
	t.Unknown += r.Unknown
	t.Faults.Merge(r.Faults)
	if r.Result == porcupine.Illegal {
		t.Violations++
	}
	if r.Result == porcupine.Unknown {
		t.Undecided++
	}
}

func linRun(t *testing.T, run int, seed uint64, d time.Duration) *linResult {
	dir := runDir(t, fmt.Sprintf("lin%d", run))
	ctx, cancel := context.WithTimeout(context.Background(), d+3*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{Bin: modbotBin, Dir: dir, Gateways: 3, Guilds: 4})
	if err != nil {
		t.Fatalf("start the system (logs in %s): %v", logsHint(dir), err)
	}
	defer s.Close()
	defer noRaces(t, s)
	rng := rand.New(rand.NewPCG(seed, 0))
	rec := NewRecorder()
	var clients []*Client
	for i := 0; i < *linClients; i++ {
		c, err := NewClient(i, s, rec, seed)
		if err != nil {
			t.Fatal(err)
		}
		c.Drains = true
		clients = append(clients, c)
	}
	runCtx, stop := context.WithTimeout(ctx, d)
	defer stop()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Run(runCtx, uint64(run+1)<<30|uint64(i)<<20)
		}()
	}
	// One drain per run, at a random time: the leader then starts moves
	// of its own to empty the pod.
	drainAt := jitter(rng, d/4, d*3/4)                    // drawn here: rng is the nemesis's
	drainer, err := NewClient(len(clients), s, rec, seed) // a client of its own: a Client is not shared
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if sleep(runCtx, drainAt) {
			drainer.Drain(s.Gateways[len(s.Gateways)-1].Name)
		}
	}()
	nem := &ControlNemesis{S: s, Rng: rng, Log: t.Logf}
	nem.Run(runCtx)
	wg.Wait()
	// Heal everything (a killed node restarts in its heal), then let the
	// cluster settle so that pending operations resolve.
	ops := rec.Ops()
	r := &linResult{Seed: seed, Ops: len(ops), Faults: &nem.Faults}
	r.FaultText = r.Faults.String()
	for _, op := range ops {
		if op.Return == pending {
			r.Unknown++
		}
	}
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(Model(true), ops, 2*time.Minute)
	r.CheckTime = time.Since(start)
	r.Result = res
	if res == porcupine.Illegal {
		r.Violations = 1
		r.Visualization = filepath.Join(dir, "linearizability.html")
		if err := porcupine.VisualizePath(Model(true), info, r.Visualization); err != nil {
			t.Logf("write the visualization: %v", err)
		}
	}
	return r
}

// report appends one JSON line for the run to -report.
func report(t *testing.T, kind string, v any) {
	if *reportFile == "" {
		return
	}
	b, err := json.Marshal(map[string]any{"kind": kind, "at": time.Now().UTC().Format(time.RFC3339), "run": v})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(*reportFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\n", b)
}
