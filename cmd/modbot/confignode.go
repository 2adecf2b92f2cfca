package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/modbot/modbot/confignode"
	"github.com/modbot/modbot/internal/cli"
	"github.com/modbot/modbot/pgmirror"
)

func runConfigNode(args []string) error {
	fs := flag.NewFlagSet("config-node", flag.ContinueOnError)
	cli.Usage(fs, "modbot config-node --id config-0 --data-dir DIR --raft-addr HOST:PORT --http-addr HOST:PORT [--bootstrap [--shards N]] [--join URL,…] [--pg-url postgres://…] [--token T [--internal-token T] [--read-token T]]")
	var c confignode.Config
	var join string
	fs.StringVar(&c.ID, "id", "", "node id, stable across restarts (e.g. the StatefulSet hostname config-0)")
	fs.StringVar(&c.DataDir, "data-dir", "", "directory for the Raft log and snapshots")
	fs.StringVar(&c.RaftAddr, "raft-addr", "", "Raft bind and advertise address host:port")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8000", "API address host:port")
	fs.BoolVar(&c.Bootstrap, "bootstrap", false, "form a new cluster with this node as its first voter (ignored when data exists)")
	bootstrapID := fs.String("bootstrap-id", "", "bootstrap (as --bootstrap) only when --id is this id, e.g. config-0: one StatefulSet spec for every node, the others --join")
	fs.IntVar(&c.Shards, "shards", 4, "Discord shard count, set when bootstrapping")
	fs.StringVar(&join, "join", "", "comma-separated config node URLs to join through (retried until one accepts)")
	cli.TokenFlags(fs, &c.Token, &c.InternalToken, &c.ReadToken)
	fs.BoolVar(&c.NoAuth, "insecure-no-auth", false, "serve the API without authentication (never in production)")
	pgURL := fs.String("pg-url", "", "PostgreSQL URL of the reporting mirror (postgres://USER:PASSWORD@HOST:PORT/DB): this node runs a mirror; one mirror per database writes")
	fs.DurationVar(&c.PodTimeout, "pod-timeout", 0, "mark a pod down after this long without a heartbeat (default 10s)")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 0, "how long a write waits for a quorum before 503 (default 5s)")
	fs.IntVar(&c.WatchHistory, "watch-history", 0, "change events kept for watch resumption (default 100000)")
	fs.Uint64Var(&c.SnapshotThreshold, "snapshot-threshold", 0, "Raft log entries between snapshots (default 8192)")
	fs.Uint64Var(&c.TrailingLogs, "trailing-logs", 0, "Raft log entries kept after a snapshot (default 10240)")
	fs.BoolVar(&c.AutoRebalance, "auto-rebalance", false, "rebalance by itself when pods join or leave and guild counts differ by more than 20 %")
	fs.DurationVar(&c.MoveTimeout, "move-timeout", 0, "abort a guild move whose copy takes longer (default 2m)")
	fs.StringVar(&c.FailoverReplica, "failover-replica", "", "gateway pods' replica URL with {pod} for the pod id (file:///DIR/{pod} or s3://BUCKET/PATH/{pod}?endpoint=…): guilds of a pod down past --failover-grace are restored from it on live pods (empty: no failover)")
	fs.DurationVar(&c.FailoverGrace, "failover-grace", 0, "how long a gateway pod may stay down before its guilds fail over (default 60s)")
	fs.DurationVar(&c.IdentifyInterval, "identify-interval", 0, "Discord identify spacing per max_concurrency bucket (default 5s)")
	fs.DurationVar(&c.SnapshotInterval, "snapshot-interval", 0, "how often to check whether to snapshot (default 30s)")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go's profiler at /debug/pprof/ (admin token)")
	tlsFlags := cli.TLSFlags(fs)
	fs.StringVar(&c.PeerTLSName, "peer-tls-name", "", "with TLS: the name every other config node's certificate must carry, on Raft and on forwarded requests (default: the host dialled, an IP)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *bootstrapID != "" && *bootstrapID == c.ID {
		c.Bootstrap = true
	}
	c.Join = cli.SplitList(join)
	c.Logger = cli.Logger("config-node")
	var err error
	if c.TLS, err = tlsFlags.Load(c.Logger); err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	n, err := confignode.Start(c)
	if err != nil {
		return err
	}
	mirrorDone := startMirror(ctx, n, c, *pgURL)
	<-ctx.Done()
	c.Logger.Info("signal received; stopping (a leader hands leadership over first)")
	<-mirrorDone
	return n.Close()
}

// startMirror runs the Postgres mirror beside the node when --pg-url is
// set. It follows this node's own stream first. A mirror that cannot start
// is logged, and the node serves on without it: Postgres is for reporting
// only. The channel closes when the mirror has stopped.
func startMirror(ctx context.Context, n *confignode.Node, c confignode.Config, pgURL string) <-chan struct{} {
	done := make(chan struct{})
	if pgURL == "" {
		close(done)
		return done
	}
	m, err := pgmirror.New(pgmirror.Options{
		ConfigURLs: append([]string{n.URL()}, c.Join...), Token: c.Tokens().Read, TLS: c.TLS, PGURL: pgURL,
		Name: c.ID, Logger: c.Logger, Registerer: n.Registry(),
	})
	if err != nil {
		c.Logger.Error("postgres mirror not started; the config node serves without it", "err", err)
		close(done)
		return done
	}
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	return done
}
