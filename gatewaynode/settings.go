package gatewaynode

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/gatewaynode/guildstore"
	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// discordEpochMS is the first millisecond of 2015 (snowflake time zero).
const discordEpochMS = 1420070400000

// handleSettings is POST /guild/{id}/settings, the dashboard's settings
// form (modlog_channel, mod_role; an empty field keeps the value). The
// rules are /setup's: Manage Server or Administrator (the moderator role
// is not enough), the same versioned write (the newest write of a field
// wins, by snowflake time), fenced by the guild's epoch. A signed-in
// user's form must carry their session's CSRF token.
func (n *Node) handleSettings(w http.ResponseWriter, r *http.Request) {
	g, ok := n.ownedGuild(w, r)
	if !ok {
		return
	}
	id := g.ID
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		httpapi.WriteError(w, http.StatusBadRequest, "settings form: %v", err)
		return
	}
	a, isUser := r.Context().Value(userKey{}).(podapi.UserAssertion)
	if isUser {
		if got := r.PostForm.Get("csrf"); a.CSRF == "" || subtle.ConstantTimeCompare([]byte(got), []byte(a.CSRF)) != 1 {
			n.metrics.dashboardAuth.WithLabelValues("csrf_refused").Inc()
			httpapi.WriteError(w, http.StatusForbidden, "the form's CSRF token is missing or wrong: reload the dashboard and submit again")
			return
		}
		if a.Permissions&(podapi.PermAdministrator|podapi.PermManageGuild) == 0 {
			n.metrics.dashboardAuth.WithLabelValues("forbidden").Inc()
			httpapi.WriteError(w, http.StatusForbidden, "changing the settings needs Manage Server, like /setup")
			return
		}
	}
	if g.State == fsm.GuildMigrating {
		w.Header().Set("Retry-After", "1")
		httpapi.WriteError(w, http.StatusServiceUnavailable, "guild %d is being moved to another pod; retry shortly", id)
		return
	}
	parse := func(name string) (uint64, bool) {
		v := strings.TrimSpace(r.PostForm.Get(name))
		if v == "" {
			return 0, true
		}
		x, err := strconv.ParseUint(v, 10, 64)
		return x, err == nil && x != 0
	}
	ch, ok1 := parse("modlog_channel")
	role, ok2 := parse("mod_role")
	if !ok1 || !ok2 {
		httpapi.WriteError(w, http.StatusBadRequest, "modlog_channel and mod_role must be snowflake ids (or empty to keep)")
		return
	}
	// Refuse ids that are not the guild's, when Discord tells us its lists.
	nctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	dir := n.names.resolve(nctx, id, nil)
	cancel()
	if ch != 0 && dir.Channels != nil && dir.channel(ch) == "" {
		httpapi.WriteError(w, http.StatusBadRequest, "channel %d is not a channel of guild %d", ch, id)
		return
	}
	if role != 0 && dir.Roles != nil && dir.role(role) == "" {
		httpapi.WriteError(w, http.StatusBadRequest, "role %d is not a role of guild %d", role, id)
		return
	}
	if ch != 0 || role != 0 {
		now := time.Now()
		version := uint64(now.UnixMilli()-discordEpochMS) << 22
		_, err := n.store.Apply(r.Context(), guildstore.Write{Epoch: g.Epoch, Op: guildstore.PutSettings{GuildID: id,
			ModRoleID: role, ModlogChannelID: ch, Version: version, UpdatedAt: now}})
		if err != nil {
			httpapi.WriteError(w, http.StatusServiceUnavailable, "save the settings of guild %d: %v", id, err)
			return
		}
		n.log.Info("settings changed from the dashboard", "guild", id, "user", a.UserID, "modlog_channel", ch, "mod_role", role)
	}
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		st, err := n.store.Settings(r.Context(), id)
		if err != nil {
			httpapi.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, st)
		return
	}
	http.Redirect(w, r, "/guild/"+strconv.FormatUint(id, 10)+"/dashboard?saved=1", http.StatusSeeOther)
}
