package systest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/modbot/modbot/fakediscord"
)

// SetupModlogs runs /setup in each guild (as a member with Manage Server),
// pointing its mod-log at the guild's last channel, waits for each answer,
// and returns the channels by guild.
func (s *System) SetupModlogs(ctx context.Context, gs []fakediscord.Guild) (map[uint64]uint64, error) {
	modlogs := map[uint64]uint64{}
	for _, g := range gs {
		modlog := g.Channels[len(g.Channels)-1].ID
		modlogs[g.ID] = modlog
		rec, err := s.Discord.DeliverInteraction(ctx, fakediscord.InteractionSpec{GuildID: g.ID, Name: "setup", UserID: 7, Permissions: "32",
			Options: json.RawMessage(fmt.Sprintf(`{"modlog_channel":"%d"}`, modlog))})
		if err != nil {
			return nil, fmt.Errorf("/setup in guild %d: %w", g.ID, err)
		}
		id, _ := strconv.ParseUint(rec.ID, 10, 64)
		if err := Poll(ctx, 10*time.Second, "/setup answered", func() bool {
			r, ok := s.Discord.Interaction(id)
			return ok && r.Acknowledged
		}); err != nil {
			return nil, err
		}
	}
	return modlogs, nil
}

// Report delivers a /report by user 1000+user against user 4242 with the
// given reason.
func (s *System) Report(ctx context.Context, guild uint64, user int, reason string) error {
	_, err := s.Discord.DeliverInteraction(ctx, fakediscord.InteractionSpec{GuildID: guild, Name: "report", UserID: uint64(1000 + user),
		Options: json.RawMessage(fmt.Sprintf(`{"user":"4242","reason":%q}`, reason))})
	if err != nil {
		return fmt.Errorf("/report in guild %d: %w", guild, err)
	}
	return nil
}

// MissingPosts counts the reports (reasons, by guild) that have no bot
// message in their guild's mod-log channel yet; a report posted more than
// once is an error.
func (s *System) MissingPosts(modlogs map[uint64]uint64, want map[uint64][]string) (int, error) {
	missing := 0
	for g, reasons := range want {
		seen := map[string]int{}
		for _, m := range s.Discord.BotMessages(modlogs[g]) {
			// A report's post ends with ": <reason>" (bot.modlogPost).
			if i := strings.LastIndex(m, ": "); i >= 0 {
				seen[m[i+2:]]++
			}
		}
		for _, r := range reasons {
			switch seen[r] {
			case 0:
				missing++
			case 1:
			default:
				return missing, fmt.Errorf("report %q posted %d times in guild %d's mod-log", r, seen[r], g)
			}
		}
	}
	return missing, nil
}
