package guildstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clockStore opens a store whose clock the test moves.
func clockStore(t testing.TB, name string, clock *atomic.Int64) *Store {
	t.Helper()
	s, err := OpenWithOptions(context.Background(), filepath.Join(t.TempDir(), name), Options{
		Synchronous: "NORMAL", Now: func() time.Time { return time.UnixMilli(clock.Load()).UTC() },
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// assertDashboardIsFresh reads each guild's dashboard twice through the
// cache and compares both with a read that skips it.
func assertDashboardIsFresh(t *testing.T, s *Store, guilds []uint64, when string) {
	t.Helper()
	ctx := context.Background()
	for _, g := range guilds {
		want, err := s.dashboard(ctx, g, s.opts.Now())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			got, err := s.Dashboard(ctx, g)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: guild %d's dashboard (read %d) is not what the database holds:\n got %+v\nwant %+v", when, g, i+1, got, want)
			}
			// A caller changing its answer changes nothing cached.
			got.TopAuthors = append(got.TopAuthors[:0], IDCount{ID: 1 << 60})
			got.Activity.MessagesHourly.Counts[0] = -1
			got.ModActionsByKind["scribbled"] = 1
		}
	}
}

// TestDashboardCacheAnswersWhatTheDatabaseHolds: after every step of a
// random sequence over three guilds — message, report and action units
// (some failing), settings, fences, held events and their drop, an import,
// a failover copy, a delete — and after the clock crosses an hour or a day
// with nothing written, each guild's dashboard equals a fresh read of the
// database, on its first and on its repeated read.
func TestDashboardCacheAnswersWhatTheDatabaseHolds(t *testing.T) {
	ctx := context.Background()
	guilds := []uint64{1, 2, 3}
	for seed := uint64(1); seed <= 4; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*104729))
		var clock atomic.Int64
		clock.Store(t0.Add(time.Hour).UnixMilli())
		s := clockStore(t, fmt.Sprintf("s%d.db", seed), &clock)
		other := clockStore(t, fmt.Sprintf("other%d.db", seed), &clock)
		for _, batch := range randomMessageUnits(rng, guilds, 8) {
			if _, err := other.ApplyBatch(ctx, batch); err != nil {
				t.Fatal(err)
			}
		}
		assertDashboardIsFresh(t, s, guilds, "empty")
		var epoch uint64 // every guild's, in both stores
		for step, batch := range randomMessageUnits(rng, guilds, 30) {
			g := guilds[rng.IntN(len(guilds))]
			what := "units"

			var err error
			switch rng.IntN(12) {
			case 0:
				what = "settings"
				_, err = s.Apply(ctx, Write{Epoch: epoch, Op: PutSettings{GuildID: g, ModRoleID: uint64(rng.IntN(50)), Version: snowflakeAt(t0, uint64(step)), UpdatedAt: t0}})
			case 1:
				what, epoch = "fence", epoch+1
				for _, st := range []*Store{other, s} { // every guild in both: other's copies still import
					for _, g := range guilds {
						err = errors.Join(err, st.Fence(ctx, g, epoch))
					}
				}
			case 2:
				what = "hold"
				_, err = s.Hold(ctx, g, "MESSAGE_CREATE", []byte(`{}`))
			case 3:
				what = "drop held"
				err = s.DropHeld(ctx, g, 1<<40)
			case 4:
				what = "import"
				data, info := exportOf(t, other, g)
				_, err = s.Import(ctx, g, bytes.NewReader(data), info.Checksum)
			case 5:
				what = "failover copy"
				_, err = s.ImportFrom(ctx, g, other)
			case 6:
				what = "delete"
				err = s.DeleteGuild(ctx, g, epoch)
			case 7:
				what = "an hour later"
				clock.Add(time.Hour.Milliseconds())
			case 8:
				what = "a day later"
				clock.Add(24 * time.Hour.Milliseconds())
			default:
				for i := range batch { // messages written at the epoch the guild is fenced at
					for j := range batch[i] {
						batch[i][j].Epoch = epoch
					}
				}
				_, err = s.ApplyBatch(ctx, batch)
			}
			if err != nil {
				t.Fatalf("seed %d step %d (%s): %v", seed, step, what, err)
			}
			assertDashboardIsFresh(t, s, guilds, fmt.Sprintf("seed %d, after step %d (%s)", seed, step, what))
		}
	}
}

