package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestBarChart: the chart is well-formed XML with one bar per value (ours for every row, the reference
// where the row has one), the longest bar of a unit full width, and names escaped.
func TestBarChart(t *testing.T) {
	r := Result{Figure: 4, Key: "scaling", Title: "one pod over 1 & 2 cards", Ours: "aggregate <sum>", Ref: "N x one card",
		Rows: []Row{
			{Metric: "1 card", Unit: "Mbit/s", Ours: Value(50)},
			{Metric: "2 cards", Unit: "Mbit/s", Ours: Stat{N: 3, Value: 100, P99: 101}, Ref: &Stat{N: 1, Value: 99}},
			{Metric: "ADD", Unit: "ms", Ours: Value(3), Ref: &Stat{N: 1, Value: 6}},
		}}
	svg := BarChart(r)
	dec := xml.NewDecoder(bytes.NewReader(svg))
	bars := map[string][]string{}
	var root string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, svg)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if root == "" {
			root = se.Name.Local
		}
		attrs := map[string]string{}
		for _, a := range se.Attr {
			attrs[a.Name.Local] = a.Value
		}
		if se.Name.Local == "rect" && attrs["height"] != "12" { // 12: the legend's swatches
			bars[attrs["class"]] = append(bars[attrs["class"]], attrs["width"])
		}
	}
	if root != "svg" {
		t.Errorf("root element %q, want svg", root)
	}
	if got, want := strings.Join(bars["ours"], " "), "190.0 380.0 190.0"; got != want {
		t.Errorf("ours bars' widths %s, want %s (one per row, 100 Mbit/s and 6 ms full width)", got, want)
	}
	if got, want := strings.Join(bars["ref"], " "), "376.2 380.0"; got != want {
		t.Errorf("reference bars' widths %s, want %s (one per row with a reference)", got, want)
	}
	if !bytes.Contains(svg, []byte("aggregate &lt;sum&gt;")) || !bytes.Contains(svg, []byte("1 &amp; 2 cards")) {
		t.Errorf("names not escaped:\n%s", svg)
	}
}

// TestChartsOfFigures: the latency and bandwidth figures get a chart each, linked from the report.
func TestChartsOfFigures(t *testing.T) {
	run := Run{Results: []Result{
		{Figure: 1, Key: "exclusive", Title: "latency", Ours: "a", Rows: []Row{{Metric: "ADD", Unit: "ms", Ours: Value(1)}}},
		{Figure: 3, Key: "economy", Title: "calls", Ours: "a", Rows: []Row{{Metric: "calls", Unit: "", Ours: Value(1)}}},
		{Figure: 4, Key: "scaling", Title: "bandwidth", Ours: "a", Rows: []Row{{Metric: "1 card", Unit: "Mbit/s", Ours: Value(1)}}},
	}}
	charts := Charts(run)
	if len(charts) != 2 || charts["figure-1-exclusive.svg"] == nil || charts["figure-4-scaling.svg"] == nil {
		t.Errorf("charts %v, want figure-1-exclusive.svg and figure-4-scaling.svg", keys(charts))
	}
	var b strings.Builder
	if err := WriteReport(&b, run, Machine{}, run.Results[0].Date); err != nil {
		t.Fatal(err)
	}
	for name := range charts {
		if !strings.Contains(b.String(), "]("+ChartDir+"/"+name+")") {
			t.Errorf("the report does not link %s", name)
		}
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestChartReport: a report's charted tables read back give the same charts WriteReport's results give,
// and the links WriteReport writes; a report with its links comes back unchanged.
func TestChartReport(t *testing.T) {
	run := Run{Results: []Result{
		{Figure: 1, Key: "latency-exclusive", Title: "latency exclusive", Ours: "multinic", Ref: "host-device", Rows: []Row{
			{Metric: "ADD", Unit: "ms", Ours: Stat{N: 3, Value: 57.7, P99: 88.3, Mean: 59.7, Max: 93.6}, Ref: &Stat{N: 3, Value: 59.9, P99: 90.8, Mean: 61.9, Max: 118}},
			{Metric: "agent allocate", Unit: "ms", Ours: Stat{N: 3, Value: 1.81, P99: 3.56, Mean: 2.02, Max: 4.19}}}},
		{Figure: 4, Key: "one-pod-over-cards", Title: "one pod over cards", Ours: "aggregate", Ref: "N x one card", Rows: []Row{
			{Metric: "1 card", Unit: "Mbit/s", Ours: Value(49.6)},
			{Metric: "2 cards", Unit: "Mbit/s", Ours: Value(99.4), Ref: &Stat{N: 1, Value: 99.2}}}},
	}}
	var b strings.Builder
	if err := WriteReport(&b, run, Machine{}, run.Results[0].Date); err != nil {
		t.Fatal(err)
	}
	withLinks := b.String()
	var stripped []string
	for _, l := range strings.Split(withLinks, "\n") {
		if !strings.HasPrefix(l, "![") {
			stripped = append(stripped, l)
		}
	}
	md, charts := ChartReport(strings.Join(stripped, "\n"))
	want := Charts(run)
	if len(charts) != len(want) {
		t.Fatalf("charts %v, want %v", keys(charts), keys(want))
	}
	for name, svg := range want {
		if !bytes.Equal(charts[name], svg) {
			t.Errorf("%s read back from the report differs from the results' chart:\n%s\nwant\n%s", name, charts[name], svg)
		}
	}
	for name := range want {
		if !strings.Contains(md, "]("+ChartDir+"/"+name+")") {
			t.Errorf("the report read back does not link %s", name)
		}
	}
	if again, _ := ChartReport(withLinks); again != withLinks {
		t.Errorf("a report with its links changed when read back")
	}
}
