package bot

import (
	"context"
	"errors"
	"math/rand/v2"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// TestOlderSetupNeverOverwritesNewer: an older /setup handled after a newer
// one (a replayed webhook, a held event forwarded late) does not revert it.
// (Was the review's TestReviewReorderedSetupAndDeleteConvergeToTheWrongState, part 1.)
func TestOlderSetupNeverOverwritesNewer(t *testing.T) {
	h, s := newHandler(t, "r.db")
	ctx := context.Background()
	older := slash(snowflake(1), alice, discordgo.PermissionManageGuild, nil, "setup", opt{"modlog_channel", 7, id(111)})
	newer := slash(snowflake(2), alice, discordgo.PermissionManageGuild, nil, "setup", opt{"modlog_channel", 7, id(222)})
	mustHandle(t, h, newer, 1)
	r := mustHandle(t, h, older, 1) // arrives late
	if r.Applied {
		t.Error("the older /setup reports that it changed the settings")
	}
	st, err := s.Settings(ctx, guild)
	if err != nil {
		t.Fatal(err)
	}
	if st.ModlogChannelID != 222 {
		t.Fatalf("mod-log channel after newer(222) then older(111): %d", st.ModlogChannelID)
	}
	if !st.UpdatedAt.Equal(snowflakeTime(snowflake(2))) {
		t.Fatalf("updated_at %s, want the newer /setup's time", st.UpdatedAt)
	}
}

// TestOlderSetupStillSetsFieldsTheNewerLeftAlone: settings are versioned
// per field, so an older /setup that set the role keeps it even when it is
// handled after a newer /setup that set only the channel — as in order.
func TestOlderSetupStillSetsFieldsTheNewerLeftAlone(t *testing.T) {
	h, s := newHandler(t, "r.db")
	older := slash(snowflake(1), alice, discordgo.PermissionManageGuild, nil, "setup", opt{"mod_role", 8, id(modRole)}, opt{"modlog_channel", 7, id(111)})
	newer := slash(snowflake(2), alice, discordgo.PermissionManageGuild, nil, "setup", opt{"modlog_channel", 7, id(222)})
	mustHandle(t, h, newer, 1)
	r := mustHandle(t, h, older, 1)
	st, _ := s.Settings(context.Background(), guild)
	if st.ModRoleID != modRole || st.ModlogChannelID != 222 {
		t.Fatalf("settings %+v, want role %d (older) and channel 222 (newer)", st, modRole)
	}
	if r.Response == nil || r.Response.Data.Content != "Settings saved. Moderator role: <@&3000>. Mod-log channel: <#222>." {
		t.Fatalf("the answer does not show the stored settings: %+v", r.Response)
	}
}

// TestDeleteBeforeCreateStaysDeleted: a MESSAGE_DELETE (or a bulk delete)
// overtaken by its MESSAGE_CREATE leaves the message deleted, and the
// dashboard counts it so. (Was the review's
// TestReviewReorderedSetupAndDeleteConvergeToTheWrongState, part 2.)
func TestDeleteBeforeCreateStaysDeleted(t *testing.T) {
	h, s := newHandler(t, "r.db")
	ctx := context.Background()
	mustHandle(t, h, msgDelete(snowflake(10)), 1)
	mustHandle(t, h, ev(EventMessageDeleteBulk, map[string]any{"guild_id": id(guild), "channel_id": id(general),
		"ids": []string{id(snowflake(11)), id(snowflake(12))}}), 1)
	d, _ := s.Dashboard(ctx, guild)
	if d.Messages != 0 || d.MessagesDeleted != 0 {
		t.Fatalf("deletes of unseen messages count on their own: %+v", d)
	}
	for _, m := range []uint64{snowflake(10), snowflake(11), snowflake(12), snowflake(13)} {
		mustHandle(t, h, msgCreate(m, general, bob, "hello"), 1)
	}
	d, err := s.Dashboard(ctx, guild)
	if err != nil {
		t.Fatal(err)
	}
	if d.Messages != 1 || d.MessagesDeleted != 3 || d.MessagesLast24h != 1 || len(d.TopAuthors) != 1 || d.TopAuthors[0].Messages != 1 {
		t.Fatalf("after DELETE then CREATE: messages=%d deleted=%d (%+v)", d.Messages, d.MessagesDeleted, d)
	}
}

// arrivalSet is one guild's events as a shard delivered them, each stamped
// with its receipt time and delivery id, including replays (a RESUME, a
// forwarded held event delivered twice).
func arrivalSet() []Event {
	evs := []Event{
		setupEvent(snowflake(1)),
		slash(snowflake(2), alice, discordgo.PermissionManageGuild, nil, "setup", opt{"modlog_channel", 7, id(modlog + 1)}),
		msgCreate(101, general, bob, "hello"),
		msgUpdate(101, "hello!", now.Add(time.Minute)),
		msgUpdate(101, "hello!!", now.Add(2*time.Minute)),
		msgCreate(102, general, carol, "spam"),
		msgCreate(103, 5000, carol, "more spam"),
		ev(EventMessageDeleteBulk, map[string]any{"guild_id": id(guild), "channel_id": id(general), "ids": []string{"102", "103", "104"}}),
		msgDelete(101),
		msgUpdate(105, "edited before its create arrived", now.Add(time.Minute)),
		msgCreate(105, general, bob, "x"),
		userEvent(EventGuildBanAdd, carol, "sess:10"),
		userEvent(EventGuildBanRemove, carol, "sess:11"),
		userEvent(EventGuildBanAdd, carol, "sess:12"),
		userEvent(EventGuildMemberRemove, bob, "sess:13"),
		timeoutEvent(bob, now.Add(time.Hour)),
	}
	for i := range evs {
		evs[i].ReceivedAt = now.Add(time.Duration(i) * time.Millisecond)
	}
	replays := []Event{evs[2], evs[11], evs[0]}
	return append(evs, replays...)
}

// TestHandlersConvergeInAnyArrivalOrder: the same deliveries in any order —
// creates after their edits and deletes, unbans before bans of one session,
// older /setup after newer, replays anywhere — leave the same rows
// (checksum) and the same dashboard.
func TestHandlersConvergeInAnyArrivalOrder(t *testing.T) {
	ctx := context.Background()
	run := func(name string, evs []Event) (string, guildstore.Dashboard) {
		h, s := newHandler(t, name)
		for _, e := range evs {
			mustHandle(t, h, e, 1)
		}
		d, err := s.Dashboard(ctx, guild)
		if err != nil {
			t.Fatal(err)
		}
		return checksum(t, s), d
	}
	inOrder := arrivalSet()
	wantSum, want := run("ordered.db", inOrder)
	if want.Messages != 1 || want.MessagesDeleted != 3 || want.MessagesEdited != 1 || want.Settings.ModlogChannelID != modlog+1 ||
		want.Settings.ModRoleID != modRole || !reflect.DeepEqual(want.ModActionsByKind, map[string]int64{"ban": 2, "unban": 1, "leave": 1, "timeout": 1}) {
		t.Fatalf("in-order dashboard %+v", want)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	orders := [][]Event{}
	rev := append([]Event(nil), inOrder...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	orders = append(orders, rev)
	for range 20 {
		p := append([]Event(nil), inOrder...)
		rng.Shuffle(len(p), func(i, j int) { p[i], p[j] = p[j], p[i] })
		orders = append(orders, p)
	}
	for k, evs := range orders {
		sum, d := run("shuffled.db", evs)
		if sum != wantSum || !reflect.DeepEqual(d, want) {
			var types []string
			for _, e := range evs {
				types = append(types, e.Type)
			}
			t.Fatalf("ordering %d (%v) converged elsewhere:\n%+v\nwant\n%+v", k, types, d, want)
		}
	}
}

// TestLateTimeoutIsJudgedAtReceipt: a member timeout that was active when
// the pod received it is recorded even if the event is handled (held,
// forwarded, replayed) after the timeout ended.
func TestLateTimeoutIsJudgedAtReceipt(t *testing.T) {
	h, s := newHandler(t, "r.db")
	late := timeoutEvent(bob, now.Add(-time.Minute)) // ended a minute before it is handled
	late.ReceivedAt = now.Add(-2 * time.Minute)      // but active when received
	if r := mustHandle(t, h, late, 1); !r.Applied {
		t.Fatalf("late timeout not recorded: %+v", r)
	}
	expired := timeoutEvent(carol, now.Add(-time.Minute)) // no receipt time: judged now
	if r := mustHandle(t, h, expired, 1); !r.Ignored {
		t.Fatalf("expired timeout: %+v", r)
	}
	as, _ := s.ModActionsForUser(context.Background(), guild, bob)
	if len(as) != 1 || !as[0].CreatedAt.Equal(late.ReceivedAt) {
		t.Fatalf("actions %+v, want one timeout at the receipt time", as)
	}
}

// failingStore fails the units of the next n ApplyBatch calls (a per-event
// store failure, as a full disk or an I/O error would).
type failingStore struct {
	*guildstore.Store
	failures atomic.Int32
}

var errDisk = errors.New("disk I/O error")

func (f *failingStore) ApplyBatch(ctx context.Context, units [][]guildstore.Write) ([]guildstore.UnitResult, error) {
	if f.failures.Add(-1) >= 0 {
		res := make([]guildstore.UnitResult, len(units))
		for i := range res {
			res[i].Err = errDisk
		}
		return res, nil
	}
	return f.Store.ApplyBatch(ctx, units)
}

// TestFailedEventCanBeDeadLetteredAndReplayed: a failed event's result
// carries the event and its error (malformed ones marked as such), which is
// enough to dead-letter it and to replay it later with the same effect.
func TestFailedEventCanBeDeadLetteredAndReplayed(t *testing.T) {
	ctx := context.Background()
	h, s := newHandler(t, "r.db")
	fs := &failingStore{Store: s}
	fs.failures.Store(1)
	h.Store = fs
	create := msgCreate(101, general, bob, "hello")
	create.DeliveryID, create.ReceivedAt = "sess:7", now.Add(-time.Second)
	broken := Event{Type: EventMessageDelete, Data: []byte(`{"id":"x","guild_id":"1000"}`), DeliveryID: "sess:8"}
	res, err := h.HandleBatch(ctx, []Input{{Event: create, Epoch: 1}, {Event: broken, Epoch: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, errDisk) || errors.Is(res[0].Err, ErrMalformedEvent) || errors.Is(res[0].Err, guildstore.ErrStaleEpoch) {
		t.Fatalf("store failure: %v", res[0].Err)
	}
	if !errors.Is(res[1].Err, ErrMalformedEvent) {
		t.Fatalf("malformed event: %v", res[1].Err)
	}
	var ids []int64
	for i, r := range res {
		if !reflect.DeepEqual(r.Event, []Event{create, broken}[i]) {
			t.Fatalf("result %d carries %+v", i, r.Event)
		}
		dl := NewDeadLetter(r.Event, r.Err, 3, now)
		if dl.GuildID != guild || dl.Error == "" || dl.DeliveryID != r.Event.DeliveryID {
			t.Fatalf("dead letter %+v", dl)
		}
		id, err := s.AddDeadLetter(ctx, dl)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if d, _ := s.Dashboard(ctx, guild); d.Messages != 0 {
		t.Fatal("the failed create left a row")
	}
	replay := func(ctx context.Context, d guildstore.DeadLetter) error {
		ev := EventFromDeadLetter(d)
		_, err := h.Handle(ctx, ev, 1)
		return err
	}
	if err := s.ReplayDeadLetter(ctx, ids[0], replay); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplayDeadLetter(ctx, ids[1], replay); !errors.Is(err, ErrMalformedEvent) {
		t.Fatalf("replay of the malformed event: %v", err)
	}
	d, _ := s.Dashboard(ctx, guild)
	if d.Messages != 1 {
		t.Fatalf("replayed create: %+v", d)
	}
	if n, _ := s.DeadLetterCount(ctx, guild); n != 1 {
		t.Fatalf("dead letters left: %d, want the malformed one", n)
	}
	// A dead letter gives its event back as it was received.
	dl, _, _ := s.DeadLetter(ctx, ids[1])
	if ev := EventFromDeadLetter(dl); ev.Type != broken.Type || string(ev.Data) != string(broken.Data) || ev.DeliveryID != "sess:8" {
		t.Fatalf("event from dead letter %+v", ev)
	}
}
