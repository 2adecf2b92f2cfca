package guildstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Export format ("modbot-guild-export" version 2), newline-delimited JSON:
//
//	{"format":"modbot-guild-export","version":2,"guild_id":"<id>"}      header
//	["<table>",v1,v2,...]                                               one line per row
//	{"end":true,"rows":{"<table>":n,...},"checksum":"sha256:<hex>"}   trailer
//
// Row lines are in the canonical encoding: tables in exportTables order, rows
// in each table's key order, values in column order; integers in decimal,
// NULL as null, text as a JSON string (encoding/json escaping), blobs as a
// base64 (std, padded) JSON string; no spaces. The checksum is SHA-256 over
// the concatenation of the canonical row lines, each with its trailing "\n".
// Header and trailer are not hashed. Internal row ids that do not travel
// (mod_actions.id) are not exported; their order is the export order.
//
// Only the guild's data travels (exportTables): the held-event buffer
// (held_events, held_cursor) and dead letters belong to the pod that received
// those events and never appear in an export. Version 1 (before 0002/0003)
// carried the held buffer and settings without versions; a pod reads only
// its own version and refuses others with ErrBadExport (a move between pods
// of two releases aborts, leaving the guild on its source).

const (
	exportFormat  = "modbot-guild-export"
	exportVersion = 2
)

// ExportInfo describes an export or import.
type ExportInfo struct {
	GuildID  uint64         `json:"guild_id,string"`
	Rows     map[string]int `json:"rows"`
	Checksum string         `json:"checksum"`
}

type colType int

const (
	cInt colType = iota
	cNullInt
	cText
	cNullText
	cBlob
)

type tableSpec struct {
	name  string
	cols  []string // guild_id first
	types []colType
	order string
}

// exportTables lists every table of a guild's data, in canonical order: what
// Export ships, Import replaces, Checksum and Counts cover and DeleteGuild
// removes (but the epoch). Not the pod's own per-guild tables (held_events,
// held_cursor, dead_letters). Read-only.
var exportTables = []tableSpec{
	{"guild_epochs", []string{"guild_id", "epoch"}, []colType{cInt, cInt}, "guild_id"},
	{"guild_settings", []string{"guild_id", "mod_role_id", "mod_role_version", "modlog_channel_id", "modlog_channel_version", "updated_at"},
		[]colType{cInt, cNullInt, cInt, cNullInt, cInt, cInt}, "guild_id"},
	{"messages", []string{"guild_id", "message_id", "channel_id", "author_id", "created_at", "edited_at", "deleted_at", "content_length"},
		[]colType{cInt, cInt, cInt, cInt, cInt, cNullInt, cNullInt, cInt}, "message_id"},
	{"unseen_messages", []string{"guild_id", "message_id", "edited_at", "content_length", "deleted_at"},
		[]colType{cInt, cInt, cNullInt, cInt, cNullInt}, "message_id"},
	{"reports", []string{"guild_id", "id", "reporter_id", "target_user_id", "message_id", "channel_id", "message_content", "reason",
		"created_at", "modlog_channel_id", "modlog_posted_at"},
		[]colType{cInt, cInt, cInt, cInt, cNullInt, cNullInt, cNullText, cText, cInt, cNullInt, cNullInt}, "id"},
	// In the order the actions happened, not the order they were processed
	// (mod_actions.id), so a reordered delivery exports the same lines.
	{"mod_actions", []string{"guild_id", "kind", "user_id", "moderator_id", "reason", "created_at", "dedupe_key"},
		[]colType{cInt, cText, cInt, cNullInt, cText, cInt, cText}, "created_at, dedupe_key"},
}

func tableIndex(name string) int {
	for i, t := range exportTables {
		if t.name == name {
			return i
		}
	}
	return -1
}

