// Command benchreport writes BENCHMARKS.md from the results of a bench run (e2e/bench/run.sh), and the
// SVG charts it links (latency, bandwidth over cards) into benchmarks/ beside it.
//
//	go run ./e2e/bench/benchreport -results e2e/bench/results -out BENCHMARKS.md
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/multinic/multinic/e2e/bench"
)

func main() {
	dir := flag.String("results", "e2e/bench/results", "folder with "+bench.ResultsFile+", "+bench.StepsFile+" and "+bench.FaultsFile)
	out := flag.String("out", "BENCHMARKS.md", "report to write")
	chartsOnly := flag.Bool("charts-only", false, "read the figures back from -out (a report whose results are gone), write its charts and link them")
	flag.Parse()
	do := run
	if *chartsOnly {
		do = func(_, out string) error { return chartExisting(out) }
	}
	if err := do(*dir, *out); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(dir, out string) error {
	run, err := bench.ReadDir(dir)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if err := bench.WriteReport(&b, run, bench.ThisMachine(), time.Now()); err != nil {
		return err
	}
	if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
		return err
	}
	return writeCharts(out, bench.Charts(run))
}

// writeCharts writes the charts the report at out links, beside it.
func writeCharts(out string, charts map[string][]byte) error {
	dir := filepath.Join(filepath.Dir(out), bench.ChartDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, svg := range charts {
		if err := os.WriteFile(filepath.Join(dir, name), svg, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// chartExisting charts a report whose results are gone, from its own tables.
func chartExisting(out string) error {
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	md, charts := bench.ChartReport(string(b))
	if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
		return err
	}
	return writeCharts(out, charts)
}
