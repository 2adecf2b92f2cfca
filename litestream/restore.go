package litestream

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	ls "github.com/benbjohnson/litestream"
	_ "modernc.org/sqlite" // Litestream's driver ("sqlite"); this process never uses mattn
)

// Restore errors. Match them with errors.Is.
var (
	// ErrDatabaseExists: the target database file already exists; Restore never overwrites it.
	ErrDatabaseExists = errors.New("database already exists")
	// ErrReplicaNotFound: the replica holds no backup of a database.
	ErrReplicaNotFound = errors.New("replica has no backup")
	// ErrTimestampBeforeFirstBackup: --timestamp predates the replica's first backup.
	ErrTimestampBeforeFirstBackup = errors.New("timestamp is before the first backup")
	// ErrIntegrity: the restored database failed PRAGMA integrity_check.
	ErrIntegrity = errors.New("restored database failed the integrity check")
)

// RestoreOptions are the inputs of Restore.
type RestoreOptions struct {
	// DBPath is where the database goes. Required. Never overwritten.
	DBPath string
	// ReplicaURL is the replica to restore from (see NewReplicaClient).
	ReplicaURL string
	// IfDBNotExists: an existing DBPath is not an error, Restore does nothing.
	IfDBNotExists bool
	// IfReplicaExists: a replica without a backup is not an error, Restore does nothing.
	IfReplicaExists bool
	// Timestamp restores the state as of this time (zero: the latest).
	Timestamp time.Time
	// Timeout bounds the whole restore (default 10m).
	Timeout time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	// Restored is false when Restore did nothing (IfDBNotExists /
	// IfReplicaExists).
	Restored bool
	// Reason is why nothing was restored.
	Reason string
	// Bytes is the restored database's size.
	Bytes    int64
	Duration time.Duration
}

