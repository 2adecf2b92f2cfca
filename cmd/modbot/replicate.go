package main

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/modbot/modbot/internal/cli"
	"github.com/modbot/modbot/litestream"
)

// runReplicate is the Litestream sidecar of one gateway pod. It must run in
// its own process: Litestream's SQLite (modernc) and the gateway's (mattn)
// may never share one (POSIX locks are per process).
func runReplicate(args []string) error {
	fs := flag.NewFlagSet("replicate", flag.ContinueOnError)
	cli.Usage(fs, "modbot replicate --db PATH --replica file:///DIR|s3://BUCKET/PATH?endpoint=URL&region=R [--restore-if-missing] [--metrics-addr 127.0.0.1:9095] [--sync-interval 1s]")
	var o litestream.ReplicateOptions
	fs.StringVar(&o.DBPath, "db", "", "the gateway's SQLite database (it may not exist yet)")
	fs.StringVar(&o.ReplicaURL, "replica", "", "the one replica: file:///ABSOLUTE/DIR, or s3://BUCKET/PATH[?endpoint=http://HOST:PORT&region=R] (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
	fs.BoolVar(&o.RestoreIfMissing, "restore-if-missing", false, "restore the database from the replica first if it does not exist (start the gateway after /healthz answers 200)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", "", "serve /metrics and /healthz on host:port (empty: none)")
	fs.DurationVar(&o.SyncInterval, "sync-interval", time.Second, "the most a committed change waits before it is on the replica (rounds run every half interval)")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "budget of the final sync on SIGTERM")
	fs.IntVar(&o.MinCheckpointPageN, "checkpoint-pages", 1000, "WAL pages at which Litestream runs a PASSIVE checkpoint (Litestream owns checkpoints)")
	fs.IntVar(&o.TruncatePageN, "truncate-pages", 121359, "WAL pages at which Litestream forces a TRUNCATE checkpoint, waiting out readers and blocking writes meanwhile: the WAL's bound (121359 pages ≈ 500 MB)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if o.DBPath == "" || o.ReplicaURL == "" {
		return errors.New("--db and --replica are required")
	}
	if o.SyncInterval < 10*time.Millisecond {
		return fmt.Errorf("--sync-interval %s: must be at least 10ms", o.SyncInterval)
	}
	o.Logger = cli.Logger("replicate")
	ctx, stop := cli.SignalContext()
	defer stop()
	return litestream.Replicate(ctx, o)
}

// runRestore restores a database from its replica, integrity-checked, never
// overwriting an existing file.
func runRestore(args []string) error {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	cli.Usage(fs, "modbot restore --db PATH --replica URL [--if-db-not-exists] [--if-replica-exists] [--timestamp RFC3339]")
	var o litestream.RestoreOptions
	fs.StringVar(&o.DBPath, "db", "", "where to restore the database (must not exist)")
	fs.StringVar(&o.ReplicaURL, "replica", "", "the replica (as for modbot replicate)")
	fs.BoolVar(&o.IfDBNotExists, "if-db-not-exists", false, "an existing database is not an error: do nothing")
	fs.BoolVar(&o.IfReplicaExists, "if-replica-exists", false, "a replica without a backup is not an error: do nothing")
	ts := fs.String("timestamp", "", "restore the state as of this RFC 3339 time (default the latest)")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "give up after this long")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if o.DBPath == "" || o.ReplicaURL == "" {
		return errors.New("--db and --replica are required")
	}
	if *ts != "" {
		t, err := time.Parse(time.RFC3339Nano, *ts)
		if err != nil {
			return fmt.Errorf("--timestamp %q: want RFC 3339, e.g. 2006-01-02T15:04:05Z: %w", *ts, err)
		}
		o.Timestamp = t
	}
	o.Logger = cli.Logger("restore")
	ctx, stop := cli.SignalContext()
	defer stop()
	_, err := litestream.Restore(ctx, o)
	return err
}