// appendRow appends the canonical encoding of one row (with "\n").
// vals hold int64, nil, string or []byte.
func appendRow(buf []byte, table string, vals []any) []byte {
	buf = append(buf, `["`...)
	buf = append(buf, table...)
	buf = append(buf, '"')
	for _, v := range vals {
		buf = append(buf, ',')
		switch x := v.(type) {
		case nil:
			buf = append(buf, "null"...)
		case int64:
			buf = strconv.AppendInt(buf, x, 10)
		case string:
			buf = appendJSONString(buf, x)
		case []byte:
			buf = append(buf, '"')
			buf = base64.StdEncoding.AppendEncode(buf, x)
			buf = append(buf, '"')
		default:
			panic(fmt.Sprintf("guildstore: unexpected value %T", v))
		}
	}
	return append(buf, "]\n"...)
}

func appendJSONString(buf []byte, s string) []byte {
	simple := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			simple = false
			break
		}
	}
	if simple {
		buf = append(buf, '"')
		buf = append(buf, s...)
		return append(buf, '"')
	}
	b, _ := json.Marshal(s) // cannot fail for a string
	return append(buf, b...)
}

// rowScanner scans a table's rows into canonical values.
type rowScanner struct {
	spec  tableSpec
	dest  []any
	vals  []any
	ints  []int64
	nints []sql.NullInt64
	strs  []string
	nstrs []sql.NullString
	blobs [][]byte
}

func newRowScanner(spec tableSpec) *rowScanner {
	n := len(spec.cols)
	rs := &rowScanner{spec: spec, dest: make([]any, n), vals: make([]any, n), ints: make([]int64, n),
		nints: make([]sql.NullInt64, n), strs: make([]string, n), nstrs: make([]sql.NullString, n), blobs: make([][]byte, n)}
	for i, t := range spec.types {
		switch t {
		case cInt:
			rs.dest[i] = &rs.ints[i]
		case cNullInt:
			rs.dest[i] = &rs.nints[i]
		case cText:
			rs.dest[i] = &rs.strs[i]
		case cNullText:
			rs.dest[i] = &rs.nstrs[i]
		case cBlob:
			rs.dest[i] = &rs.blobs[i]
		}
	}
	return rs
}

func (rs *rowScanner) scan(rows *sql.Rows) ([]any, error) {
	if err := rows.Scan(rs.dest...); err != nil {
		return nil, err
	}
	for i, t := range rs.spec.types {
		switch t {
		case cInt:
			rs.vals[i] = rs.ints[i]
		case cNullInt:
			if rs.nints[i].Valid {
				rs.vals[i] = rs.nints[i].Int64
			} else {
				rs.vals[i] = nil
			}
		case cText:
			rs.vals[i] = rs.strs[i]
		case cNullText:
			if rs.nstrs[i].Valid {
				rs.vals[i] = rs.nstrs[i].String
			} else {
				rs.vals[i] = nil
			}
		case cBlob:
			b := rs.blobs[i]
			if b == nil {
				b = []byte{}
			}
			rs.vals[i] = b
		}
	}
	return rs.vals, nil
}

// Export streams the guild's data rows (exportTables), from one consistent
// read snapshot: one read transaction on a read connection, never the
// writer, so other writes (the guild's own included) commit while it
// streams and it sees none of them (TestAnExportIsOneSnapshotAndNeverHoldsTheWriter).
// A guild whose import is unfinished here fails with ErrImporting. The pod's held events and dead letters for the guild are
// not included: they stay with this pod.
func (s *Store) Export(ctx context.Context, guildID uint64, w io.Writer) (ExportInfo, error) {
	info, err := s.export(ctx, guildID, w, true)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("export guild %d: %w", guildID, err)
	}
	return info, nil
}

// Checksum computes the export checksum from what is stored for the guild.
func (s *Store) Checksum(ctx context.Context, guildID uint64) (ExportInfo, error) {
	info, err := s.export(ctx, guildID, io.Discard, false)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("checksum guild %d: %w", guildID, err)
	}
	return info, nil
}

