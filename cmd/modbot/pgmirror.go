package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/modbot/modbot/internal/cli"
	"github.com/modbot/modbot/pgmirror"
)

// runPgMirror runs the Postgres mirror on its own. Bad input (a malformed
// URL, wrong credentials, a newer schema) ends it at start with an error;
// later failures are retried.
func runPgMirror(args []string) error {
	fs := flag.NewFlagSet("pgmirror", flag.ContinueOnError)
	cli.Usage(fs, "modbot pgmirror --config http://HOST:PORT[,…] --pg-url postgres://USER:PASSWORD@HOST:PORT/DB [--token T] [--metrics-addr 127.0.0.1:9464]")
	configURLs := fs.String("config", "", "comma-separated config node URLs to follow")
	pgURL := fs.String("pg-url", "", "PostgreSQL URL of the mirror (postgres://USER:PASSWORD@HOST:PORT/DB)")
	token := fs.String("token", "", "bearer token for the config nodes' watch and snapshot (the read token is enough)")
	metricsAddr := fs.String("metrics-addr", "", "serve /metrics on this address (empty: none)")
	name := fs.String("name", "pgmirror", "this mirror's name in logs")
	tlsFlags := cli.TLSFlags(fs)
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *configURLs == "" {
		return errors.New("--config (or MODBOT_CONFIG) is required: the config nodes to follow, e.g. http://127.0.0.1:8000")
	}
	log := cli.Logger("pgmirror")
	tlsr, err := tlsFlags.Load(log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := pgmirror.New(pgmirror.Options{ConfigURLs: cli.SplitList(*configURLs), Token: *token, TLS: tlsr, PGURL: *pgURL, Name: *name, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = m.Check(cctx)
	cancel()
	switch {
	case err != nil && pgmirror.ErrorKind(err) == pgmirror.ErrKindConnect:
		log.Warn("PostgreSQL is not reachable yet; retrying in the background", "err", err)
	case err != nil:
		return err // bad credentials, no database, a newer schema: fix the input
	}
	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-addr %s: %w", *metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	log.Info("postgres mirror running", "config", *configURLs, "schema_version", pgmirror.SchemaVersion())
	return m.Run(ctx)
}
