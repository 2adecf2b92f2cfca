package fakediscord

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/modbot/modbot/gatewaynode/discordgw"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/bwmarrin/discordgo"
)

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: HTTP %d %s", u, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decode: %v", u, err)
	}
}

func postJSON(t *testing.T, u, body string, wantStatus int, v any) {
	t.Helper()
	resp, err := http.Post(u, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("POST %s: HTTP %d %s, want %d", u, resp.StatusCode, b, wantStatus)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("POST %s: decode %s: %v", u, b, err)
		}
	}
}

func restSession(t *testing.T, base, token string) *discordgo.Session {
	t.Helper()
	s, err := discordgo.New("Bot " + token)
	if err != nil {
		t.Fatal(err)
	}
	if err := discordgw.ConfigureSession(s, base); err != nil {
		t.Fatal(err)
	}
	s.LogLevel = -1
	// Connections discordgo dialed for a burst but never used would hold up
	// the fake's graceful shutdown (the server waits 5 s for new ones).
	t.Cleanup(s.Client.CloseIdleConnections)
	return s
}

func TestRESTWithDiscordgo(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Shards: 3, MaxConcurrency: 4})
	g := h.srv.CreateGuild(0, "rest")

	bad := restSession(t, h.base, "wrong")
	_, err := bad.User("@me")
	var re *discordgo.RESTError
	if !errors.As(err, &re) || re.Response.StatusCode != 401 || re.Message == nil || re.Message.Message != "401: Unauthorized" || re.Message.Code != 0 {
		t.Fatalf("wrong token: %v, want 401 {\"message\": \"401: Unauthorized\", \"code\": 0}", err)
	}

	s := restSession(t, h.base, h.srv.Config().Token)
	me, err := s.User("@me")
	if err != nil || me.ID != h.srv.Config().ApplicationID || !me.Bot {
		t.Fatalf("@me: %+v, %v", me, err)
	}
	gb, err := s.GatewayBot()
	if err != nil || gb.Shards != 3 || gb.SessionStartLimit.MaxConcurrency != 4 || gb.SessionStartLimit.Total != 1000 || !strings.HasPrefix(gb.URL, "ws://") {
		t.Fatalf("gateway/bot: %+v, %v", gb, err)
	}

	msg, err := s.ChannelMessageSend(idStr(g.Channels[1].ID), "a report")
	if err != nil || msg.Content != "a report" || msg.Author.ID != me.ID || msg.GuildID != idStr(g.ID) {
		t.Fatalf("send message: %+v, %v", msg, err)
	}
	_, err = s.ChannelMessageSend("123", "nowhere")
	if !errors.As(err, &re) || re.Response.StatusCode != 404 || re.Message.Code != 10003 {
		t.Fatalf("unknown channel: %v, want 404 code 10003", err)
	}
	if _, err := s.ApplicationCommandBulkOverwrite(h.srv.Config().ApplicationID, "", []*discordgo.ApplicationCommand{
		{Name: "setup", Description: "configure"}, {Name: "Report", Type: discordgo.MessageApplicationCommand},
	}); err != nil {
		t.Fatalf("register commands: %v", err)
	}
	if err := s.GuildBanCreateWithReason(idStr(g.ID), "55", "spam", 0); err != nil {
		t.Fatalf("ban: %v", err)
	}

	sent := h.srv.Sent()
	if len(sent) != 4 {
		t.Fatalf("sent: %+v", sent)
	}
	var body struct {
		Content string `json:"content"`
	}
	if sent[0].Method != "POST" || sent[0].Path != "/api/v9/channels/"+idStr(g.Channels[1].ID)+"/messages" || json.Unmarshal(sent[0].Body, &body) != nil || body.Content != "a report" {
		t.Errorf("sent[0] = %+v", sent[0])
	}
	if sent[1].Status != 404 || sent[2].Method != "PUT" || sent[3].Method != "PUT" {
		t.Errorf("sent = %+v", sent)
	}
	if cmds := h.srv.Commands(0); len(cmds) != 2 {
		t.Errorf("commands: %v", cmds)
	}
	var since []SentRequest
	getJSON(t, h.base+"/_fake/sent?since=2", &since)
	if len(since) != 2 || since[0].Seq != 3 {
		t.Errorf("/_fake/sent?since=3: %+v", since)
	}
}

func TestControlAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Shards: 2})
	var g guildJSON
	postJSON(t, h.base+"/_fake/guilds", `{"id":"81384788765712384","name":"dapi"}`, 201, &g)
	if g.ID != "81384788765712384" || g.Shard != ShardFor(81384788765712384, 2) || len(g.Channels) != 2 {
		t.Fatalf("created %+v", g)
	}
	postJSON(t, h.base+"/_fake/guilds", `{"name":`, 400, nil)
	var list []guildJSON
	getJSON(t, h.base+"/_fake/guilds", &list)
	if len(list) != 1 || list[0].ID != g.ID {
		t.Fatalf("guilds %+v", list)
	}
	var created struct {
		ID string `json:"id"`
	}
	postJSON(t, h.base+"/_fake/guilds/"+g.ID+"/messages", `{"content":"hi","author_id":"9"}`, 201, &created)
	postJSON(t, h.base+"/_fake/guilds/"+g.ID+"/messages/"+created.ID+"/edit", `{"content":"hi!"}`, 200, nil)
	postJSON(t, h.base+"/_fake/guilds/"+g.ID+"/reactions", `{"message_id":"`+created.ID+`","user_id":"9","emoji":"🚩"}`, 204, nil)
	postJSON(t, h.base+"/_fake/guilds/"+g.ID+"/bans", `{"user_id":"9"}`, 204, nil)
	postJSON(t, h.base+"/_fake/guilds/"+g.ID+"/members/9/remove", ``, 204, nil)
	postJSON(t, h.base+"/_fake/guilds/1/messages", `{"content":"x"}`, 404, nil)
	postJSON(t, h.base+"/_fake/interactions", `{"guild_id":"`+g.ID+`","name":"setup"}`, 409, nil) // nobody connected
	req, _ := http.NewRequest(http.MethodDelete, h.base+"/_fake/guilds/"+g.ID+"/messages/"+created.ID, bytes.NewReader(nil))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("delete message: %v %v", resp, err)
	}
	resp.Body.Close()
	postJSON(t, h.base+"/_fake/sessions/nope/drop", ``, 404, nil)
}

// TestSeededGuildsAreTheSameAfterARestart: a fake that restarts serves the
// same seeded guilds (and channels), so modbot dev resumes its state.
func TestSeededGuildsAreTheSameAfterARestart(t *testing.T) {
	a, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ga, gb := a.Seed(5), b.Seed(5)
	shards := map[int]bool{}
	for i := range ga {
		if ga[i].ID != gb[i].ID || ga[i].Channels[0].ID != gb[i].Channels[0].ID {
			t.Fatalf("seeded guild %d differs: %d vs %d", i, ga[i].ID, gb[i].ID)
		}
		shards[ShardFor(ga[i].ID, 4)] = true
	}
	if len(shards) != 4 {
		t.Fatalf("5 seeded guilds cover %d of 4 shards", len(shards))
	}
	if more := a.Seed(1); more[0].ID == ga[4].ID {
		t.Fatal("a second Seed reused an id")
	}
}