func (s *Store) export(ctx context.Context, guildID uint64, w io.Writer, framed bool) (ExportInfo, error) {
	tx, err := s.rdb.BeginTx(ctx, nil)
	if err != nil {
		return ExportInfo{}, err
	}
	defer tx.Rollback()
	var importing int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM guild_imports WHERE guild_id = ?`, int64(guildID)).Scan(&importing); err != nil {
		return ExportInfo{}, fmt.Errorf("read guild_imports: %w", err)
	}
	if importing > 0 {
		return ExportInfo{}, ErrImporting
	}
	return exportTx(ctx, tx, guildID, w, framed)
}

func exportTx(ctx context.Context, q queryer, guildID uint64, w io.Writer, framed bool) (ExportInfo, error) {
	info := ExportInfo{GuildID: guildID, Rows: map[string]int{}}
	bw := bufio.NewWriterSize(w, 256<<10)
	h := sha256.New()
	if framed {
		fmt.Fprintf(bw, `{"format":%q,"version":%d,"guild_id":"%d"}`+"\n", exportFormat, exportVersion, guildID)
	}
	for _, t := range exportTables {
		n, err := tableLines(ctx, q, t, guildID, func(line []byte) error {
			h.Write(line)
			if framed {
				if _, err := bw.Write(line); err != nil {
					return fmt.Errorf("write: %w", err)
				}
			}
			return nil
		})
		if err != nil {
			return info, err
		}
		info.Rows[t.name] = n
	}
	info.Checksum = "sha256:" + hex.EncodeToString(h.Sum(nil))
	if framed {
		tr, err := json.Marshal(trailer{End: true, Rows: info.Rows, Checksum: info.Checksum})
		if err != nil {
			return info, err
		}
		bw.Write(tr)
		bw.WriteByte('\n')
		if err := bw.Flush(); err != nil {
			return info, fmt.Errorf("write: %w", err)
		}
	}
	return info, nil
}

// tableRows calls each with every row of the guild in table t, in its key
// order (vals is reused between calls), and returns how many there were.
func tableRows(ctx context.Context, q queryer, t tableSpec, guildID uint64, each func(vals []any) error) (int, error) {
	rs := newRowScanner(t)
	return queryTable(ctx, q, t, strings.Join(t.cols, ", "), guildID, func(rows *sql.Rows) error {
		vals, err := rs.scan(rows)
		if err != nil {
			return fmt.Errorf("read %s: %w", t.name, err)
		}
		return each(vals)
	})
}

// tableLines calls each with the canonical line (appendRow's) of every row
// of the guild in table t, in its key order; line is only valid during the
// call. A table of integer columns only (messages, unseen_messages: nearly
// every row of a big guild) has SQLite build its lines, one value per row,
// instead of scanning each column into Go (TestSQLBuiltLinesAreAppendRows
// holds the two encodings equal; BenchmarkExport: 301k → 333k rows/s).
func tableLines(ctx context.Context, q queryer, t tableSpec, guildID uint64, each func(line []byte) error) (int, error) {
	expr := t.lineSQL()
	if expr == "" {
		var buf []byte
		return tableRows(ctx, q, t, guildID, func(vals []any) error {
			buf = appendRow(buf[:0], t.name, vals)
			return each(buf)
		})
	}
	var line sql.RawBytes
	return queryTable(ctx, q, t, expr, guildID, func(rows *sql.Rows) error {
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("read %s: %w", t.name, err)
		}
		return each(line)
	})
}

// queryTable selects list from the guild's rows of t in key order, calls
// each on every row and returns how many there were.
func queryTable(ctx context.Context, q queryer, t tableSpec, list string, guildID uint64, each func(rows *sql.Rows) error) (int, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+list+` FROM `+t.name+` WHERE guild_id = ? ORDER BY `+t.order, int64(guildID))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", t.name, err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if err := each(rows); err != nil {
			return n, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("read %s: %w", t.name, err)
	}
	return n, nil
}

// lineSQL is the SQL expression of a row's canonical line when every column
// of t is an integer (NULL or not), else "".
func (t tableSpec) lineSQL() string {
	var b strings.Builder
	b.WriteString(`'["` + t.name + `"'`)
	for i, c := range t.cols {
		switch t.types[i] {
		case cInt:
			b.WriteString(` || ',' || ` + c)
		case cNullInt:
			b.WriteString(` || ',' || ifnull(` + c + `, 'null')`)
		default:
			return ""
		}
	}
	b.WriteString(` || ']' || char(10)`)
	return b.String()
}

type header struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	GuildID uint64 `json:"guild_id,string"`
}

type trailer struct {
	End      bool           `json:"end"`
	Rows     map[string]int `json:"rows"`
	Checksum string         `json:"checksum"`
}

// exportReader parses and validates an export stream, re-encoding each row
// canonically and hashing it.
type exportReader struct {
	br      *bufio.Reader
	guildID uint64
	h       hash.Hash
	rows    map[string]int
	last    int // index of the last table seen
	trailer *trailer
	buf     []byte
	toks    [][]byte
}

func newExportReader(r io.Reader, guildID uint64) (*exportReader, error) {
	er := &exportReader{br: bufio.NewReaderSize(r, 256<<10), guildID: guildID, h: sha256.New(), rows: map[string]int{}}
	line, err := er.line()
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadExport, err)
	}
	var hd header
	if err := json.Unmarshal(line, &hd); err != nil || hd.Format != exportFormat {
		return nil, fmt.Errorf("%w: bad header %.100q", ErrBadExport, line)
	}
	if hd.Version != exportVersion {
		return nil, fmt.Errorf("%w: export format version %d, this pod reads version %d (exported by a pod of another release?)",
			ErrBadExport, hd.Version, exportVersion)
	}
	if hd.GuildID != guildID {
		return nil, fmt.Errorf("%w: export is for guild %d, not %d", ErrBadExport, hd.GuildID, guildID)
	}
	return er, nil
}

func (er *exportReader) line() ([]byte, error) {
	line, err := er.br.ReadBytes('\n')
	if err == io.EOF && len(line) > 0 {
		return nil, io.ErrUnexpectedEOF // every line ends with \n; a missing one means truncation
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(line, []byte{'\n'}), nil
}

// next returns the next row (table spec and values), or io.EOF after a valid trailer.
func (er *exportReader) next() (tableSpec, []any, error) {
	line, err := er.line()
	if err == io.EOF {
		return tableSpec{}, nil, fmt.Errorf("%w: truncated (no trailer)", ErrBadExport)
	}
	if err != nil {
		return tableSpec{}, nil, fmt.Errorf("%w: %v", ErrBadExport, err)
	}
	if len(line) > 0 && line[0] == '{' {
		var tr trailer
		if err := json.Unmarshal(line, &tr); err != nil || !tr.End {
			return tableSpec{}, nil, fmt.Errorf("%w: bad trailer %.100q", ErrBadExport, line)
		}
		er.trailer = &tr
		if _, err := er.br.ReadByte(); err != io.EOF {
			return tableSpec{}, nil, fmt.Errorf("%w: data after trailer", ErrBadExport)
		}
		return tableSpec{}, nil, io.EOF
	}
	raw, err := splitRow(line, er.toks[:0])
	if err != nil || len(raw) < 2 {
		return tableSpec{}, nil, fmt.Errorf("%w: bad row %.100q", ErrBadExport, line)
	}
	er.toks = raw
	var table string
	if err := json.Unmarshal(raw[0], &table); err != nil {
		return tableSpec{}, nil, fmt.Errorf("%w: bad table in row %.100q", ErrBadExport, line)
	}
	ti := tableIndex(table)
	if ti < 0 || ti < er.last {
		return tableSpec{}, nil, fmt.Errorf("%w: unknown or out-of-order table %q", ErrBadExport, table)
	}
	er.last = ti
	spec := exportTables[ti]
	if len(raw)-1 != len(spec.cols) {
		return tableSpec{}, nil, fmt.Errorf("%w: %s row has %d values, want %d", ErrBadExport, table, len(raw)-1, len(spec.cols))
	}
	vals := make([]any, len(spec.cols))
	for i, t := range spec.types {
		v, err := decodeValue(raw[i+1], t)
		if err != nil {
			return tableSpec{}, nil, fmt.Errorf("%w: %s.%s: %v", ErrBadExport, table, spec.cols[i], err)
		}
		vals[i] = v
	}
	if vals[0] != int64(er.guildID) {
		return tableSpec{}, nil, fmt.Errorf("%w: %s row for guild %v in export of guild %d", ErrBadExport, table, vals[0], er.guildID)
	}
	er.buf = appendRow(er.buf[:0], table, vals)
	er.h.Write(er.buf)
	er.rows[table]++
	return spec, vals, nil
}

// splitRow splits a row line (a flat JSON array of numbers, null and
// strings) into its raw value tokens, without allocating per value.
func splitRow(line []byte, toks [][]byte) ([][]byte, error) {
	if len(line) < 2 || line[0] != '[' || line[len(line)-1] != ']' {
		return nil, errors.New("not an array")
	}
	body := line[1 : len(line)-1]
	for i := 0; i < len(body); {
		start := i
		if body[i] == '"' {
			i++
			for i < len(body) && body[i] != '"' {
				if body[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(body) {
				return nil, errors.New("unterminated string")
			}
			i++
		} else {
			for i < len(body) && body[i] != ',' {
				i++
			}
		}
		toks = append(toks, body[start:i])
		if i < len(body) {
			if body[i] != ',' {
				return nil, errors.New("expected ,")
			}
			i++
			if i == len(body) {
				return nil, errors.New("trailing ,")
			}
		}
	}
	return toks, nil
}

// parseInt parses a canonical decimal int64 token.
func parseInt(b []byte) (int64, error) {
	neg := len(b) > 0 && b[0] == '-'
	d := b
	if neg {
		d = b[1:]
	}
	if len(d) == 0 || len(d) > 19 {
		return strconv.ParseInt(string(b), 10, 64)
	}
	var n int64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad integer %q", b)
		}
		n = n*10 + int64(c-'0')
		if n < 0 {
			return strconv.ParseInt(string(b), 10, 64)
		}
	}
	if neg {
		n = -n
	}
	return n, nil
}

func decodeValue(raw []byte, t colType) (any, error) {
	if string(raw) == "null" {
		if t == cNullInt || t == cNullText {
			return nil, nil
		}
		return nil, errors.New("null in NOT NULL column")
	}
	switch t {
	case cInt, cNullInt:
		return parseInt(raw)
	case cText, cNullText:
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case cBlob:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return base64.StdEncoding.DecodeString(s)
	}
	return nil, errors.New("unknown column type")
}

// finish checks the trailer against what was read and returns the info.
func (er *exportReader) finish(wantChecksum string) (ExportInfo, error) {
	info := ExportInfo{GuildID: er.guildID, Rows: map[string]int{}, Checksum: "sha256:" + hex.EncodeToString(er.h.Sum(nil))}
	for _, t := range exportTables {
		info.Rows[t.name] = er.rows[t.name]
		if er.trailer.Rows[t.name] != er.rows[t.name] {
			return info, fmt.Errorf("%w: trailer says %d %s rows, stream has %d", ErrBadExport, er.trailer.Rows[t.name], t.name, er.rows[t.name])
		}
	}
	if info.Checksum != er.trailer.Checksum {
		return info, fmt.Errorf("rows hash to %s, trailer says %s: %w", info.Checksum, er.trailer.Checksum, ErrChecksumMismatch)
	}
	if info.Checksum != wantChecksum {
		return info, fmt.Errorf("rows hash to %s, want %s: %w", info.Checksum, wantChecksum, ErrChecksumMismatch)
	}
	return info, nil
}

// Import replaces the guild's data rows (exportTables) with the export read
// from r, once the whole export is verified: its rows must hash to
// wantChecksum and match the stream's trailer, else nothing changes. The
// stream is verified into a local spool file first, so nothing is written
// while the network transfers it; the verified rows are then published in
// bounded transactions interleaved with other guilds' writes (import.go),
// and the last one makes the import complete. A failed publish leaves
// nothing of the guild but its epoch. Re-importing the same export is a
// no-op in effect. An export whose epoch is lower than the guild's stored
// epoch fails with ErrStaleEpoch.
//
// This pod's held events and dead letters for the guild are neither deleted
// nor replaced: they are events this pod received (e.g. as the shard holder,
// after a forward to the old owner failed) and still has to deliver, in
// their order, after the import.
func (s *Store) Import(ctx context.Context, guildID uint64, r io.Reader, wantChecksum string) (ExportInfo, error) {
	start := time.Now()
	info, err := s.importGuild(ctx, guildID, r, wantChecksum)
	if err != nil {
		return ExportInfo{}, fmt.Errorf("import guild %d: %w", guildID, err)
	}
	s.log.Info("imported guild", "guild", guildID, "rows", info.Rows, "checksum", info.Checksum, "took", time.Since(start).Round(time.Millisecond))
	return info, nil
}

func (s *Store) importGuild(ctx context.Context, guildID uint64, r io.Reader, wantChecksum string) (ExportInfo, error) {
	spool, err := os.CreateTemp(filepath.Dir(s.path), ".import-*.ndjson")
	if err != nil {
		return ExportInfo{}, fmt.Errorf("spool: %w", err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()

	// Verify the stream, spooling it, before writing anything.
	sw := bufio.NewWriterSize(spool, 256<<10)
	fmt.Fprintf(sw, `{"format":%q,"version":%d,"guild_id":"%d"}`+"\n", exportFormat, exportVersion, guildID)
	_, tr, err := verifyExport(ctx, r, guildID, wantChecksum, sw)
	if err != nil {
		return ExportInfo{}, err
	}
	trb, _ := json.Marshal(tr)
	sw.Write(trb)
	sw.WriteByte('\n')
	if err := sw.Flush(); err != nil {
		return ExportInfo{}, fmt.Errorf("spool: %w", err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return ExportInfo{}, fmt.Errorf("spool: %w", err)
	}
	return s.publish(ctx, guildID, spool, wantChecksum)
}

func insertSQL(t tableSpec) string {
	return `INSERT INTO ` + t.name + ` (` + strings.Join(t.cols, ", ") + `) VALUES (?` + strings.Repeat(", ?", len(t.cols)-1) + `)`
}

// deleteChunk is how many rows PruneUnseenMessages removes per transaction.
const deleteChunk = 5000

// DeleteGuild removes all of the guild's rows, in bounded transactions
// (chunkRows, chunkBudget) so other guilds' writes interleave. The guild's fencing epoch is kept as a
// tombstone so a stale writer stays fenced. Idempotent; safe to resume. It
// stops with ErrStaleEpoch if the guild's stored epoch rises above atEpoch
// while it runs (the guild was moved back here and imported again).
//
// The held-event buffer (held_events, held_cursor) and dead letters are
// kept: they are not the guild's data but this pod's. On a pod that no
// longer owns the guild the buffer is that pod's outbox, still being appended
// to by events routed with a stale map, and the outbox delivers and drops it.
// Deleting it here lost events held between the outbox's last delivery and
// the delete (e2e TestMoveUnderTrafficLosesNothing).
func (s *Store) DeleteGuild(ctx context.Context, guildID, atEpoch uint64) error {
	// Stop if the guild came back at a newer epoch meanwhile (moved here
	// again): those rows belong to the new owner.
	check := func(ctx context.Context, t *wtx) error {
		var stored int64
		if err := t.queryRow(ctx, `SELECT epoch FROM guild_epochs WHERE guild_id = ?`, int64(guildID)).Scan(&stored); err == nil && uint64(stored) > atEpoch {
			return fmt.Errorf("guild is at epoch %d, newer than %d: %w", stored, atEpoch, ErrStaleEpoch)
		}
		return nil
	}
	if err := s.deleteGuildRows(ctx, guildID, exportTables[1:], check, nil); err != nil {
		return fmt.Errorf("delete guild %d: %w", guildID, err)
	}
	s.log.Info("deleted guild", "guild", guildID)
	return nil
}
