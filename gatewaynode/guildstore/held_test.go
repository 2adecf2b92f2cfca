package guildstore

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func holdN(t testing.TB, s *Store, g uint64, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, err := s.Hold(context.Background(), g, "MESSAGE_CREATE", []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
}

func allHeld(t testing.TB, s *Store, g uint64) []HeldEvent {
	t.Helper()
	var out []HeldEvent
	var after int64
	for {
		page, err := s.HeldPage(context.Background(), g, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Seq
	}
}

// TestImportKeepsTheTargetsHeldEventsInOrder: the target of a move is often
// the guild's shard holder, which holds events for the guild itself (a
// forward to the old owner failed). Importing the guild from the source's
// export keeps every one of them, in order, and their seqs keep counting.
func TestImportKeepsTheTargetsHeldEventsInOrder(t *testing.T) {
	ctx := context.Background()
	src, dst := openTest(t, "src.db"), openTest(t, "dst.db")
	const g = 77
	mustApply(t, src, sampleWrites(g, 3)...)
	holdN(t, src, g, 1, 4) // the source's own held events stay on the source
	// The target has an older copy of the guild and holds 30 of its events.
	mustApply(t, dst, sampleWrites(g, 1)...)
	holdN(t, dst, g, 1, 30)
	holdN(t, dst, 5, 1, 2) // and events of another guild
	if _, err := dst.AddDeadLetter(ctx, DeadLetter{GuildID: g, Type: "MESSAGE_CREATE", DeliveryID: "s:1", Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	before := allHeld(t, dst, g)

	data, info := exportOf(t, src, g)
	if _, err := dst.Import(ctx, g, bytes.NewReader(data), info.Checksum); err != nil {
		t.Fatal(err)
	}
	after := allHeld(t, dst, g)
	if len(after) != 30 || !reflect.DeepEqual(after, before) {
		t.Fatalf("held events after import: %d, want the 30 held before, unchanged", len(after))
	}
	for i, h := range after {
		if h.Seq != int64(i+1) || string(h.Payload) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Fatalf("held event %d: seq %d payload %s", i, h.Seq, h.Payload)
		}
	}
	if n, err := dst.HeldCount(ctx, g); err != nil || n != 30 {
		t.Fatalf("HeldCount = %d, %v", n, err)
	}
	if seq, _ := dst.Hold(ctx, g, "X", nil); seq != 31 {
		t.Fatalf("next seq after import = %d, want 31 (never reused)", seq)
	}
	if n, _ := dst.HeldCount(ctx, 5); n != 2 {
		t.Fatalf("other guild's held events: %d", n)
	}
	if n, _ := src.HeldCount(ctx, g); n != 4 {
		t.Fatalf("source's held events: %d, want 4", n)
	}
	if n, _ := dst.DeadLetterCount(ctx, g); n != 1 {
		t.Fatalf("target's dead letters after import: %d, want 1", n)
	}
	if mustChecksum(t, dst, g) != info.Checksum {
		t.Fatal("target's data differs from the export")
	}
}

// TestExportNeverShipsHeldEvents: held events are not guild data — not in
// the export, not in the checksum, not in Counts — and exporting leaves them.
func TestExportNeverShipsHeldEvents(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	const g = 9
	mustApply(t, s, sampleWrites(g, 2)...)
	sum := mustChecksum(t, s, g)
	holdN(t, s, g, 1, 3)
	if got := mustChecksum(t, s, g); got != sum {
		t.Fatal("holding events changed the guild's checksum")
	}
	data, info := exportOf(t, s, g)
	if bytes.Contains(data, []byte("held")) {
		t.Fatalf("export mentions held events:\n%s", data)
	}
	for table := range info.Rows {
		if strings.HasPrefix(table, "held") {
			t.Fatalf("export info counts %s", table)
		}
	}
	counts, _ := s.Counts(ctx, g)
	if _, ok := counts["held_events"]; ok {
		t.Fatalf("Counts includes held events: %v", counts)
	}
	if n, _ := s.HeldCount(ctx, g); n != 3 {
		t.Fatalf("held after export: %d", n)
	}
	if err := s.DropHeld(ctx, g, 3); err != nil {
		t.Fatal(err)
	}
	if got := mustChecksum(t, s, g); got != sum {
		t.Fatal("dropping held events changed the guild's checksum")
	}
}

// TestDeleteGuildKeepsHeldEvents: deleting a guild's copy keeps this pod's
// held events and dead letters for it (they still have to be delivered).
func TestDeleteGuildKeepsHeldEvents(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	const g = 9
	mustApply(t, s, sampleWrites(g, 2)...)
	holdN(t, s, g, 1, 5)
	if _, err := s.AddDeadLetter(ctx, DeadLetter{GuildID: g, Type: "MESSAGE_CREATE", Payload: []byte(`{}`), Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteGuild(ctx, g, 2); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Counts(ctx, g); c["messages"] != 0 || c["mod_actions"] != 0 {
		t.Fatalf("guild data left: %v", c)
	}
	if hs := allHeld(t, s, g); len(hs) != 5 || hs[0].Seq != 1 || hs[4].Seq != 5 {
		t.Fatalf("held events after DeleteGuild: %+v", hs)
	}
	if n, _ := s.DeadLetterCount(ctx, g); n != 1 {
		t.Fatalf("dead letters after DeleteGuild: %d", n)
	}
	if ids, _ := s.GuildIDs(ctx); len(ids) != 0 {
		t.Fatalf("GuildIDs lists a guild with only held events: %v", ids)
	}
	if ids, _ := s.HeldGuilds(ctx); !reflect.DeepEqual(ids, []uint64{g}) {
		t.Fatalf("HeldGuilds = %v", ids)
	}
}

// TestHeldPageReadsEveryEventOnceInSeqOrder: a drain that reads a page,
// delivers it and drops it, while new events keep being held, sees every
// event exactly once, in seq order.
func TestHeldPageReadsEveryEventOnceInSeqOrder(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	const g = 4
	holdN(t, s, g, 1, 25)
	holdN(t, s, g+1, 1, 3)
	var seen []int64
	var after int64
	for round := 0; ; round++ {
		page, err := s.HeldPage(ctx, g, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 10 {
			t.Fatalf("page of %d", len(page))
		}
		for _, h := range page {
			if h.GuildID != g || string(h.Payload) != fmt.Sprintf(`{"n":%d}`, h.Seq) {
				t.Fatalf("held event %+v", h)
			}
			seen = append(seen, h.Seq)
		}
		after = page[len(page)-1].Seq
		if err := s.DropHeld(ctx, g, after); err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			holdN(t, s, g, 26, 30) // arrive while draining
		}
	}
	want := make([]int64, 30)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if !reflect.DeepEqual(seen, want) {
		t.Fatalf("drained seqs %v", seen)
	}
	if n, _ := s.HeldCount(ctx, g); n != 0 {
		t.Fatalf("HeldCount after drain = %d", n)
	}
	if n, _ := s.HeldCount(ctx, g+1); n != 3 {
		t.Fatalf("other guild's HeldCount = %d", n)
	}
	if _, err := s.HeldPage(ctx, g, 0, 0); err == nil {
		t.Fatal("HeldPage with limit 0 succeeded")
	}
}
