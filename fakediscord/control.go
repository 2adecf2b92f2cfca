package fakediscord

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// The control API (/_fake/…) is for tests and `modbot dev`; it is not part of
// Discord. Ids are JSON strings; errors are {"error": "..."}.

type guildJSON struct {
	ID       string        `json:"id"`
	Name     string        `json:"name"`
	Shard    int           `json:"shard"`
	Channels []channelJSON `json:"channels"`
	Roles    []channelJSON `json:"roles"`
}

type channelJSON struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func toGuildJSON(g Guild) guildJSON {
	out := guildJSON{ID: idStr(g.ID), Name: g.Name, Shard: g.Shard, Channels: []channelJSON{}, Roles: []channelJSON{}}
	for _, c := range g.Channels {
		out.Channels = append(out.Channels, channelJSON{ID: idStr(c.ID), Name: c.Name})
	}
	for _, r := range g.Roles {
		out.Roles = append(out.Roles, channelJSON{ID: idStr(r.ID), Name: r.Name})
	}
	return out
}

func ctlError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// ctlDecode decodes an optional JSON body; an empty body leaves v unchanged.
func ctlDecode(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		ctlError(w, http.StatusBadRequest, "read body: %v", err)
		return false
	}
	if len(b) == 0 {
		return true
	}
	if err := json.Unmarshal(b, v); err != nil {
		ctlError(w, http.StatusBadRequest, "bad JSON body: %v", err)
		return false
	}
	return true
}

func ctlID(w http.ResponseWriter, r *http.Request, name string) (uint64, bool) {
	n, err := strconv.ParseUint(r.PathValue(name), 10, 64)
	if err != nil {
		ctlError(w, http.StatusBadRequest, "%s %q is not a snowflake", name, r.PathValue(name))
		return 0, false
	}
	return n, true
}

func ctlErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrUnknownGuild), errors.Is(err, ErrUnknownChannel), errors.Is(err, ErrUnknownMessage), errors.Is(err, ErrUnknownSession):
		ctlError(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, ErrNoSession):
		ctlError(w, http.StatusConflict, "%v", err)
	default:
		ctlError(w, http.StatusBadRequest, "%v", err)
	}
}

