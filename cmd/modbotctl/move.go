package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// cmdMoveGuild starts a move and, unless --no-wait, follows its phases on
// the change stream until it commits (exit 0) or aborts (exit 1 with why).
func cmdMoveGuild(ctx context.Context, c *ctl, args []string) error {
	fs := flag.NewFlagSet("move-guild", flag.ContinueOnError)
	to := fs.String("to", "", "target pod: ordinal (1) or id (gateway-1)")
	noWait := fs.Bool("no-wait", false, "return the epoch at once instead of following the move")
	guild, rest := "", args
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		guild, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if guild == "" && fs.NArg() > 0 {
		guild = fs.Arg(0)
	}
	if guild == "" || *to == "" {
		return errors.New("usage: modbotctl move-guild GUILD_ID --to POD [--no-wait]")
	}
	if _, err := fsm.ParseGuildID(guild); err != nil {
		return err
	}
	start := time.Now()
	mv, err := c.client.Move(ctx, guild, *to)
	if err != nil {
		return err
	}
	if *noWait {
		if c.output == "json" {
			return c.json(mv)
		}
		fmt.Fprintf(c.out, "moving guild %d from %s to %s: epoch %d\n", mv.Guild, mv.From, mv.To, mv.Epoch)
		return nil
	}
	tty := isTerminal(c.out) && c.output != "json"
	lastPhase := ""
	report := func(phase string) {
		if phase == lastPhase {
			return
		}
		lastPhase = phase
		el := time.Since(start).Round(time.Millisecond)
		if c.output == "json" {
			_ = c.json(map[string]any{"guild": fmt.Sprint(mv.Guild), "phase": phase, "elapsed_ms": el.Milliseconds()})
			return
		}
		if tty {
			fmt.Fprintf(c.out, "\r\033[Kguild %d %s → %s  [%-10s] %s", mv.Guild, mv.From, mv.To, phase, el)
			return
		}
		fmt.Fprintf(c.out, "%s guild %d %s → %s: %s\n", el, mv.Guild, mv.From, mv.To, phase)
	}
	report("started")
	var outcome error
	pos := fmt.Sprint(mv.Revision - 1)
	urls := c.client.URLs()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := streamEvents(ctx, c, urls[attempt%len(urls)], &pos, func(e fsm.Event) (bool, error) {
			if e.Type != fsm.EventGuild || e.Guild.ID != mv.Guild {
				return false, nil
			}
			if m := e.Guild.Migration; m != nil && m.Epoch == mv.Epoch {
				report(m.Phase)
				return false, nil
			}
			if e.Guild.Migration == nil && e.Revision > mv.Revision {
				if e.Cause == fsm.CmdAbortMove {
					outcome = fmt.Errorf("move of guild %d aborted: %s (it stays on %s)", mv.Guild, e.Reason, e.Guild.Owner)
					report("aborted")
				} else {
					report("done")
				}
				return true, nil
			}
			return false, nil
		})
		if errors.Is(err, errStreamDone) {
			break
		}
		var apiErr *assignments.APIError
		if errors.As(err, &apiErr) && !assignments.IsUnavailable(err) {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
	if tty {
		fmt.Fprintln(c.out)
	}
	if outcome == nil && c.output != "json" {
		fmt.Fprintf(c.out, "guild %d now owned by %s (epoch %d) after %s\n", mv.Guild, mv.To, mv.Epoch, time.Since(start).Round(time.Millisecond))
	}
	return outcome
}

func cmdRebalance(ctx context.Context, c *ctl, args []string) error {
	fs := flag.NewFlagSet("rebalance", flag.ContinueOnError)
	dry := fs.Bool("dry-run", false, "print the plan without moving anything")
	if err := fs.Parse(args); err != nil {
		return err
	}
	job, err := c.client.Rebalance(ctx, *dry)
	if err != nil {
		return err
	}
	if *dry {
		if c.output == "json" {
			return c.json(job)
		}
		var rows [][]any
		for _, m := range job.Moves {
			rows = append(rows, []any{m.Guild, m.From, m.To})
		}
		if err := c.table("GUILD\tFROM\tTO", rows); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "%d moves would even out the pods\n", job.Total)
		return nil
	}
	return followJob(ctx, c, job)
}

func cmdDrain(ctx context.Context, c *ctl, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: modbotctl drain POD")
	}
	job, err := c.client.Drain(ctx, args[0])
	if err != nil {
		return err
	}
	return followJob(ctx, c, job)
}

// jobLostWait is how long followJob waits for a new leader to report the
// job it was following.
const jobLostWait = 30 * time.Second

// jobLost says whether a status error means the leader changed: no leader
// for a moment, or a new one that has run no job yet.
func jobLost(err error) bool {
	return assignments.IsUnavailable(err) || assignments.IsStatus(err, http.StatusNotFound)
}

// followJob shows a rebalance or drain's progress until it finishes.
func followJob(ctx context.Context, c *ctl, job assignments.RebalanceJob) error {
	tty := isTerminal(c.out) && c.output != "json"
	start := time.Now()
	last := -1
	var lostSince time.Time
	for {
		if c.output == "json" {
			if job.Done+job.Failed != last {
				_ = c.json(map[string]any{"kind": job.Kind, "total": job.Total, "done": job.Done, "failed": job.Failed, "running": job.Running})
			}
		} else if tty {
			fmt.Fprintf(c.out, "\r\033[K%s: %d/%d moved, %d failed, %d running, %s", job.Kind, job.Done, job.Total, job.Failed, job.Running, time.Since(start).Round(time.Second))
		} else if job.Done+job.Failed != last {
			fmt.Fprintf(c.out, "%s: %d/%d moved, %d failed, %d running\n", job.Kind, job.Done, job.Total, job.Failed, job.Running)
		}
		last = job.Done + job.Failed
		if !job.FinishedAt.IsZero() {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		j, err := c.client.RebalanceStatus(ctx)
		if err != nil {
			// A leader change: the job stopped with the old term. A new
			// leader resumes a drain by itself (the pod is still draining)
			// but has no record of a rebalance.
			if !jobLost(err) {
				return err
			}
			if lostSince.IsZero() {
				lostSince = time.Now()
				fmt.Fprintf(os.Stderr, "\nthe leader changed at %d/%d moved; waiting for the new leader to report the %s\n", job.Done, job.Total, job.Kind)
			}
			if time.Since(lostSince) > jobLostWait {
				return fmt.Errorf("the leader changed and the new one reports no %s after %s (%d of %d guilds had moved): run it again", job.Kind, jobLostWait, job.Done, job.Total)
			}
			continue
		}
		if j.Kind != job.Kind || j.Pod != job.Pod {
			return fmt.Errorf("the leader now reports a %s %s instead of this %s: run it again once that ends", j.Kind, j.Pod, job.Kind)
		}
		lostSince = time.Time{}
		job = j
	}
	if tty {
		fmt.Fprintln(c.out)
	}
	if c.output != "json" {
		fmt.Fprintf(c.out, "%s finished: %d of %d guilds moved in %s\n", job.Kind, job.Done, job.Total, time.Since(start).Round(time.Millisecond))
	}
	if job.Failed > 0 {
		return fmt.Errorf("%d moves failed: %s", job.Failed, strings.Join(job.Errors, "; "))
	}
	return nil
}
