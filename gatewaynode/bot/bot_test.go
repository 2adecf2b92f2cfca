package bot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

const (
	guild   = 1000
	modlog  = 2000
	modRole = 3000
	general = 4000
	alice   = 11 // a manager
	bob     = 12
	carol   = 13
)

var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func newHandler(t *testing.T, name string) (*Handler, *guildstore.Store) {
	t.Helper()
	s, err := guildstore.OpenWithOptions(context.Background(), filepath.Join(t.TempDir(), name),
		guildstore.Options{Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &Handler{Store: s, Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }}, s
}

func ev(typ string, d any) Event {
	b, err := json.Marshal(d)
	if err != nil {
		panic(err)
	}
	return Event{Type: typ, Data: b}
}

func id(n uint64) string { return fmt.Sprint(n) }

// snowflake makes an id whose timestamp is now (plus n ms), so ids sort by n.
func snowflake(n uint64) uint64 {
	return uint64(now.UnixMilli()-discordEpochMS+int64(n))<<22 | n
}

func msgCreate(msgID, ch, author uint64, content string) Event {
	return ev(EventMessageCreate, map[string]any{"id": id(msgID), "guild_id": id(guild), "channel_id": id(ch),
		"author": map[string]any{"id": id(author)}, "content": content, "timestamp": now.Format(time.RFC3339)})
}

func msgUpdate(msgID uint64, content string, edited time.Time) Event {
	return ev(EventMessageUpdate, map[string]any{"id": id(msgID), "guild_id": id(guild), "channel_id": id(general),
		"author": map[string]any{"id": id(bob)}, "content": content, "edited_timestamp": edited.Format(time.RFC3339)})
}

func msgDelete(msgID uint64) Event {
	return ev(EventMessageDelete, map[string]any{"id": id(msgID), "guild_id": id(guild), "channel_id": id(general)})
}

func userEvent(typ string, user uint64, delivery string) Event {
	e := ev(typ, map[string]any{"guild_id": id(guild), "user": map[string]any{"id": id(user)}})
	e.DeliveryID = delivery
	return e
}

func timeoutEvent(user uint64, until time.Time) Event {
	return ev(EventGuildMemberUpdate, map[string]any{"guild_id": id(guild), "user": map[string]any{"id": id(user)},
		"roles": []string{}, "communication_disabled_until": until.Format(time.RFC3339)})
}

type opt struct {
	name  string
	typ   int
	value string
}

// slash builds an INTERACTION_CREATE for a chat-input command.
func slash(interactionID, user uint64, perms int64, roles []string, name string, opts ...opt) Event {
	var os []map[string]any
	for _, o := range opts {
		os = append(os, map[string]any{"name": o.name, "type": o.typ, "value": o.value})
	}
	return ev(EventInteractionCreate, map[string]any{
		"id": id(interactionID), "application_id": "1", "type": 2, "guild_id": id(guild), "channel_id": id(general), "token": "tok",
		"member": map[string]any{"user": map[string]any{"id": id(user)}, "permissions": fmt.Sprint(perms), "roles": roles},
		"data":   map[string]any{"id": "99", "name": name, "type": 1, "options": os},
	})
}

func messageReport(interactionID, reporter, msgID, author uint64, content string) Event {
	return ev(EventInteractionCreate, map[string]any{
		"id": id(interactionID), "application_id": "1", "type": 2, "guild_id": id(guild), "channel_id": id(general), "token": "tok",
		"member": map[string]any{"user": map[string]any{"id": id(reporter)}, "permissions": "0", "roles": []string{}},
		"data": map[string]any{"id": "98", "name": "Report", "type": 3, "target_id": id(msgID),
			"resolved": map[string]any{"messages": map[string]any{id(msgID): map[string]any{"id": id(msgID), "channel_id": id(general),
				"author": map[string]any{"id": id(author)}, "content": content}}}},
	})
}

func setupEvent(interactionID uint64) Event {
	return slash(interactionID, alice, discordgo.PermissionManageGuild, nil, "setup",
		opt{"mod_role", 8, id(modRole)}, opt{"modlog_channel", 7, id(modlog)})
}

func reportEvent(interactionID, reporter, target uint64, reason string) Event {
	return slash(interactionID, reporter, 0, nil, "report", opt{"user", 6, id(target)}, opt{"reason", 3, reason})
}

func mustHandle(t *testing.T, h *Handler, e Event, epoch uint64) Result {
	t.Helper()
	r, err := h.Handle(context.Background(), e, epoch)
	if err != nil {
		t.Fatalf("%s: %v", e.Type, err)
	}
	return r
}

func checksum(t *testing.T, s *guildstore.Store) string {
	t.Helper()
	info, err := s.Checksum(context.Background(), guild)
	if err != nil {
		t.Fatal(err)
	}
	return info.Checksum
}

func TestGuildOfRoutesByGuild(t *testing.T) {
	for _, tc := range []struct {
		ev   Event
		want uint64
		ok   bool
	}{
		{msgCreate(1, general, bob, "hi"), guild, true},
		{userEvent(EventGuildBanAdd, bob, ""), guild, true},
		{setupEvent(5), guild, true},
		{ev("GUILD_CREATE", map[string]any{"id": "77", "name": "x"}), 77, true},
		{ev("READY", map[string]any{"v": 10}), 0, false},
		{ev(EventMessageCreate, map[string]any{"id": "1", "channel_id": "2"}), 0, false}, // DM
		{Event{Type: EventMessageCreate, Data: json.RawMessage(`null`)}, 0, false},
	} {
		g, ok := GuildOf(tc.ev)
		if g != tc.want || ok != tc.ok {
			t.Errorf("GuildOf(%s %s) = %d, %v; want %d, %v", tc.ev.Type, tc.ev.Data, g, ok, tc.want, tc.ok)
		}
	}
}

func TestEachEventTypeProducesItsRows(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		events []Event
		check  func(t *testing.T, d guildstore.Dashboard)
	}{
		{"message create counts people only", []Event{msgCreate(1, general, bob, "hello"), msgCreate(2, general, carol, "hey"),
			ev(EventMessageCreate, map[string]any{"id": "3", "guild_id": id(guild), "channel_id": id(general),
				"author": map[string]any{"id": "9", "bot": true}, "content": "beep"})},
			func(t *testing.T, d guildstore.Dashboard) {
				if d.Messages != 2 || len(d.TopChannels) != 1 || d.TopChannels[0].Messages != 2 || d.MessagesLast24h != 2 {
					t.Errorf("dashboard %+v", d)
				}
			}},
		{"message update records the edit", []Event{msgCreate(1, general, bob, "hello"), msgUpdate(1, "hello world", now.Add(time.Minute)),
			ev(EventMessageUpdate, map[string]any{"id": "1", "guild_id": id(guild), "channel_id": id(general)})}, // embed unfurl: ignored
			func(t *testing.T, d guildstore.Dashboard) {
				if d.Messages != 1 || d.MessagesEdited != 1 {
					t.Errorf("dashboard %+v", d)
				}
			}},
		{"message delete and bulk delete", []Event{msgCreate(1, general, bob, "a"), msgCreate(2, general, bob, "b"), msgCreate(3, general, bob, "c"),
			msgDelete(1), ev(EventMessageDeleteBulk, map[string]any{"guild_id": id(guild), "channel_id": id(general), "ids": []string{"2", "3"}})},
			func(t *testing.T, d guildstore.Dashboard) {
				if d.Messages != 0 || d.MessagesDeleted != 3 {
					t.Errorf("dashboard %+v", d)
				}
			}},
		{"bans, unbans, leaves and timeouts", []Event{userEvent(EventGuildBanAdd, bob, "s:1"), userEvent(EventGuildBanRemove, bob, "s:2"),
			userEvent(EventGuildMemberRemove, carol, "s:3"), timeoutEvent(carol, now.Add(time.Hour))},
			func(t *testing.T, d guildstore.Dashboard) {
				want := map[string]int64{"ban": 1, "unban": 1, "leave": 1, "timeout": 1}
				if d.ModActions != 4 || !reflect.DeepEqual(d.ModActionsByKind, want) {
					t.Errorf("actions %v", d.ModActionsByKind)
				}
			}},
		{"setup stores settings", []Event{setupEvent(snowflake(1))},
			func(t *testing.T, d guildstore.Dashboard) {
				if d.Settings.ModRoleID != modRole || d.Settings.ModlogChannelID != modlog {
					t.Errorf("settings %+v", d.Settings)
				}
			}},
		{"reports", []Event{reportEvent(snowflake(1), bob, carol, "spam"), messageReport(snowflake(2), bob, 55, carol, "buy my stuff")},
			func(t *testing.T, d guildstore.Dashboard) {
				if d.Reports != 2 || d.RecentReports[0].MessageContent != "buy my stuff" || d.RecentReports[1].Reason != "spam" {
					t.Errorf("reports %+v", d.RecentReports)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, s := newHandler(t, "pod.db")
			for _, e := range tc.events {
				mustHandle(t, h, e, 1)
			}
			d, err := s.Dashboard(ctx, guild)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, d)
		})
	}
}