// Restore restores opt.DBPath from opt.ReplicaURL: into a temporary file next
// to DBPath, then PRAGMA integrity_check (must be "ok"), then a hard link into
// place that fails rather than replace a file that appeared meanwhile. Nothing
// at DBPath is ever overwritten or removed.
func Restore(ctx context.Context, opt RestoreOptions) (RestoreResult, error) {
	start := time.Now()
	var res RestoreResult
	if opt.DBPath == "" {
		return res, errors.New("database path required (--db)")
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 10 * time.Minute
	}
	log := opt.Logger.With("db", opt.DBPath, "replica", opt.ReplicaURL)
	dbPath, err := filepath.Abs(opt.DBPath)
	if err != nil {
		return res, err
	}
	client, _, err := NewReplicaClient(opt.ReplicaURL)
	if err != nil {
		return res, err
	}
	if exists, err := fileExists(dbPath); err != nil {
		return res, err
	} else if exists {
		if opt.IfDBNotExists {
			res.Reason = "database exists"
			log.Info("database exists; nothing to restore")
			return res, nil
		}
		return res, fmt.Errorf("%w: %s (restore never overwrites; move it away first, or pass --if-db-not-exists)", ErrDatabaseExists, dbPath)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if exists, err := fileExists(dbPath + suffix); err != nil {
			return res, err
		} else if exists {
			return res, fmt.Errorf("%w: %s has no database file but a leftover %s; remove it first (it belongs to a database that is gone)", ErrDatabaseExists, dbPath, dbPath+suffix)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, opt.Timeout)
	defer cancel()
	if err := client.Init(ctx); err != nil {
		return res, fmt.Errorf("replica %s: %w", opt.ReplicaURL, err)
	}
	r := ls.NewReplicaWithClient(nil, client)
	r.MonitorEnabled = false
	first, last, err := r.TimeBounds(ctx)
	if err != nil {
		return res, fmt.Errorf("replica %s: list backups: %w", opt.ReplicaURL, explainS3(err))
	}
	if first.IsZero() {
		if opt.IfReplicaExists {
			res.Reason = "no replica"
			log.Info("replica has no backup; nothing to restore")
			return res, nil
		}
		return res, fmt.Errorf("%w at %s (wrong URL, or the sidecar never synced this database; pass --if-replica-exists to make this not an error)", ErrReplicaNotFound, opt.ReplicaURL)
	}
	if !opt.Timestamp.IsZero() && opt.Timestamp.Before(first) {
		return res, fmt.Errorf("%w: %s is before %s, the replica's first backup (latest %s)", ErrTimestampBeforeFirstBackup,
			opt.Timestamp.UTC().Format(time.RFC3339Nano), first.UTC().Format(time.RFC3339Nano), last.UTC().Format(time.RFC3339Nano))
	}

	dir := filepath.Dir(dbPath)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return res, fmt.Errorf("create %s: %w", dir, err)
	}
	tmpDir, err := os.MkdirTemp(dir, "."+filepath.Base(dbPath)+".restore-")
	if err != nil {
		return res, fmt.Errorf("temporary directory next to %s: %w", dbPath, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, filepath.Base(dbPath))

	ro := ls.NewRestoreOptions()
	ro.OutputPath = tmp
	ro.Timestamp = opt.Timestamp
	ro.IntegrityCheck = ls.IntegrityCheckNone // ours below, before the file is in place
	if err := r.Restore(ctx, ro); err != nil {
		if errors.Is(err, ls.ErrTxNotAvailable) && !opt.Timestamp.IsZero() {
			return res, fmt.Errorf("%w: no snapshot before %s (first backup %s)", ErrTimestampBeforeFirstBackup,
				opt.Timestamp.UTC().Format(time.RFC3339Nano), first.UTC().Format(time.RFC3339Nano))
		}
		return res, fmt.Errorf("restore from %s: %w (nothing was written to %s)", opt.ReplicaURL, explainS3(err), dbPath)
	}
	if err := IntegrityCheck(ctx, tmp); err != nil {
		return res, fmt.Errorf("%w (nothing was written to %s)", err, dbPath)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return res, err
	}
	// A hard link never replaces an existing file (rename would).
	if err := os.Link(tmp, dbPath); err != nil {
		if errors.Is(err, os.ErrExist) {
			return res, fmt.Errorf("%w: %s appeared during the restore; left it alone", ErrDatabaseExists, dbPath)
		}
		return res, fmt.Errorf("move restored database into place: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	// Litestream's local scratch state (.NAME-litestream) belongs to the
	// database that is gone; a sidecar would trust its positions.
	meta := filepath.Join(dir, "."+filepath.Base(dbPath)+ls.MetaDirSuffix)
	if exists, _ := fileExists(meta); exists {
		if err := os.RemoveAll(meta); err != nil {
			return res, fmt.Errorf("database restored to %s, but removing the stale Litestream state %s failed: %w (remove it before starting the sidecar)", dbPath, meta, err)
		}
		log.Info("removed the previous database's local Litestream state", "dir", meta)
	}
	res.Restored = true
	res.Bytes = fi.Size()
	res.Duration = time.Since(start)
	log.Info("database restored", "bytes", res.Bytes, "duration", res.Duration, "first_backup", first, "latest_backup", last, "timestamp", opt.Timestamp)
	return res, nil
}

// IntegrityCheck runs PRAGMA integrity_check on the database at path (with
// Litestream's driver) and returns ErrIntegrity unless it answers "ok".
func IntegrityCheck(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return fmt.Errorf("%w: open %s: %v", ErrIntegrity, path, err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrIntegrity, path, err)
	}
	defer rows.Close()
	var msgs []string
	for rows.Next() && len(msgs) < 10 {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrIntegrity, path, err)
		}
		msgs = append(msgs, s)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrIntegrity, path, err)
	}
	if len(msgs) != 1 || msgs[0] != "ok" {
		return fmt.Errorf("%w: %s: %v", ErrIntegrity, path, msgs)
	}
	return nil
}

func fileExists(p string) (bool, error) {
	_, err := os.Stat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, err
}
