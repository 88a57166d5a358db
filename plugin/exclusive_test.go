package plugin

import "testing"

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
