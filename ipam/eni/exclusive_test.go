package eni

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/linkalias"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
)

func TestExclusive(t *testing.T) {
	const cooldown, delay = 200 * time.Millisecond, 200 * time.Millisecond
	e := newEnv(t, envOpts{cooldown: cooldown})
	cfg := e.fastConfig(8)
	cfg.ManagedCards = []int{1}
	cfg.SurplusDelay = delay
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	if err := m.EnsureExclusive(context.Background(), 5); !errors.Is(err, api.ErrNotManaged) {
		t.Errorf("EnsureExclusive on an unmanaged card: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := exclusiveReq(1, 1)
	al, err := allocWait(ctx, m, e.alloc, r)
	if err != nil {
		t.Fatal(err)
	}
	x, ok := e.eniState(al.ENIID)
	if !ok || x.Tags[TagMode] != ModeExclusive || x.Card != 1 || x.Device != 2 || x.PrimaryIP != al.Address.String() ||
		len(x.SecondaryIPs) != 0 {
		t.Fatalf("exclusive ENI %+v", x)
	}
	// Idle work, once the pod has its ENI.
	eventually(t, 5*time.Second, "DeleteOnTermination on the exclusive ENI", func() bool {
		x, ok := e.eniState(al.ENIID)
		return ok && x.DeleteOnTermination
	})
	info, ok := m.ENI(al.ENIID)
	if !ok || info.LinkName != "ens1d2" {
		t.Errorf("ENI info %+v %v", info, ok)
	}
	// A second exclusive pod gets a second ENI.
	r2 := exclusiveReq(2, 1)
	al2, err := allocWait(ctx, m, e.alloc, r2)
	if err != nil || al2.ENIID == al.ENIID {
		t.Fatalf("second exclusive: %+v %v", al2, err)
	}
	if _, _, err := e.alloc.Release(al.ContainerID, al.IfName); err != nil {
		t.Fatal(err)
	}
	// Free ENIs go after cooldown + delay; the one still held stays.
	eventually(t, 5*time.Second, "surplus exclusive ENI deleted", func() bool { _, ok := e.eniState(al.ENIID); return !ok })
	if _, ok := e.eniState(al2.ENIID); !ok {
		t.Error("held exclusive ENI deleted")
	}
	if _, ok := m.ENI(al.ENIID); ok {
		t.Error("manager still knows the deleted ENI")
	}
}

// TestExclusiveCardFull: on a card without room for another ENI, an exclusive allocation waits for an
// exclusive ENI resting after its pod left instead of failing "card full" (a pod restarted within the
// cooldown on a full card).
func TestExclusiveCardFull(t *testing.T) {
	const cooldown = 300 * time.Millisecond
	e := newEnv(t, envOpts{cooldown: cooldown})
	cfg := e.cardOneConfig()
	cfg.SurplusDelay = time.Hour
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held []api.Allocation
	for p := 0; ; p++ {
		r := exclusiveReq(p, 1)
		al, err := allocWait(ctx, m, e.alloc, r)
		if errors.Is(err, enipool.ErrCardFull) {
			break
		}
		if err != nil {
			t.Fatalf("exclusive pod %d: %v", p, err)
		}
		held = append(held, al)
	}
	if len(held) == 0 {
		t.Fatal("no exclusive ENI fit on the card")
	}
	creates := func() int { return e.srv.State().Calls["CreateNetworkInterface"]["ok"] }
	before := creates()
	gone := held[0]
	if _, _, err := e.alloc.Release(gone.ContainerID, gone.IfName); err != nil {
		t.Fatal(err)
	}
	r := exclusiveReq(100, 1)
	start := time.Now()
	al, err := allocWait(ctx, m, e.alloc, r)
	if err != nil {
		t.Fatalf("exclusive allocation on a full card with a resting ENI: %v", err)
	}
	if al.ENIID != gone.ENIID {
		t.Errorf("got ENI %s, want the resting %s", al.ENIID, gone.ENIID)
	}
	if waited := time.Since(start); waited < cooldown/2 {
		t.Errorf("got the resting ENI after %s, before its cooldown of %s", waited, cooldown)
	}
	if n := creates() - before; n != 0 {
		t.Errorf("%d CreateNetworkInterface on a full card", n)
	}
	checkNoLeak(t, e, e.alloc, 1)
}

// TestExclusiveLinkLost: an exclusive ENI is reused, detached or deleted only once its allocation was
// released AND its link was seen back in the node netns. A link that comes home from a dead pod netns
// under the pod-side name with the plugin's alias is restored (name, alias, MTU, up) before the next pod
// gets the ENI. A link that never comes home is a dead ENI only when the released pod's netns is gone
// (the card loop deletes it); with the netns alive or unknown the ENI is kept, never handed out, and
// usable again once its link is home.
func TestExclusiveLinkLost(t *testing.T) {
	dir := t.TempDir() // a netns directory the agent sees
	gone, alive := filepath.Join(dir, "cni-gone"), filepath.Join(dir, "cni-alive")
	if err := os.WriteFile(alive, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, netns string
		link        string // the link in the node netns after the release: "" none
		alias       bool   // it carries the plugin's alias
		want        string // "reused", "deleted" or "kept"
	}{
		{name: "home", netns: gone, link: "ens1d2", want: "reused"},
		{name: "renamed", netns: gone, link: "net1", alias: true, want: "reused"},
		{name: "dead", netns: gone, want: "deleted"},
		{name: "netns-alive", netns: alive, want: "kept"},
		{name: "netns-invisible", netns: "/proc/1/ns/net", want: "kept"},
		{name: "netns-unknown", want: "kept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			cfg := e.cardOneConfig()
			cfg.SurplusDelay = time.Hour
			cfg.LinkTimeout = 300 * time.Millisecond
			cfg.MTU = 9001
			cfg.NetnsDirs = []string{dir}
			m := e.start(cfg, e.alloc)
			waitReady(t, m, 5*time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r := exclusiveReq(1, 1)
			r.Netns = tc.netns
			first, err := allocWait(ctx, m, e.alloc, r)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := m.ENI(first.ENIID)
			orig := info.LinkName
			e.links.setLink(info.MAC, "") // the plugin moved the link into the pod
			alias := ""
			if tc.alias {
				alias = linkalias.Orig{Name: orig, MTU: 9001, Up: true}.Alias()
			}
			if _, _, err := e.alloc.Release(first.ContainerID, first.IfName); err != nil {
				t.Fatal(err)
			}
			e.links.setLinkAlias(info.MAC, tc.link, alias)

			second, err := allocWait(ctx, m, e.alloc, exclusiveReq(2, 1))
			if err != nil {
				t.Fatal(err)
			}
			switch tc.want {
			case "reused":
				if second.ENIID != first.ENIID {
					t.Fatalf("got ENI %s, want %s back: its link is home", second.ENIID, first.ENIID)
				}
				if info, _ := m.ENI(second.ENIID); info.LinkName != orig {
					t.Errorf("ENI handed out with link %q, want it restored to %q", info.LinkName, orig)
				}
				if up, mtu := e.links.state(orig); !up || mtu != 9001 || e.links.alias[orig] != "" {
					t.Errorf("link %s: up %t mtu %d alias %q, want up, 9001, no alias", orig, up, mtu, e.links.alias[orig])
				}
				return
			case "deleted":
				eventually(t, 5*time.Second, "the dead ENI deleted by the card loop", func() bool {
					_, inEC2 := e.eniState(first.ENIID)
					_, known := m.ENI(first.ENIID)
					return !inEC2 && !known
				})
			case "kept":
				time.Sleep(3 * cfg.LinkTimeout) // several card loop steps past the grace
				if _, ok := e.eniState(first.ENIID); !ok {
					t.Fatalf("ENI %s deleted without evidence that nothing uses it", first.ENIID)
				}
				if st := e.alloc.Stats(1).Exclusive; st.Away != 1 {
					t.Errorf("exclusive stats %+v, want the ENI away", st)
				}
			}
			if second.ENIID == first.ENIID {
				t.Fatalf("ENI %s handed out again without its link home", first.ENIID)
			}
			if tc.want == "kept" {
				// Its link comes home after all: restored and usable again.
				e.links.setLink(info.MAC, "net1")
				third, err := allocWait(ctx, m, e.alloc, exclusiveReq(3, 1))
				if err != nil {
					t.Fatal(err)
				}
				if third.ENIID != first.ENIID {
					t.Errorf("got ENI %s, want %s, back home", third.ENIID, first.ENIID)
				}
				if info, _ := m.ENI(third.ENIID); info.LinkName != orig {
					t.Errorf("ENI handed out with link %q, want %q", info.LinkName, orig)
				}
			}
			checkNoLeak(t, e, e.alloc, 1)
		})
	}
}

// TestExclusiveRestartWithoutCheckpoint: the agent restarts with no checkpoint while an exclusive ENI is
// inside a running pod (its link is not in the node netns). The ENI is neither registered free nor
// detached; once its link is home it serves again.
func TestExclusiveRestartWithoutCheckpoint(t *testing.T) {
	e := newEnv(t, envOpts{})
	cfg := e.cardOneConfig()
	cfg.SurplusDelay = 50 * time.Millisecond // a free exclusive ENI would be deleted at once
	cfg.LinkTimeout = 300 * time.Millisecond
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	al, err := allocWait(ctx, m, e.alloc, exclusiveReq(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := m.ENI(al.ENIID)
	e.links.setLink(info.MAC, "")
	m.Stop()

	e.waitDescribed() // without a checkpoint, the agent learns its ENIs from Describe
	fresh := e.newAllocatorOn(newMemStore())
	m2 := e.start(cfg, fresh)
	waitReady(t, m2, 5*time.Second)
	time.Sleep(1 * time.Second)
	if _, ok := e.eniState(al.ENIID); !ok {
		t.Fatalf("exclusive ENI %s inside a running pod deleted after a restart without checkpoint", al.ENIID)
	}
	for _, p := range fresh.Known() {
		if p.ENIID == al.ENIID {
			t.Fatalf("exclusive ENI %s inside a running pod registered as %+v", al.ENIID, p)
		}
	}
	other, err := allocWait(ctx, m2, fresh, exclusiveReq(2, 1))
	if err != nil {
		t.Fatal(err)
	}
	if other.ENIID == al.ENIID {
		t.Fatalf("ENI %s inside a running pod handed to another", al.ENIID)
	}
	e.links.setLinkAlias(info.MAC, "net1", linkalias.Orig{Name: info.LinkName, MTU: 9001, Up: true}.Alias())
	eventually(t, 5*time.Second, "the ENI registered once its link is home", func() bool {
		for _, p := range fresh.Known() {
			if p.ENIID == al.ENIID {
				return true
			}
		}
		return false
	})
	if info2, _ := m2.ENI(al.ENIID); info2.LinkName != info.LinkName {
		t.Errorf("link %q, want it restored to %q", info2.LinkName, info.LinkName)
	}
}

// TestExclusiveBackoff: while EC2 refuses CreateNetworkInterface, exclusive ADDs retried back to back
// make no EC2 calls of their own: the card loop creates, with its error backoff, and each ADD gets its
// failure (EC2's code) from the card loop's next step.
func TestExclusiveBackoff(t *testing.T) {
	e := newEnv(t, envOpts{})
	cfg := e.cardOneConfig()
	cfg.MaxAttempts = 1
	cfg.RefillInterval = time.Second // first error wait 100 ms, doubling
	cfg.ErrorBackoffMax = time.Hour
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 5*time.Second)
	if err := e.srv.SetFaults(fakeec2.Faults{Errors: map[string]fakeec2.ErrorFault{
		"CreateNetworkInterface": {Rate: 1, Code: "InternalError", Status: 500}}}); err != nil {
		t.Fatal(err)
	}
	calls := func() int {
		n := 0
		for _, c := range e.srv.State().Calls["CreateNetworkInterface"] {
			n += c
		}
		return n
	}
	before := calls()
	adds, start := 0, time.Now()
	for p := 0; time.Since(start) < 2*time.Second; p++ {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := allocWait(ctx, m, e.alloc, exclusiveReq(p, 1))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "InternalError") {
			t.Fatalf("ADD %d while EC2 refuses: %v, want EC2's InternalError", p, err)
		}
		adds++
	}
	// Card loop steps in 2 s with waits of 0.1, 0.2, 0.4, 0.8 s: at most 5.
	if n := calls() - before; n > 5 || adds < 5 {
		t.Errorf("%d CreateNetworkInterface calls for %d exclusive ADDs in 2 s, want at most 5 (the card loop's backoff)", n, adds)
	} else {
		t.Logf("%d CreateNetworkInterface calls for %d exclusive ADDs in 2 s", n, adds)
	}
	if err := e.srv.SetFaults(fakeec2.Faults{}); err != nil {
		t.Fatal(err)
	}
	m.Kick(1)
}
