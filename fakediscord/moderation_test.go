package fakediscord

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
)

func restCode(err error) (int, int) {
	var re *discordgo.RESTError
	if !errors.As(err, &re) {
		return 0, 0
	}
	code := 0
	if re.Message != nil {
		code = re.Message.Code
	}
	return re.Response.StatusCode, code
}

// TestModerationRESTWithDiscordgo drives every read and action a
// moderation bot uses through discordgo against the fake (Discord's limits on).
func TestModerationRESTWithDiscordgo(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	g := h.srv.CreateGuild(0, "mods")
	gid, general := idStr(g.ID), idStr(g.Channels[0].ID)
	s := restSession(t, h.base, h.srv.Config().Token)
	_, rec := h.open(h.srv.Config().Token, 0, 1, false)
	rec.waitCount(t, "GUILD_CREATE", 1)

	var userMsgs []string
	for i := 0; i < 4; i++ {
		id, err := h.srv.SendMessage(g.ID, g.Channels[0].ID, uint64(500+i), "spam "+string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		userMsgs = append(userMsgs, idStr(id))
	}

	t.Run("GetChannel", func(t *testing.T) {
		ch, err := s.Channel(general)
		if err != nil || ch.ID != general || ch.GuildID != gid || ch.Name != "general" || ch.Type != discordgo.ChannelTypeGuildText {
			t.Fatalf("channel %+v, %v", ch, err)
		}
		if _, err := s.Channel("42"); !is(err, 404, 10003) {
			t.Fatalf("unknown channel: %v", err)
		}
	})
	t.Run("ListMessages", func(t *testing.T) {
		msgs, err := s.ChannelMessages(general, 3, "", "", "")
		if err != nil || len(msgs) != 3 || msgs[0].ID != userMsgs[3] || msgs[2].ID != userMsgs[1] {
			t.Fatalf("latest 3: %v, %v", ids(msgs), err)
		}
		msgs, err = s.ChannelMessages(general, 10, userMsgs[2], "", "")
		if err != nil || !slices.Equal(ids(msgs), []string{userMsgs[1], userMsgs[0]}) {
			t.Fatalf("before: %v, %v", ids(msgs), err)
		}
		msgs, err = s.ChannelMessages(general, 2, "", userMsgs[0], "")
		if err != nil || !slices.Equal(ids(msgs), []string{userMsgs[2], userMsgs[1]}) {
			t.Fatalf("after: %v, %v", ids(msgs), err)
		}
		if msgs[0].Author.ID != "502" || msgs[0].Content != "spam c" {
			t.Fatalf("message %+v", msgs[0])
		}
	})
	t.Run("BulkDelete", func(t *testing.T) {
		if resp, b := rawREST(t, h, "POST", "/channels/"+general+"/messages/bulk-delete", h.srv.Config().Token, `{"messages":["`+userMsgs[0]+`"]}`); resp.StatusCode != 400 {
			t.Fatalf("bulk delete of one message: HTTP %d %s, want 400", resp.StatusCode, b)
		}
		// discordgo deletes a single message with DELETE (audited as a message delete).
		if err := s.ChannelMessagesBulkDelete(general, userMsgs[:1]); err != nil {
			t.Fatal(err)
		}
		// An id that is gone counts towards the 2 but is skipped.
		if err := s.ChannelMessagesBulkDelete(general, userMsgs[:2]); err != nil {
			t.Fatal(err)
		}
		ev := rec.waitCount(t, "MESSAGE_DELETE_BULK", 1)[0].Struct.(*discordgo.MessageDeleteBulk)
		if !slices.Equal(ev.Messages, userMsgs[1:2]) || ev.ChannelID != general || ev.GuildID != gid {
			t.Fatalf("MESSAGE_DELETE_BULK %+v", ev)
		}
		msgs, _ := s.ChannelMessages(general, 100, "", "", "")
		if !slices.Equal(ids(msgs), []string{userMsgs[3], userMsgs[2]}) {
			t.Fatalf("left after bulk delete: %v", ids(msgs))
		}
	})
	t.Run("Members", func(t *testing.T) {
		m, err := s.GuildMember(gid, "502")
		if err != nil || m.User.ID != "502" || m.JoinedAt.IsZero() {
			t.Fatalf("member: %+v, %v", m, err)
		}
		until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
		if err := s.GuildMemberTimeout(gid, "502", &until, discordgo.WithAuditLogReason("cool down")); err != nil {
			t.Fatal(err)
		}
		m, err = s.GuildMember(gid, "502")
		if err != nil || m.CommunicationDisabledUntil == nil || !m.CommunicationDisabledUntil.Equal(until) {
			t.Fatalf("timed-out member: %+v, %v", m, err)
		}
		if err := s.GuildMemberDeleteWithReason(gid, "503", "bye"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GuildMember(gid, "503"); !is(err, 404, 10007) {
			t.Fatalf("kicked member: %v, want 404 10007", err)
		}
	})
	t.Run("Bans", func(t *testing.T) {
		for _, u := range []string{"700", "600", "800"} {
			if err := s.GuildBanCreateWithReason(gid, u, "spam "+u, 0); err != nil {
				t.Fatal(err)
			}
		}
		bans, err := s.GuildBans(gid, 2, "", "")
		if err != nil || len(bans) != 2 || bans[0].User.ID != "600" || bans[1].User.ID != "700" || bans[0].Reason != "spam 600" {
			t.Fatalf("bans: %+v, %v", bans, err)
		}
		bans, err = s.GuildBans(gid, 10, "", "700")
		if err != nil || len(bans) != 1 || bans[0].User.ID != "800" {
			t.Fatalf("bans after 700: %+v, %v", bans, err)
		}
		b, err := s.GuildBan(gid, "800")
		if err != nil || b.User.ID != "800" || b.Reason != "spam 800" {
			t.Fatalf("ban: %+v, %v", b, err)
		}
		if _, err := s.GuildBan(gid, "801"); !is(err, 404, 10026) {
			t.Fatalf("unknown ban: %v", err)
		}
		if _, err := s.GuildMember(gid, "800"); !is(err, 404, 10007) {
			t.Fatalf("banned user still a member: %v", err)
		}
	})
	t.Run("Roles", func(t *testing.T) {
		roles, err := s.GuildRoles(gid)
		if err != nil || len(roles) != 2 || roles[0].ID != gid || roles[0].Name != "@everyone" || roles[1].Name != "Moderator" || roles[1].ID != idStr(g.Roles[1].ID) {
			t.Fatalf("roles: %+v, %v", roles, err)
		}
	})
	t.Run("AuditLog", func(t *testing.T) {
		log, err := s.GuildAuditLog(gid, "", "", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		var actions []int
		for _, e := range log.AuditLogEntries {
			actions = append(actions, int(*e.ActionType))
			if e.UserID != h.srv.Config().ApplicationID {
				t.Errorf("entry %+v not by the bot", e)
			}
		}
		// Newest first: 3 bans, the kick, the timeout, the bulk delete, the delete.
		want := []int{AuditMemberBanAdd, AuditMemberBanAdd, AuditMemberBanAdd, AuditMemberKick, AuditMemberUpdate, AuditMessageBulkDelete, AuditMessageDelete}
		if !slices.Equal(actions, want) {
			t.Fatalf("audit actions %v, want %v", actions, want)
		}
		if e := log.AuditLogEntries[3]; e.TargetID != "503" || e.Reason != "bye" {
			t.Fatalf("kick entry %+v", e)
		}
		if e := log.AuditLogEntries[4]; e.Reason != "cool down" || len(e.Changes) != 1 || *e.Changes[0].Key != discordgo.AuditLogChangeKeyCommunicationDisabledUntil {
			t.Fatalf("timeout entry %+v", e)
		}
		bans, err := s.GuildAuditLog(gid, "", "", int(discordgo.AuditLogActionMemberBanAdd), 2)
		if err != nil || len(bans.AuditLogEntries) != 2 || bans.AuditLogEntries[0].TargetID != "800" {
			t.Fatalf("filtered audit log: %+v, %v", bans, err)
		}
		older, err := s.GuildAuditLog(gid, "", bans.AuditLogEntries[1].ID, 0, 0)
		if err != nil || len(older.AuditLogEntries) != 5 || older.AuditLogEntries[0].TargetID != "700" {
			t.Fatalf("before: %+v, %v", older, err)
		}
	})
	t.Run("Reaction", func(t *testing.T) {
		if err := s.MessageReactionAdd(general, userMsgs[3], "🚩"); err != nil {
			t.Fatal(err)
		}
		ev := rec.waitCount(t, "MESSAGE_REACTION_ADD", 1)[0].Struct.(*discordgo.MessageReactionAdd)
		if ev.UserID != h.srv.Config().ApplicationID || ev.MessageID != userMsgs[3] || ev.Emoji.Name != "🚩" {
			t.Fatalf("reaction %+v", ev.MessageReaction)
		}
		if err := s.MessageReactionAdd(general, userMsgs[0], "🚩"); !is(err, 404, 10008) {
			t.Fatalf("reaction to a deleted message: %v", err)
		}
	})
	t.Run("CurrentApplication", func(t *testing.T) {
		app, err := s.Application("@me")
		if err != nil || app.ID != h.srv.Config().ApplicationID || app.VerifyKey != h.srv.PublicKeyHex() || app.Name != "modbot" {
			t.Fatalf("application %+v, %v", app, err)
		}
	})
	t.Run("DM", func(t *testing.T) {
		dm, err := s.UserChannelCreate("502")
		if err != nil || dm.Type != discordgo.ChannelTypeDM || len(dm.Recipients) != 1 || dm.Recipients[0].ID != "502" {
			t.Fatalf("DM channel %+v, %v", dm, err)
		}
		again, err := s.UserChannelCreate("502")
		if err != nil || again.ID != dm.ID {
			t.Fatalf("second create: %+v, %v (want the same channel)", again, err)
		}
		m, err := s.ChannelMessageSend(dm.ID, "you were timed out")
		if err != nil || m.ChannelID != dm.ID || m.GuildID != "" {
			t.Fatalf("DM message %+v, %v", m, err)
		}
		ev := rec.waitFor // the session has DIRECT_MESSAGES: the DM arrives on shard 0
		ev(t, "the DM's MESSAGE_CREATE", func() bool {
			for _, e := range rec.of("MESSAGE_CREATE") {
				if mc := e.Struct.(*discordgo.MessageCreate); mc.ID == m.ID && mc.GuildID == "" {
					return true
				}
			}
			return false
		})
		ch, err := s.Channel(dm.ID)
		if err != nil || ch.Type != discordgo.ChannelTypeDM {
			t.Fatalf("get DM channel %+v, %v", ch, err)
		}
	})
	t.Run("Reply", func(t *testing.T) {
		target := userMsgs[3]
		m, err := s.ChannelMessageSendReply(general, "reported", &discordgo.MessageReference{MessageID: target})
		if err != nil || m.Type != discordgo.MessageTypeReply || m.MessageReference == nil || m.MessageReference.MessageID != target ||
			m.MessageReference.ChannelID != general || m.MessageReference.GuildID != gid || m.ReferencedMessage == nil || m.ReferencedMessage.ID != target {
			t.Fatalf("reply %+v, %v", m, err)
		}
		_, err = s.ChannelMessageSendReply(general, "to nothing", &discordgo.MessageReference{MessageID: userMsgs[0]})
		if !is(err, 400, 50035) {
			t.Fatalf("reply to a deleted message: %v, want 400 50035", err)
		}
		no := false
		m, err = s.ChannelMessageSendComplex(general, &discordgo.MessageSend{Content: "plain",
			Reference: &discordgo.MessageReference{MessageID: userMsgs[0], FailIfNotExists: &no}})
		if err != nil || m.Type != discordgo.MessageTypeDefault || m.MessageReference != nil {
			t.Fatalf("fail_if_not_exists false: %+v, %v", m, err)
		}
	})
	if st := h.srv.RateLimitStats(); st.Requests == 0 || st.Global[BotIdentity].Accepted == 0 {
		t.Fatalf("nothing counted: %+v", st)
	}
}

func is(err error, status, code int) bool {
	s, c := restCode(err)
	return s == status && c == code
}

func ids(msgs []*discordgo.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

func TestRequestGuildMembersGetsChunks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Shards: 2})
	g := h.srv.CreateGuild(0, "")
	for i := 0; i < 20 && ShardFor(g.ID, 2) != 0; i++ { // ids follow the clock: not every guild is on shard 0
		g = h.srv.CreateGuild(0, "")
	}
	if ShardFor(g.ID, 2) != 0 {
		t.Fatal("no guild on shard 0")
	}
	for _, u := range []uint64{301, 302, 303} {
		if _, err := h.srv.SendMessage(g.ID, 0, u, "hi"); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.srv.RemoveMember(g.ID, 303); err != nil {
		t.Fatal(err)
	}
	sess, rec := h.open(h.srv.Config().Token, 0, 2, false)
	if err := sess.RequestGuildMembers(idStr(g.ID), "", 0, "all", false); err != nil {
		t.Fatal(err)
	}
	chunk := rec.waitCount(t, "GUILD_MEMBERS_CHUNK", 1)[0].Struct.(*discordgo.GuildMembersChunk)
	var got []string
	for _, m := range chunk.Members {
		got = append(got, m.User.ID)
	}
	if chunk.GuildID != idStr(g.ID) || chunk.Nonce != "all" || chunk.ChunkIndex != 0 || chunk.ChunkCount != 1 ||
		!slices.Contains(got, "301") || !slices.Contains(got, "302") || slices.Contains(got, "303") || !slices.Contains(got, h.srv.Config().ApplicationID) {
		t.Fatalf("chunk %+v with members %v", chunk, got)
	}
	if err := sess.RequestGuildMembersList(idStr(g.ID), []string{"302", "303"}, 0, "some", false); err != nil {
		t.Fatal(err)
	}
	chunk = rec.waitCount(t, "GUILD_MEMBERS_CHUNK", 2)[1].Struct.(*discordgo.GuildMembersChunk)
	if chunk.Nonce != "some" || len(chunk.Members) != 1 || chunk.Members[0].User.ID != "302" || !slices.Equal(chunk.NotFound, []string{"303"}) {
		t.Fatalf("by user ids: %+v", chunk)
	}
	// A prefix query with a limit.
	if err := sess.RequestGuildMembers(idStr(g.ID), "user30", 1, "q", false); err != nil {
		t.Fatal(err)
	}
	chunk = rec.waitCount(t, "GUILD_MEMBERS_CHUNK", 3)[2].Struct.(*discordgo.GuildMembersChunk)
	if len(chunk.Members) != 1 || chunk.Members[0].User.Username != "user301" {
		t.Fatalf("query: %+v", chunk.Members)
	}
}

func TestInteractionResolvedOptions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	g := h.srv.CreateGuild(0, "")
	s := restSession(t, h.base, h.srv.Config().Token)
	if _, err := s.ApplicationCommandCreate(h.srv.Config().ApplicationID, "", &discordgo.ApplicationCommand{Name: "setup", Description: "x",
		Options: []*discordgo.ApplicationCommandOption{
			{Name: "mod_role", Type: discordgo.ApplicationCommandOptionRole, Description: "r"},
			{Name: "modlog_channel", Type: discordgo.ApplicationCommandOptionChannel, Description: "c"},
		}}); err != nil {
		t.Fatal(err)
	}
	_, rec := h.open(h.srv.Config().Token, 0, 1, false)
	role, modlog := idStr(g.Roles[1].ID), idStr(g.Channels[1].ID)
	// Shorthand options take their types from the registered command.
	if _, err := h.srv.DeliverInteraction(t.Context(), InteractionSpec{GuildID: g.ID, Name: "setup",
		Options: json.RawMessage(`{"mod_role":"` + role + `","modlog_channel":"` + modlog + `"}`)}); err != nil {
		t.Fatal(err)
	}
	// An explicit options array: a user option resolves to the user and member.
	if _, err := h.srv.DeliverInteraction(t.Context(), InteractionSpec{GuildID: g.ID, Name: "report",
		Options: json.RawMessage(`[{"name":"user","type":6,"value":"4242"},{"name":"reason","type":3,"value":"spam"}]`)}); err != nil {
		t.Fatal(err)
	}
	evs := rec.waitCount(t, "INTERACTION_CREATE", 2)
	setup := evs[0].Struct.(*discordgo.InteractionCreate).ApplicationCommandData()
	if r := setup.Resolved; r == nil || r.Roles[role] == nil || r.Roles[role].Name != "Moderator" || r.Channels[modlog] == nil || r.Channels[modlog].Name != "mod-log" {
		t.Fatalf("setup resolved %+v", setup.Resolved)
	}
	if o := setup.GetOption("mod_role"); o == nil || o.Type != discordgo.ApplicationCommandOptionRole {
		t.Fatalf("mod_role option %+v", o)
	}
	report := evs[1].Struct.(*discordgo.InteractionCreate).ApplicationCommandData()
	if r := report.Resolved; r == nil || r.Users["4242"] == nil || r.Members["4242"] == nil || r.Users["4242"].Username != "user4242" {
		t.Fatalf("report resolved %+v", report.Resolved)
	}
}

// enforce_nonce: a repeat of a create by the same author with the same
// nonce, within the window, answers the first message and creates none; no
// enforce_nonce, or another nonce, creates a message.
func TestEnforceNonceKeepsOneMessagePerNonce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	g := h.srv.CreateGuild(0, "nonces")
	ch := idStr(g.Channels[1].ID)
	s := restSession(t, h.base, h.srv.Config().Token)
	url := discordgo.EndpointChannelMessages(ch)
	send := func(body map[string]any) string {
		t.Helper()
		raw, err := s.RequestWithBucketID("POST", url, body, url)
		if err != nil {
			t.Fatal(err)
		}
		var m discordgo.Message
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	first := send(map[string]any{"content": "report #1", "nonce": "r1", "enforce_nonce": true})
	if again := send(map[string]any{"content": "report #1", "nonce": "r1", "enforce_nonce": true}); again != first {
		t.Fatalf("a repeat with enforce_nonce created message %s, want the first, %s", again, first)
	}
	if other := send(map[string]any{"content": "report #2", "nonce": "r2", "enforce_nonce": true}); other == first {
		t.Fatal("another nonce answered the first message")
	}
	if loose := send(map[string]any{"content": "report #1", "nonce": "r1"}); loose == first {
		t.Fatal("without enforce_nonce a nonce must not deduplicate")
	}
	if n := h.srv.NonceReplays(); n != 1 {
		t.Fatalf("NonceReplays = %d, want 1", n)
	}
	msgs, err := s.ChannelMessages(ch, 100, "", "", "")
	if err != nil || len(msgs) != 3 {
		t.Fatalf("%d messages in the channel (%v), want 3", len(msgs), err)
	}
	if _, err := s.RequestWithBucketID("POST", url, map[string]any{"content": "x", "nonce": strings.Repeat("n", 26), "enforce_nonce": true}, url); !is(err, 400, 50035) {
		t.Fatalf("a 26-character nonce: %v, want 400 50035", err)
	}
}
