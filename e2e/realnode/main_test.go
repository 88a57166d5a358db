//go:build e2e

package realnode

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/multinic/multinic/internal/testing/testbin"
)

// TestMain removes everything on Ctrl-C or SIGTERM (the nodes' processes, cgroups, netns, the host link,
// the kernel settings), and checks after the run that nothing is left.
func TestMain(m *testing.M) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "realnode: %v: removing everything the run made\n", s)
		if err := Cleanup(); err != nil {
			fmt.Fprintf(os.Stderr, "realnode: cleanup: %v\n", err)
		}
		testbin.Remove()
		os.Exit(130) // the control plane dies with this process (Pdeathsig)
	}()
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
