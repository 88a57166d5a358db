//go:build e2e

package realnode

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/testbin"
)

// TestMain removes everything on Ctrl-C or SIGTERM (the nodes' processes, cgroups, netns, the host link,
// the kernel settings), and a minute before go test's -timeout would panic the test binary (which runs no
// cleanup); it checks after the run that nothing is left.
func TestMain(m *testing.M) {
	flag.Parse()
	abort := func(why string, code int) {
		fmt.Fprintf(os.Stderr, "realnode: %s: removing everything the run made\n", why)
		if err := Cleanup(); err != nil {
			fmt.Fprintf(os.Stderr, "realnode: cleanup: %v\n", err)
		}
		if dir := RunDir(); dir != "" {
			_ = pruneToLogs(dir)
			fmt.Fprintf(os.Stderr, "realnode: the run's logs are kept in %s\n", dir)
		}
		testbin.Remove()
		os.Exit(code) // the control plane, kubectl and node execs die with this process (Pdeathsig)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { abort(fmt.Sprint(<-sig), 130) }()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 2*time.Minute {
			time.AfterFunc(d-time.Minute, func() { abort(fmt.Sprintf("a minute before -timeout %s", d), 1) })
		}
	}
	code := m.Run()
	testbin.Remove() // the binaries the harness built for this run
	if os.Getenv(E2EEnv) == "1" {
		if left := Leftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "realnode: left behind after the run: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}
