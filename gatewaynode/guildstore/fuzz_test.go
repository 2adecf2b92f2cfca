package guildstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Run with
//
//	go test -run '^$' -fuzz '^FuzzImportCorruptedExport$' -fuzztime 10s ./gatewaynode/guildstore/

// openFuzzStore is openTest with synchronous=NORMAL: a fuzz target commits
// a few transactions per input, and fsync is not what it tests.
func openFuzzStore(t testing.TB, name string) *Store {
	t.Helper()
	s, err := OpenWithOptions(context.Background(), filepath.Join(t.TempDir(), name), Options{
		Synchronous: "NORMAL", Now: func() time.Time { return t0.Add(time.Hour) }, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// dbDump is every row of every table, each table's rows as sorted strings.
type dbDump map[string][]string

// dumpDB reads the whole database. With guild != 0 it keeps only that
// guild's rows of the export tables (without mod_actions.id, an internal
// row id that does not travel); with except != 0 it leaves that guild's
// rows of the export tables (and sqlite_sequence, which their ids move)
// out instead.
func dumpDB(t testing.TB, s *Store, guild, except uint64) dbDump {
	t.Helper()
	ctx := context.Background()
	rows, err := s.rdb.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	out := dbDump{}
	for _, tb := range tables {
		exported := tableIndex(tb) >= 0 || slices.Contains(rollupTables, tb) // the rollups are guild data too
		if (guild != 0 && !exported) || (except != 0 && tb == "sqlite_sequence") {
			continue
		}
		rows, err := s.rdb.QueryContext(ctx, `SELECT * FROM `+tb)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		var lines []string
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var g uint64
			var parts []string
			for i, c := range cols {
				if c == "guild_id" {
					if v, ok := vals[i].(int64); ok {
						g = uint64(v)
					}
				}
				if guild != 0 && tb == "mod_actions" && c == "id" {
					continue
				}
				if b, ok := vals[i].([]byte); ok {
					vals[i] = string(b)
				}
				parts = append(parts, fmt.Sprintf("%s=%#v", c, vals[i]))
			}
			if exported && ((guild != 0 && g != guild) || (except != 0 && g == except)) {
				continue
			}
			lines = append(lines, strings.Join(parts, " "))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		slices.Sort(lines)
		out[tb] = lines
	}
	return out
}

func diffDumps(want, got dbDump) string {
	var b strings.Builder
	for tb := range want {
		if !slices.Equal(want[tb], got[tb]) {
			fmt.Fprintf(&b, "%s:\n  before %q\n  after  %q\n", tb, want[tb], got[tb])
		}
	}
	for tb := range got {
		if _, ok := want[tb]; !ok {
			fmt.Fprintf(&b, "%s: new table\n", tb)
		}
	}
	return b.String()
}

// clearGuild removes every row of the guild's data (its epoch too), so the
// next input starts from a known target state.
func clearGuild(t testing.TB, s *Store, g uint64) {
	t.Helper()
	err := s.w.job(context.Background(), func(ctx context.Context, tx *wtx) error {
		for _, tb := range exportTables {
			if _, err := tx.exec(ctx, `DELETE FROM `+tb.name+` WHERE guild_id = ?`, int64(g)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// What the target holds of the guild before the import.
const (
	preEmpty    = iota // nothing
	prePartial         // a partial, different copy (an earlier attempt) at a lower epoch
	preImported        // this very export, imported before
	preNewer           // a newer epoch than the export's: the import is stale
	preStates
)

// FuzzImportCorruptedExport mutates the bytes of a real export (a guild
// with rows in every exported table, a tombstone and text that needs
// escaping) and imports them into a target that holds another guild, the
// pod's own held events and dead letters for this guild, and — depending
// on pre — nothing of the guild, a partial different copy, the same
// export, or a newer epoch. The expected checksum is the source's, as in a
// move. Properties:
//
//   - a refused import returns ErrBadExport, ErrChecksumMismatch or
//     ErrStaleEpoch and leaves the target database exactly as it was,
//     every row of every table (no half-import);
//   - an accepted import (only possible if the mutation is a no-op for the
//     rows: a different but equivalent encoding) reports the source's
//     checksum and row counts, and leaves the guild's rows exactly the
//     source's and everything else exactly as it was;
//   - a stale export is never accepted.
func FuzzImportCorruptedExport(f *testing.F) {
	ctx := context.Background()
	const g = 77
	src := openFuzzStore(f, "src.db")
	if _, err := src.Apply(ctx, sampleWrites(g, 4)...); err != nil {
		f.Fatal(err)
	}
	if _, err := src.Apply(ctx, Write{Epoch: 4, Op: MessageDelete{GuildID: g, MessageID: 500, DeletedAt: t0}}); err != nil {
		f.Fatal(err)
	}
	data, info := exportOf(f, src, g)
	want := dumpDB(f, src, g, 0)

	dst := openFuzzStore(f, "dst.db")
	if _, err := dst.Apply(ctx, sampleWrites(5, 0)...); err != nil {
		f.Fatal(err)
	}
	if _, err := dst.Hold(ctx, g, "MESSAGE_CREATE", []byte(`{"id":"600"}`)); err != nil {
		f.Fatal(err)
	}
	if _, err := dst.AddDeadLetter(ctx, DeadLetter{GuildID: g, Type: "MESSAGE_UPDATE", Payload: []byte(`{}`), Error: "boom", DeliveryID: "d1"}); err != nil {
		f.Fatal(err)
	}

	lines := bytes.SplitAfter(data, []byte("\n"))
	for pre := uint8(0); pre < preStates; pre++ {
		f.Add(pre, data)
	}
	for _, cut := range []int{1, 2, len(lines) / 2, len(lines) - 2, len(lines) - 1} {
		f.Add(uint8(preEmpty), bytes.Join(lines[:cut], nil))
		f.Add(uint8(prePartial), bytes.Join(lines[:cut], nil))
	}
	f.Add(uint8(prePartial), data[:len(data)-1])   // the trailer's newline
	f.Add(uint8(preImported), data[:len(data)-20]) // inside the trailer
	f.Add(uint8(prePartial), bytes.Replace(data, []byte(`"spam"`), []byte(`"spam!"`), 1))
	f.Add(uint8(prePartial), bytes.Replace(data, []byte(`["messages",77,`), []byte(`["messages",78,`), 1))
	f.Add(uint8(prePartial), append(bytes.Join(lines[:3], nil), bytes.Join(lines[2:], nil)...)) // a row twice
	f.Add(uint8(prePartial), append(append([]byte(nil), data...), lines[1]...))                 // data after the trailer
	// Equivalent encodings of the same rows: accepted.
	f.Add(uint8(prePartial), bytes.Replace(data, []byte(`"spam"`), []byte(`"sp\u0061m"`), 1))
	f.Add(uint8(preEmpty), bytes.Replace(data, []byte(`{"end":true,`), []byte(`{"end":true, "extra":1,`), 1))
	f.Add(uint8(preEmpty), bytes.Replace(data, []byte(`["guild_epochs",77,4]`), []byte(`["guild_epochs",77,0004]`), 1))

	f.Fuzz(func(t *testing.T, pre uint8, in []byte) {
		pre %= preStates
		clearGuild(t, dst, g)
		switch pre {
		case prePartial:
			if _, err := dst.Apply(ctx, Write{Op: MessageCreate{GuildID: g, MessageID: 999, ChannelID: 1, AuthorID: 1, CreatedAt: t0}}); err != nil {
				t.Fatal(err)
			}
		case preImported:
			if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); err != nil {
				t.Fatal(err)
			}
		case preNewer:
			if _, err := dst.Apply(ctx, Write{Epoch: 9, Op: MessageCreate{GuildID: g, MessageID: 999, ChannelID: 1, AuthorID: 1, CreatedAt: t0}}); err != nil {
				t.Fatal(err)
			}
		}
		before := dumpDB(t, dst, 0, 0)
		others := dumpDB(t, dst, 0, g)

		got, err := dst.Import(ctx, g, bytes.NewReader(in), info.Checksum)
		if err != nil {
			if !errors.Is(err, ErrBadExport) && !errors.Is(err, ErrChecksumMismatch) && !errors.Is(err, ErrStaleEpoch) {
				t.Fatalf("refused with %v, which is none of the import errors", err)
			}
			if d := diffDumps(before, dumpDB(t, dst, 0, 0)); d != "" {
				t.Fatalf("a refused import (%v) changed the target:\n%s", err, d)
			}
			return
		}
		if pre == preNewer {
			t.Fatalf("a stale export was imported over epoch 9")
		}
		if !reflect.DeepEqual(got, info) {
			t.Fatalf("accepted %q as %+v, the export is %+v", in, got, info)
		}
		if d := diffDumps(want, dumpDB(t, dst, g, 0)); d != "" {
			t.Fatalf("accepted, but the guild's rows are not the source's:\n%s", d)
		}
		if d := diffDumps(others, dumpDB(t, dst, 0, g)); d != "" {
			t.Fatalf("the import changed more than the guild's data:\n%s", d)
		}
	})
}

func TestFuzzDumpSeesEveryTable(t *testing.T) {
	ctx := context.Background()
	s := openFuzzStore(t, "d.db")
	mustApply(t, s, sampleWrites(77, 4)...)
	if _, err := s.Hold(ctx, 77, "X", []byte("p")); err != nil {
		t.Fatal(err)
	}
	d := dumpDB(t, s, 0, 0)
	for _, tb := range append([]string{"held_events", "dead_letters"}, "messages", "mod_actions", "reports", "guild_settings", "guild_epochs") {
		if _, ok := d[tb]; !ok {
			t.Errorf("the dump has no table %s", tb)
		}
	}
	if len(d["held_events"]) != 1 || len(d["messages"]) != 3 || len(d["mod_actions"]) != 5 {
		t.Fatalf("dump %v", d)
	}
	if g := dumpDB(t, s, 77, 0); len(g["held_events"]) != 0 || len(g["mod_actions"]) != 5 || strings.Contains(" "+strings.Join(g["mod_actions"], " "), " id=") {
		t.Fatalf("guild dump %v", g)
	}
	if o := dumpDB(t, s, 0, 77); len(o["messages"]) != 0 || len(o["held_events"]) != 1 {
		t.Fatalf("everything-but-the-guild dump %v", o)
	}
}
