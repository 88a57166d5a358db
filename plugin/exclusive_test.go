package plugin

import (
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
)

func TestAlias(t *testing.T) {
	for _, s := range []origState{{Name: "ens6", MTU: 9001, Up: true}, {Name: "eth1", MTU: 1500}} {
		got, ok := parseAlias(s.Alias())
		if !ok || got != s {
			t.Errorf("parseAlias(%q) = %+v, %t, want %+v", s.Alias(), got, ok, s)
		}
	}
	for _, a := range []string{"", "ens6", "multinic:v2 name=x", "multinic:v1 mtu=5"} {
		if _, ok := parseAlias(a); ok {
			t.Errorf("parseAlias(%q) is ours", a)
		}
	}
}

// addPodVeth gives the pod netns a veth named name (peer name+"p"): a link of the pod's own.
func addPodVeth(t *testing.T, pod ns.NetNS, name string) {
	t.Helper()
	if err := nettest.Handle(t, pod).LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatalf("add %s to the pod: %v", name, err)
	}
}

// TestMoveLinkNamesSeenByHost: the node netns (where udev and NetworkManager act on link names) sees the ENI
// link only under its own name, on the way into the pod and back, also when the pod holds a link of the
// ENI's host name (the way out then goes through a temporary netns). Each time the link comes home as it
// left: name, MTU, up, no alias; the pod keeps its own links.
func TestMoveLinkNamesSeenByHost(t *testing.T) {
	nettest.RequireRoot(t)
	for _, podHasHostName := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "pod holds a link named like the ENI"}[podHasHostName]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, true)
			if podHasHostName {
				addPodVeth(t, e.pod, eniName)
			}
			podLinks := linkNames(t, e.pod)
			seen := watchLinkNames(t, e.node, eniMAC)
			if err := e.inNode(func() error { return MoveLinkIn(eniName, eniMAC.String(), e.pod, podIfName) }); err != nil {
				t.Fatal(err)
			}
			l, err := nettest.Handle(t, e.pod).LinkByName(podIfName)
			if err != nil {
				t.Fatalf("ENI not in the pod as %s: %v", podIfName, err)
			}
			if orig, ours := parseAlias(l.Attrs().Alias); !ours || orig != (origState{Name: eniName, MTU: eniMTU, Up: true}) {
				t.Errorf("pod link alias %q, want the ENI's original state", l.Attrs().Alias)
			}
			var found bool
			if err := e.inNode(func() error { found, err = MoveLinkOut(e.pod, podIfName); return err }); err != nil || !found {
				t.Fatalf("MoveLinkOut = %t, %v; want found", found, err)
			}
			e.requireENIHome()
			if got := linkNames(t, e.pod); !slices.Equal(got, podLinks) {
				t.Errorf("pod links = %v, want %v", got, podLinks)
			}
			for _, n := range seen() {
				if n != eniName {
					t.Errorf("the node netns saw the ENI link as %q, want only %q", n, eniName)
				}
			}
		})
	}
}

// watchLinkNames records, from now on, the names under which the node netns sees the link with this MAC;
// the returned func stops and returns them (at least one: the test's own changes are seen).
func watchLinkNames(t *testing.T, node ns.NetNS, mac net.HardwareAddr) func() []string {
	t.Helper()
	ch, done := make(chan netlink.LinkUpdate, 64), make(chan struct{})
	h := netns.NsHandle(node.Fd())
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	var names []string
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for u := range ch {
			if u.Attrs().HardwareAddr.String() == mac.String() {
				names = append(names, u.Attrs().Name)
			}
		}
	}()
	return func() []string {
		time.Sleep(50 * time.Millisecond) // the last notifications of the moves
		close(done)
		<-collected
		if len(names) == 0 {
			t.Fatal("saw no update of the ENI link: the watch sees nothing")
		}
		return names
	}
}

// TestMoveLinkInNameTaken: when the pod gets a link named ifName between the plugin's look and the move, the
// kernel moves the ENI link and then fails to rename it; MoveLinkIn brings it home as it was.
func TestMoveLinkInNameTaken(t *testing.T) {
	nettest.RequireRoot(t)
	e := newEnv(t, true)
	addPodVeth(t, e.pod, podIfName)
	podLinks := linkNames(t, e.pod)
	err := e.inNode(func() error { return MoveLinkIn(eniName, eniMAC.String(), e.pod, podIfName) })
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf("MoveLinkIn = %v, want EEXIST", err)
	}
	e.requireENIHome()
	if got := linkNames(t, e.pod); !slices.Equal(got, podLinks) {
		t.Errorf("pod links = %v, want %v", got, podLinks)
	}
}
