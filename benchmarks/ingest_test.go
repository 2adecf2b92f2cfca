package benchmarks

import (
	"context"
	"os"
	"testing"
)

// BenchmarkGatewayIngest: go test -run '^$' -bench GatewayIngest -benchtime 1x ./benchmarks/
func BenchmarkGatewayIngest(b *testing.B) {
	for b.Loop() {
		r, err := Ingest(context.Background(), IngestOptions{Messages: 50000, Guilds: 50, Shards: 4, Producers: 4})
		if err != nil {
			b.Fatal(err)
		}
		p, err := Ingest(context.Background(), IngestOptions{Messages: 30000, Guilds: 50, Shards: 4, Producers: 4, Rate: 10000})
		if err != nil {
			b.Fatal(err)
		}
		PrintIngest(os.Stdout, r, p, 10000)
		b.ReportMetric(r.EventsPerSecond(), "events/s")
		b.ReportMetric(float64(p.Latency.P99.Microseconds())/1000, "paced-p99-ms")
	}
}

// TestIngestSmoke runs the ingest path with a small load so go test catches
// a broken benchmark.
func TestIngestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	r, err := Ingest(context.Background(), IngestOptions{Messages: 500, Guilds: 5, Shards: 2, Producers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if r.Messages != 500 || r.Latency.N != 500 {
		t.Fatalf("committed %d, latency samples %d", r.Messages, r.Latency.N)
	}
}
