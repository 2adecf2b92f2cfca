package guildstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Series is a count per time bucket: Counts[i] covers
// [Start+i·Step, Start+(i+1)·Step).
type Series struct {
	Start  time.Time     `json:"start"`
	Step   time.Duration `json:"step_ns"`
	Counts []int64       `json:"counts"`
}

// Total is the sum of the buckets.
func (s Series) Total() int64 {
	var n int64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Activity is a guild's history for the dashboard's charts. Buckets are
// aligned to UTC hours and days; the last one holds now.
type Activity struct {
	MessagesHourly Series            `json:"messages_hourly"` // 48 hours
	MessagesDaily  Series            `json:"messages_daily"`  // 30 days
	ReportsDaily   Series            `json:"reports_daily"`   // 30 days
	ActionsDaily   map[string]Series `json:"actions_daily"`   // 30 days, by kind (ban, kick, …)
	// OpenReports counts reports whose target has had no ban, kick or
	// timeout since the report: nobody has acted on them yet.
	OpenReports int64 `json:"open_reports"`
}

const (
	hoursShown = 48
	daysShown  = 30
)

// activity reads the charts at now in the read transaction q; later is the
// live messages created after the last hourly bucket (a clock ahead of ours).
func activity(ctx context.Context, q queryer, guildID uint64, now time.Time) (a Activity, later int64, err error) {
	now = now.UTC()
	g := int64(guildID)
	hourEnd := now.Truncate(time.Hour).Add(time.Hour)
	dayEnd := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC).Add(24 * time.Hour)
	a = Activity{
		MessagesHourly: Series{Start: hourEnd.Add(-hoursShown * time.Hour), Step: time.Hour, Counts: make([]int64, hoursShown)},
		MessagesDaily:  Series{Start: dayEnd.Add(-daysShown * 24 * time.Hour), Step: 24 * time.Hour, Counts: make([]int64, daysShown)},
		ReportsDaily:   Series{Start: dayEnd.Add(-daysShown * 24 * time.Hour), Step: 24 * time.Hour, Counts: make([]int64, daysShown)},
		ActionsDaily:   map[string]Series{},
	}
	fill := func(what, query string, sr *Series, args ...any) error {
		rows, err := q.QueryContext(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		defer rows.Close()
		for rows.Next() {
			var b, n int64
			if err := rows.Scan(&b, &n); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if b >= 0 && b < int64(len(sr.Counts)) {
				sr.Counts[b] += n
			}
		}
		return rows.Err()
	}
	bucket := func(sr Series) (int64, int64) { return sr.Start.UnixMilli(), sr.Step.Milliseconds() }
	// Messages from the hourly rollup (rollup.go): hour h covers
	// [h·1h, (h+1)·1h), and UTC days are 24 whole hours.
	startHour := hourOf(a.MessagesDaily.Start.UnixMilli())
	hourlyFrom := hourOf(a.MessagesHourly.Start.UnixMilli())
	rows, err := q.QueryContext(ctx, `SELECT hour, live FROM rollup_message_hours WHERE guild_id = ? AND hour >= ? AND live != 0`, g, startHour)
	if err != nil {
		return a, 0, fmt.Errorf("message activity: %w", err)
	}
	for rows.Next() {
		var h, n int64
		if err := rows.Scan(&h, &n); err != nil {
			rows.Close()
			return a, 0, fmt.Errorf("message activity: %w", err)
		}
		if b := (h - startHour) / 24; b < daysShown {
			a.MessagesDaily.Counts[b] += n
		}
		if b := h - hourlyFrom; b >= 0 && b < hoursShown {
			a.MessagesHourly.Counts[b] += n
		} else if b >= hoursShown {
			later += n
		}
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return a, 0, fmt.Errorf("message activity: %w", err)
	}
	start, step := bucket(a.ReportsDaily)
	if err := fill("report activity", `SELECT (created_at - ?) / ?, count(*) FROM reports
		WHERE guild_id = ? AND created_at >= ? GROUP BY 1`, &a.ReportsDaily, start, step, g, start); err != nil {
		return a, 0, err
	}
	rows, err = q.QueryContext(ctx, `SELECT kind, (created_at - ?) / ?, count(*) FROM mod_actions INDEXED BY mod_actions_guild_time
		WHERE guild_id = ? AND created_at >= ? GROUP BY 1, 2`, start, step, g, start)
	if err != nil {
		return a, 0, fmt.Errorf("action activity: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var b, n int64
		if err := rows.Scan(&kind, &b, &n); err != nil {
			return a, 0, fmt.Errorf("action activity: %w", err)
		}
		sr, ok := a.ActionsDaily[kind]
		if !ok {
			sr = Series{Start: a.ReportsDaily.Start, Step: a.ReportsDaily.Step, Counts: make([]int64, daysShown)}
		}
		if b >= 0 && b < daysShown {
			sr.Counts[b] += n
		}
		a.ActionsDaily[kind] = sr
	}
	if err := rows.Err(); err != nil {
		return a, 0, fmt.Errorf("action activity: %w", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM reports r WHERE r.guild_id = ? AND NOT EXISTS (
			SELECT 1 FROM mod_actions m WHERE m.guild_id = r.guild_id AND m.user_id = r.target_user_id
			AND m.kind IN ('ban', 'kick', 'timeout') AND m.created_at >= r.created_at)`, g).Scan(&a.OpenReports); err != nil {
		return a, 0, fmt.Errorf("open reports: %w", err)
	}
	return a, later, nil
}
