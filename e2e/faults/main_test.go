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

	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/internal/testing/testbin"
)

func TestMain(m *testing.M) {
	code := testbin.Main(m)
	if err := writeResults(); err != nil {
		fmt.Fprintf(os.Stderr, "faults: write results: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if testing.Verbose() {
		fmt.Print(Table(results.all()))
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

// regionConfig is one node serving card 1 with a short --wait-timeout and the given extra flags. In the long
// variant a free exclusive ENI goes back to EC2 1 s after its rest (--surplus-delay 1s), so that each round
// can start, as the first does, on an empty exclusive pool (endRound).
func regionConfig(extra ...string) harness.Config {
	args := []string{"--wait-timeout", waitTimeout().String()}
	if long() {
		args = append(args, "--surplus-delay", "1s")
	}
	return harness.Config{Nodes: 1, ManagedCards: []int{1}, AgentArgs: append(args, extra...)}
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

// writeResults writes every record to $MULTINIC_FAULTS_OUT as JSON lines (temp file, fsync, rename), or to
// stdout after RecordPrefix when it is "-" (the test VM cannot write into the host's folders).
func writeResults() error {
	path := os.Getenv(OutEnv)
	if path == "" {
		return nil
	}
	if path != "-" && !filepath.IsAbs(path) {
		return fmt.Errorf("$%s %q invalid: must be an absolute path (go test runs in the package folder) or -", OutEnv, path)
	}
	var buf bytes.Buffer
	for _, rec := range results.all() {
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if path == "-" {
			buf.WriteString(RecordPrefix)
		}
		buf.Write(append(b, '\n'))
	}
	if path == "-" {
		_, err := os.Stdout.Write(buf.Bytes())
		return err
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
	r.rec.Leaks, r.rec.LeakTotal, r.rec.LeakDetails, r.rec.Note = l, l.Total(), details, note
	r.rec.Time = time.Now().UTC()
	r.rec.DurationMillis = ms(time.Since(r.start))
	if l.Total() != 0 {
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
