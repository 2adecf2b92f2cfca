package fakediscord

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
)

func TestInteractionWebhookModeSignedAndVerified(t *testing.T) {
	t.Parallel()
	var verified, rejected atomic.Int32
	var pub atomic.Value
	bot := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !discordgo.VerifyInteraction(r, pub.Load().([]byte)) {
			rejected.Add(1)
			http.Error(w, "invalid request signature", http.StatusUnauthorized)
			return
		}
		verified.Add(1)
		var in discordgo.Interaction
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if in.Type == discordgo.InteractionPing {
			_, _ = w.Write([]byte(`{"type":1}`))
			return
		}
		_, _ = w.Write([]byte(`{"type":5}`)) // deferred, follow up later
	}))
	t.Cleanup(bot.Close)
	h := newHarness(t, Config{InteractionsURL: bot.URL})
	pub.Store([]byte(h.srv.PublicKey()))
	g := h.srv.CreateGuild(0, "hooks")
	target, _ := h.srv.SendMessage(g.ID, 0, 66, "bad words")

	ctx := context.Background()
	if err := h.srv.VerifyEndpoint(ctx); err != nil {
		t.Fatalf("endpoint verification: %v", err)
	}
	if verified.Load() != 1 || rejected.Load() != 1 {
		t.Fatalf("verified %d, rejected %d; want 1 and 1", verified.Load(), rejected.Load())
	}

	rec, err := h.srv.DeliverInteraction(ctx, InteractionSpec{GuildID: g.ID, Name: "Report", TargetID: target})
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Acknowledged || rec.ResponseType != ResponseDeferredChannelMessage || !rec.WithinDeadline || rec.Mode != "webhook" || rec.Error != "" {
		t.Fatalf("record %+v", rec)
	}

	// Follow up through the webhook endpoints with discordgo; the token authenticates.
	s := restSession(t, h.base, "not-needed-for-webhooks")
	id, _ := strconv.ParseUint(rec.ID, 10, 64)
	in := &discordgo.Interaction{ID: rec.ID, AppID: h.srv.Config().ApplicationID, Token: rec.Token}
	if _, err := s.InteractionResponseEdit(in, &discordgo.WebhookEdit{Content: ptr("reported")}); err != nil {
		t.Fatalf("edit original: %v", err)
	}
	if _, err := s.FollowupMessageCreate(in, true, &discordgo.WebhookParams{Content: "thanks"}); err != nil {
		t.Fatalf("follow-up: %v", err)
	}
	got, _ := h.srv.Interaction(id)
	if len(got.Followups) != 1 || !bytes.Contains(got.Original, []byte("reported")) {
		t.Fatalf("record after follow-ups %+v", got)
	}

	// A tampered body does not verify with discordgo.
	body := []byte(`{"type":1}`)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	sig := h.srv.Sign(ts, body)
	req := httptest.NewRequest("POST", "/", bytes.NewReader(body))
	req.Header.Set("X-Signature-Ed25519", sig)
	req.Header.Set("X-Signature-Timestamp", ts)
	if !discordgo.VerifyInteraction(req, h.srv.PublicKey()) {
		t.Fatal("valid signature did not verify")
	}
	req = httptest.NewRequest("POST", "/", bytes.NewReader([]byte(`{"type":2}`)))
	req.Header.Set("X-Signature-Ed25519", sig)
	req.Header.Set("X-Signature-Timestamp", ts)
	if discordgo.VerifyInteraction(req, h.srv.PublicKey()) {
		t.Fatal("tampered body verified")
	}
}

func TestInteractionWebhookTooSlow(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	bot := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte(`{"type":4,"data":{"content":"too late"}}`))
	}))
	t.Cleanup(bot.Close)
	t.Cleanup(func() { close(release) })
	h := newHarness(t, Config{InteractionsURL: bot.URL, InteractionDeadline: 200 * time.Millisecond})
	g := h.srv.CreateGuild(0, "slow")
	rec, err := h.srv.DeliverInteraction(context.Background(), InteractionSpec{GuildID: g.ID, Name: "setup"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Acknowledged || rec.Error == "" {
		t.Fatalf("a response after the deadline was accepted: %+v", rec)
	}
}

func TestInteractionGatewayModeOneSessionAndCallback(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	g := h.srv.CreateGuild(0, "gw")
	a, ra := h.open(h.srv.Config().Token, 0, 1, false)
	_, rb := h.open(h.srv.Config().Token, 0, 1, false)
	a.AddHandler(func(s *discordgo.Session, ic *discordgo.InteractionCreate) {
		_ = s.InteractionRespond(ic.Interaction, &discordgo.InteractionResponse{
			Type: discordgo.InteractionResponseChannelMessageWithSource,
			Data: &discordgo.InteractionResponseData{Content: "configured " + ic.ApplicationCommandData().Options[0].StringValue()},
		})
	})
	rec, err := h.srv.DeliverInteraction(context.Background(), InteractionSpec{GuildID: g.ID, Name: "setup",
		Options: json.RawMessage(`{"mod_role":"123"}`), UserID: 77})
	if err != nil {
		t.Fatal(err)
	}
	ev := ra.waitCount(t, "INTERACTION_CREATE", 1)[0].Struct.(*discordgo.InteractionCreate)
	data := ev.ApplicationCommandData()
	if ev.Type != discordgo.InteractionApplicationCommand || data.Name != "setup" || ev.GuildID != idStr(g.ID) ||
		ev.Member.User.ID != "77" || ev.Token != rec.Token || ev.Version != 1 || ev.AppID != h.srv.Config().ApplicationID {
		t.Fatalf("interaction %+v", ev.Interaction)
	}
	id, _ := strconv.ParseUint(rec.ID, 10, 64)
	poll(t, "callback", func() bool { r, _ := h.srv.Interaction(id); return r.Acknowledged })
	got, _ := h.srv.Interaction(id)
	if !got.WithinDeadline || got.ResponseType != 4 || !bytes.Contains(got.Original, []byte("configured 123")) {
		t.Fatalf("record %+v", got)
	}
	var found bool
	for _, s := range h.srv.Sent() {
		if s.Path == "/api/v9/interactions/"+rec.ID+"/"+rec.Token+"/callback" && s.Status == 204 {
			found = true
		}
	}
	if !found {
		t.Fatalf("callback not in Sent(): %+v", h.srv.Sent())
	}
	// The response message is a real message: both sessions see its MESSAGE_CREATE,
	// which comes after the interaction, so b would have the interaction by now.
	rb.waitCount(t, "MESSAGE_CREATE", 1)
	if n := len(rb.of("INTERACTION_CREATE")); n != 0 {
		t.Fatalf("second session got %d INTERACTION_CREATE, want 0 (one session per interaction)", n)
	}
	// A second callback is refused like Discord does.
	err = a.InteractionRespond(ev.Interaction, &discordgo.InteractionResponse{Type: discordgo.InteractionResponseDeferredChannelMessageWithSource})
	if err == nil {
		t.Fatal("second callback accepted")
	}
}

func ptr[T any](v T) *T { return &v }
