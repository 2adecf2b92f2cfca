package benchmarks

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The REST benchmark at a small size: its table is filled, and the cluster
// it measures stays within Discord's global limit without a 429.
func TestRESTBenchmarkRunsAndStaysWithinTheLimit(t *testing.T) {
	r, err := REST(context.Background(), RESTOptions{Pods: 3, FloodPosts: 60, SteadyPods: 2, SteadyFor: 3 * time.Second, LimiterTrials: 100})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	PrintREST(&b, r)
	t.Log("\n" + b.String())
	// Exact figures need a quiet machine (docs/benchmarks.md); here, beside
	// other tests, the in-process fake's stalls can bunch a few requests
	// (see TestGatewayPodsTogetherStayWithinTheGlobalLimit).
	if r.FloodPerSecond <= 0 || r.GlobalLimit != 50 || r.FloodMaxInSecond > r.GlobalLimit*11/10 || r.Flood429s > 5 || r.Steady429s > 5 {
		t.Fatalf("%+v", r)
	}
	if r.SteadyAchieved < 0.5*r.SteadyRate {
		t.Fatalf("the 80 %% run achieved %.1f posts/s of %.0f asked", r.SteadyAchieved, r.SteadyRate)
	}
}
