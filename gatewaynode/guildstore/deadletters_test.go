package guildstore

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func deadLetter(g uint64, delivery string) DeadLetter {
	return DeadLetter{GuildID: g, Type: "MESSAGE_CREATE", Payload: []byte(`{"id":"1","guild_id":"` + delivery + `"}`),
		DeliveryID: delivery, ReceivedAt: t0, Error: "apply: disk I/O error", Attempts: 3,
		FirstFailedAt: t0.Add(time.Second), LastFailedAt: t0.Add(3 * time.Second)}
}

// TestDeadLettersStayUntilReplayed: dead letters survive a restart, list per
// guild or for all guilds page by page, count, and go away only when a replay
// succeeded.
func TestDeadLettersStayUntilReplayed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "pod.db")
	opts := Options{Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return t0.Add(time.Hour) }}
	s, err := OpenWithOptions(ctx, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, d := range []DeadLetter{deadLetter(1, "s:1"), deadLetter(2, "s:2"), deadLetter(1, "s:3"), deadLetter(1, ""), deadLetter(2, "")} {
		id, err := s.AddDeadLetter(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	s.Close()
	if s, err = OpenWithOptions(ctx, path, opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for _, tc := range []struct {
		guild uint64
		want  []int64
	}{{1, []int64{ids[0], ids[2], ids[3]}}, {2, []int64{ids[1], ids[4]}}, {0, ids}} {
		var got []int64
		var after int64
		for {
			page, err := s.DeadLetters(ctx, tc.guild, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			for _, d := range page {
				got = append(got, d.ID)
			}
			after = page[len(page)-1].ID
		}
		if len(got) != len(tc.want) {
			t.Fatalf("guild %d: dead letters %v, want %v", tc.guild, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("guild %d: dead letters %v, want %v", tc.guild, got, tc.want)
			}
		}
		if n, err := s.DeadLetterCount(ctx, tc.guild); err != nil || n != int64(len(tc.want)) {
			t.Fatalf("guild %d: count %d, %v", tc.guild, n, err)
		}
	}
	d, ok, err := s.DeadLetter(ctx, ids[0])
	want := deadLetter(1, "s:1")
	want.ID = ids[0]
	if err != nil || !ok || d.GuildID != want.GuildID || d.Type != want.Type || string(d.Payload) != string(want.Payload) ||
		d.DeliveryID != want.DeliveryID || !d.ReceivedAt.Equal(t0) || d.Error != want.Error || d.Attempts != 3 ||
		!d.FirstFailedAt.Equal(want.FirstFailedAt) || !d.LastFailedAt.Equal(want.LastFailedAt) {
		t.Fatalf("dead letter %+v, %v, %v; want %+v", d, ok, err, want)
	}

	var replayed DeadLetter
	if err := s.ReplayDeadLetter(ctx, ids[0], func(_ context.Context, d DeadLetter) error { replayed = d; return nil }); err != nil {
		t.Fatal(err)
	}
	if replayed.ID != ids[0] || string(replayed.Payload) != string(want.Payload) {
		t.Fatalf("replay got %+v", replayed)
	}
	if _, ok, _ := s.DeadLetter(ctx, ids[0]); ok {
		t.Fatal("replayed dead letter still there")
	}
	if n, _ := s.DeadLetterCount(ctx, 0); n != 4 {
		t.Fatalf("count after replay = %d", n)
	}
}

// TestDeadLetterOfOneDeliveryIsOneRow: an event that fails again (e.g.
// after a replay) updates its row: attempts add up, the first failure time
// stays, the latest error wins.
func TestDeadLetterOfOneDeliveryIsOneRow(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	first := deadLetter(1, "s:7")
	id1, err := s.AddDeadLetter(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	again := deadLetter(1, "s:7")
	again.Attempts, again.Error = 2, "still failing"
	again.FirstFailedAt, again.LastFailedAt = t0.Add(time.Minute), t0.Add(2*time.Minute)
	id2, err := s.AddDeadLetter(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 {
		t.Fatalf("second failure got id %d, want %d", id2, id1)
	}
	d, _, _ := s.DeadLetter(ctx, id1)
	if d.Attempts != 5 || d.Error != "still failing" || !d.FirstFailedAt.Equal(first.FirstFailedAt) || !d.LastFailedAt.Equal(again.LastFailedAt) {
		t.Fatalf("merged dead letter %+v", d)
	}
	// Without a delivery id events cannot be told apart: one row each.
	for range 2 {
		if _, err := s.AddDeadLetter(ctx, deadLetter(1, "")); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := s.DeadLetterCount(ctx, 1); n != 3 {
		t.Fatalf("count = %d, want 3", n)
	}
	// Defaults and a bounded error message.
	id, err := s.AddDeadLetter(ctx, DeadLetter{GuildID: 2, Type: "X", Error: strings.Repeat("é", 3000)})
	if err != nil {
		t.Fatal(err)
	}
	d, _, _ = s.DeadLetter(ctx, id)
	if d.Attempts != 1 || d.FirstFailedAt.IsZero() || len(d.Error) > maxDeadLetterError || !utf8.ValidString(d.Error) || d.Payload == nil {
		t.Fatalf("defaults: attempts %d first %s error %d bytes valid %v", d.Attempts, d.FirstFailedAt, len(d.Error), utf8.ValidString(d.Error))
	}
}

// TestFailedReplayKeepsTheDeadLetter: a replay that fails leaves the dead
// letter, one attempt more and the replay's error recorded; discarding is
// explicit.
func TestFailedReplayKeepsTheDeadLetter(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "a.db")
	id, err := s.AddDeadLetter(ctx, deadLetter(1, "s:1"))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("handler still broken")
	if err := s.ReplayDeadLetter(ctx, id, func(context.Context, DeadLetter) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed replay: %v", err)
	}
	d, ok, _ := s.DeadLetter(ctx, id)
	if !ok || d.Attempts != 4 || d.Error != boom.Error() {
		t.Fatalf("after a failed replay: %+v, %v", d, ok)
	}
	if err := s.ReplayDeadLetter(ctx, id+100, func(context.Context, DeadLetter) error { return nil }); !errors.Is(err, ErrNoDeadLetter) {
		t.Fatalf("replay of an unknown id: %v", err)
	}
	if err := s.DeleteDeadLetter(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDeadLetter(ctx, id); !errors.Is(err, ErrNoDeadLetter) {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.DeadLetters(ctx, 0, 0, 0); err == nil {
		t.Fatal("DeadLetters with limit 0 succeeded")
	}
}
