package nettest

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDecide(t *testing.T) {
	unsupported := fmt.Errorf("create ipvlan link: %w", unix.EOPNOTSUPP)
	tests := []struct {
		name     string
		probeErr error
		inVM     bool
		want     verdict
		wantMsg  string
	}{
		{name: "supported on host", want: run},
		{name: "supported in vm", inVM: true, want: run},
		{name: "unsupported on host skips", probeErr: unsupported, want: skip, wantMsg: "kernel lacks ipvlan: run `make test-vm`"},
		{name: "unsupported in vm fails", probeErr: unsupported, inVM: true, want: fail, wantMsg: "kernel lacks ipvlan inside the test VM"},
		{name: "other probe error fails", probeErr: unix.EPERM, want: fail, wantMsg: "probe ipvlan link: operation not permitted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, msg := decide("ipvlan", tt.probeErr, tt.inVM)
			if got != tt.want {
				t.Errorf("verdict = %d, want %d (%q)", got, tt.want, msg)
			}
			if !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("message = %q, want it to contain %q", msg, tt.wantMsg)
			}
		})
	}
}

// TestRequireLinkType probes kinds every kernel we test on has, and one none has.
func TestRequireLinkType(t *testing.T) {
	RequireRoot(t)
	for _, kind := range []string{"veth", "bridge", "macvlan"} {
		if err := probeLinkType(kind); err != nil {
			t.Errorf("probe %s: %v", kind, err)
		}
	}
	if v, msg := decide("nosuchkind", probeLinkType("nosuchkind"), false); v != skip {
		t.Errorf("unknown kind: verdict %d (%s), want skip", v, msg)
	}
}

func TestNewNSAndHandle(t *testing.T) {
	n := NewNS(t)
	h := Handle(t, n)
	links, err := h.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Errorf("new netns has links %v, want only lo", links)
	}
}
