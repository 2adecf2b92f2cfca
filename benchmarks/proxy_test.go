package benchmarks

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestProxyComparisonSmoke runs a tiny comparison so the bench code stays
// working; MODBOT_PROXY_BENCH=1 runs the full-size one and prints the table.
func TestProxyComparisonSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a config node and nginx")
	}
	o := ProxyBenchOptions{Requests: 500, Warmup: 100, Concurrency: 4}
	if os.Getenv("MODBOT_PROXY_BENCH") == "1" {
		o = ProxyBenchOptions{ModbotBinary: os.Getenv("MODBOT_BIN")}
	}
	if findNginx("") == "" {
		t.Setenv("CI", "false") // the smoke test does not require nginx; make bench does under CI
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := ProxyComparison(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	PrintProxyComparison(os.Stdout, res)
	if len(res) < 3 {
		t.Fatalf("got %d results", len(res))
	}
}
