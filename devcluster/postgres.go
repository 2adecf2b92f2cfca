package devcluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/modbot/modbot/internal/pgserver"
)

// pgDatabase is the database the dev config nodes mirror into.
const pgDatabase = "modbot"

// startPostgres starts a throwaway PostgreSQL under <dir>/postgres for the
// config nodes' mirror and returns its URL, or "" (and says why) when the
// server binaries are not installed or --postgres=false.
func startPostgres(ctx context.Context, o Options) (string, func(), error) {
	if o.NoPostgres {
		return "", func() {}, nil
	}
	if err := pgserver.Available(); err != nil {
		fmt.Fprintf(o.Out, "no Postgres mirror: %v\n", err)
		return "", func() {}, nil
	}
	srv, err := pgserver.Start(ctx, pgserver.Options{Dir: filepath.Join(o.Dir, "postgres"), Port: o.PGPort})
	if err != nil {
		return "", nil, fmt.Errorf("start the dev PostgreSQL (port %d; --postgres=false runs without it): %w", o.PGPort, err)
	}
	stop := func() { _ = srv.Stop() }
	url, err := srv.CreateDatabase(ctx, pgDatabase)
	if err != nil && !alreadyExists(err) {
		stop()
		return "", nil, err
	}
	url = srv.URL(pgDatabase)
	o.Log.Info("PostgreSQL for the mirror", "url", url, "dir", filepath.Join(o.Dir, "postgres"))
	return url, stop, nil
}

func alreadyExists(err error) bool {
	var pe interface{ SQLState() string }
	return errors.As(err, &pe) && pe.SQLState() == "42P04" || strings.Contains(err.Error(), "already exists")
}
