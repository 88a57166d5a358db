// Command fake-ec2 serves the EC2 Query API and IMDSv2 for a fake region, and with --netns
// turns every attached ENI into a real link in that instance's network namespace.
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
	err := run(ctx, os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake-ec2:", err)
		os.Exit(1)
	}
}
