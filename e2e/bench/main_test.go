package bench

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multinic/multinic/e2e/fakeec2"
	"github.com/multinic/multinic/e2e/harness"
)

// Sizes: the smoke sizes keep `make test` short; -multinic.full (MULTINIC_BENCH=1) runs the issue's.
var (
	fullFlag   = flag.Bool("multinic.full", os.Getenv("MULTINIC_BENCH") == "1", "run the issue's sizes (1,000-pod churn, 100-pod bursts, 500 latency iterations) instead of smoke sizes")
	nFlag      = flag.Int("multinic.n", envInt("MULTINIC_BENCH_N"), "latency iterations per plugin and verb (0: 500 with -multinic.full, else 20)")
	refBinFlag = flag.String("multinic.refbin", envOr("MULTINIC_BENCH_REFBIN", "bin"), "folder with the reference plugins ipvlan, host-local, host-device, static (built when missing and a Go toolchain exists)")
)

// refPlugins are the reference plugins the comparisons exec, from the module's containernetworking/plugins.
var refPlugins = []string{"main/ipvlan", "ipam/host-local", "main/host-device", "ipam/static"}

const refModule = "github.com/containernetworking/plugins"

func TestMain(m *testing.M) {
	flag.Parse()
	code := harness.Main(m)
	if builtRefDir != "" {
		_ = os.RemoveAll(builtRefDir)
	}
	os.Exit(code)
}

func envInt(key string) int {
	n, _ := strconv.Atoi(os.Getenv(key))
	return n
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// latencyIterations is the measured iterations of each plugin per verb.
func latencyIterations() int {
	switch {
	case *nFlag > 0:
		return *nFlag
	case *fullFlag:
		return 500
	}
	return 20
}

// size picks the full or the smoke size.
func size(full, smoke int) int {
	if *fullFlag {
		return full
	}
	return smoke
}

var (
	refOnce     sync.Once
	refDir      string
	refErr      error
	builtRefDir string
)

// refBinDir is the folder of the reference plugins: -multinic.refbin when it has them all, else a temporary
// folder they are installed into (`go install` at the module's version of containernetworking/plugins).
func refBinDir(tb testing.TB) string {
	tb.Helper()
	refOnce.Do(func() { refDir, refErr = findOrBuildRefs(*refBinFlag) })
	if refErr != nil {
		tb.Fatal(refErr)
	}
	return refDir
}

func findOrBuildRefs(dir string) (string, error) {
	if abs, err := filepath.Abs(dir); err == nil && hasRefs(abs) {
		return abs, nil
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "", fmt.Errorf("reference plugins: none in %s and no go toolchain (e2e/bench/run.sh builds them): %w", dir, err)
	}
	ver, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", refModule).Output()
	if err != nil {
		return "", fmt.Errorf("reference plugins: version of %s: %w", refModule, err)
	}
	tmp, err := os.MkdirTemp("", "multinic-refbin")
	if err != nil {
		return "", fmt.Errorf("reference plugins: %w", err)
	}
	builtRefDir = tmp
	args := []string{"install", "-trimpath"}
	for _, p := range refPlugins {
		args = append(args, refModule+"/plugins/"+p+"@"+strings.TrimSpace(string(ver)))
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("reference plugins: go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return tmp, nil
}

func hasRefs(dir string) bool {
	for _, p := range refPlugins {
		if _, err := os.Stat(filepath.Join(dir, filepath.Base(p))); err != nil {
			return false
		}
	}
	return true
}

// emit prints r as a result line on stdout (the run script collects them) and logs a short form.
func emit(t *testing.T, r Result) {
	t.Helper()
	r.Machine, r.Date, r.Smoke = ThisMachine(), time.Now().UTC(), !*fullFlag && *nFlag == 0
	r.Part = "host"
	if r.Machine.VM {
		r.Part = "vm"
	}
	if err := Emit(os.Stdout, r); err != nil {
		t.Fatal(err)
	}
}

func newContainerID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// callCounts sums fake-ec2's EC2 calls (any result) into mutating and describe calls; IMDS is left out.
func callCounts(calls map[string]map[string]int) (mutating, describe, throttled int) {
	for action, byResult := range calls {
		n := 0
		for res, c := range byResult {
			n += c
			if res == "RequestLimitExceeded" {
				throttled += c
			}
		}
		switch {
		case strings.HasPrefix(action, "IMDS."):
		case strings.HasPrefix(action, "Describe"):
			describe += n
		default:
			mutating += n
		}
	}
	return mutating, describe, throttled
}

// settle waits until fake-ec2 has seen no EC2 call for quiet (the agents' pools are filled), at most limit.
func settle(tb testing.TB, region *harness.Region, quiet, limit time.Duration) {
	tb.Helper()
	total := func() int {
		m, d, _ := callCounts(region.State().Calls)
		return m + d
	}
	last, since, deadline := total(), time.Now(), time.Now().Add(limit)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if n := total(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= quiet {
			return
		}
	}
	tb.Logf("fake-ec2 still busy after %s", limit)
}

// throttleAll is fake-ec2's throttling at EC2's published rates.
var throttleAll = fakeec2.Faults{Throttle: true}