// TestDashboardReadsItsOwnWritesUnderConcurrentCommits: while readers keep
// filling the cache and another guild's writes keep committing, every
// dashboard read made after an Apply returned counts that Apply's message,
// and no read ever goes back.
func TestDashboardReadsItsOwnWritesUnderConcurrentCommits(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := openFuzzStore(t, "pod.db")
	const writes = 300
	var wg sync.WaitGroup
	var written atomic.Int64 // messages of guild 1 whose Apply returned
	errs := make(chan error, 8)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last int64
			for ctx.Err() == nil {
				floor := written.Load()
				d, err := s.Dashboard(ctx, 1)
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				if d.Messages < floor || d.Messages < last {
					errs <- fmt.Errorf("reader %d: %d messages, after %d had been written and %d read", r, d.Messages, floor, last)
					return
				}
				last = d.Messages
			}
		}()
	}
	wg.Add(1)
	go func() { // another guild's commits, marking only guild 2
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			if _, err := s.Apply(ctx, Write{Op: MessageCreate{GuildID: 2, MessageID: uint64(1 + i), ChannelID: 1, AuthorID: 1, CreatedAt: t0}}); err != nil && ctx.Err() == nil {
				errs <- err
				return
			}
		}
	}()
	for i := range writes {
		mustApply(t, s, Write{Op: MessageCreate{GuildID: 1, MessageID: uint64(1 + i), ChannelID: 1, AuthorID: 1, CreatedAt: t0}})
		written.Store(int64(i + 1))
		d, err := s.Dashboard(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if d.Messages != int64(i+1) {
			t.Fatalf("after write %d returned the dashboard counts %d messages", i+1, d.Messages)
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
	}
	cancel()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// holdDashboardPool takes every dashboard read connection; release gives
// them back (once).
func holdDashboardPool(t *testing.T, s *Store) (release func()) {
	t.Helper()
	var held []*readConn
	for range cap(s.dash.free) {
		c, err := s.dash.get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, c := range held {
				s.dash.put(c, false)
			}
		})
	}
}

// TestDashboardCacheSparesTheDatabaseWhenNothingChanged: repeated reads
// of an unchanged guild run no read transaction, while another guild's
// writes do not make it read again.
func TestDashboardCacheSparesTheDatabaseWhenNothingChanged(t *testing.T) {
	ctx := context.Background()
	s := openFuzzStore(t, "pod.db")
	mustApply(t, s, sampleWrites(1, 0)...)
	if _, err := s.Dashboard(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// With the dashboard's pool taken, a read that needs the database waits.
	release := holdDashboardPool(t, s)
	defer release()
	mustApply(t, s, sampleWrites(2, 0)...)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	for range 100 {
		if _, err := s.Dashboard(short, 1); err != nil {
			t.Fatalf("an unchanged guild's dashboard went to the database: %v", err)
		}
	}
	if _, err := s.Dashboard(short, 2); err == nil {
		t.Fatal("a changed guild's dashboard was answered without reading it")
	}
}

// TestConcurrentDashboardMissesReadTheDatabaseOnce: sixteen loads of a
// guild just written to, arriving while the first one's read waits for a
// connection, make one read transaction between them, and each gets what
// the database holds.
func TestConcurrentDashboardMissesReadTheDatabaseOnce(t *testing.T) {
	ctx := context.Background()
	s := openFuzzStore(t, "pod.db")
	mustApply(t, s, sampleWrites(1, 0)...)
	release := holdDashboardPool(t, s)
	before := s.dc.reads.Load()
	got := make([]Dashboard, 16)
	errs := make([]error, 16)
	var wg sync.WaitGroup
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = s.Dashboard(ctx, 1)
		}()
	}
	time.Sleep(100 * time.Millisecond) // all sixteen are waiting
	release()
	wg.Wait()
	if n := s.dc.reads.Load() - before; n != 1 {
		t.Fatalf("16 concurrent loads made %d read transactions, want 1", n)
	}
	want, err := s.dashboard(ctx, 1, s.opts.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !reflect.DeepEqual(got[i], want) {
			t.Fatalf("load %d: %+v, want %+v", i, got[i], want)
		}
	}
}
