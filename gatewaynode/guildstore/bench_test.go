package guildstore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkApplyMessageCreate pushes MESSAGE_CREATE writes through the
// group-commit writer from 8 concurrent producers (each Apply waits for its
// commit) and reports throughput and dispatch-to-committed latency.
func BenchmarkApplyMessageCreate(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("sync="+sync, func(b *testing.B) { benchApply(b, sync, 8) })
	}
}

// BenchmarkApplyIngestShape is the ingest benchmark's traffic without the
// gateway: 64 producers (so commits hold dozens of events), 50 guilds, 97
// authors, one channel.
func BenchmarkApplyIngestShape(b *testing.B) {
	ingestShape = true
	defer func() { ingestShape = false }()
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("sync="+sync, func(b *testing.B) { benchApply(b, sync, 64) })
	}
}

var ingestShape bool

func benchApply(b *testing.B, syncMode string, producers int) {
	ctx := context.Background()
	s, err := OpenWithOptions(ctx, filepath.Join(b.TempDir(), "bench.db"), Options{Synchronous: syncMode, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				id := uint64(i + 1)
				t := time.Now()
				op := MessageCreate{GuildID: 1 + id%16, MessageID: id, ChannelID: id % 50, AuthorID: id % 1000, CreatedAt: t, ContentLength: 42}
				if ingestShape {
					op.GuildID, op.ChannelID, op.AuthorID = 1+id%50, 1, 1000+id%97
				}
				_, err := s.Apply(ctx, Write{Epoch: 1, Op: op})
				lat[i] = time.Since(t)
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	st := s.Stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(st.Requests)/float64(max(st.Commits, 1)), "events/commit")
}

const benchRows = 100_000

func seedMessages(b *testing.B, s *Store, g uint64, n int) {
	b.Helper()
	ctx := context.Background()
	const chunk = 5000
	for i := 0; i < n; i += chunk {
		unit := make([]Write, 0, chunk)
		for j := i; j < min(n, i+chunk); j++ {
			id := uint64(j + 1)
			unit = append(unit, Write{Op: MessageCreate{GuildID: g, MessageID: id, ChannelID: id % 50, AuthorID: id % 1000,
				CreatedAt: t0.Add(time.Duration(j) * time.Millisecond), ContentLength: int(id % 300)}})
		}
		if _, err := s.Apply(ctx, unit...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExport exports a guild of 100k message rows. ns/op is per row.
func BenchmarkExport(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, "src.db")
	seedMessages(b, s, 1, benchRows)
	var buf bytes.Buffer
	rounds := (b.N + benchRows - 1) / benchRows
	b.ResetTimer()
	start := time.Now()
	for r := 0; r < rounds; r++ {
		buf.Reset()
		if _, err := s.Export(ctx, 1, &buf); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(rounds*benchRows)/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(buf.Len())/benchRows, "bytes/row")
}

// BenchmarkImport imports (replacing) a guild of 100k message rows in one
// transaction with checksum verification. ns/op is per row.
func BenchmarkImport(b *testing.B) {
	ctx := context.Background()
	src, dst := openTest(b, "src.db"), openTest(b, "dst.db")
	seedMessages(b, src, 1, benchRows)
	var buf bytes.Buffer
	info, err := src.Export(ctx, 1, &buf)
	if err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	rounds := (b.N + benchRows - 1) / benchRows
	b.ResetTimer()
	start := time.Now()
	for r := 0; r < rounds; r++ {
		if _, err := dst.Import(ctx, 1, bytes.NewReader(data), info.Checksum); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(rounds*benchRows)/elapsed.Seconds(), "rows/s")
}

// BenchmarkHeldDrain drains a held buffer of 20k events the way the outbox
// does — read a page of 1000, deliver it (nothing here), drop it — reading
// pages with HeldPage (linear) or the whole buffer each round (the removed
// Held, quadratic). ns/op is per event drained.
func BenchmarkHeldDrain(b *testing.B) {
	const events, page = 20_000, 1000
	for _, mode := range []string{"page", "whole"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			s := openTest(b, "held.db")
			payload := bytes.Repeat([]byte("x"), 300)
			rounds := (b.N + events - 1) / events
			var elapsed time.Duration
			for r := 0; r < rounds; r++ {
				b.StopTimer()
				unit := make([]Write, events)
				for i := range unit {
					unit[i] = Write{Op: HoldEvent{GuildID: 1, Type: "MESSAGE_CREATE", Payload: payload, ReceivedAt: t0}}
				}
				if _, err := s.Apply(ctx, unit...); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				var after int64
				for {
					var hs []HeldEvent
					var err error
					if mode == "page" {
						hs, err = s.HeldPage(ctx, 1, after, page)
					} else {
						hs, err = s.heldPage(ctx, 1, 0, -1) // LIMIT -1: the whole buffer
						hs = hs[:min(len(hs), page)]
					}
					if err != nil {
						b.Fatal(err)
					}
					if len(hs) == 0 {
						break
					}
					after = hs[len(hs)-1].Seq
					if err := s.DropHeld(ctx, 1, after); err != nil {
						b.Fatal(err)
					}
				}
				elapsed += time.Since(start)
			}
			b.ReportMetric(float64(rounds*events)/elapsed.Seconds(), "events/s")
		})
	}
}

// BenchmarkDashboard reads the dashboard of a guild of 1,000 and of 100,000
// messages from 16 goroutines (the dashboard benchmark's clients), without
// the HTTP page around it: reads/s is the store's share of issue 18's target.
func BenchmarkDashboard(b *testing.B) {
	for _, n := range []int{1000, benchRows} {
		// cached: the page reloaded with nothing written (dashcache.go);
		// read: every load a read transaction, as after each write.
		for _, mode := range []string{"cached", "read"} {
			b.Run(fmt.Sprintf("messages=%d/%s", n, mode), func(b *testing.B) {
				ctx := context.Background()
				s := openTest(b, "dash.db")
				seedMessages(b, s, 1, n)
				b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
				b.ResetTimer()
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						var err error
						if mode == "cached" {
							_, err = s.Dashboard(ctx, 1)
						} else {
							_, err = s.dashboard(ctx, 1, s.opts.Now())
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "reads/s")
			})
		}
	}
}
