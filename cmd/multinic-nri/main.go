// Command multinic-nri is the containerd NRI plugin that attaches a pod's DRA-claimed cards without Multus
// (package nri). It runs beside the agent (a container of its DaemonSet) and talks to it over its socket.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/nri"
)

func main() {
	o := nri.Options{}
	flag.StringVar(&o.NRISocket, "nri-socket", nri.DefaultSocket, "containerd's NRI socket")
	flag.StringVar(&o.AgentSocket, "agent-socket", api.DefaultSocketPath, "the multinic agent's socket")
	flag.StringVar(&o.Index, "plugin-index", nri.DefaultIndex, "the plugin's index: its order among NRI plugins")
	flag.Parse()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if err := nri.Run(ctx, o, logger); err != nil {
		logger.Error("multinic-nri", "error", err)
		os.Exit(1)
	}
}
