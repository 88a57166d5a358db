// Package bench measures multinic against the reference CNI plugins and writes BENCHMARKS.md (issue 6).
//
// The measurements are root tests in this package (they stand up a region with internal/testing/harness); each prints
// its results as one JSON line, "BENCHRESULT {...}" (a Result), on stdout, so that the same code reports
// from the host and from inside the test VM (whose console is the only way out). By default every
// measurement runs at smoke size (20 iterations, 20 pods, 3 pods per burst) so that `make test` keeps the
// code alive; -bench.full (or MULTINIC_BENCH=1) runs the sizes of the issue, -bench.n (or MULTINIC_BENCH_N)
// sets the latency iterations.
//
// e2e/bench/run.sh (`make bench`) runs the host parts with `go test`, the ipvlan parts in the VM through
// e2e/vm/vmtest.sh, collects the JSON lines under e2e/bench/results/ (git-ignored) and renders
// BENCHMARKS.md with the benchreport command (WriteReport).
package bench
