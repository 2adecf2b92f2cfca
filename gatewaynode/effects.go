package gatewaynode

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/bwmarrin/discordgo"

	"github.com/modbot/modbot/gatewaynode/bot"
)

// performEffects sends what handling an event produced through Discord's
// REST API: the answer to a gateway interaction and mod-log posts. A replayed
// interaction is not answered again (Discord accepts one callback).
func (n *Node) performEffects(ctx context.Context, in bot.Input, r bot.Result) {
	if r.Response != nil && !r.Duplicate && in.Event.Type == bot.EventInteractionCreate {
		var it discordgo.Interaction
		if err := json.Unmarshal(in.Event.Data, &it); err == nil {
			if err := n.rest.InteractionRespond(&it, r.Response, discordgo.WithContext(ctx)); err != nil {
				n.metrics.restErrors.WithLabelValues("interaction_callback").Inc()
				n.log.Warn("answer interaction", "guild", r.GuildID, "interaction", it.ID, "err", err)
			}
		}
	}
	n.post(ctx, r, in.Epoch)
}

// post sends mod-log messages and records that they were sent, so a replay
// of the report does not post twice.
func (n *Node) post(ctx context.Context, r bot.Result, epoch uint64) {
	for _, p := range r.Posts {
		msg := &discordgo.MessageSend{Content: p.Content, Embeds: p.Embeds, AllowedMentions: p.AllowedMentions}
		if _, err := n.rest.ChannelMessageSendComplex(strconv.FormatUint(p.ChannelID, 10), msg, discordgo.WithContext(ctx)); err != nil {
			n.metrics.restErrors.WithLabelValues("post_message").Inc()
			n.log.Warn("post to mod-log", "guild", r.GuildID, "channel", p.ChannelID, "err", err)
			continue
		}
		if p.ReportID != 0 {
			if err := n.bot.AckPosted(ctx, r.GuildID, p.ReportID, epoch); err != nil {
				n.log.Warn("record mod-log post", "guild", r.GuildID, "report", p.ReportID, "err", err)
			}
		}
	}
}
