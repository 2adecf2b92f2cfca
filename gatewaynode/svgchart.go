package gatewaynode

import (
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/modbot/modbot/gatewaynode/guildstore"
)

// Charts are rendered here as inline SVG: the page needs no JavaScript and
// nothing from a CDN. Only numbers and escaped labels go into the markup.

var kindColors = map[string]string{
	guildstore.ActionBan: "#c0392b", guildstore.ActionKick: "#e67e22", guildstore.ActionTimeout: "#8e44ad",
	guildstore.ActionUnban: "#27ae60", guildstore.ActionLeave: "#7f8c8d",
}

type stackPart struct {
	label, color string
	counts       []int64
}

const (
	chartW, chartH = 720, 160
	padL, padB     = 36, 22
	// The same, spelt out for the markup.
	chartWs, chartHs, dims = "720", "160", chartWs + " " + chartHs
	padLs, labelXs, plotRs = "36", "32", "716" // padL, padL-4, chartW-4
	labelYs                = "154"             // chartH-6
)

// chartCache keeps each guild's last charts with the activity they were
// drawn from: a page whose activity is the same (the usual reload) copies
// them instead of drawing ~150 bars again. Bounded: cleared when full.
type chartCache struct {
	mu sync.Mutex
	m  map[uint64]chartEntry
}

type chartEntry struct {
	act guildstore.Activity
	svg []byte
}

const chartCacheMax = 1024

// appendFor appends guild's charts of act to b.
func (c *chartCache) appendFor(b []byte, guild uint64, act guildstore.Activity) []byte {
	c.mu.Lock()
	e, ok := c.m[guild]
	c.mu.Unlock()
	if ok && sameCharts(e.act, act) {
		return append(b, e.svg...)
	}
	start := len(b)
	b = appendCharts(b, act)
	e = chartEntry{act: act.Clone(), svg: slices.Clone(b[start:])}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= chartCacheMax {
		c.m = map[uint64]chartEntry{}
	}
	c.m[guild] = e
	c.mu.Unlock()
	return b
}

// sameCharts reports whether a and b draw the same charts.
func sameCharts(a, b guildstore.Activity) bool {
	if !sameSeries(a.MessagesHourly, b.MessagesHourly) || !sameSeries(a.MessagesDaily, b.MessagesDaily) ||
		!sameSeries(a.ReportsDaily, b.ReportsDaily) || len(a.ActionsDaily) != len(b.ActionsDaily) {
		return false
	}
	for k, s := range a.ActionsDaily {
		if t, ok := b.ActionsDaily[k]; !ok || !sameSeries(s, t) {
			return false
		}
	}
	return true
}

func sameSeries(a, b guildstore.Series) bool {
	return a.Start.Equal(b.Start) && a.Step == b.Step && slices.Equal(a.Counts, b.Counts)
}

// appendCharts appends the page's four charts, each after the first under
// its heading.
func appendCharts(b []byte, act guildstore.Activity) []byte {
	b = appendBarChart(b, "messages per hour", act.MessagesHourly, "#2e86de", "15:04", 6)
	b = append(b, "\n<h2>Messages, last 30 days</h2>"...)
	b = appendBarChart(b, "messages per day", act.MessagesDaily, "#2e86de", "Jan 2", 5)
	b = append(b, "\n<h2>Reports, last 30 days</h2>"...)
	b = appendBarChart(b, "reports per day", act.ReportsDaily, "#e1a100", "Jan 2", 5)
	b = append(b, "\n<h2>Moderation actions, last 30 days</h2>"...)
	return appendActionsChart(b, "moderation actions per day", act.ActionsDaily, "Jan 2", 5)
}

// appendBarChart draws one series as bars, labelled every labelEvery
// buckets with the bucket's start in layout.
func appendBarChart(b []byte, title string, s guildstore.Series, color, layout string, labelEvery int) []byte {
	return appendStackedChart(b, title, s, []stackPart{{label: title, color: color, counts: s.Counts}}, layout, labelEvery, false)
}

// appendActionsChart stacks the moderation actions of each day by kind.
func appendActionsChart(b []byte, title string, byKind map[string]guildstore.Series, layout string, labelEvery int) []byte {
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var parts []stackPart
	var frame guildstore.Series
	for _, k := range kinds {
		s := byKind[k]
		frame = s
		c := kindColors[k]
		if c == "" {
			c = "#34495e"
		}
		parts = append(parts, stackPart{label: k, color: c, counts: s.Counts})
	}
	if len(parts) == 0 {
		return append(b, `<p class="k">no moderation actions in the last 30 days</p>`...)
	}
	return appendStackedChart(b, title, frame, parts, layout, labelEvery, true)
}

