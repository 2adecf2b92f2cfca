package guildstore

import (
	"bytes"
	"context"
	"errors"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func exportOf(t testing.TB, s *Store, g uint64) ([]byte, ExportInfo) {
	t.Helper()
	var buf bytes.Buffer
	info, err := s.Export(context.Background(), g, &buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), info
}

func TestExportImportReproducesChecksumAndDashboard(t *testing.T) {
	ctx := context.Background()
	src, dst := openTest(t, "src.db"), openTest(t, "dst.db")
	const g = 77
	mustApply(t, src, sampleWrites(g, 4)...)
	mustApply(t, src, Write{Epoch: 4, Op: MessageDelete{GuildID: g, MessageID: 500, DeletedAt: t0}}) // a tombstone travels too
	// The target already has another guild; its rows must be untouched.
	mustApply(t, dst, sampleWrites(5, 0)...)
	otherSum := mustChecksum(t, dst, 5)

	data, info := exportOf(t, src, g)
	if info.Rows["messages"] != 3 || info.Rows["unseen_messages"] != 1 || info.Rows["guild_epochs"] != 1 || len(info.Rows) != len(exportTables) {
		t.Fatalf("export rows = %v", info.Rows)
	}
	if sum := mustChecksum(t, src, g); sum != info.Checksum {
		t.Fatalf("Checksum %s != export checksum %s", sum, info.Checksum)
	}
	for i := 0; i < 2; i++ { // the second import is an idempotent re-import
		got, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, info) {
			t.Fatalf("import info = %+v, want %+v", got, info)
		}
	}
	if sum := mustChecksum(t, dst, g); sum != info.Checksum {
		t.Fatalf("target checksum %s != source %s", sum, info.Checksum)
	}
	ds, _ := src.Dashboard(ctx, g)
	dd, _ := dst.Dashboard(ctx, g)
	if !reflect.DeepEqual(ds, dd) {
		t.Fatalf("dashboards differ:\nsrc %+v\ndst %+v", ds, dd)
	}
	// The tombstone came along: the late create is stored as deleted.
	mustApply(t, dst, Write{Epoch: 4, Op: MessageCreate{GuildID: g, MessageID: 500, ChannelID: 1, AuthorID: 7, CreatedAt: t0}})
	if d, _ := dst.Dashboard(ctx, g); d.Messages != 2 || d.MessagesDeleted != 2 {
		t.Fatalf("late create after import: %+v", d)
	}
	if mustChecksum(t, dst, 5) != otherSum {
		t.Fatal("import touched another guild")
	}
	if e, _ := dst.Epoch(ctx, g); e != 4 {
		t.Fatalf("epoch on target = %d", e)
	}
}

func TestImportIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	src, dst := openTest(t, "src.db"), openTest(t, "dst.db")
	const g = 77
	mustApply(t, src, sampleWrites(g, 1)...)
	data, info := exportOf(t, src, g)
	// The target has a partial, different copy of the guild from an earlier attempt.
	mustApply(t, dst, Write{Op: MessageCreate{GuildID: g, MessageID: 999, ChannelID: 1, AuthorID: 1, CreatedAt: t0}})
	before := mustChecksum(t, dst, g)

	tampered := bytes.Replace(data, []byte(`"spam"`), []byte(`"spam!"`), 1)
	wrongGuild := bytes.Replace(data, []byte(`["messages",77,`), []byte(`["messages",78,`), 1)
	lines := bytes.SplitAfter(data, []byte("\n"))
	truncated := bytes.Join(lines[:len(lines)-3], nil)
	for _, tc := range []struct {
		name string
		data []byte
		want string
		err  error
	}{
		{"tampered row", tampered, info.Checksum, ErrChecksumMismatch},
		{"wrong checksum", data, "sha256:" + strings.Repeat("0", 64), ErrChecksumMismatch},
		{"row of another guild", wrongGuild, info.Checksum, ErrBadExport},
		{"truncated", truncated, info.Checksum, ErrBadExport},
		{"garbage", []byte("hello\n"), info.Checksum, ErrBadExport},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dst.Import(ctx, g, bytes.NewReader(tc.data), tc.want)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if after := mustChecksum(t, dst, g); after != before {
				t.Fatal("failed import changed the target")
			}
		})
	}
	// A stale export (epoch below the target's) is refused too.
	if err := dst.Fence(ctx, g, 9); err != nil {
		t.Fatal(err)
	}
	before = mustChecksum(t, dst, g)
	if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale import err = %v", err)
	}
	if mustChecksum(t, dst, g) != before {
		t.Fatal("stale import changed the target")
	}
}

// TestSQLBuiltLinesAreAppendRows: for every table of integer columns, the
// lines SQLite builds (tableLines) are byte for byte appendRow's of the
// scanned values, NULLs and the extremes of int64 included; every other
// table has no SQL-built line.
func TestSQLBuiltLinesAreAppendRows(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "lines.db")
	const g = 77
	vals := []int64{0, 1, -1, 9, 10, math.MaxInt64, math.MinInt64, 1 << 53, -(1 << 53) - 1, 1234567890123}
	intOnly := 0
	for _, tb := range exportTables {
		if tb.lineSQL() == "" {
			for _, ty := range tb.types {
				if ty != cInt && ty != cNullInt {
					goto next
				}
			}
			t.Fatalf("%s has integer columns only but no SQL-built line", tb.name)
		next:
			continue
		}
		intOnly++
		err := s.w.job(ctx, func(ctx context.Context, tx *wtx) error {
			for i := range 40 {
				row := make([]any, len(tb.cols))
				row[0] = int64(g)
				for c := 1; c < len(row); c++ {
					row[c] = vals[(i*7+c*3)%len(vals)]
					if tb.types[c] == cNullInt && (i+c)%3 == 0 {
						row[c] = nil
					}
				}
				if tb.order == "guild_id" && i > 0 {
					break // one row per guild
				}
				if tb.order != "guild_id" {
					row[1] = int64(i*1_000_003 - 20_000_000) // the key: distinct
				}
				if _, err := tx.exec(ctx, insertSQL(tb), row...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", tb.name, err)
		}
		var viaSQL, viaGo []string
		if _, err := tableLines(ctx, s.rdb, tb, g, func(line []byte) error {
			viaSQL = append(viaSQL, string(line))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := tableRows(ctx, s.rdb, tb, g, func(v []any) error {
			viaGo = append(viaGo, string(appendRow(nil, tb.name, v)))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(viaGo) == 0 || !slices.Equal(viaSQL, viaGo) {
			t.Fatalf("%s: SQL-built lines differ from appendRow's:\n sql %q\n  go %q", tb.name, viaSQL, viaGo)
		}
	}
	if intOnly < 4 {
		t.Fatalf("only %d tables with SQL-built lines; want guild_epochs, guild_settings, messages, unseen_messages", intOnly)
	}
}
