package backend

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/multinic/multinic/ipam/api"
)

// BenchmarkAllocateRelease measures one Allocate plus one Release with a netns, as the plugin sends them,
// on a file store in a temp dir: all the agent writes to disk for one attachment. 100 other live
// allocations give the checkpoint a realistic size.
func BenchmarkAllocateRelease(b *testing.B) {
	ta := newTestBackend(b, newFakePools(1, 2, 3, 4), map[int]int{1: 50, 2: 50, 3: 50, 4: 50},
		func(c *Config) { c.Logger = slog.New(slog.DiscardHandler) })
	ctx := context.Background()
	netns := func(pod string) string { return "/var/run/netns/cni-" + pod + "-0000-0000-0000-000000000000" }
	for card := 1; card <= 4; card++ {
		for p := range 25 {
			r := req(card, fmt.Sprint("live-", p), fmt.Sprint("net", card), fmt.Sprint("live-", p))
			r.Netns = netns(r.PodName)
			if _, err := ta.Allocate(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := 0; b.Loop(); i++ {
		r := req(1, fmt.Sprint("bench-", i), "net1", fmt.Sprint("bench-", i))
		r.Netns = netns(r.PodName)
		if _, err := ta.Allocate(ctx, r); err != nil {
			b.Fatal(err)
		}
		if _, err := ta.Release(ctx, api.ReleaseRequest{ContainerID: r.ContainerID, IfName: r.IfName}); err != nil {
			b.Fatal(err)
		}
	}
}
