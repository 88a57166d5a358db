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

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/internal/testing/testbin"
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
	os.Exit(testbin.Main(m))
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
	refOnce sync.Once
	refPkgs []string
	refErr  error
)

// refBinDir is the folder of the reference plugins: -multinic.refbin when it has them all (e2e/bench/run.sh
// installs them there, static, for the test VM), else testbin's, built at the module's version of
// containernetworking/plugins.
func refBinDir(tb testing.TB) string {
	tb.Helper()
	if abs, err := filepath.Abs(*refBinFlag); err == nil && hasRefs(abs) {
		return abs
	}
	if _, err := exec.LookPath("go"); err != nil {
		tb.Fatalf("reference plugins: none in %s and no go toolchain (e2e/bench/run.sh refs installs them): %v", *refBinFlag, err)
	}
	refOnce.Do(func() {
		ver, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", refModule).Output()
		if err != nil {
			refErr = fmt.Errorf("reference plugins: version of %s: %w", refModule, err)
			return
		}
		for _, p := range refPlugins {
			refPkgs = append(refPkgs, refModule+"/plugins/"+p+"@"+strings.TrimSpace(string(ver)))
		}
	})
	if refErr != nil {
		tb.Fatal(refErr)
	}
	return testbin.Dir(tb, refPkgs...)
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
