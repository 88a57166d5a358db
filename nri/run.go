package nri

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/nri/pkg/stub"

	"github.com/multinic/multinic/ipam/api"
)

// Defaults of Options.
const (
	// DefaultSocket is containerd's NRI socket (its [plugins."io.containerd.nri.v1.nri"] socket_path).
	DefaultSocket = "/var/run/nri/nri.sock"
	// DefaultIndex orders the plugin among NRI plugins (two digits, lower first).
	DefaultIndex = "50"
	// Name is the plugin's name in NRI's registration.
	Name = "multinic"
)

// reconnectDelay is the pause before connecting again after containerd closed the connection (a restart).
const reconnectDelay = time.Second

// Options configure Run.
type Options struct {
	NRISocket, AgentSocket, Index string
}

// Run serves NRI events until ctx ends, connecting again whenever containerd drops the connection (the
// stub's Run returns then; containerd restarts do that).
func Run(ctx context.Context, o Options, logger *slog.Logger) error {
	client := api.NewClient(o.AgentSocket, 0)
	defer client.Close()
	p := New(client, o.AgentSocket, logger)
	for {
		s, err := stub.New(p, stub.WithPluginName(Name), stub.WithPluginIdx(o.Index), stub.WithSocketPath(o.NRISocket))
		if err != nil {
			return fmt.Errorf("create the NRI plugin: %w", err)
		}
		logger.Info("connecting to the runtime", "socket", o.NRISocket, "agent", o.AgentSocket, "index", o.Index)
		err = s.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("NRI connection ended, connecting again", "socket", o.NRISocket, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(reconnectDelay):
		}
	}
}
