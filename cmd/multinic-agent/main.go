// Command multinic-agent is the node agent of multinic: the only component that talks to EC2. It keeps
// per-card pools of ENI-backed addresses, serves allocations to the CNI plugin over a root-only unix socket,
// garbage-collects the allocations of gone pods, and exports Prometheus metrics. `--help` lists its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "multinic-agent:", err)
		os.Exit(1)
	}
}
