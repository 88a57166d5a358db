// Command multinic-agent is the node agent of multinic: the only component that talks to EC2. It keeps
// per-card pools of ENI-backed addresses, serves allocations to the CNI plugin over a root-only unix socket,
// reclaims the allocations of gone pods, and exports Prometheus metrics. `--help` lists its flags.
// `multinic-agent install-cni` installs the CNI plugin into the host's CNI bin directory (the DaemonSet's
// init container: the image has no shell).
//
// Two subcommands talk to the agent running on the node, as root, through its socket:
//
//	multinic-agent status [--allocations] [-o table|json]
//	multinic-agent support-bundle -o FILE.tar.gz
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	// The image has no CA bundle (empty base): EC2's and STS's certificates are checked against Mozilla's
	// roots built into the binary, used only where the system has none.
	_ "golang.org/x/crypto/x509roots/fallback"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args := os.Args[1:]; {
	case len(args) > 0 && args[0] == InstallCNICommand:
		err = installCNI(args[1:], os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "status":
		err = runStatus(ctx, args[1:], os.Stdout, os.Stderr)
	case len(args) > 0 && args[0] == "support-bundle":
		err = runBundle(ctx, args[1:], os.Stdout, os.Stderr)
	default:
		err = run(ctx, args)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "multinic-agent:", err)
		os.Exit(1)
	}
}
