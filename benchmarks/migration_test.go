package benchmarks

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestMigrationSmoke runs the migration benchmarks at a small size: every
// move completes, the source keeps no copy and the rebalance evens the pods.
func TestMigrationSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole system")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Migration(ctx, MigrationOptions{Rows: []int{2000, 20000}, RebalanceGuilds: 40, RebalanceMessages: 2, LoadRows: 20000, LoadRate: 50})
	if err != nil {
		t.Fatal(err)
	}
	PrintMigration(os.Stdout, r)
	for _, m := range r.Moves {
		if m.TargetRows != int64(m.Rows)+1 || m.SourceRowsAfter != 0 {
			t.Errorf("move of %d rows: target has %d rows (want %d), source %d", m.Rows, m.TargetRows, m.Rows+1, m.SourceRowsAfter)
		}
	}
	if r.UnderLoad.Source.N == 0 || r.UnderLoad.Target.N == 0 {
		t.Errorf("no load writes measured during the move under load: %+v", r.UnderLoad)
	}
	if r.Rebalance.Failed != 0 {
		t.Errorf("%d rebalance moves failed", r.Rebalance.Failed)
	}
	lo, hi := 1<<30, 0
	for _, n := range r.Rebalance.After {
		lo, hi = min(lo, n), max(hi, n)
	}
	if len(r.Rebalance.After) != 4 || hi-lo > 1 {
		t.Errorf("guilds per pod after the rebalance: %v", r.Rebalance.After)
	}
}

// TestMigrationBench runs the full-size migration benchmarks (10k, 100k and
// 1M rows; 1000 guilds from 3 pods to 4) when MODBOT_MIGRATION_BENCH=1:
//
//	MODBOT_MIGRATION_BENCH=1 go test -run MigrationBench -v -timeout 30m ./benchmarks/
func TestMigrationBench(t *testing.T) {
	if os.Getenv("MODBOT_MIGRATION_BENCH") == "" {
		t.Skip("set MODBOT_MIGRATION_BENCH=1 to run the full-size migration benchmarks")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	r, err := Migration(ctx, MigrationOptions{})
	if err != nil {
		t.Fatal(err)
	}
	PrintMigration(os.Stdout, r)
}

// TestMoveUnderLoadBench runs only the move-under-load row (a 1M-row guild
// moving while other guilds on both pods take 200 writes/s) when
// MODBOT_MOVE_LOAD_BENCH=1:
//
//	MODBOT_MOVE_LOAD_BENCH=1 go test -run MoveUnderLoadBench -v -timeout 20m ./benchmarks/
func TestMoveUnderLoadBench(t *testing.T) {
	if os.Getenv("MODBOT_MOVE_LOAD_BENCH") == "" {
		t.Skip("set MODBOT_MOVE_LOAD_BENCH=1 to run the move-under-load benchmark")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	r, err := MoveUnderLoad(ctx, MigrationOptions{})
	if err != nil {
		t.Fatal(err)
	}
	PrintMoveUnderLoad(os.Stdout, r)
}
