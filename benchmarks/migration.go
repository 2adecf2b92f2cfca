package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/systest"
)

// MigrationOptions sizes the migration benchmarks.
type MigrationOptions struct {
	// Rows are the guild sizes (message rows) whose move is timed, in
	// increasing order; default 10k, 100k, 1M. The guild grows between
	// sizes and moves back and forth between two pods.
	Rows []int
	// InsertBatch is how many rows go in one transaction when filling the
	// guild (default 5000).
	InsertBatch int
	// RebalanceGuilds is the number of guilds spread from 3 pods to 4
	// (default 1000); RebalanceMessages is how many messages each gets
	// through the fake Discord first (default 5).
	RebalanceGuilds   int
	RebalanceMessages int
	// MaxMoves and MaxMovesPerPod cap a rebalance's concurrent moves (the
	// config node's defaults, 8 and 2, when zero).
	MaxMoves, MaxMovesPerPod int
	// LoadRows is the size (message rows) of the guild moved while other
	// guilds on both pods take writes (default 1M); LoadRate is those
	// writes per second on each pod (default 200).
	LoadRows, LoadRate int
}

func (o *MigrationOptions) defaults() {
	if len(o.Rows) == 0 {
		o.Rows = []int{10_000, 100_000, 1_000_000}
	}
	if o.InsertBatch <= 0 {
		o.InsertBatch = 5000
	}
	if o.RebalanceGuilds <= 0 {
		o.RebalanceGuilds = 1000
	}
	if o.RebalanceMessages <= 0 {
		o.RebalanceMessages = 5
	}
	if o.LoadRows <= 0 {
		o.LoadRows = 1_000_000
	}
	if o.LoadRate <= 0 {
		o.LoadRate = 200
	}
}

// MoveResult is one timed guild move.
type MoveResult struct {
	Rows int
	From string
	To   string
	// Insert is how long filling the guild took (not part of the move).
	Insert time.Duration
	// MoveTime runs from the move command (POST /v1/guilds/{id}/move) to
	// the guild being active on the target in the target's map.
	MoveTime time.Duration
	// HeldWait runs from the moment StartMove committed to the moment the
	// target has stored a message dispatched right then: the longest any
	// of the guild's events waited because of the move.
	HeldWait time.Duration
	// FSMWindow is the leader's started→completed window (its clock):
	// from StartMove to CompleteMove as recorded in the map.
	FSMWindow time.Duration
	// SourceRowsAfter is the source's message rows once it dropped its copy.
	SourceRowsAfter int64
	TargetRows      int64
}

// RebalanceResult is one rebalance of many guilds onto a new pod.
type RebalanceResult struct {
	Guilds   int
	Moves    int
	Failed   int
	Duration time.Duration // POST /v1/rebalance → the job finished
	Before   map[string]int
	After    map[string]int
}

// MigrationResult is what `make bench` prints for issue 7.
type MigrationResult struct {
	Moves     []MoveResult
	UnderLoad MoveUnderLoadResult
	Rebalance RebalanceResult
}

// Migration runs both migration benchmarks on loopback.
func Migration(ctx context.Context, o MigrationOptions) (MigrationResult, error) {
	o.defaults()
	var res MigrationResult
	var err error
	if res.Moves, err = MoveTimes(ctx, o); err != nil {
		return res, fmt.Errorf("move time: %w", err)
	}
	Settle() // the timed moves' garbage is not the loaded move's
	if res.UnderLoad, err = MoveUnderLoad(ctx, o); err != nil {
		return res, fmt.Errorf("move under load: %w", err)
	}
	if res.Rebalance, err = RebalanceTime(ctx, o); err != nil {
		return res, fmt.Errorf("rebalance time: %w", err)
	}
	return res, nil
}

