package gobuild

import "testing"

func TestName(t *testing.T) {
	for pkg, want := range map[string]string{
		"github.com/multinic/multinic/cmd/multinic-agent":                       "multinic-agent",
		"github.com/containernetworking/plugins/plugins/main/ipvlan@v1.10.0":    "ipvlan",
		"github.com/containernetworking/plugins/plugins/ipam/host-local@latest": "host-local",
	} {
		if got := Name(pkg); got != want {
			t.Errorf("Name(%q) = %q, want %q", pkg, got, want)
		}
	}
}
