package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

func cmdStatus(ctx context.Context, c *ctl, args []string) error {
	if err := noArgs("status", args); err != nil {
		return err
	}
	st, err := c.client.Status(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(st)
	}
	fmt.Fprintf(c.out, "node:      %s (%s)\nleader:    %s %s\nterm:      %d\nrevision:  %d (applied index %d, commit index %d)\nshards:    %d\nguilds:    %d (%d migrating)\n\n",
		st.ID, st.State, orDash(st.Leader), st.LeaderAddr, st.Term, st.Revision, st.AppliedIndex, st.CommitIndex, st.ShardCount, st.Guilds, st.Migrating)
	var rows [][]any
	for _, s := range st.Servers {
		role := "follower"
		if s.Leader {
			role = "leader"
		}
		rows = append(rows, []any{s.ID, s.RaftAddr, orDash(s.HTTPAddr), s.Suffrage, role})
	}
	if err := c.table("VOTER\tRAFT\tHTTP\tSUFFRAGE\tROLE", rows); err != nil {
		return err
	}
	fmt.Fprintln(c.out)
	return printPods(c, st.Pods)
}

func printPods(c *ctl, pods []assignments.PodSummary) error {
	var rows [][]any
	for _, p := range pods {
		rows = append(rows, []any{p.ID, p.Ordinal, p.Addr, p.State, p.Guilds, shardList(p.Shards), ago(p.LastHeartbeatMs)})
	}
	if len(rows) == 0 {
		fmt.Fprintln(c.out, "no gateway pods registered yet")
		return nil
	}
	return c.table("POD\tORDINAL\tADDR\tSTATE\tGUILDS\tSHARDS\tLAST HEARTBEAT", rows)
}

func shardList(s []int) string {
	if len(s) == 0 {
		return "-"
	}
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = fmt.Sprint(v)
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cmdPods(ctx context.Context, c *ctl, args []string) error {
	if err := noArgs("pods", args); err != nil {
		return err
	}
	p, err := c.client.Pods(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(p)
	}
	return printPods(c, p.Pods)
}

func cmdGuilds(ctx context.Context, c *ctl, args []string) error {
	fs := flag.NewFlagSet("guilds", flag.ContinueOnError)
	pod := fs.String("pod", "", "only guilds owned by this pod (id or ordinal)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs("guilds", fs.Args()); err != nil {
		return err
	}
	g, err := c.client.Guilds(ctx, *pod)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(g)
	}
	var rows [][]any
	for _, x := range g.Guilds {
		rows = append(rows, []any{x.ID, x.Owner, x.State, x.Epoch, migrationText(x.Migration)})
	}
	if err := c.table("GUILD\tOWNER\tSTATE\tEPOCH\tMIGRATION", rows); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "%d guilds at revision %d\n", len(g.Guilds), g.Revision)
	return nil
}

func migrationText(m *fsm.Migration) string {
	if m == nil {
		return "-"
	}
	return fmt.Sprintf("%s→%s %s (epoch %d)", m.From, m.To, m.Phase, m.Epoch)
}

func cmdGuild(ctx context.Context, c *ctl, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: modbotctl guild GUILD_ID")
	}
	if _, err := fsm.ParseGuildID(args[0]); err != nil {
		return err
	}
	g, err := c.client.Guild(ctx, args[0])
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(g)
	}
	fmt.Fprintf(c.out, "guild:     %d\nowner:     %s (%s)\nstate:     %s\nepoch:     %d\nshard:     %d (held by %s)\nmigration: %s\nchanged at revision %d (map at %d)\n",
		g.ID, g.Owner, orDash(g.OwnerAddr), g.State, g.Epoch, g.Shard, orDash(g.ShardHolder), migrationText(g.Migration), g.Guild.Revision, g.MapRevision)
	return nil
}

func cmdShards(ctx context.Context, c *ctl, args []string) error {
	if err := noArgs("shards", args); err != nil {
		return err
	}
	s, err := c.client.Shards(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(s)
	}
	var rows [][]any
	for _, x := range s.Shards {
		rows = append(rows, []any{x.Shard, orDash(x.Holder)})
	}
	return c.table("SHARD\tHOLDER", rows)
}

func cmdConfigNode(ctx context.Context, c *ctl, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: modbotctl config-node list | join --id ID --raft-addr ADDR [--http-addr ADDR] | remove ID | transfer-leadership [--to ID]")
	}
	switch args[0] {
	case "list":
		srv, err := c.client.Servers(ctx)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.json(srv)
		}
		var rows [][]any
		for _, s := range srv {
			role := "follower"
			if s.Leader {
				role = "leader"
			}
			rows = append(rows, []any{s.ID, s.RaftAddr, orDash(s.HTTPAddr), s.Suffrage, role})
		}
		return c.table("ID\tRAFT\tHTTP\tSUFFRAGE\tROLE", rows)
	case "join":
		fs := flag.NewFlagSet("config-node join", flag.ContinueOnError)
		var req assignments.JoinRequest
		fs.StringVar(&req.ID, "id", "", "the new node's id")
		fs.StringVar(&req.RaftAddr, "raft-addr", "", "the new node's raft address")
		fs.StringVar(&req.HTTPAddr, "http-addr", "", "the new node's API address")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if req.ID == "" || req.RaftAddr == "" {
			return errors.New("config-node join needs --id and --raft-addr")
		}
		res, err := c.client.Join(ctx, req)
		return c.result(res, err)
	case "remove":
		if len(args) != 2 {
			return errors.New("usage: modbotctl config-node remove ID")
		}
		res, err := c.client.RemoveServer(ctx, args[1])
		return c.result(res, err)
	case "transfer-leadership":
		fs := flag.NewFlagSet("config-node transfer-leadership", flag.ContinueOnError)
		to := fs.String("to", "", "the voter to hand leadership to (default: any)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		res, err := c.client.TransferLeadership(ctx, *to)
		return c.result(res, err)
	}
	return fmt.Errorf("unknown config-node subcommand %q (list, join, remove, transfer-leadership)", args[0])
}