func (s *Server) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /_fake/guilds", func(w http.ResponseWriter, r *http.Request) {
		out := []guildJSON{}
		for _, g := range s.Guilds() {
			out = append(out, toGuildJSON(g))
		}
		writeJSON(w, 200, out)
	})
	mux.HandleFunc("POST /_fake/guilds", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			ID   jsonID `json:"id"`
			Name string `json:"name"`
		}
		if ctlDecode(w, r, &b) {
			writeJSON(w, 201, toGuildJSON(s.CreateGuild(uint64(b.ID), b.Name)))
		}
	})
	mux.HandleFunc("POST /_fake/guilds/{id}/messages", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			ChannelID jsonID `json:"channel_id"`
			AuthorID  jsonID `json:"author_id"`
			Content   string `json:"content"`
		}
		gid, ok := ctlID(w, r, "id")
		if !ok || !ctlDecode(w, r, &b) {
			return
		}
		mid, err := s.SendMessage(gid, uint64(b.ChannelID), uint64(b.AuthorID), b.Content)
		if err != nil {
			ctlErr(w, err)
			return
		}
		writeJSON(w, 201, map[string]string{"id": idStr(mid)})
	})
	mux.HandleFunc("POST /_fake/guilds/{id}/messages/{mid}/edit", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			Content string `json:"content"`
		}
		gid, ok := ctlID(w, r, "id")
		mid, ok2 := ctlID(w, r, "mid")
		if !ok || !ok2 || !ctlDecode(w, r, &b) {
			return
		}
		if err := s.EditMessage(gid, mid, b.Content); err != nil {
			ctlErr(w, err)
			return
		}
		writeJSON(w, 200, map[string]string{"id": idStr(mid)})
	})
	mux.HandleFunc("DELETE /_fake/guilds/{id}/messages/{mid}", func(w http.ResponseWriter, r *http.Request) {
		gid, ok := ctlID(w, r, "id")
		mid, ok2 := ctlID(w, r, "mid")
		if !ok || !ok2 {
			return
		}
		if err := s.DeleteMessage(gid, mid); err != nil {
			ctlErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/guilds/{id}/reactions", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			ChannelID jsonID `json:"channel_id"`
			MessageID jsonID `json:"message_id"`
			UserID    jsonID `json:"user_id"`
			Emoji     string `json:"emoji"`
		}
		gid, ok := ctlID(w, r, "id")
		if !ok || !ctlDecode(w, r, &b) {
			return
		}
		if err := s.AddReaction(gid, uint64(b.ChannelID), uint64(b.MessageID), uint64(b.UserID), b.Emoji); err != nil {
			ctlErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/guilds/{id}/bans", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			UserID jsonID `json:"user_id"`
			Reason string `json:"reason"`
		}
		gid, ok := ctlID(w, r, "id")
		if !ok || !ctlDecode(w, r, &b) {
			return
		}
		if b.UserID == 0 {
			ctlError(w, http.StatusBadRequest, "user_id is required")
			return
		}
		if err := s.Ban(gid, uint64(b.UserID), b.Reason); err != nil {
			ctlErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /_fake/guilds/{id}/bans/{user}", func(w http.ResponseWriter, r *http.Request) {
		gid, ok := ctlID(w, r, "id")
		uid, ok2 := ctlID(w, r, "user")
		if !ok || !ok2 {
			return
		}
		if err := s.Unban(gid, uid); err != nil {
			ctlErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/guilds/{id}/members/{user}/remove", func(w http.ResponseWriter, r *http.Request) {
		gid, ok := ctlID(w, r, "id")
		uid, ok2 := ctlID(w, r, "user")
		if !ok || !ok2 {
			return
		}
		if err := s.RemoveMember(gid, uid); err != nil {
			ctlErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/interactions", func(w http.ResponseWriter, r *http.Request) {
		var b struct {
			GuildID   jsonID          `json:"guild_id"`
			Name      string          `json:"name"`
			Type      int             `json:"type"`
			Options   json.RawMessage `json:"options"`
			TargetID  jsonID          `json:"target_id"`
			ChannelID jsonID          `json:"channel_id"`
			UserID    jsonID          `json:"user_id"`
			// Permissions of the invoking member (decimal string).
			Permissions string `json:"permissions"`
		}
		if !ctlDecode(w, r, &b) {
			return
		}
		rec, err := s.DeliverInteraction(r.Context(), InteractionSpec{GuildID: uint64(b.GuildID), Name: b.Name, CommandType: b.Type,
			Options: b.Options, TargetID: uint64(b.TargetID), ChannelID: uint64(b.ChannelID), UserID: uint64(b.UserID), Permissions: b.Permissions})
		if err != nil {
			ctlErr(w, err)
			return
		}
		writeJSON(w, 201, rec)
	})
	mux.HandleFunc("GET /_fake/interactions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, s.Interactions())
	})
	mux.HandleFunc("GET /_fake/interactions/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := ctlID(w, r, "id")
		if !ok {
			return
		}
		rec, found := s.Interaction(id)
		if !found {
			ctlError(w, http.StatusNotFound, "unknown interaction %d", id)
			return
		}
		writeJSON(w, 200, rec)
	})
	mux.HandleFunc("POST /_fake/ping", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.SendPing(r.Context(), r.URL.Query().Get("tamper") == "true")
		if err != nil {
			ctlErr(w, err)
			return
		}
		writeJSON(w, 200, res)
	})
	mux.HandleFunc("GET /_fake/sent", func(w http.ResponseWriter, r *http.Request) {
		since := 0
		if v := r.URL.Query().Get("since"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				ctlError(w, http.StatusBadRequest, "since %q is not a number", v)
				return
			}
			since = n
		}
		writeJSON(w, 200, s.SentSince(since))
	})
	mux.HandleFunc("GET /_fake/ratelimits", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, s.RateLimitStats())
	})
	mux.HandleFunc("POST /_fake/ratelimits/reset", func(w http.ResponseWriter, r *http.Request) {
		limits := s.RateLimitStats().Limits
		if !ctlDecode(w, r, &limits) { // an empty body keeps the current limits
			return
		}
		s.ResetRateLimits(limits)
		writeJSON(w, 200, s.RateLimitStats())
	})
	mux.HandleFunc("GET /_fake/sessions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, s.Sessions())
	})
	mux.HandleFunc("GET /_fake/identifies", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, s.Identifies())
	})
	mux.HandleFunc("POST /_fake/sessions/{sid}/{action}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("sid")
		var err error
		switch r.PathValue("action") {
		case "drop":
			err = s.DropSession(id)
		case "reconnect":
			err = s.Reconnect(id)
		case "heartbeat":
			err = s.RequestHeartbeat(id)
		case "invalidate":
			var b struct {
				Resumable bool `json:"resumable"`
			}
			if !ctlDecode(w, r, &b) {
				return
			}
			err = s.InvalidateSession(id, b.Resumable)
		case "stall":
			var b struct {
				MS int `json:"ms"`
			}
			if !ctlDecode(w, r, &b) {
				return
			}
			if b.MS <= 0 {
				ctlError(w, http.StatusBadRequest, "ms must be positive")
				return
			}
			err = s.StallSession(id, time.Duration(b.MS)*time.Millisecond)
		default:
			ctlError(w, http.StatusNotFound, "unknown session action %q (drop, reconnect, heartbeat, invalidate, stall)", r.PathValue("action"))
			return
		}
		if err != nil {
			ctlErr(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
