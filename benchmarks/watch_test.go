package benchmarks

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestWatchLatencySmoke runs the watch benchmark at toy size so that it keeps
// working; the real loads run only as benchmarks.
func TestWatchLatencySmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rs, err := WatchLatency(ctx, []int{1, 3}, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Latency.N != r.Watchers*r.Writes {
			t.Fatalf("%d watchers: %d samples, want %d", r.Watchers, r.Latency.N, r.Watchers*r.Writes)
		}
	}
	var b strings.Builder
	PrintWatchTable(&b, rs)
	t.Log("\n" + b.String())
}

func benchmarkWatch(b *testing.B, watchers int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	writes := 100
	var last []WatchResult
	for i := 0; i < b.N; i++ {
		rs, err := WatchLatency(ctx, []int{watchers}, writes)
		if err != nil {
			b.Fatal(err)
		}
		last = rs
	}
	r := last[0]
	b.ReportMetric(float64(r.Latency.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(r.Latency.P99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(r.Latency.Max.Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(r.HeapPerWatcher)/1024, "heap-KiB/watcher")
	PrintWatchTable(os.Stdout, last)
}

// go test -run '^$' -bench BenchmarkWatch -benchtime 1x ./benchmarks/
func BenchmarkWatch1(b *testing.B)    { benchmarkWatch(b, 1) }
func BenchmarkWatch100(b *testing.B)  { benchmarkWatch(b, 100) }
func BenchmarkWatch1000(b *testing.B) { benchmarkWatch(b, 1000) }
