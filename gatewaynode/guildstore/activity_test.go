package guildstore

import (
	"context"
	"testing"
	"time"
)

func TestDashboardActivityBucketsByHourAndDayAndCountsOpenReports(t *testing.T) {
	s := openTest(t, "activity.db")
	now := t0.Add(time.Hour) // the store's clock
	const g = 77
	var ws []Write
	add := func(op Op) { ws = append(ws, Write{Epoch: 1, Op: op}) }
	// 3 messages this hour, 2 five hours ago, 1 three days ago, 1 deleted
	// this hour, 1 forty days ago (outside every chart).
	at := []time.Duration{0, 0, 0, -5 * time.Hour, -5 * time.Hour, -72 * time.Hour, -40 * 24 * time.Hour}
	for i, d := range at {
		add(MessageCreate{GuildID: g, MessageID: snowflakeAt(now.Add(d), uint64(i)), ChannelID: 1, AuthorID: 5, CreatedAt: now.Add(d), ContentLength: 1})
	}
	add(MessageCreate{GuildID: g, MessageID: snowflakeAt(now, 99), ChannelID: 1, AuthorID: 5, CreatedAt: now, ContentLength: 1})
	add(MessageDelete{GuildID: g, MessageID: snowflakeAt(now, 99), DeletedAt: now})
	// Reports against 8 (then banned: closed), 9 (banned before the report: open), 10 (open).
	add(AddReport{Report{ID: 1, GuildID: g, ReporterID: 7, TargetUserID: 8, Reason: "a", CreatedAt: now.Add(-48 * time.Hour)}})
	add(AddReport{Report{ID: 2, GuildID: g, ReporterID: 7, TargetUserID: 9, Reason: "b", CreatedAt: now}})
	add(AddReport{Report{ID: 3, GuildID: g, ReporterID: 7, TargetUserID: 10, Reason: "c", CreatedAt: now}})
	add(AddModAction{ModAction{GuildID: g, Kind: ActionBan, UserID: 8, CreatedAt: now.Add(-47 * time.Hour), DedupeKey: "b8"}})
	add(AddModAction{ModAction{GuildID: g, Kind: ActionBan, UserID: 9, CreatedAt: now.Add(-time.Hour), DedupeKey: "b9"}})
	add(AddModAction{ModAction{GuildID: g, Kind: ActionKick, UserID: 11, CreatedAt: now, DedupeKey: "k11"}})
	mustApply(t, s, ws...)
	d, err := s.Dashboard(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	a := d.Activity
	h := a.MessagesHourly
	if len(h.Counts) != 48 || h.Counts[47] != 3 || h.Counts[42] != 2 || h.Total() != 5 {
		t.Fatalf("hourly %v from %s, want 3 in the last bucket, 2 five hours before, 5 in all", h.Counts, h.Start)
	}
	if !h.Start.Add(48*time.Hour).After(now) || h.Start.Add(47*time.Hour).After(now) {
		t.Fatalf("hourly window %s + 48h does not end in the hour of %s", h.Start, now)
	}
	dd := a.MessagesDaily
	if len(dd.Counts) != 30 || dd.Total() != 6 || dd.Counts[29]+dd.Counts[28] != 5 || dd.Counts[26] != 1 {
		t.Fatalf("daily %v, want 6 in all (the 40-day-old one left out), 1 three days ago", dd.Counts)
	}
	if a.ReportsDaily.Total() != 3 || a.ReportsDaily.Counts[29] != 2 {
		t.Fatalf("reports daily %v", a.ReportsDaily.Counts)
	}
	if a.ActionsDaily[ActionBan].Total() != 2 || a.ActionsDaily[ActionKick].Counts[29] != 1 {
		t.Fatalf("actions daily %v", a.ActionsDaily)
	}
	if a.OpenReports != 2 {
		t.Fatalf("open reports %d, want 2 (8 was banned after the report)", a.OpenReports)
	}
}