func (c *ctl) result(res assignments.WriteResult, err error) error {
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(res)
	}
	fmt.Fprintln(c.out, res.Message)
	return nil
}

// cmdWatch prints the change stream, reconnecting from the last revision
// seen (and across config nodes) until interrupted.
func cmdWatch(ctx context.Context, c *ctl, args []string) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	from := fs.String("from", "", "start after this revision (default: now)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from != "" {
		if _, err := strconv.ParseUint(*from, 10, 64); err != nil {
			return fmt.Errorf("--from must be a revision number, got %q", *from)
		}
	}
	pos := *from
	urls := c.client.URLs()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		base := urls[attempt%len(urls)]
		err := watchOnce(ctx, c, base, &pos)
		if ctx.Err() != nil {
			return nil
		}
		var apiErr *assignments.APIError
		if errors.As(err, &apiErr) && !assignments.IsUnavailable(err) {
			return err
		}
		fmt.Fprintf(c.errOut(), "watch: %v; reconnecting\n", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil
}

func (c *ctl) errOut() io.Writer { return os.Stderr }

func watchOnce(ctx context.Context, c *ctl, base string, pos *string) error {
	return streamEvents(ctx, c, base, pos, func(e fsm.Event) (bool, error) {
		printEvent(c, e)
		return false, nil
	})
}

// errStreamDone ends streamEvents without error.
var errStreamDone = errors.New("done")

// watchStaleAfter: a stream that brings no proof that its node is current
// for this long is left for another node (five progress intervals). A
// variable for tests.
var watchStaleAfter = 10 * time.Second

// streamEvents reads the change stream of the node at base from *pos ("":
// from now), calling fn for each event until fn says done; *pos follows the
// last revision seen. It returns an error when the stream ends, when the
// node answers 410 or sends `event: gone` (an *assignments.APIError with
// Status 410), when the node sends nothing for watchStaleAfter, or when it
// has not proven for watchStaleAfter that it is current (it knows no leader,
// or is behind), so that the caller tries another node.
func streamEvents(ctx context.Context, c *ctl, base string, pos *string, fn func(fsm.Event) (bool, error)) error {
	var learned assignments.Learned
	o := assignments.StreamOptions{FromNow: *pos == "", IdleTimeout: watchStaleAfter}
	if !o.FromNow {
		from, err := strconv.ParseUint(*pos, 10, 64)
		if err != nil {
			return fmt.Errorf("bad revision %q: %w", *pos, err)
		}
		o.From = from
		learned.Note(from, 0)
	}
	s, err := c.client.OpenStream(ctx, base, o)
	if err != nil {
		return err
	}
	defer s.Close()
	lastProof := time.Now()
	for {
		m, err := s.Next()
		if err != nil {
			return err
		}
		switch {
		case m.Change != nil:
			rev := strconv.FormatUint(m.Change.Revision, 10)
			learned.Note(m.Change.Revision, 0)
			for _, e := range m.Change.Events {
				done, err := fn(e)
				if err != nil {
					return err
				}
				if done {
					*pos = rev
					return errStreamDone
				}
			}
			*pos = rev
		case m.Progress != nil:
			p := *m.Progress
			if *pos == "" {
				*pos = strconv.FormatUint(p.Revision, 10)
			}
			cerr := p.CheckCurrent(learned, watchStaleAfter)
			learned.Note(p.StateRevision(), p.Term)
			if cerr == nil {
				lastProof = time.Now()
			} else if time.Since(lastProof) >= watchStaleAfter {
				return fmt.Errorf("%s gave no proof for %s that it is current (%v)", base, watchStaleAfter, cerr)
			}
		}
	}
}

func printEvent(c *ctl, e fsm.Event) {
	if c.output == "json" {
		b, _ := json.Marshal(e)
		fmt.Fprintln(c.out, string(b))
		return
	}
	at := time.UnixMilli(e.At).Format("15:04:05.000")
	var what string
	switch e.Type {
	case fsm.EventGuild, fsm.EventGuildGone:
		g := e.Guild
		what = fmt.Sprintf("guild %d owner=%s state=%s epoch=%d", g.ID, g.Owner, g.State, g.Epoch)
		if g.Migration != nil {
			what += " " + migrationText(g.Migration)
		}
	case fsm.EventPod, fsm.EventPodRemove:
		what = fmt.Sprintf("pod %s state=%s addr=%s", e.Pod.ID, e.Pod.State, e.Pod.Addr)
	case fsm.EventShard:
		what = fmt.Sprintf("shard %d holder=%s", e.Shard.Shard, orDash(e.Shard.Holder))
	case fsm.EventInit:
		what = fmt.Sprintf("shard_count=%d", e.ShardCount)
	case fsm.EventConfigNode, fsm.EventConfigNodeRemove:
		what = fmt.Sprintf("config node %s raft=%s http=%s", e.ConfigNode.ID, e.ConfigNode.RaftAddr, e.ConfigNode.HTTPAddr)
	}
	if e.Reason != "" {
		what += " reason=" + e.Reason
	}
	fmt.Fprintf(c.out, "%-8d %s %-18s %-16s %s\n", e.Revision, at, e.Type, e.Cause, what)
}
