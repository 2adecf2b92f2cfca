package bot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bwmarrin/discordgo"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// Slash and message commands the bot answers.
const (
	CommandSetup     = "setup"
	CommandReport    = "report"
	CommandModReport = "modreport"
)

// Permission bits that may run /setup and /modreport.
const managePerms = discordgo.PermissionManageGuild | discordgo.PermissionAdministrator

const (
	historyLimit   = 10
	snapshotLimit  = 1000 // runes of a reported message kept in the mod-log post
	maxContentLen  = 2000 // Discord's message content limit
	messageCommand = discordgo.MessageApplicationCommand
)

func ephemeral(content string) *discordgo.InteractionResponse {
	return &discordgo.InteractionResponse{
		Type: discordgo.InteractionResponseChannelMessageWithSource,
		Data: &discordgo.InteractionResponseData{Content: truncate(content, maxContentLen), Flags: discordgo.MessageFlagsEphemeral,
			AllowedMentions: &discordgo.MessageAllowedMentions{Parse: []discordgo.AllowedMentionType{}}},
	}
}

func truncate(s string, runes int) string {
	if utf8.RuneCountInString(s) <= runes {
		return s
	}
	r := []rune(s)
	return string(r[:runes-1]) + "…"
}

// interaction handles INTERACTION_CREATE. Failures to understand the request
// become polite ephemeral answers; only store failures are errors.
func (h *Handler) interaction(ctx context.Context, ev Event, epoch uint64) (Result, error) {
	var i discordgo.Interaction
	if err := json.Unmarshal(ev.Data, &i); err != nil {
		return Result{Response: ephemeral("Sorry, I could not read that request.")}, malformed(fmt.Errorf("decode interaction: %w", err))
	}
	if i.Type == discordgo.InteractionPing {
		return Result{Response: &discordgo.InteractionResponse{Type: discordgo.InteractionResponsePong}, Ignored: true}, nil
	}
	if i.Type != discordgo.InteractionApplicationCommand {
		return Result{Response: ephemeral("Sorry, I don't know how to handle that."), Ignored: true}, nil
	}
	guildID, _ := parseID(i.GuildID)
	if guildID == 0 || i.Member == nil || i.Member.User == nil {
		return Result{Response: ephemeral("Please use my commands inside a server."), Ignored: true}, nil
	}
	interactionID, err := parseID(i.ID)
	if err == nil && interactionID == 0 {
		err = errors.New("missing interaction id")
	}
	if err != nil {
		return Result{Response: ephemeral("Sorry, I could not read that request.")}, malformed(err)
	}
	data := i.ApplicationCommandData()
	c := &command{h: h, epoch: epoch, guildID: guildID, interactionID: interactionID, i: &i, data: data}
	name := strings.ToLower(data.Name)
	switch {
	case data.CommandType == messageCommand && strings.HasPrefix(name, "report"):
		return c.reportMessage(ctx)
	case data.CommandType == messageCommand:
	case name == CommandSetup:
		return c.setup(ctx)
	case name == CommandReport:
		return c.reportUser(ctx)
	case name == CommandModReport:
		return c.modReport(ctx)
	}
	return Result{Response: ephemeral(fmt.Sprintf("Sorry, I don't know the command %q.", data.Name)), Ignored: true}, nil
}

type command struct {
	h             *Handler
	epoch         uint64
	guildID       uint64
	interactionID uint64
	i             *discordgo.Interaction
	data          discordgo.ApplicationCommandInteractionData
}

func (c *command) userID() uint64 {
	id, _ := parseID(c.i.Member.User.ID)
	return id
}

// option returns a string-valued option (ids of user/role/channel options are strings).
func (c *command) option(name string) string {
	o := c.data.GetOption(name)
	if o == nil {
		return ""
	}
	switch v := o.Value.(type) {
	case string:
		return v
	case float64:
		return fmt.Sprint(int64(v))
	}
	return ""
}

func (c *command) idOption(name string) (uint64, error) {
	return parseID(c.option(name))
}

func (c *command) apply(ctx context.Context, ops ...guildstore.Op) ([]guildstore.Outcome, error) {
	unit := make([]guildstore.Write, len(ops))
	for k, op := range ops {
		unit[k] = guildstore.Write{Epoch: c.epoch, Op: op}
	}
	ur, err := c.h.Store.ApplyBatch(ctx, [][]guildstore.Write{unit})
	if err != nil {
		return nil, err
	}
	return ur[0].Outcomes, ur[0].Err
}

