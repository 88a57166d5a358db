package bench

import (
	"regexp"
	"strconv"
	"strings"
)

var (
	figureHeading = regexp.MustCompile(`^## Figure (\d+): `)
	statText      = regexp.MustCompile(`^p50 ([0-9.]+) / p99 ([0-9.]+) \(mean ([0-9.]+), max ([0-9.]+)\)$`)
	metricText    = regexp.MustCompile(`^(.*) \(([^()]*)\)$`)
	slugText      = regexp.MustCompile(`[^a-z0-9]+`)
)

// ChartReport reads the charted figures' tables back from a report WriteReport made (for a report whose
// results are gone), and returns the report with a link under each of those tables and the charts to
// write into ChartDir. A report that links its charts already comes back unchanged, with the charts.
func ChartReport(md string) (string, map[string][]byte) {
	lines := strings.Split(md, "\n")
	var out []string
	var run Run
	figure := 0
	var cur *Result
	flush := func() {
		if cur == nil || len(cur.Rows) == 0 {
			cur = nil
			return
		}
		link := "![" + cur.Title + "](" + ChartDir + "/" + ChartFile(*cur) + ")"
		if !strings.Contains(md, link) {
			out = append(out, "", link)
		}
		run.Results = append(run.Results, *cur)
		cur = nil
	}
	for _, l := range lines {
		inTable := strings.HasPrefix(l, "|")
		if cur != nil && !inTable && len(cur.Rows) > 0 {
			flush()
		}
		out = append(out, l)
		switch {
		case strings.HasPrefix(l, "## "):
			figure = 0
			if m := figureHeading.FindStringSubmatch(l); m != nil {
				figure, _ = strconv.Atoi(m[1])
			}
		case strings.HasPrefix(l, "### ") && chartFigures[figure]:
			title := strings.TrimPrefix(l, "### ")
			cur = &Result{Figure: figure, Title: title, Key: strings.Trim(slugText.ReplaceAllString(strings.ToLower(title), "-"), "-")}
		case cur != nil && inTable:
			cells := strings.Split(strings.Trim(l, "|"), "|")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			if cells[0] == "metric" {
				cur.Ours = cells[1]
				if len(cells) > 5 {
					cur.Ref = cells[2]
				}
				continue
			}
			m := metricText.FindStringSubmatch(cells[0])
			ours, ok := parseStat(cells[1])
			if m == nil || !ok {
				continue
			}
			row := Row{Metric: m[1], Unit: m[2], Ours: ours}
			if cur.Ref != "" {
				if ref, ok := parseStat(cells[2]); ok {
					row.Ref = &ref
				}
			}
			cur.Rows = append(cur.Rows, row)
		}
	}
	flush()
	return strings.Join(out, "\n"), Charts(run)
}

func parseStat(s string) (Stat, bool) {
	if m := statText.FindStringSubmatch(s); m != nil {
		var f [4]float64
		for i := range f {
			f[i], _ = strconv.ParseFloat(m[i+1], 64)
		}
		return Stat{N: 2, Value: f[0], P99: f[1], Mean: f[2], Max: f[3]}, true
	}
	v, err := strconv.ParseFloat(s, 64)
	return Value(v), err == nil
}
