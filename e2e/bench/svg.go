package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strings"
)

// ChartDir is where the report's charts go, beside BENCHMARKS.md; the report links them from there.
const ChartDir = "benchmarks"

// chartFigures are the figures drawn as charts too: latency (1) and bandwidth over cards (4).
var chartFigures = map[int]bool{1: true, 4: true}

// ChartFile is the chart's file name of a result, in ChartDir.
func ChartFile(r Result) string { return fmt.Sprintf("figure-%d-%s.svg", r.Figure, r.Key) }

// Charts returns the SVG chart of every result of a charted figure, by file name.
func Charts(run Run) map[string][]byte {
	out := map[string][]byte{}
	for _, r := range run.Results {
		if chartFigures[r.Figure] && len(r.Rows) > 0 {
			out[ChartFile(r)] = BarChart(r)
		}
	}
	return out
}

// Chart geometry, in SVG user units.
const (
	chartWidth  = 720
	chartLeft   = 260 // room for the metric names
	chartRight  = 80  // room for the value after the longest bar
	barHeight   = 16
	barGap      = 4
	groupGap    = 14
	chartTop    = 48
	legendSpace = 24
)

// BarChart draws a result as horizontal bars: per row, one bar for ours and one for the reference (when
// the row has one), their length the row's main value (the p50 for distributions), with the value
// written after each bar. Rows with different units share the axis only within a unit, so each row is
// scaled to the largest value of its unit.
func BarChart(r Result) []byte {
	maxByUnit := map[string]float64{}
	for _, row := range r.Rows {
		maxByUnit[row.Unit] = max(maxByUnit[row.Unit], row.Ours.Value)
		if row.Ref != nil {
			maxByUnit[row.Unit] = max(maxByUnit[row.Unit], row.Ref.Value)
		}
	}
	var body bytes.Buffer
	y := chartTop
	span := float64(chartWidth - chartLeft - chartRight)
	bar := func(class string, v float64, unit string) {
		w := 0.0
		if m := maxByUnit[unit]; m > 0 {
			w = v / m * span
		}
		fmt.Fprintf(&body, `<rect class="%s" x="%d" y="%d" width="%.1f" height="%d"><title>%s %s</title></rect>`+"\n",
			class, chartLeft, y, w, barHeight, esc(fmtNum(v)), esc(unit))
		fmt.Fprintf(&body, `<text class="value" x="%.1f" y="%d">%s</text>`+"\n", float64(chartLeft)+w+4, y+barHeight-4, esc(fmtNum(v)))
		y += barHeight + barGap
	}
	for _, row := range r.Rows {
		fmt.Fprintf(&body, `<text class="label" x="%d" y="%d">%s</text>`+"\n", chartLeft-8, y+barHeight-4, esc(row.Metric+" ("+row.Unit+")"))
		bar("ours", row.Ours.Value, row.Unit)
		if row.Ref != nil {
			bar("ref", row.Ref.Value, row.Unit)
		}
		y += groupGap
	}
	height := y + legendSpace
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		chartWidth, height, chartWidth, height)
	b.WriteString(`<style>.ours{fill:#3b6fb6}.ref{fill:#b0b0b0}.label{text-anchor:end}.title{font-size:14px;font-weight:bold}</style>` + "\n")
	fmt.Fprintf(&b, `<text class="title" x="8" y="20">%s</text>`+"\n", esc(fmt.Sprintf("Figure %d: %s", r.Figure, r.Title)))
	what := "p50 of each row"
	fmt.Fprintf(&b, `<text x="8" y="36">%s</text>`+"\n", esc(what))
	b.Write(body.Bytes())
	ly := height - 10
	fmt.Fprintf(&b, `<rect class="ours" x="%d" y="%d" width="12" height="12"/><text x="%d" y="%d">%s</text>`+"\n", chartLeft, ly-10, chartLeft+16, ly, esc(r.Ours))
	if r.Ref != "" {
		fmt.Fprintf(&b, `<rect class="ref" x="%d" y="%d" width="12" height="12"/><text x="%d" y="%d">%s</text>`+"\n", chartLeft+200, ly-10, chartLeft+216, ly, esc(r.Ref))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
