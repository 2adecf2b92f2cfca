package pgmirror

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// versionTable is tern's record of the schema version.
const versionTable = "pgmirror_schema_version"

// SchemaVersion is the newest schema this build knows: the number of files
// in migrations/.
func SchemaVersion() int32 {
	m, err := loadMigrations(context.Background(), nil)
	if err != nil {
		panic(err) // embedded files: a build error, not a run-time one
	}
	return int32(len(m.Migrations))
}

func loadMigrations(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return nil, fmt.Errorf("set up schema migrations: %w", err)
	}
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	if err := m.LoadMigrations(sub); err != nil {
		return nil, fmt.Errorf("load schema migrations: %w", err)
	}
	return m, nil
}

// ErrNewerSchema is wrapped by migrateSchema's error when the database was
// migrated by a newer build.
var ErrNewerSchema = fmt.Errorf("the database's mirror schema is newer than this build")

// migrateSchema brings the schema to SchemaVersion. tern holds an advisory
// lock while it migrates, so mirrors starting together migrate once. It
// never migrates down: a database a newer build created is refused.
func migrateSchema(ctx context.Context, conn *pgx.Conn) error {
	m, err := loadMigrations(ctx, conn)
	if err != nil {
		return err
	}
	cur, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return fmt.Errorf("read the schema version (%s): %w", versionTable, err)
	}
	want := int32(len(m.Migrations))
	if cur > want {
		return fmt.Errorf("%w: it is at version %d, this build knows up to %d; run the newer modbot, or point --pg-url at another database", ErrNewerSchema, cur, want)
	}
	if cur == want {
		return nil
	}
	if err := m.Migrate(ctx); err != nil {
		if _, ok := err.(migrate.BadVersionError); ok {
			return fmt.Errorf("%w: %v", ErrNewerSchema, err)
		}
		return fmt.Errorf("migrate the mirror schema from version %d to %d: %w", cur, want, err)
	}
	return nil
}
