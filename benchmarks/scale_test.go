package benchmarks

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestScaleSmoke runs the scale benchmark small (real config-node and proxy
// processes, 20,000 guilds) so its code stays working: every figure it
// reports is measured, not zero.
func TestScaleSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds bin/modbot and runs four processes")
	}
	bin := buildModbot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := Scale(ctx, ScaleOptions{ModbotBinary: bin, Guilds: 20_000, Batch: 5_000, RoutingTrials: 2})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ScaleMap(20_000, 5_000)
	if err != nil {
		t.Fatal(err)
	}
	PrintScale(os.Stdout, r, []ScaleMapResult{m})
	for name, v := range map[string]int64{
		"leader RSS": r.LeaderRSS[1], "follower RSS": r.FollowerRSS[1], "proxy RSS": r.ProxyRSS[1],
		"placement": int64(r.Place), "proxy catch-up": int64(r.ProxyCatchUp), "follower catch-up": int64(r.FollowerCatchUp),
		"snapshot bytes": int64(m.SnapshotBytes),
	} {
		if v <= 0 {
			t.Errorf("%s not measured: %d", name, v)
		}
	}
	if r.Routing.N != 2 || r.Routing.Max <= 0 {
		t.Errorf("routing trials: %+v", r.Routing)
	}
}