// Settle collects garbage and returns freed memory to the OS, so a
// benchmark does not pay for the one before it in this process (a 1M-row
// move's leftovers put ~7 ms on the next move's write p99).
func Settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// MoveTimes times the move of one guild holding each of o.Rows message
// rows, between two gateway pods of a whole loopback system (3 config nodes
// with fsync, the fake Discord, SQLite with synchronous=FULL).
func MoveTimes(ctx context.Context, o MigrationOptions) ([]MoveResult, error) {
	o.defaults()
	dir, cleanup, err := systest.TempDir("move")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	s, err := systest.StartSystem(ctx, dir, systest.SystemOptions{Shards: 1, Gateways: 1})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	guilds := s.Discord.Seed(1)
	g := guilds[0].ID
	if err := s.WaitSettled(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	if _, err := s.AddGateway(); err != nil {
		return nil, err
	}
	if err := s.WaitSettled(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	var out []MoveResult
	have := 0
	nextID := uint64(1 << 40)
	for _, rows := range o.Rows {
		v, err := s.Owner(ctx, g)
		if err != nil {
			return out, err
		}
		from := s.PodIndex(v.Owner)
		to := 1 - from
		r := MoveResult{Rows: rows, From: s.Cfgs[from].ID, To: s.Cfgs[to].ID}
		start := time.Now()
		if err := s.InsertMessages(ctx, from, g, nextID, rows-have, o.InsertBatch); err != nil {
			return out, err
		}
		nextID += uint64(rows - have)
		have = rows
		r.Insert = time.Since(start)
		if err := timeMove(ctx, s, g, from, to, &r); err != nil {
			return out, fmt.Errorf("%d rows: %w", rows, err)
		}
		have++ // the probe message
		out = append(out, r)
	}
	return out, nil
}

func timeMove(ctx context.Context, s *systest.System, g uint64, from, to int, r *MoveResult) error {
	tgt := s.Gateways[to]
	db, err := s.DB(to)
	if err != nil {
		return err
	}
	// The leader stamps its clock into every change: StartMove's and
	// CompleteMove's times give the window the map recorded.
	changes, unsubscribe := tgt.Watcher().Subscribe(4096)
	window := make(chan time.Duration, 1)
	go func() {
		var startAt int64
		for ch := range changes {
			for _, ev := range ch.Events {
				if ev.Guild == nil || ev.Guild.ID != g {
					continue
				}
				switch ev.Cause {
				case fsm.CmdStartMove:
					startAt = ev.At
				case fsm.CmdCompleteMove, fsm.CmdAbortMove:
					if startAt != 0 {
						select {
						case window <- time.Duration(ev.At-startAt) * time.Millisecond:
						default:
						}
					}
				}
			}
		}
	}()
	defer unsubscribe()

	start := time.Now()
	mv, err := s.Client.Move(ctx, strconv.FormatUint(g, 10), s.Cfgs[to].ID)
	if err != nil {
		return err
	}
	started := time.Now()
	// A message dispatched as the move starts waits in the source's durable
	// buffer, travels with the export and is processed first by the target.
	probe, err := s.Discord.SendMessage(g, 0, 4242, "probe")
	if err != nil {
		return err
	}
	moved, stored, aborted := false, false, false
	err = systest.Poll(ctx, 10*time.Minute, "the guild active on the target with the probe stored", func() bool {
		if !moved {
			gi, ok := tgt.Watcher().Lookup(g)
			switch {
			case ok && gi.Owner == s.Cfgs[to].ID && gi.State == fsm.GuildActive:
				r.MoveTime = time.Since(start)
				moved = true
			case ok && gi.Migration == nil && gi.Epoch > mv.Epoch:
				aborted = true
				return true
			}
		}
		if !stored {
			var one int
			if db.QueryRowContext(ctx, `SELECT 1 FROM messages WHERE guild_id = ? AND message_id = ?`, int64(g), int64(probe)).Scan(&one) == nil {
				r.HeldWait = time.Since(started)
				stored = true
			}
		}
		return moved && stored
	})
	if err != nil {
		return err
	}
	if aborted {
		return errors.New("the move aborted")
	}
	select {
	case r.FSMWindow = <-window:
	case <-time.After(5 * time.Second):
	}
	if err := systest.Poll(ctx, 2*time.Minute, "the source's copy dropped", func() bool {
		n, err := s.MessageRows(ctx, from, g)
		r.SourceRowsAfter = n
		return err == nil && n == 0
	}); err != nil {
		return err
	}
	r.TargetRows, err = s.MessageRows(ctx, to, g)
	return err
}

// RebalanceTime places o.RebalanceGuilds guilds on 3 pods, adds a 4th and
// times POST /v1/rebalance until the job has finished.
func RebalanceTime(ctx context.Context, o MigrationOptions) (RebalanceResult, error) {
	o.defaults()
	var res RebalanceResult
	dir, cleanup, err := systest.TempDir("rebalance")
	if err != nil {
		return res, err
	}
	defer cleanup()
	s, err := systest.StartSystem(ctx, dir, systest.SystemOptions{Shards: 8, Gateways: 3, HistoryLimit: o.RebalanceGuilds*o.RebalanceMessages + 10000,
		TweakConfig: func(c *confignode.Config) {
			if o.MaxMoves > 0 {
				c.MaxMoves = o.MaxMoves
			}
			if o.MaxMovesPerPod > 0 {
				c.MaxMovesPerPod = o.MaxMovesPerPod
			}
		}})
	if err != nil {
		return res, err
	}
	defer s.Close()
	guilds := s.Discord.Seed(o.RebalanceGuilds)
	if err := s.WaitSettled(ctx, 2*time.Minute); err != nil {
		return res, err
	}
	for m := 0; m < o.RebalanceMessages; m++ {
		for _, g := range guilds {
			if _, err := s.Discord.SendMessage(g.ID, 0, uint64(1000+m), "rebalance bench"); err != nil {
				return res, err
			}
		}
	}
	want := int64(o.RebalanceGuilds * o.RebalanceMessages)
	if err := systest.Poll(ctx, 2*time.Minute, "every message stored", func() bool {
		var total int64
		for i := range s.Gateways {
			n, err := s.TotalMessages(ctx, i)
			if err != nil {
				return false
			}
			total += n
		}
		return total == want
	}); err != nil {
		return res, err
	}
	newPod, err := s.AddGateway()
	if err != nil {
		return res, err
	}
	// The new pod counts once it is active and holds its share of shards.
	if err := systest.Poll(ctx, time.Minute, "the 4th pod active with shards", func() bool {
		pl, err := s.Client.Pods(ctx)
		if err != nil {
			return false
		}
		for _, p := range pl.Pods {
			if p.ID == s.Cfgs[newPod].ID {
				return p.State == fsm.PodActive && len(p.Shards) > 0
			}
		}
		return false
	}); err != nil {
		return res, err
	}
	if err := s.WaitSettled(ctx, time.Minute); err != nil {
		return res, err
	}
	if res.Before, err = guildsPerPod(ctx, s); err != nil {
		return res, err
	}
	start := time.Now()
	job, err := s.Client.Rebalance(ctx, false)
	if err != nil {
		return res, err
	}
	res.Guilds, res.Moves = o.RebalanceGuilds, job.Total
	if err := systest.Poll(ctx, 10*time.Minute, "the rebalance to finish", func() bool {
		j, err := s.Client.RebalanceStatus(ctx)
		if err != nil || j.FinishedAt.IsZero() {
			return false
		}
		res.Failed = j.Failed
		return true
	}); err != nil {
		return res, err
	}
	res.Duration = time.Since(start)
	res.After, err = guildsPerPod(ctx, s)
	return res, err
}

func guildsPerPod(ctx context.Context, s *systest.System) (map[string]int, error) {
	pl, err := s.Client.Pods(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, p := range pl.Pods {
		out[p.ID] = p.Guilds
	}
	return out, nil
}

// PrintMigration writes the migration tables.
func PrintMigration(w io.Writer, r MigrationResult) {
	PrintMoveTimes(w, r.Moves)
	fmt.Fprintln(w)
	PrintMoveUnderLoad(w, r.UnderLoad)
	fmt.Fprintln(w)
	PrintRebalance(w, r.Rebalance)
}

// PrintMoveTimes writes the move-time table.
func PrintMoveTimes(w io.Writer, rs []MoveResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "GUILD MOVE (2 pods, 3 config nodes, loopback)\trows\tmove command → active on target\tevents held (start → probe stored)\tleader started→completed\ttarget rows\tsource rows after\ttarget\t")
	for _, r := range rs {
		target := ""
		if r.Rows == 100_000 {
			target = "< 1 s"
		}
		fmt.Fprintf(tw, "%s → %s\t%d\t%s\t%s\t%s\t%d\t%d\t%s\t\n", r.From, r.To, r.Rows, ms(r.MoveTime), ms(r.HeldWait), ms(r.FSMWindow), r.TargetRows, r.SourceRowsAfter, target)
	}
	_ = tw.Flush()
}

// PrintRebalance writes the rebalance table.
func PrintRebalance(w io.Writer, r RebalanceResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REBALANCE (3 pods → 4, loopback)\tRESULT\tTARGET")
	fmt.Fprintf(tw, "guilds / moves planned / failed\t%d / %d / %d\t\n", r.Guilds, r.Moves, r.Failed)
	fmt.Fprintf(tw, "POST /v1/rebalance → job finished\t%s\t< 30 s\n", r.Duration.Round(time.Millisecond))
	fmt.Fprintf(tw, "guilds per pod before\t%s\t\n", perPod(r.Before))
	fmt.Fprintf(tw, "guilds per pod after\t%s\twithin ±1\n", perPod(r.After))
	_ = tw.Flush()
}

func perPod(m map[string]int) string {
	out := ""
	for i := 0; i < 16; i++ {
		id := "gateway-" + strconv.Itoa(i)
		if n, ok := m[id]; ok {
			if out != "" {
				out += " "
			}
			out += fmt.Sprintf("%s=%d", id, n)
		}
	}
	return out
}

// MoveUnderLoadResult is the move of one big guild while other guilds on
// its source and its target take a steady write load (issue 18).
type MoveUnderLoadResult struct {
	Rows int
	Rate int // writes per second on each pod
	// Move runs from the move command to the guild active on the target;
	// Drop from then to the source's copy deleted. The load is measured
	// over both.
	Move, Drop time.Duration
	// Quiet is the same load on the source before the move (the floor);
	// Source and Target are the other guilds' write latencies (one
	// Store.Apply, commit included, from the moment the write was due)
	// during the move and the drop.
	Quiet, Source, Target Percentiles
	// Late counts writes sent after their due time because too many
	// were waiting already (see writeLoad.run).
	Late int
}

// MoveUnderLoad moves a guild of o.LoadRows message rows from pod A to pod
// B while one other guild on A and one on B each receive o.LoadRate writes
// per second, and reports those writes' latency. The load is bounded: it
// runs only until the source's copy is dropped, and at most 10 minutes.
func MoveUnderLoad(ctx context.Context, o MigrationOptions) (MoveUnderLoadResult, error) {
	o.defaults()
	res := MoveUnderLoadResult{Rows: o.LoadRows, Rate: o.LoadRate}
	dir, cleanup, err := systest.TempDir("moveload")
	if err != nil {
		return res, err
	}
	defer cleanup()
	s, err := systest.StartSystem(ctx, dir, systest.SystemOptions{Shards: 1, Gateways: 1})
	if err != nil {
		return res, err
	}
	defer s.Close()
	guilds := s.Discord.Seed(3)
	big, onA, onB := guilds[0].ID, guilds[1].ID, guilds[2].ID
	if err := s.WaitSettled(ctx, 60*time.Second); err != nil {
		return res, err
	}
	if _, err := s.AddGateway(); err != nil {
		return res, err
	}
	if err := s.WaitSettled(ctx, 60*time.Second); err != nil {
		return res, err
	}
	v, err := s.Owner(ctx, big)
	if err != nil {
		return res, err
	}
	a := s.PodIndex(v.Owner)
	b := 1 - a
	// One small guild goes to B first: the target's own guild under load.
	if err := moveAndWait(ctx, s, onB, b); err != nil {
		return res, fmt.Errorf("move the target's guild: %w", err)
	}
	if err := s.InsertMessages(ctx, a, big, 1<<40, o.LoadRows, o.InsertBatch); err != nil {
		return res, err
	}
	loadA, err := newWriteLoad(ctx, s, a, onA, o.LoadRate)
	if err != nil {
		return res, err
	}
	loadB, err := newWriteLoad(ctx, s, b, onB, o.LoadRate)
	if err != nil {
		return res, err
	}
	lctx, stop := context.WithTimeout(ctx, 10*time.Minute)
	defer stop()
	// The floor: the same load on A with no move, for 2 s.
	qctx, qstop := context.WithTimeout(lctx, 2*time.Second)
	quiet := loadA.run(qctx)
	qstop()
	res.Quiet = percentiles(quiet)
	srcLat, tgtLat := make(chan []time.Duration, 1), make(chan []time.Duration, 1)
	go func() { srcLat <- loadA.run(lctx) }()
	go func() { tgtLat <- loadB.run(lctx) }()
	start := time.Now()
	err = moveAndWait(ctx, s, big, b)
	res.Move = time.Since(start)
	if err == nil {
		err = systest.Poll(ctx, 5*time.Minute, "the source's copy dropped", func() bool {
			n, err := s.MessageRows(ctx, a, big)
			return err == nil && n == 0
		})
		res.Drop = time.Since(start) - res.Move
	}
	stop()
	res.Source, res.Target = percentiles(<-srcLat), percentiles(<-tgtLat)
	res.Late = loadA.late + loadB.late
	if err != nil {
		return res, err
	}
	if n, err := s.MessageRows(ctx, b, big); err != nil || n != int64(o.LoadRows) {
		return res, fmt.Errorf("target has %d rows of the moved guild (want %d): %v", n, o.LoadRows, err)
	}
	return res, nil
}

// moveAndWait moves guild g to pod to and waits until to's map shows it active there.
func moveAndWait(ctx context.Context, s *systest.System, g uint64, to int) error {
	mv, err := s.Client.Move(ctx, strconv.FormatUint(g, 10), s.Cfgs[to].ID)
	if err != nil {
		return err
	}
	aborted := false
	err = systest.Poll(ctx, 10*time.Minute, "the guild active on the target", func() bool {
		gi, ok := s.Gateways[to].Watcher().Lookup(g)
		aborted = ok && gi.Migration == nil && gi.Epoch > mv.Epoch && gi.Owner != s.Cfgs[to].ID
		return aborted || ok && gi.Owner == s.Cfgs[to].ID && gi.State == fsm.GuildActive
	})
	if err == nil && aborted {
		err = errors.New("the move aborted")
	}
	return err
}

// writeLoad writes one new message at a time to one guild on one pod's
// store, at a fixed rate.
type writeLoad struct {
	s            *systest.System
	pod          int
	guild, epoch uint64
	rate         int
	next         uint64
	late         int
}

func newWriteLoad(ctx context.Context, s *systest.System, pod int, g uint64, rate int) (*writeLoad, error) {
	v, err := s.Owner(ctx, g)
	if err != nil {
		return nil, err
	}
	if v.Owner != s.Cfgs[pod].ID {
		return nil, fmt.Errorf("guild %d is on %s, not %s", g, v.Owner, s.Cfgs[pod].ID)
	}
	return &writeLoad{s: s, pod: pod, guild: g, epoch: v.Epoch, rate: rate, next: 1 << 50}, nil
}

// run writes until ctx ends and returns each write's latency. The load is
// open: each write is sent at its due time (start + i/rate) in its own
// goroutine, as a pod's events arrive whether or not the previous one has
// committed (so group commit batches them as in production), and its
// latency runs from that due time (no coordinated omission). At most
// maxInFlight writes wait at once; a write due while that many wait is
// sent late and counted in late.
func (l *writeLoad) run(ctx context.Context) []time.Duration {
	const maxInFlight = 2000
	store := l.s.Gateways[l.pod].Store()
	period := time.Second / time.Duration(l.rate)
	at := time.Now().Add(-time.Minute)
	var (
		mu  sync.Mutex
		lat []time.Duration
		wg  sync.WaitGroup
	)
	sem := make(chan struct{}, maxInFlight)
	start := time.Now()
	for i := 0; ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * period)
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(due)):
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		default:
			l.late++
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				continue
			}
		}
		l.next++
		id := l.next
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// Not ctx: a write already sent is waited for, so the
			// slowest ones are counted.
			_, err := store.Apply(context.WithoutCancel(ctx), guildstore.Write{Epoch: l.epoch, Op: guildstore.MessageCreate{
				GuildID: l.guild, MessageID: id, ChannelID: l.guild + 1, AuthorID: 100000000000000001, CreatedAt: at, ContentLength: 10}})
			d := time.Since(due)
			if err != nil {
				slog.Warn("load write failed", "guild", l.guild, "err", err)
				return
			}
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return lat
}

