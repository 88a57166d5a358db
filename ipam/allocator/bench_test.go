package allocator

import (
	"fmt"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/store"
)

// BenchmarkAllocateRelease measures one Allocate plus one Release, each a full checkpoint write with two
// fsyncs (file, directory), on a FileStore in a temp dir; "memory" shows the cost without the disk.
// The state holds 100 other live allocations, each with a netns path like the plugin's, so the checkpoint
// has a realistic size.
func BenchmarkAllocateRelease(b *testing.B) {
	for _, bc := range []struct {
		name string
		st   func(b *testing.B) store.Store
	}{
		{"file", func(b *testing.B) store.Store {
			fs, err := store.NewFileStore(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			if err := fs.Lock(time.Second); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { fs.Unlock() })
			return fs
		}},
		{"memory", func(b *testing.B) store.Store { return store.NewMemory() }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			a, err := New(bc.st(b), WithCooldown(0))
			if err != nil {
				b.Fatal(err)
			}
			for c := range 4 {
				seed(b, a, c, 50)
				for p := range 25 {
					r := req(1000+p, c)
					r.Netns = fmt.Sprintf("/var/run/netns/cni-%08d-0000-0000-0000-000000000000", p)
					mustAllocate(b, a, r)
				}
			}
			r := api.AllocateRequest{Card: 1, ContainerID: "bench", IfName: "net1", PodRef: api.PodRef{PodUID: "bench-uid"},
				Netns: "/var/run/netns/cni-bench0000-0000-0000-0000-000000000000"}
			for i := 0; b.Loop(); i++ {
				r.ContainerID = fmt.Sprint("bench-", i)
				if _, err := a.Allocate(r); err != nil {
					b.Fatal(err)
				}
				if _, ok, err := a.Release(r.ContainerID, r.IfName); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
}