func (c *command) isManager() bool { return c.i.Member.Permissions&managePerms != 0 }

func (c *command) isModerator(st guildstore.Settings) bool {
	if c.isManager() {
		return true
	}
	if st.ModRoleID == 0 {
		return false
	}
	for _, r := range c.i.Member.Roles {
		if r == idString(st.ModRoleID) {
			return true
		}
	}
	return false
}

// setup: /setup mod_role:<role> modlog_channel:<channel> (both optional;
// omitted ones are kept). Only the options given are written, each versioned
// by this interaction's id: the store keeps, per field, the value of the
// newest /setup that set it, so an older /setup handled late (a replayed
// webhook, a held event) changes nothing a newer one set. The answer shows
// the settings as stored after the write.
func (c *command) setup(ctx context.Context) (Result, error) {
	if !c.isManager() {
		return Result{Response: ephemeral("Sorry, you need the Manage Server permission to run /setup.")}, nil
	}
	role, err1 := c.idOption("mod_role")
	ch, err2 := c.idOption("modlog_channel")
	if err1 != nil || err2 != nil {
		return Result{Response: ephemeral("Sorry, I could not read those options.")}, nil
	}
	applied := false
	if role != 0 || ch != 0 {
		out, err := c.apply(ctx, guildstore.PutSettings{GuildID: c.guildID, ModRoleID: role, ModlogChannelID: ch,
			Version: c.interactionID, UpdatedAt: snowflakeTime(c.interactionID)})
		if err != nil {
			return Result{Response: ephemeral("Sorry, I could not save the settings. Please try again.")}, err
		}
		applied = out[0].Applied
	}
	st, err := c.h.Store.Settings(ctx, c.guildID)
	if err != nil {
		return Result{Response: ephemeral("Sorry, something went wrong. Please try again.")}, err
	}
	msg := "Settings saved."
	if st.ModRoleID != 0 {
		msg += fmt.Sprintf(" Moderator role: <@&%d>.", st.ModRoleID)
	}
	if st.ModlogChannelID != 0 {
		msg += fmt.Sprintf(" Mod-log channel: <#%d>.", st.ModlogChannelID)
	} else {
		msg += " No mod-log channel yet: reports are stored but not posted."
	}
	return Result{Response: ephemeral(msg), Applied: applied}, nil
}

// reportUser: /report user:<user> reason:<text>.
func (c *command) reportUser(ctx context.Context) (Result, error) {
	target, err := c.idOption("user")
	if err != nil || target == 0 {
		return Result{Response: ephemeral("Please pick the user you want to report.")}, nil
	}
	reason := strings.TrimSpace(c.option("reason"))
	if reason == "" {
		reason = "(no reason given)"
	}
	return c.report(ctx, guildstore.Report{TargetUserID: target, Reason: truncate(reason, 1000)})
}

// reportMessage: the "Report" message command (data.type 3, target_id).
func (c *command) reportMessage(ctx context.Context) (Result, error) {
	msgID, err := parseID(c.data.TargetID)
	if err != nil || msgID == 0 || c.data.Resolved == nil || c.data.Resolved.Messages[c.data.TargetID] == nil {
		return Result{Response: ephemeral("Sorry, I could not find that message.")}, nil
	}
	m := c.data.Resolved.Messages[c.data.TargetID]
	if m.Author == nil {
		return Result{Response: ephemeral("Sorry, I could not find that message's author.")}, nil
	}
	ids, err := parseIDs(m.Author.ID)
	if err != nil {
		return Result{Response: ephemeral("Sorry, I could not find that message's author.")}, nil
	}
	chID, _ := parseID(m.ChannelID)
	if chID == 0 {
		chID, _ = parseID(c.i.ChannelID)
	}
	return c.report(ctx, guildstore.Report{TargetUserID: ids[0], MessageID: msgID, ChannelID: chID,
		MessageContent: m.Content, Reason: "Reported message"})
}