// everything is one of each event, as a gateway batch.
func everything() []Input {
	evs := []Event{
		setupEvent(snowflake(1)),
		msgCreate(101, general, bob, "hello"), msgCreate(102, general, carol, "spam spam"), msgCreate(103, 5000, bob, "x"),
		msgUpdate(101, "hello!", now.Add(time.Minute)), msgDelete(102),
		userEvent(EventGuildBanAdd, carol, "s:10"), userEvent(EventGuildBanRemove, carol, "s:11"), userEvent(EventGuildBanAdd, carol, "s:12"),
		userEvent(EventGuildMemberRemove, bob, "s:13"), timeoutEvent(bob, now.Add(time.Hour)),
		reportEvent(snowflake(2), bob, carol, "spam"), messageReport(snowflake(3), bob, 102, carol, "spam spam"),
	}
	in := make([]Input, len(evs))
	for i, e := range evs {
		in[i] = Input{Event: e, Epoch: 1}
	}
	return in
}

func TestReplayingABatchChangesNothing(t *testing.T) {
	ctx := context.Background()
	h, s := newHandler(t, "pod.db")
	first, err := h.HandleBatch(ctx, everything())
	if err != nil {
		t.Fatal(err)
	}
	posts := 0
	for i, r := range first {
		if r.Err != nil {
			t.Fatalf("event %d: %v", i, r.Err)
		}
		if r.GuildID != guild {
			t.Fatalf("event %d routed to %d", i, r.GuildID)
		}
		for _, p := range r.Posts {
			posts++
			if err := h.AckPosted(ctx, guild, p.ReportID, 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	if posts != 2 {
		t.Fatalf("mod-log posts = %d, want 2", posts)
	}
	sum := checksum(t, s)
	d1, _ := s.Dashboard(ctx, guild)
	for round := 0; round < 2; round++ {
		again, err := h.HandleBatch(ctx, everything())
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range again {
			if r.Err != nil || r.Applied || len(r.Posts) != 0 {
				t.Fatalf("replayed event %d (%s): %+v", i, everything()[i].Event.Type, r)
			}
		}
		if got := checksum(t, s); got != sum {
			t.Fatal("replay changed stored rows")
		}
	}
	d2, _ := s.Dashboard(ctx, guild)
	if !reflect.DeepEqual(d1, d2) {
		t.Fatalf("dashboard changed:\n%+v\n%+v", d1, d2)
	}
	if d1.Messages != 2 || d1.MessagesDeleted != 1 || d1.Reports != 2 || d1.ModActions != 5 {
		t.Fatalf("dashboard %+v", d1)
	}
}

func TestSetupRequiresManageGuildPermission(t *testing.T) {
	for _, tc := range []struct {
		name  string
		perms int64
		ok    bool
	}{
		{"no permissions", 0, false},
		{"manage messages only", discordgo.PermissionManageMessages, false},
		{"manage guild", discordgo.PermissionManageGuild, true},
		{"administrator", discordgo.PermissionAdministrator, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, s := newHandler(t, "pod.db")
			r := mustHandle(t, h, slash(snowflake(1), bob, tc.perms, nil, "setup", opt{"modlog_channel", 7, id(modlog)}), 1)
			if r.Response == nil || r.Response.Data.Flags != discordgo.MessageFlagsEphemeral || r.Response.Type != discordgo.InteractionResponseChannelMessageWithSource {
				t.Fatalf("response %+v", r.Response)
			}
			st, _ := s.Settings(context.Background(), guild)
			if got := st.ModlogChannelID == modlog; got != tc.ok {
				t.Fatalf("settings stored = %v, want %v (response %q)", got, tc.ok, r.Response.Data.Content)
			}
			if !tc.ok && !strings.Contains(r.Response.Data.Content, "Manage Server") {
				t.Fatalf("refusal %q", r.Response.Data.Content)
			}
		})
	}
}

func TestReportPostsToModlogOnceEvenWhenReplayed(t *testing.T) {
	ctx := context.Background()
	h, _ := newHandler(t, "pod.db")
	mustHandle(t, h, setupEvent(snowflake(1)), 1)
	rep := messageReport(snowflake(2), bob, 77, carol, "rude words")
	r := mustHandle(t, h, rep, 1)
	if r.Duplicate || len(r.Posts) != 1 {
		t.Fatalf("first report: %+v", r)
	}
	p := r.Posts[0]
	if p.ChannelID != modlog || p.ReportID != snowflake(2) || p.Nonce == "" || !strings.Contains(p.Content, "rude") ||
		!strings.Contains(p.Embeds[0].Fields[3].Value, "rude words") {
		t.Fatalf("post %+v", p)
	}
	// Replayed before the post was acknowledged (crash between commit and
	// post): the same post is re-emitted, with the same nonce.
	r2 := mustHandle(t, h, rep, 1)
	if !r2.Duplicate || len(r2.Posts) != 1 || r2.Posts[0].Nonce != p.Nonce {
		t.Fatalf("unacknowledged replay: %+v", r2)
	}
	if err := h.AckPosted(ctx, guild, p.ReportID, 1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		r3 := mustHandle(t, h, rep, 1)
		if !r3.Duplicate || len(r3.Posts) != 0 || r3.Response == nil {
			t.Fatalf("acknowledged replay: %+v", r3)
		}
	}
}

func TestReportWithoutModlogIsStoredNotPosted(t *testing.T) {
	h, s := newHandler(t, "pod.db")
	r := mustHandle(t, h, reportEvent(snowflake(1), bob, carol, "spam"), 1)
	if len(r.Posts) != 0 || !r.Applied {
		t.Fatalf("%+v", r)
	}
	rs, _ := s.ReportsForUser(context.Background(), guild, carol)
	if len(rs) != 1 || rs[0].ReporterID != bob {
		t.Fatalf("reports %+v", rs)
	}
}

func TestModReportListsHistoryToModeratorsOnly(t *testing.T) {
	h, _ := newHandler(t, "pod.db")
	mustHandle(t, h, setupEvent(snowflake(1)), 1)
	mustHandle(t, h, reportEvent(snowflake(2), bob, carol, "spam"), 1)
	mustHandle(t, h, messageReport(snowflake(3), bob, 77, carol, "nasty message"), 1)
	mustHandle(t, h, reportEvent(snowflake(4), carol, bob, "retaliation"), 1)
	for _, tc := range []struct {
		name     string
		perms    int64
		roles    []string
		contains []string
	}{
		{"manager", discordgo.PermissionManageGuild, nil, []string{"has 2 report(s)", "spam", "nasty message"}},
		{"mod role", 0, []string{id(modRole)}, []string{"has 2 report(s)"}},
		{"member", 0, nil, []string{"only moderators"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustHandle(t, h, slash(snowflake(10), alice, tc.perms, tc.roles, "modreport", opt{"user", 6, id(carol)}), 1)
			if r.Response.Data.Flags != discordgo.MessageFlagsEphemeral {
				t.Fatal("not ephemeral")
			}
			for _, c := range tc.contains {
				if !strings.Contains(r.Response.Data.Content, c) {
					t.Errorf("response %q lacks %q", r.Response.Data.Content, c)
				}
			}
			if strings.Contains(r.Response.Data.Content, "retaliation") {
				t.Error("history of another user leaked")
			}
		})
	}
}

func TestUnknownCommandGetsPoliteEphemeralError(t *testing.T) {
	h, _ := newHandler(t, "pod.db")
	r := mustHandle(t, h, slash(snowflake(1), bob, 0, nil, "dance"), 1)
	if r.Response == nil || r.Response.Data.Flags != discordgo.MessageFlagsEphemeral || !strings.Contains(r.Response.Data.Content, "Sorry") {
		t.Fatalf("%+v", r.Response)
	}
}

func TestStaleEpochWriteIsRejected(t *testing.T) {
	ctx := context.Background()
	h, s := newHandler(t, "pod.db")
	mustHandle(t, h, msgCreate(1, general, bob, "hi"), 2)
	if err := s.Fence(ctx, guild, 3); err != nil { // a migration took the guild to epoch 3
		t.Fatal(err)
	}
	before := checksum(t, s)
	for _, e := range []Event{msgCreate(2, general, bob, "late"), reportEvent(snowflake(5), bob, carol, "x"), userEvent(EventGuildBanAdd, bob, "")} {
		if _, err := h.Handle(ctx, e, 2); !errors.Is(err, guildstore.ErrStaleEpoch) {
			t.Fatalf("%s at stale epoch: err = %v", e.Type, err)
		}
	}
	if checksum(t, s) != before {
		t.Fatal("stale writes changed the store")
	}
	mustHandle(t, h, msgCreate(2, general, bob, "ok"), 3)
}

func drainHeld(t *testing.T, s *guildstore.Store) []Event {
	t.Helper()
	var out []Event
	var after int64
	for {
		page, err := s.HeldPage(context.Background(), guild, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return out
		}
		for _, h := range page {
			out = append(out, Event{Type: h.Type, Data: h.Payload})
		}
		after = page[len(page)-1].Seq
		if err := s.DropHeld(context.Background(), guild, after); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigrationLeavesHeldEventsWithTheReceivingPod walks the §7 flow with
// held events owned by the pod that received them: the source holds events
// while it exports, the target — the shard holder — holds events of its own
// (a forward to the source failed); the export carries neither, the target
// imports (identical checksum and dashboard, but for held events) and keeps
// its own; the source's and then the target's held events are handled on
// the target in order, and every one of them counts.
func TestMigrationLeavesHeldEventsWithTheReceivingPod(t *testing.T) {
	ctx := context.Background()
	src, srcStore := newHandler(t, "src.db")
	dst, dstStore := newHandler(t, "dst.db")
	if _, err := src.HandleBatch(ctx, everything()); err != nil {
		t.Fatal(err)
	}
	if err := srcStore.Fence(ctx, guild, 2); err != nil { // migrating{epoch 2}
		t.Fatal(err)
	}
	srcHeld := []Event{msgCreate(201, general, bob, "during move"), msgUpdate(201, "edited during move", now.Add(time.Minute)), msgDelete(101)}
	dstHeld := []Event{msgCreate(202, general, carol, "forward failed"), msgDelete(201)}
	for _, h := range []struct {
		s   *guildstore.Store
		evs []Event
	}{{srcStore, srcHeld}, {dstStore, dstHeld}} {
		for _, e := range h.evs {
			if _, err := h.s.Hold(ctx, guild, e.Type, e.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
	var buf bytes.Buffer
	info, err := srcStore.Export(ctx, guild, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dstStore.Import(ctx, guild, bytes.NewReader(buf.Bytes()), info.Checksum); err != nil {
		t.Fatal(err)
	}
	if checksum(t, dstStore) != info.Checksum {
		t.Fatal("target checksum differs")
	}
	ds, _ := srcStore.Dashboard(ctx, guild)
	dd, _ := dstStore.Dashboard(ctx, guild)
	if ds.HeldEvents != int64(len(srcHeld)) || dd.HeldEvents != int64(len(dstHeld)) {
		t.Fatalf("held events: source %d, target %d; want %d, %d (each keeps its own)", ds.HeldEvents, dd.HeldEvents, len(srcHeld), len(dstHeld))
	}
	ds.HeldEvents, dd.HeldEvents = 0, 0
	if !reflect.DeepEqual(ds, dd) {
		t.Fatalf("dashboards differ:\n%+v\n%+v", ds, dd)
	}
	// Each pod delivers what it holds, in order: the source's go to the
	// target (a forward, handled there at the new epoch), then the target's.
	var in []Input
	for _, e := range append(drainHeld(t, srcStore), drainHeld(t, dstStore)...) {
		in = append(in, Input{Event: e, Epoch: 2})
	}
	if len(in) != len(srcHeld)+len(dstHeld) || in[0].Event.Type != EventMessageCreate || in[3].Event.Type != EventMessageCreate {
		t.Fatalf("held events out of order: %+v", in)
	}
	res, err := dst.HandleBatch(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil || !r.Applied {
			t.Fatalf("held event %d: %+v", i, r)
		}
	}
	if err := srcStore.DeleteGuild(ctx, guild, 1<<62); err != nil {
		t.Fatal(err)
	}
	d, _ := dstStore.Dashboard(ctx, guild)
	if d.Messages != 2 || d.MessagesDeleted != 3 || d.MessagesEdited != 0 || d.HeldEvents != 0 || d.Epoch != 2 {
		t.Fatalf("target after drain: %+v", d)
	}
	// The old owner is fenced: its late writes fail.
	if _, err := src.Handle(ctx, msgCreate(300, general, bob, "late"), 1); !errors.Is(err, guildstore.ErrStaleEpoch) {
		t.Fatalf("late write on source: %v", err)
	}
}
