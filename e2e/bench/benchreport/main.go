// Command benchreport writes BENCHMARKS.md from the results of a bench run (e2e/bench/run.sh).
//
//	go run ./e2e/bench/benchreport -results e2e/bench/results -out BENCHMARKS.md
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/multinic/multinic/e2e/bench"
)

func main() {
	dir := flag.String("results", "e2e/bench/results", "folder with "+bench.ResultsFile+", "+bench.StepsFile+" and "+bench.FaultsFile)
	out := flag.String("out", "BENCHMARKS.md", "report to write")
	flag.Parse()
	if err := run(*dir, *out); err != nil {
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
	return os.WriteFile(out, b.Bytes(), 0o644)
}
