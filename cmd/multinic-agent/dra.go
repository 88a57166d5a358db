package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/multinic/multinic/dra"
	"github.com/multinic/multinic/ipam/backend"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/server"
)

// draSource is what the DRA publisher needs from the ENI manager.
type draSource interface {
	Stats() eni.Stats
	ENI(id string) (enipool.ENIInfo, bool)
}

var _ draSource = (*eni.Manager)(nil)

// withClaims is the agent's backend that also answers GET /v1/claims (server.Claimer) from the kubelet
// plugin, for the NRI plugin; the backend's own endpoints, the operators' included, stay its.
type withClaims struct {
	*backend.Backend
	server.Claimer
}

var (
	_ server.Introspector = withClaims{}
	_ server.Claimer      = withClaims{}
)

// draCards are the managed cards as their DRA devices describe them. A card's PCIe root is its first shared
// ENI's, read from sysfs; a link without a PCI device (a veth) gives none, other read errors are logged.
func draCards(src draSource, sysfs string, logger *slog.Logger) []dra.Card {
	st := src.Stats()
	out := make([]dra.Card, 0, len(st.Cards))
	for _, c := range st.Cards {
		card := dra.Card{Index: c.Card, Subnet: c.SubnetID, BaselineGbps: c.BaselineGbps, PeakGbps: c.PeakGbps}
		if c.Ready {
			card.Addresses = max(c.MaxCapacity, 0)
		}
		for _, id := range c.SharedENIIDs {
			info, ok := src.ENI(id)
			if !ok || info.LinkName == "" {
				continue
			}
			root, err := dra.PCIeRoot(sysfs, info.LinkName)
			if err != nil && !errors.Is(err, dra.ErrNoPCIDevice) {
				logger.Warn("read the card's pcie root", "card", c.Card, "eni", id, "error", err)
			}
			card.PCIeRoot = root
			break
		}
		out = append(out, card)
	}
	return out
}

// runDRAPublisher gives p the devices of the managed cards now, once the ENI manager is ready, and every
// interval after (the controller writes only what changed). The returned function stops it and waits.
func runDRAPublisher(ctx context.Context, p *dra.Publisher, src draSource, o options, waitReady func(context.Context) error, logger *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	update := func() { p.Update(dra.Devices(draCards(src, o.sysfs, logger), o.draModes)) }
	go func() {
		defer close(done)
		update()
		ready := make(chan struct{})
		go func() {
			if waitReady(ctx) == nil {
				close(ready)
			}
		}()
		t := time.NewTicker(o.publishInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ready:
				ready = nil
				update()
			case <-t.C:
				update()
			}
		}
	}()
	return func() {
		cancel()
		<-done
		p.Stop()
	}
}