func (c *command) report(ctx context.Context, r guildstore.Report) (Result, error) {
	r.ID, r.GuildID, r.ReporterID, r.CreatedAt = c.interactionID, c.guildID, c.userID(), snowflakeTime(c.interactionID)
	st, err := c.h.Store.Settings(ctx, c.guildID)
	if err != nil {
		return Result{Response: ephemeral("Sorry, something went wrong. Please try again.")}, err
	}
	r.ModlogChannelID = st.ModlogChannelID
	out, err := c.apply(ctx, guildstore.AddReport{Report: r})
	if err != nil {
		return Result{Response: ephemeral("Sorry, I could not save your report. Please try again.")}, err
	}
	res := Result{Applied: out[0].Applied, Duplicate: !out[0].Applied}
	if res.Duplicate {
		// A replay: answer from what was stored the first time.
		stored, ok, err := c.h.Store.Report(ctx, c.guildID, r.ID)
		if err != nil || !ok {
			return Result{Response: ephemeral("Sorry, something went wrong. Please try again.")}, fmt.Errorf("reload report %d: %w", r.ID, err)
		}
		r = stored
	}
	if r.ModlogChannelID != 0 && r.ModlogPostedAt.IsZero() {
		res.Posts = []PostMessage{modlogPost(r)}
	}
	msg := fmt.Sprintf("Thanks, your report against <@%d> was recorded (#%d).", r.TargetUserID, r.ID)
	if r.ModlogChannelID != 0 {
		msg += " The moderators have been notified."
	}
	res.Response = ephemeral(msg)
	return res, nil
}

func modlogPost(r guildstore.Report) PostMessage {
	fields := []*discordgo.MessageEmbedField{
		{Name: "Reported user", Value: fmt.Sprintf("<@%d>", r.TargetUserID), Inline: true},
		{Name: "Reported by", Value: fmt.Sprintf("<@%d>", r.ReporterID), Inline: true},
		{Name: "Reason", Value: r.Reason},
	}
	content := fmt.Sprintf("New report #%d: <@%d> reported <@%d>: %s", r.ID, r.ReporterID, r.TargetUserID, r.Reason)
	if r.MessageID != 0 {
		link := fmt.Sprintf("https://discord.com/channels/%d/%d/%d", r.GuildID, r.ChannelID, r.MessageID)
		snap := r.MessageContent
		if snap == "" {
			snap = "(no text content)"
		}
		fields = append(fields, &discordgo.MessageEmbedField{Name: "Message", Value: truncate(snap, snapshotLimit)},
			&discordgo.MessageEmbedField{Name: "Link", Value: link})
		content += fmt.Sprintf(" (message %s: %q)", link, truncate(r.MessageContent, 300))
	}
	return PostMessage{
		ChannelID: r.ModlogChannelID,
		Content:   truncate(content, maxContentLen),
		Embeds: []*discordgo.MessageEmbed{{
			Title: fmt.Sprintf("Report #%d", r.ID), Color: 0xE67E22, Fields: fields,
			Timestamp: r.CreatedAt.Format(time.RFC3339),
		}},
		AllowedMentions: &discordgo.MessageAllowedMentions{Parse: []discordgo.AllowedMentionType{}},
		Nonce:           "r" + idString(r.ID),
		ReportID:        r.ID,
	}
}

// modReport: /modreport user:<user> — the user's report history, for moderators.
func (c *command) modReport(ctx context.Context) (Result, error) {
	target, err := c.idOption("user")
	if err != nil || target == 0 {
		return Result{Response: ephemeral("Please pick a user.")}, nil
	}
	st, err := c.h.Store.Settings(ctx, c.guildID)
	if err != nil {
		return Result{Response: ephemeral("Sorry, something went wrong. Please try again.")}, err
	}
	if !c.isModerator(st) {
		return Result{Response: ephemeral("Sorry, only moderators can see report history.")}, nil
	}
	reports, err := c.h.Store.ReportsForUser(ctx, c.guildID, target)
	if err != nil {
		return Result{Response: ephemeral("Sorry, something went wrong. Please try again.")}, err
	}
	if len(reports) == 0 {
		return Result{Response: ephemeral(fmt.Sprintf("<@%d> has no reports.", target))}, nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<@%d> has %d report(s)", target, len(reports))
	if len(reports) > historyLimit {
		fmt.Fprintf(&b, ", latest %d", historyLimit)
	}
	b.WriteString(":\n")
	for _, r := range reports[:min(len(reports), historyLimit)] {
		fmt.Fprintf(&b, "• #%d <t:%d:f> by <@%d>: %s", r.ID, r.CreatedAt.Unix(), r.ReporterID, truncate(r.Reason, 200))
		if r.MessageID != 0 {
			fmt.Fprintf(&b, " — message: %q", truncate(r.MessageContent, 100))
		}
		b.WriteByte('\n')
	}
	return Result{Response: ephemeral(b.String())}, nil
}
