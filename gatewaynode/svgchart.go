package gatewaynode

import (
	"fmt"
	"html"
	"sort"
	"strings"
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
)

// barChart draws one series as bars, labelled every labelEvery buckets with
// the bucket's start in layout.
func barChart(title string, s guildstore.Series, color, layout string, labelEvery int) string {
	return stackedChart(title, s, []stackPart{{label: title, color: color, counts: s.Counts}}, layout, labelEvery, false)
}

// actionsChart stacks the moderation actions of each day by kind.
func actionsChart(title string, byKind map[string]guildstore.Series, layout string, labelEvery int) string {
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
		return `<p class="k">no moderation actions in the last 30 days</p>`
	}
	return stackedChart(title, frame, parts, layout, labelEvery, true)
}

func stackedChart(title string, frame guildstore.Series, parts []stackPart, layout string, labelEvery int, legend bool) string {
	n := 0
	for _, p := range parts {
		n = max(n, len(p.counts))
	}
	if n == 0 {
		return ""
	}
	totals := make([]int64, n)
	var peak int64 = 1
	for i := range totals {
		for _, p := range parts {
			if i < len(p.counts) {
				totals[i] += p.counts[i]
			}
		}
		peak = max(peak, totals[i])
	}
	plotW, plotH := float64(chartW-padL-4), float64(chartH-padB-8)
	bw := plotW / float64(n)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="%s" viewBox="0 0 %d %d" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">`,
		html.EscapeString(title), chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<title>%s</title>`, html.EscapeString(title))
	// Axis with the peak value.
	fmt.Fprintf(&b, `<line x1="%d" y1="8" x2="%d" y2="%.1f" stroke="#bbb"/><line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#bbb"/>`,
		padL, padL, 8+plotH, padL, 8+plotH, chartW-4, 8+plotH)
	fmt.Fprintf(&b, `<text x="%d" y="14" font-size="10" text-anchor="end" fill="#666">%d</text><text x="%d" y="%.1f" font-size="10" text-anchor="end" fill="#666">0</text>`,
		padL-4, peak, padL-4, 8+plotH)
	for i := 0; i < n; i++ {
		x := float64(padL) + float64(i)*bw
		y := 8 + plotH
		at := frame.Start.Add(time.Duration(i) * frame.Step)
		for _, p := range parts {
			if i >= len(p.counts) || p.counts[i] == 0 {
				continue
			}
			h := plotH * float64(p.counts[i]) / float64(peak)
			y -= h
			fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" data-count="%d"><title>%s %s: %d</title></rect>`,
				x+0.5, y, max(bw-1, 0.5), h, p.color, p.counts[i], html.EscapeString(at.Format(layout)), html.EscapeString(p.label), p.counts[i])
		}
		if labelEvery > 0 && i%labelEvery == 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="10" fill="#666">%s</text>`, x, chartH-6, html.EscapeString(at.Format(layout)))
		}
	}
	if legend {
		x := padL + 8
		for _, p := range parts {
			fmt.Fprintf(&b, `<rect x="%d" y="10" width="10" height="10" fill="%s"/><text x="%d" y="19" font-size="11">%s</text>`, x, p.color, x+14, html.EscapeString(p.label))
			x += 14 + 8*len(p.label) + 16
		}
	}
	b.WriteString(`</svg>`)
	return b.String() // built from numbers and escaped text only
}
