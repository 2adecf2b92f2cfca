package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/podapi"
)

// Dead letters live on the pod that received the event (gateway pods'
// internal API); modbotctl finds the pods through the config nodes.

func (c *ctl) pods() podapi.Client {
	return podapi.Client{HTTP: &http.Client{Timeout: 30 * time.Second, Transport: c.tls.Transport(nil)}, Token: c.client.Token(), Scheme: c.tls.Scheme()}
}

// resolvePod finds a pod by id or ordinal.
func (c *ctl) resolvePod(ctx context.Context, ref string) (fsm.Pod, error) {
	pl, err := c.client.Pods(ctx)
	if err != nil {
		return fsm.Pod{}, err
	}
	for _, p := range pl.Pods {
		if p.ID == ref || strconv.Itoa(p.Ordinal) == ref {
			return p.Pod, nil
		}
	}
	return fsm.Pod{}, fmt.Errorf("no pod %q (modbotctl pods lists them)", ref)
}

func cmdDeadLetters(ctx context.Context, c *ctl, args []string) error {
	fs := flag.NewFlagSet("dead-letters", flag.ContinueOnError)
	pod := fs.String("pod", "", "only this pod (id or ordinal); default every pod that is not down")
	guild := fs.String("guild", "", "only this guild")
	limit := fs.Int("limit", 100, "at most this many per pod")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs("dead-letters", fs.Args()); err != nil {
		return err
	}
	var g uint64
	if *guild != "" {
		var err error
		if g, err = fsm.ParseGuildID(*guild); err != nil {
			return err
		}
	}
	var pods []fsm.Pod
	if *pod != "" {
		p, err := c.resolvePod(ctx, *pod)
		if err != nil {
			return err
		}
		pods = []fsm.Pod{p}
	} else {
		pl, err := c.client.Pods(ctx)
		if err != nil {
			return err
		}
		for _, p := range pl.Pods {
			if p.State != fsm.PodDown {
				pods = append(pods, p.Pod)
			}
		}
	}
	var lists []podapi.DeadLetterList
	var errs []error
	for _, p := range pods {
		l, err := c.pods().DeadLetters(ctx, p.Addr, g, 0, *limit)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.ID, err))
			continue
		}
		lists = append(lists, l)
	}
	if c.output == "json" {
		if err := c.json(lists); err != nil {
			return err
		}
		return errors.Join(errs...)
	}
	var rows [][]any
	total := int64(0)
	for _, l := range lists {
		total += l.Total
		for _, d := range l.DeadLetters {
			rows = append(rows, []any{l.Pod, d.ID, d.GuildID, d.Type, d.Attempts, d.LastFailedAt.Format(time.RFC3339), clip(d.Error, 60)})
		}
	}
	if err := c.table("POD\tID\tGUILD\tTYPE\tATTEMPTS\tLAST FAILED\tERROR", rows); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "%d dead letters on %d pods (replay one with: modbotctl replay-dead-letter POD ID)\n", total, len(lists))
	return errors.Join(errs...)
}

func cmdReplayDeadLetter(ctx context.Context, c *ctl, args []string) error {
	if len(args) != 2 {
		return errors.New("usage: modbotctl replay-dead-letter POD ID")
	}
	id, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || id <= 0 {
		return fmt.Errorf("dead-letter id %q: want a positive integer (modbotctl dead-letters lists them)", args[1])
	}
	p, err := c.resolvePod(ctx, args[0])
	if err != nil {
		return err
	}
	res, err := c.pods().ReplayDeadLetter(ctx, p.Addr, id)
	if err != nil {
		return fmt.Errorf("replay dead letter %d on %s: %w", id, p.ID, err)
	}
	if c.output == "json" {
		return c.json(res)
	}
	fmt.Fprintf(c.out, "replayed dead letter %d (%s of guild %s) on %s\n", res.Replayed, res.Type, res.GuildID, p.ID)
	return nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