// appendCoord appends x with one decimal, as %.1f does.
func appendCoord(b []byte, x float64) []byte { return strconv.AppendFloat(b, x, 'f', 1, 64) }

func appendStackedChart(b []byte, title string, frame guildstore.Series, parts []stackPart, layout string, labelEvery int, legend bool) []byte {
	n := 0
	for _, p := range parts {
		n = max(n, len(p.counts))
	}
	if n == 0 {
		return b
	}
	var peak int64 = 1
	for i := 0; i < n; i++ {
		var total int64
		for _, p := range parts {
			if i < len(p.counts) {
				total += p.counts[i]
			}
		}
		peak = max(peak, total)
	}
	plotW, plotH := float64(chartW-padL-4), float64(chartH-padB-8)
	bw := plotW / float64(n)
	base := 8 + plotH
	b = append(b, `<svg class="chart" role="img" aria-label="`...)
	b = appendEscaped(b, title)
	b = append(b, `" viewBox="0 0 `+dims+`" width="`+chartWs+`" height="`+chartHs+`" xmlns="http://www.w3.org/2000/svg"><title>`...)
	b = appendEscaped(b, title)
	b = append(b, `</title>`...)
	// Axis with the peak value.
	b = append(b, `<line x1="`+padLs+`" y1="8" x2="`+padLs+`" y2="`...)
	b = appendCoord(b, base)
	b = append(b, `" stroke="#bbb"/><line x1="`+padLs+`" y1="`...)
	b = appendCoord(b, base)
	b = append(b, `" x2="`+plotRs+`" y2="`...)
	b = appendCoord(b, base)
	b = append(b, `" stroke="#bbb"/><text x="`+labelXs+`" y="14" font-size="10" text-anchor="end" fill="#666">`...)
	b = appendInt(b, peak)
	b = append(b, `</text><text x="`+labelXs+`" y="`...)
	b = appendCoord(b, base)
	b = append(b, `" font-size="10" text-anchor="end" fill="#666">0</text>`...)
	var at, stamp []byte
	for i := 0; i < n; i++ {
		x := float64(padL) + float64(i)*bw
		y := base
		stamp = frame.Start.Add(time.Duration(i)*frame.Step).AppendFormat(stamp[:0], layout)
		at = appendEscaped(at[:0], string(stamp))
		for _, p := range parts {
			if i >= len(p.counts) || p.counts[i] == 0 {
				continue
			}
			h := plotH * float64(p.counts[i]) / float64(peak)
			y -= h
			b = append(b, `<rect class="bar" x="`...)
			b = appendCoord(b, x+0.5)
			b = append(b, `" y="`...)
			b = appendCoord(b, y)
			b = append(b, `" width="`...)
			b = appendCoord(b, max(bw-1, 0.5))
			b = append(b, `" height="`...)
			b = appendCoord(b, h)
			b = append(b, `" fill="`...)
			b = append(b, p.color...)
			b = append(b, `" data-count="`...)
			b = appendInt(b, p.counts[i])
			b = append(b, `"><title>`...)
			b = append(b, at...)
			b = append(b, ' ')
			b = appendEscaped(b, p.label)
			b = append(b, ": "...)
			b = appendInt(b, p.counts[i])
			b = append(b, `</title></rect>`...)
		}
		if labelEvery > 0 && i%labelEvery == 0 {
			b = append(b, `<text x="`...)
			b = appendCoord(b, x)
			b = append(b, `" y="`+labelYs+`" font-size="10" fill="#666">`...)
			b = append(b, at...)
			b = append(b, `</text>`...)
		}
	}
	if legend {
		x := padL + 8
		for _, p := range parts {
			b = append(b, `<rect x="`...)
			b = appendInt(b, int64(x))
			b = append(b, `" y="10" width="10" height="10" fill="`...)
			b = append(b, p.color...)
			b = append(b, `"/><text x="`...)
			b = appendInt(b, int64(x+14))
			b = append(b, `" y="19" font-size="11">`...)
			b = appendEscaped(b, p.label)
			b = append(b, `</text>`...)
			x += 14 + 8*len(p.label) + 16
		}
	}
	return append(b, `</svg>`...)
}
