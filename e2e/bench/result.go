package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// ResultPrefix starts every result line a measurement prints.
const ResultPrefix = "BENCHRESULT "

// Result is one measurement: a titled table of rows, measured in one run on one machine.
type Result struct {
	// Figure is the figure number (Figures); Key orders and identifies the table within it.
	Figure int    `json:"figure"`
	Key    string `json:"key"`
	Title  string `json:"title"`
	// Part is where it ran: "host" or "vm" (the run script's step that produced it).
	Part       string    `json:"part"`
	Machine    Machine   `json:"machine"`
	Date       time.Time `json:"date"`
	Iterations int       `json:"iterations"`
	// Ours and Ref name the two columns (e.g. "multinic ipvlan", "ipvlan + host-local"); Ref may be empty.
	Ours string `json:"ours"`
	Ref  string `json:"ref,omitempty"`
	Rows []Row  `json:"rows"`
	// Notes say how it was measured: flags, what was driven, what is excluded.
	Notes []string `json:"notes,omitempty"`
	// Smoke marks a run at smoke size; the report says so next to its numbers.
	Smoke bool `json:"smoke,omitempty"`
}

// Row is one metric, ours against the reference when there is one.
type Row struct {
	Metric string `json:"metric"`
	Unit   string `json:"unit"`
	Ours   Stat   `json:"ours"`
	Ref    *Stat  `json:"ref,omitempty"`
	// Ratio is Ours/Ref of the row's main value (the p50 for distributions); 0 when there is no reference.
	Ratio float64 `json:"ratio,omitempty"`
	// Target is the target in words ("<= 1.2x reference", "<= 0.05", "0"); Pass says whether the
	// row meets it (nil: no target).
	Target string `json:"target,omitempty"`
	Pass   *bool  `json:"pass,omitempty"`
}

// Stat is a distribution (N > 1: p50, p99, mean, max) or a single value (N == 1: Value only).
type Stat struct {
	N     int     `json:"n"`
	Value float64 `json:"value"` // the p50 of a distribution, or the single value
	P99   float64 `json:"p99,omitempty"`
	Mean  float64 `json:"mean,omitempty"`
	Max   float64 `json:"max,omitempty"`
}

// Value is a single measured number.
func Value(v float64) Stat { return Stat{N: 1, Value: v} }

// Summarize returns the nearest-rank p50 and p99, the mean and the max of xs (any order; xs is not
// modified). An empty xs gives the zero Stat.
func Summarize(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	return Stat{N: len(s), Value: Percentile(s, 50), P99: Percentile(s, 99), Mean: sum / float64(len(s)), Max: s[len(s)-1]}
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of sorted.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Millis converts durations to milliseconds.
func Millis(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}

// Compare is a row of ours against ref, with the ratio of their main values and, when maxRatio > 0, the
// target "<= maxRatio x reference".
func Compare(metric, unit string, ours, ref Stat, maxRatio float64) Row {
	r := Row{Metric: metric, Unit: unit, Ours: ours, Ref: &ref}
	if ref.Value > 0 {
		r.Ratio = ours.Value / ref.Value
	}
	if maxRatio > 0 {
		r.Target = fmt.Sprintf("<= %.1fx reference", maxRatio)
		pass := r.Ratio > 0 && r.Ratio <= maxRatio
		r.Pass = &pass
	}
	return r
}

// CompareAtLeast is a row of ours against ref, with the ratio of their main values and the target
// ">= minRatio x reference" (e.g. the throughput of N cards against N times one card's).
func CompareAtLeast(metric, unit string, ours, ref Stat, minRatio float64) Row {
	r := Compare(metric, unit, ours, ref, 0)
	r.Target = fmt.Sprintf(">= %.2gx reference", minRatio)
	pass := ref.Value > 0 && r.Ratio >= minRatio
	r.Pass = &pass
	return r
}

// AtMost is a row of one value with the target "<= limit".
func AtMost(metric, unit string, v Stat, limit float64) Row {
	pass := v.Value <= limit
	return Row{Metric: metric, Unit: unit, Ours: v, Target: fmt.Sprintf("<= %g", limit), Pass: &pass}
}

// Emit prints r as one result line on w.
func Emit(w io.Writer, r Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result %s: %w", r.Key, err)
	}
	_, err = fmt.Fprintf(w, "%s%s\n", ResultPrefix, b)
	return err
}
