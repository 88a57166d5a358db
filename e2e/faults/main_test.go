package faults

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/e2e/harness"
)

func TestMain(m *testing.M) {
	code := harness.Main(m)
	if err := writeResults(); err != nil {
		fmt.Fprintf(os.Stderr, "faults: write results: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if testing.Verbose() {
		fmt.Print(markdownTable(results.all()))
	}
	os.Exit(code)
}

// long reports whether the long variants run.
func long() bool { return os.Getenv(LongEnv) == "1" }

func variant() string {
	if long() {
		return "long"
	}
	return "fast"
}

// rounds is how many fault/recover cycles a test makes.
func rounds() int {
	if long() {
		return 5
	}
	return 1
}

// waitTimeout is the agent's --wait-timeout: short in the fast variant, the agent's default in the long one.
func waitTimeout() time.Duration {
	if long() {
		return 10 * time.Second
	}
	return 3 * time.Second
}

// regionConfig is one node serving card 1 with a short --wait-timeout and the given extra flags.
func regionConfig(extra ...string) harness.Config {
	args := append([]string{"--wait-timeout", waitTimeout().String()}, extra...)
	return harness.Config{Nodes: 1, ManagedCards: []int{1}, AgentArgs: args}
}

type recorder struct {
	mu   sync.Mutex
	recs []Record
}

var results recorder

func (r *recorder) add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
}

func (r *recorder) all() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Record(nil), r.recs...)
}

// writeResults writes every record to $MULTINIC_FAULTS_OUT as JSON lines (temp file, fsync, rename).
func writeResults() error {
	path := os.Getenv(OutEnv)
	if path == "" {
		return nil
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("$%s %q invalid: must be an absolute path (go test runs in the package folder)", OutEnv, path)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, rec := range results.all() {
		if err := enc.Encode(rec); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// markdownTable renders the records as the table BENCHMARKS.md lists.
func markdownTable(recs []Record) string {
	if len(recs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n| fault | mode | injected | ADD outcome | CNI code | CNI message | ADD ms | recovered | leaks | pass |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range recs {
		rec := "-"
		if r.Recovered != nil {
			rec = fmt.Sprintf("%t (%.0f ms)", *r.Recovered, r.RecoverMillis)
		}
		code := "-"
		if r.CNICode != 0 {
			code = fmt.Sprint(r.CNICode)
		}
		msg := r.CNIMsg
		if len(msg) > 160 { // the end says why (EC2's code); the start names the container
			msg = "..." + msg[len(msg)-157:]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %.0f | %s | %d | %t |\n", r.Fault, r.Mode, cell(r.Injected), r.Outcome,
			code, cell(msg), r.AddMillis, rec, r.LeakTotal, r.Pass)
	}
	return b.String()
}

func cell(s string) string { return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s) }

// run is one fault run being recorded.
type run struct {
	t     *testing.T
	rec   Record
	start time.Time
}

// newRun starts the record of a fault run.
func newRun(t *testing.T, fault, mode, injected string) *run {
	host, _ := os.Hostname()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	return &run{t: t, start: time.Now(), rec: Record{
		Version: RecordVersion, Suite: "faults", Fault: fault, Variant: variant(), Mode: mode, Injected: injected,
		Rounds: rounds(), Test: t.Name(),
		Command: fmt.Sprintf("go test -count=1 -v -run '^%s$' ./e2e/faults/", strings.ReplaceAll(t.Name(), "/", "$/^")),
		Host:    host, Kernel: unix.ByteSliceToString(uts.Release[:]), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
	}}
}

// addResult notes the ADD under the fault.
func (r *run) addResult(d time.Duration, err error) {
	r.rec.AddMillis = ms(d)
	if err == nil {
		r.rec.Outcome, r.rec.CNICode, r.rec.CNIMsg = "success", 0, ""
		return
	}
	r.rec.Outcome = "error"
	r.rec.CNICode, r.rec.CNIMsg = cniError(err)
}

// recovered notes the ADD after the fault cleared.
func (r *run) recovered(d time.Duration, err error) {
	ok := err == nil
	r.rec.Recovered, r.rec.RecoverMillis = &ok, ms(d)
}

// finish records the leaks and the verdict, and logs the row.
func (r *run) finish(l Leaks, details []string, note string) {
	r.finishTolerating(l, details, note, Leaks{})
}

// finishTolerating is finish for a run with a known limitation of the fakes: up to tolerated leaks of each
// kind are recorded (and counted in LeakTotal) but do not fail the test. The note must say why.
func (r *run) finishTolerating(l Leaks, details []string, note string, tolerated Leaks) {
	r.rec.Leaks, r.rec.LeakTotal, r.rec.LeakDetails, r.rec.Note = l, l.Total(), details, note
	r.rec.Time = time.Now().UTC()
	r.rec.DurationMillis = ms(time.Since(r.start))
	if strict(l, tolerated).Total() != 0 {
		r.t.Errorf("%d leaks after cleanup: %+v\n%s", l.Total(), l, strings.Join(details, "\n"))
	}
	r.rec.Pass = !r.t.Failed()
	results.add(r.rec)
	r.t.Logf("%s (%s): ADD %s in %.0f ms, CNI code %d %q; recovered %v; leaks %d %+v; %s", r.rec.Fault, r.rec.Mode,
		r.rec.Outcome, r.rec.AddMillis, r.rec.CNICode, r.rec.CNIMsg, fmtBool(r.rec.Recovered), l.Total(), l, note)
}

func fmtBool(b *bool) string {
	if b == nil {
		return "-"
	}
	return fmt.Sprint(*b)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// cniError returns the CNI code and message the runtime saw; code 0 when err carries none.
func cniError(err error) (uint, string) {
	if err == nil {
		return 0, ""
	}
	var e *types.Error
	if !errors.As(err, &e) {
		return 0, err.Error()
	}
	msg := e.Msg
	if e.Details != "" {
		msg += "; " + e.Details
	}
	return e.Code, msg
}