// PrintMoveUnderLoad writes the move-under-load table.
func PrintMoveUnderLoad(w io.Writer, r MoveUnderLoadResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "A %d-ROW GUILD MOVING (other guilds: %d writes/s on each pod)\tp50\tp99\tmax\twrites\tbefore (one writer held)\tTARGET\n", r.Rows, r.Rate)
	fmt.Fprintf(tw, "source, no move (floor)\t%s\t%s\t%s\t%d\t\t\n", ms(r.Quiet.P50), ms(r.Quiet.P99), ms(r.Quiet.Max), r.Quiet.N)
	fmt.Fprintf(tw, "source's other guild, move + drop\t%s\t%s\t%s\t%d\tseconds\tp99 < 20 ms\n", ms(r.Source.P50), ms(r.Source.P99), ms(r.Source.Max), r.Source.N)
	fmt.Fprintf(tw, "target's other guild, move + drop\t%s\t%s\t%s\t%d\tseconds\tp99 < 20 ms\n", ms(r.Target.P50), ms(r.Target.P99), ms(r.Target.Max), r.Target.N)
	fmt.Fprintf(tw, "move command → active on target\t%s\t\t\t\t\t\n", r.Move.Round(time.Millisecond))
	fmt.Fprintf(tw, "then → source's copy dropped\t%s\t\t\t\t\t\n", r.Drop.Round(time.Millisecond))
	fmt.Fprintf(tw, "writes sent late (2000 already waiting)\t%d\t\t\t\t\t\n", r.Late)
	_ = tw.Flush()
}
