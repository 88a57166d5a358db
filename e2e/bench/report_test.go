package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/e2e/faults"
)

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	tests := []struct {
		name   string
		sorted []float64
		p      float64
		want   float64
	}{
		{"one", []float64{7}, 50, 7},
		{"one p99", []float64{7}, 99, 7},
		{"median of even", []float64{1, 2, 3, 4}, 50, 2},
		{"median of odd", []float64{1, 2, 3}, 50, 2},
		{"p99 of 100", hundred, 99, 99},
		{"p50 of 100", hundred, 50, 50},
		{"max", hundred, 100, 100},
	}
	for _, tc := range tests {
		if got := Percentile(tc.sorted, tc.p); got != tc.want {
			t.Errorf("%s: Percentile(%v, %g) = %g, want %g", tc.name, len(tc.sorted), tc.p, got, tc.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("Percentile of nothing is not NaN")
	}
}

func TestSummarize(t *testing.T) {
	in := []float64{5, 1, 4, 2, 3}
	s := Summarize(in)
	if s.N != 5 || s.Value != 3 || s.P99 != 5 || s.Mean != 3 || s.Max != 5 {
		t.Errorf("Summarize = %+v", s)
	}
	if in[0] != 5 {
		t.Error("Summarize sorted its input")
	}
	if (Summarize(nil) != Stat{}) {
		t.Error("Summarize(nil) not zero")
	}
}

func TestCompareAndAtMost(t *testing.T) {
	r := Compare("ADD", "ms", Stat{N: 10, Value: 12}, Stat{N: 10, Value: 10}, 1.2)
	if r.Ratio != 1.2 || r.Pass == nil || !*r.Pass || r.Target != "<= 1.2x reference" {
		t.Errorf("12 vs 10 against 1.2x: %+v pass=%v", r, *r.Pass)
	}
	r = Compare("ADD", "ms", Stat{N: 10, Value: 12.5}, Stat{N: 10, Value: 10}, 1.2)
	if *r.Pass {
		t.Error("1.25x passes a 1.2x target")
	}
	if r := Compare("x", "ms", Value(1), Value(0), 1.2); *r.Pass || r.Ratio != 0 {
		t.Errorf("a zero reference passes: %+v", r)
	}
	if r := Compare("x", "ms", Value(1), Value(2), 0); r.Pass != nil || r.Target != "" {
		t.Errorf("no target but %+v", r)
	}
	if r := AtMost("calls", "calls", Value(0.05), 0.05); !*r.Pass {
		t.Error("0.05 misses <= 0.05")
	}
	if r := AtMost("failures", "count", Value(1), 0); *r.Pass || r.Target != "<= 0" {
		t.Errorf("1 failure passes <= 0: %+v", r)
	}
}

// TestReportRoundTrip emits results as the measurements do, reads them back as the run script leaves them
// and checks the report: every figure present or pending, targets judged, commands and machines named.
func TestReportRoundTrip(t *testing.T) {
	dir := t.TempDir()
	var lines bytes.Buffer
	m := Machine{Kernel: "6.1.0-test", CPUs: 1, CPUModel: "QEMU", MemoryMiB: 960, Go: "go1.26.8", VM: true}
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, r := range []Result{
		{Figure: 1, Key: "ipvlan", Title: "ipvlan mode vs ipvlan + host-local", Part: "vm", Machine: m, Date: date, Iterations: 500,
			Ours: "multinic", Ref: "ipvlan + host-local", Notes: []string{"a note"},
			Rows: []Row{Compare("ADD", "ms", Stat{N: 500, Value: 13, P99: 30, Mean: 14, Max: 40}, Stat{N: 500, Value: 10, P99: 20, Mean: 11, Max: 25}, 1.2)}},
		{Figure: 3, Key: "churn", Title: "churn", Part: "host", Machine: m, Date: date, Ours: "multinic agent",
			Rows: []Row{AtMost("EC2 calls per attachment", "calls", Value(0.0125), 0.05)}},
		{Figure: 8, Key: "dra-nri-vs-multus-7-cards", Title: "A 7-card pod from creation to Running (status.phase)", Part: "realnode",
			Machine: m, Date: date, Iterations: 5, Ours: "DRA + NRI (no NAD)", Ref: "DRA + Multus thin (7 NADs)", Notes: []string{"phase Running first"},
			Rows: []Row{Compare("pod creation to Running, 7 exclusive cards", "ms", Stat{N: 5, Value: 900, P99: 1000, Mean: 920, Max: 1000}, Stat{N: 5, Value: 1200, P99: 1300, Mean: 1210, Max: 1300}, 0),
				Compare("pod creation to Ready, 7 exclusive cards", "ms", Value(950), Value(1250), 0)}},
	} {
		if err := Emit(&lines, r); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(lines.String(), ResultPrefix+"{") {
		t.Fatalf("emitted %q", lines.String())
	}
	if err := os.WriteFile(filepath.Join(dir, ResultsFile), lines.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := `{"part":"vm","command":"e2e/vm/vmtest.sh ./e2e/bench/","seconds":200.5,"status":0}
{"part":"host","command":"go test ./e2e/bench/","seconds":300,"status":1}
{"part":"faults-host","command":"MULTINIC_FAULTS_LONG=1 go test ./e2e/faults/","seconds":100,"status":0}
`
	if err := os.WriteFile(filepath.Join(dir, StepsFile), []byte(steps), 0o644); err != nil {
		t.Fatal(err)
	}
	recs := []faults.Record{
		{Version: faults.RecordVersion, Suite: "faults", Fault: "throttle", Variant: "long", Mode: "exclusive", Rounds: 5,
			Injected: "every action: RequestLimitExceeded", Outcome: "error", CNICode: 11, CNIMsg: "try again later: RequestLimitExceeded",
			AddMillis: 3012, Pass: true, Note: "a | note"},
		{Version: faults.RecordVersion, Suite: "faults", Fault: "disk-full", Variant: "long", Mode: "ipvlan", Rounds: 5,
			Outcome: "error", CNICode: 11, LeakTotal: 2, Pass: false},
	}
	var faultLines bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&faultLines, "%s%s\n", faults.RecordPrefix, b) // as the VM prints them
	}
	if err := os.WriteFile(filepath.Join(dir, FaultsFile), faultLines.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	run, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Results) != 3 || len(run.Steps) != 3 || len(run.Faults) != 2 {
		t.Fatalf("read %d results, %d steps, %d fault records", len(run.Results), len(run.Steps), len(run.Faults))
	}
	var out bytes.Buffer
	host := Machine{Kernel: "6.18.0-host", CPUs: 2, CPUModel: "Xeon", MemoryMiB: 24000, Go: "go1.26.8"}
	if err := WriteReport(&out, run, host, date); err != nil {
		t.Fatal(err)
	}
	md := out.String()
	for _, want := range []string{
		"| 1 | ipvlan mode vs ipvlan + host-local | ADD | 13 ms | 10 ms | 1.30x | <= 1.2x reference | **miss** |",
		"| 3 | churn | EC2 calls per attachment | 0.0125 calls |  |  | <= 0.05 | pass |",
		"p50 13 / p99 30 (mean 14, max 40)",
		"- Command: `e2e/vm/vmtest.sh ./e2e/bench/`",
		"- Machine: host: Linux 6.18.0-host, 2 CPU (Xeon), 24000 MiB, go1.26.8",
		"- Machine: VM (QEMU TCG, e2e/vm/vmtest.sh): Linux 6.1.0-test, 1 CPU (QEMU), 960 MiB, go1.26.8",
		"- Iterations: 500",
		"FAILED (exit 1)",
		"- Total bench time: 600 s",
		"## Figure 2: ",
		"## Figure 4: ",
		"## Figure 5: ", "**Missing**",
		"## Figure 6: Cluster scale-up under one account's EC2 limits", "## Figure 7: A p5.48xlarge node: 31 cards",
		"## Figure 8: A 7-card pod from creation to Running: DRA + NRI vs DRA + Multus\n\n### A 7-card pod from creation to Running (status.phase)\n",
		"| metric | DRA + NRI (no NAD) | DRA + Multus thin (7 NADs) | ratio | target | |",
		"| pod creation to Running, 7 exclusive cards (ms) | p50 900 / p99 1000 (mean 920, max 1000) | p50 1200 / p99 1300 (mean 1210, max 1300) | 0.75x |  |  |\n| pod creation to Ready, 7 exclusive cards (ms) | 950 | 1250 | 0.76x |  |  |\n",
		"| 8 | A 7-card pod from creation to Running (status.phase) | pod creation to Running, 7 exclusive cards | 900 ms | 1200 ms | 0.75x |  |  |",
		"- phase Running first",
		"- a note",
		"## Faults",
		"- Command (faults-host): `MULTINIC_FAULTS_LONG=1 go test ./e2e/faults/`",
		"- Fault runs: 2; leaks in all: 2; runs failing their test: 1",
		"| throttle | exclusive | long | 5 | every action: RequestLimitExceeded | error | 11 | try again later: RequestLimitExceeded | 3012 | - | 0 | true |",
		"| disk-full | ipvlan | long | 5 |  | error | 11 |  | 0 | - | 2 | false |",
		"- throttle (exclusive, long): a | note",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestFormat(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 3: "3", 509: "509", 12.34: "12.3", 1.234: "1.23", 0.0352: "0.0352", 0.00012: "0.00012", 150.4: "150"} {
		if got := fmtNum(v); got != want {
			t.Errorf("fmtNum(%g) = %q, want %q", v, got, want)
		}
	}
	for _, tc := range []struct {
		row  Row
		want string
	}{
		{Compare("x", "s", Value(1), Value(509), 0), "0.002x"},
		{Compare("x", "s", Value(15), Value(123), 0), "0.12x"},
		{Compare("x", "s", Value(0), Value(0), 0), "n/a"},
		{Row{Metric: "x"}, "n/a"},
		{Row{Metric: "x", Ours: Value(12), Ref: &Stat{N: 1, Value: 510}}, "0.02x"}, // no Ratio stored
		{Compare("x", "s", Value(0), Value(5), 0), "0.00x"},
	} {
		if got := fmtRatio(tc.row); got != tc.want {
			t.Errorf("fmtRatio(%v vs %v) = %q, want %q", tc.row.Ours, tc.row.Ref, got, tc.want)
		}
	}
}

func TestReadDirErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadDir(dir); err == nil {
		t.Error("no results file: no error")
	}
	if err := os.WriteFile(filepath.Join(dir, ResultsFile), []byte("BENCHRESULT {not json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDir(dir); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: err = %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ResultsFile), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FaultsFile), []byte(`{"version":99,"suite":"faults"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDir(dir); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("unknown fault record version: err = %v", err)
	}
}

func TestThisMachine(t *testing.T) {
	m := ThisMachine()
	if m.Kernel == "" || m.CPUs < 1 || m.Go == "" || m.MemoryMiB <= 0 {
		t.Errorf("ThisMachine = %+v", m)
	}
}

func TestErrorKind(t *testing.T) {
	a := errors.New("allocate card 7 for container " + strings.Repeat("ab", 32) + " interface net7: try again later: allocate card 7 for default/burst-11 (uid uid-burst-11): no free address on card 7; waited 10.001s for a refill; last EC2 error on card 7: RequestLimitExceeded")
	b := errors.New("allocate card 7 for container " + strings.Repeat("cd", 32) + " interface net7: try again later: allocate card 7 for default/burst-98 (uid uid-burst-98): no free address on card 7; waited 10s for a refill; last EC2 error on card 7: RequestLimitExceeded")
	if ka, kb := errorKind(a), errorKind(b); ka != kb || strings.Contains(ka, "burst-11") || !strings.Contains(ka, "RequestLimitExceeded") {
		t.Errorf("errorKind:\n%s\n%s", ka, kb)
	}
}
