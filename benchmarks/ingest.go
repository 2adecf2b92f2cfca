package benchmarks

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/gatewaynode"
	"github.com/modbot/modbot/gatewaynode/bot"
	"github.com/modbot/modbot/systest"
)

// IngestOptions sizes the gateway ingest benchmark.
type IngestOptions struct {
	Messages  int // MESSAGE_CREATE events in total
	Guilds    int
	Shards    int
	Producers int
	// Rate paces the dispatches (events/s over all producers); 0 sends as
	// fast as the fake can. Latency is only meaningful below saturation.
	Rate float64
}

// IngestResult is one pod's sustained MESSAGE_CREATE rate into SQLite and
// the dispatch-to-committed latency.
type IngestResult struct {
	Messages int
	Duration time.Duration
	Latency  Percentiles
}

// EventsPerSecond is the sustained rate.
func (r IngestResult) EventsPerSecond() float64 { return float64(r.Messages) / r.Duration.Seconds() }

// Ingest runs one gateway pod (all shards, all guilds) against the fake
// Discord and measures from the moment a message is dispatched by the fake
// to the moment the pod has committed it to its SQLite (synchronous=FULL).
func Ingest(ctx context.Context, o IngestOptions) (IngestResult, error) {
	var res IngestResult
	dir, cleanup, err := systest.TempDir("ingest")
	if err != nil {
		return res, err
	}
	defer cleanup()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := systest.StartCluster(ctx, filepath.Join(dir, "config"), 3, func(cfg *confignode.Config) {
		cfg.Shards, cfg.IdentifyInterval = o.Shards, 50*time.Millisecond
	})
	if err != nil {
		return res, err
	}
	defer c.Close()
	fake, err := fakediscord.New(fakediscord.Config{Token: "fake-token", Shards: o.Shards, MaxConcurrency: 16,
		IdentifyInterval: 50 * time.Millisecond, Logger: quiet, HistoryLimit: o.Messages + 1000})
	if err != nil {
		return res, err
	}
	discURL, err := fake.Start("127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer fake.Close()
	guilds := fake.Seed(o.Guilds)

	sendAt := make([]time.Time, o.Messages)
	lat := make([]time.Duration, 0, o.Messages)
	var latMu sync.Mutex
	var committed atomic.Int64
	done := make(chan struct{})
	onCommit := func(evs []bot.Event) {
		now := time.Now()
		latMu.Lock()
		defer latMu.Unlock()
		for _, ev := range evs {
			if ev.Type != bot.EventMessageCreate {
				continue
			}
			var m struct {
				Content string `json:"content"`
			}
			if json.Unmarshal(ev.Data, &m) != nil || !strings.HasPrefix(m.Content, "b:") {
				continue
			}
			i, err := strconv.Atoi(m.Content[2:])
			if err != nil || i >= len(sendAt) {
				continue
			}
			lat = append(lat, now.Sub(sendAt[i]))
			if committed.Add(1) == int64(o.Messages) {
				close(done)
			}
		}
	}
	gw, err := systest.StartPod(gatewaynode.Config{ID: "gateway-0", Ordinal: -1, DataDir: filepath.Join(dir, "gateway-0"),
		ConfigURLs: c.URLs(), Token: systest.Token, DiscordToken: "fake-token", DiscordURL: discURL,
		Logger: quiet, OnCommit: onCommit})
	if err != nil {
		return res, err
	}
	defer gw.Close()
	// Wait until every guild is placed on the pod and every shard is up.
	if err := systest.Poll(ctx, 60*time.Second, "gateway ready", func() bool {
		return len(gw.Watcher().GuildsOwnedBy("gateway-0")) == len(guilds) && systest.Ready("http://"+gw.Addr())
	}); err != nil {
		return res, err
	}
	start := time.Now()
	var interval time.Duration
	if o.Rate > 0 {
		interval = time.Duration(float64(time.Second) / o.Rate)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, o.Producers)
	for p := 0; p < o.Producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.Messages {
					return
				}
				g := guilds[i%len(guilds)]
				if interval > 0 {
					if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
						time.Sleep(d) // pacing the load generator
					}
				}
				latMu.Lock()
				sendAt[i] = time.Now()
				latMu.Unlock()
				if _, err := fake.SendMessage(g.ID, 0, uint64(1000+i%97), "b:"+strconv.Itoa(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return res, fmt.Errorf("dispatch: %w", err)
	default:
	}
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		return res, fmt.Errorf("only %d of %d messages committed after 120s", committed.Load(), o.Messages)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.Duration = time.Since(start)
	res.Messages = o.Messages
	latMu.Lock()
	res.Latency = percentiles(lat)
	latMu.Unlock()
	return res, nil
}

// PrintIngest writes the gateway ingest table: max is the unpaced run
// (throughput), paced the run at the target rate (latency).
func PrintIngest(w io.Writer, max, paced IngestResult, rate float64) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY INGEST (1 pod, fake Discord → SQLite, synchronous=FULL)\tRESULT\tTARGET")
	fmt.Fprintf(tw, "MESSAGE_CREATE events/s, unpaced (%d events)\t%.0f\t>= 10000\n", max.Messages, max.EventsPerSecond())
	fmt.Fprintf(tw, "  dispatch → committed p50 / p99, unpaced (queueing included)\t%s / %s\t\n", ms(max.Latency.P50), ms(max.Latency.P99))
	fmt.Fprintf(tw, "dispatch → committed p50 at %.0f events/s (%d events)\t%s\t\n", rate, paced.Messages, ms(paced.Latency.P50))
	fmt.Fprintf(tw, "dispatch → committed p99 at %.0f events/s\t%s\t< 5 ms (seed: < 50 ms)\n", rate, ms(paced.Latency.P99))
	fmt.Fprintf(tw, "dispatch → committed max at %.0f events/s\t%s\t\n", rate, ms(paced.Latency.Max))
	_ = tw.Flush()
}
