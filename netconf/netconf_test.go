package netconf

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
)

const base = `"cniVersion": "1.1.0", "name": "card1", "type": "multinic"`

func confJSON(members string) []byte {
	if members == "" {
		return []byte("{" + base + "}")
	}
	return []byte("{" + base + ", " + members + "}")
}

func TestLoadConf(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    *Config // compared without Raw
		wantErr string  // substring; the error must be code 7
	}{
		{
			name: "defaults",
			json: `"networkCard": 0`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 0, Mode: ModeIPVlan, IPVlanMode: IPVlanL2,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true, Family: FamilyIPv4},
		},
		{
			name: "everything",
			json: `"networkCard": 3, "mode": "ipvlan", "ipvlanMode": "l3s", "family": "dual", "mtu": 1500, "agentSocket": "/run/x.sock",
				"policyRouting": false, "routes": [{"dst": "10.100.0.0/16"}, {"dst": "10.200.0.0/16"}, {"dst": "10.100.0.0/16"}]`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 3, Mode: ModeIPVlan, IPVlanMode: IPVlanL3S,
				Family: FamilyDual, MTU: 1500, AgentSocket: "/run/x.sock", PolicyRouting: false,
				Routes: []netip.Prefix{netip.MustParsePrefix("10.100.0.0/16"), netip.MustParsePrefix("10.200.0.0/16")}},
		},
		{
			name: "exclusive, mtu 0 means the ENI's",
			json: `"networkCard": 1, "mode": "exclusive", "mtu": 0`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeExclusive, IPVlanMode: IPVlanL2, Family: FamilyIPv4,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true},
		},
		{
			name: "standard keys and cni-args",
			json: `"networkCard": 1, "capabilities": {"mac": true}, "runtimeConfig": {"mac": "x"}, "dns": {"nameservers": ["10.0.0.2"]},
				"ipam": {}, "prevResult": {"cniVersion": "1.1.0"}, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "net1"}],
				"args": {"cni": {"mtu": 1400, "routes": [{"dst": "10.9.0.0/16"}], "sysctl": {"x": "1"}}, "other": 1}`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyIPv4,
				MTU: 1400, AgentSocket: api.DefaultSocketPath, PolicyRouting: true,
				Routes:           []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")},
				DNS:              types.DNS{Nameservers: []string{"10.0.0.2"}},
				ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "net1"}}},
		},
		{
			name: "old attachments spelling",
			json: `"networkCard": 1, "cni.dev/attachments": [{"containerID": "a", "ifname": "net1"}]`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyIPv4,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true,
				ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "net1"}}},
		},
		{name: "cniVersion 0.4.0", json: `"networkCard": 1, "cniVersion": "0.4.0"`,
			want: &Config{Name: "card1", CNIVersion: "0.4.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyIPv4,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true}},
		{name: "family ipv6", json: `"networkCard": 1, "mode": "exclusive", "family": "ipv6"`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeExclusive, IPVlanMode: IPVlanL2, Family: FamilyIPv6,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true}},
		{name: "family ipv4 spelled out", json: `"networkCard": 1, "family": "ipv4"`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyIPv4,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true}},
		{name: "bad family", json: `"networkCard": 1, "family": "inet6"`, wantErr: `family "inet6" invalid: must be "ipv4", "ipv6" or "dual"`},
		{name: "family empty is ipv4", json: `"networkCard": 1, "family": ""`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyIPv4,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true}},
		{name: "dual with routes of both families", json: `"networkCard": 1, "family": "dual", "mtu": 1280, "routes": [{"dst": "10.100.0.0/16"}, {"dst": "2001:db8:100::/48"}]`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyDual, MTU: 1280,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true,
				Routes: []netip.Prefix{netip.MustParsePrefix("10.100.0.0/16"), netip.MustParsePrefix("2001:db8:100::/48")}}},
		{name: "ipv4 mtu below IPv6's", json: `"networkCard": 1, "mtu": 576`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: IPVlanL2, Family: FamilyIPv4, MTU: 576,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true}},
		{name: "family a number", json: `"networkCard": 1, "family": 6`, wantErr: "family: want string"},

		{name: "card missing", json: ``, wantErr: "networkCard is required"},
		{name: "card null", json: `"networkCard": null`, wantErr: "networkCard is required"},
		{name: "card negative", json: `"networkCard": -1`, wantErr: "networkCard -1 invalid: must be 0 or more"},
		{name: "card too big", json: `"networkCard": 256`, wantErr: "networkCard 256 invalid: must be at most 255"},
		{name: "card a string", json: `"networkCard": "1"`, wantErr: "networkCard: want int, got string"},
		{name: "card fractional", json: `"networkCard": 1.5`, wantErr: "networkCard"},
		{name: "unknown key", json: `"networkCard": 1, "netwrokCard": 1`, wantErr: `unknown key "netwrokCard"`},
		{name: "key with other case", json: `"NetworkCard": 1`, wantErr: `unknown key "NetworkCard"`},
		{name: "bad mode", json: `"networkCard": 1, "mode": "macvlan"`, wantErr: `mode "macvlan" invalid`},
		{name: "bad ipvlanMode", json: `"networkCard": 1, "ipvlanMode": "l4"`, wantErr: `ipvlanMode "l4" invalid: must be l2, l3 or l3s`},
		{name: "ipvlanMode with exclusive", json: `"networkCard": 1, "mode": "exclusive", "ipvlanMode": "l3"`, wantErr: `ipvlanMode "l3" invalid: only applies`},
		{name: "mtu too small", json: `"networkCard": 1, "mtu": 67`, wantErr: "mtu 67 invalid: must be 68-9001"},
		{name: "mtu too big", json: `"networkCard": 1, "mtu": 9002`, wantErr: "mtu 9002 invalid"},
		{name: "mtu negative", json: `"networkCard": 1, "mtu": -1`, wantErr: "mtu -1 invalid"},
		{name: "socket relative", json: `"networkCard": 1, "agentSocket": "agent.sock"`, wantErr: `agentSocket "agent.sock" invalid: must be an absolute path`},
		{name: "socket too long", json: `"networkCard": 1, "agentSocket": "/` + strings.Repeat("a", 107) + `"`, wantErr: "agentSocket"},
		{name: "policyRouting a string", json: `"networkCard": 1, "policyRouting": "yes"`, wantErr: "policyRouting: want bool"},
		{name: "route not a CIDR", json: `"networkCard": 1, "routes": [{"dst": "10.0.0.1"}]`, wantErr: `routes[0].dst "10.0.0.1" invalid`},
		{name: "route host bits", json: `"networkCard": 1, "routes": [{"dst": "10.0.0.1/16"}]`, wantErr: "did you mean 10.0.0.0/16"},
		{name: "route default", json: `"networkCard": 1, "routes": [{"dst": "0.0.0.0/0"}]`, wantErr: "default route stays"},
		{name: "route ipv6", json: `"networkCard": 1, "routes": [{"dst": "fd00::/64"}]`, wantErr: `routes[0].dst "fd00::/64" invalid: must be IPv4 with family "ipv4"`},
		{name: "route ipv4 with family ipv6", json: `"networkCard": 1, "family": "ipv6", "routes": [{"dst": "10.0.0.0/8"}]`,
			wantErr: `routes[0].dst "10.0.0.0/8" invalid: must be IPv6 with family "ipv6"`},
		{name: "route ipv6 default", json: `"networkCard": 1, "family": "dual", "routes": [{"dst": "::/0"}]`, wantErr: "default route stays"},
		{name: "route ipv6 host bits", json: `"networkCard": 1, "family": "ipv6", "routes": [{"dst": "2001:db8::1/48"}]`, wantErr: "did you mean 2001:db8::/48"},
		{name: "route ipv4-mapped", json: `"networkCard": 1, "family": "dual", "routes": [{"dst": "::ffff:10.0.0.0/104"}]`, wantErr: "plain IPv4 or IPv6"},
		{name: "cni-args route ipv6 with family ipv4", json: `"networkCard": 1, "args": {"cni": {"routes": [{"dst": "2001:db8::/32"}]}}`,
			wantErr: `args.cni.routes[0].dst "2001:db8::/32" invalid: must be IPv4`},
		{name: "mtu below IPv6's", json: `"networkCard": 1, "family": "dual", "mtu": 1279`, wantErr: `mtu 1279 invalid: must be at least 1280 with family "dual"`},
		{name: "cni-args mtu below IPv6's", json: `"networkCard": 1, "family": "ipv6", "args": {"cni": {"mtu": 1000}}`, wantErr: "args.cni.mtu 1000 invalid: must be at least 1280"},
		{name: "route unknown key", json: `"networkCard": 1, "routes": [{"dst": "10.0.0.0/8", "gw": "10.0.0.1"}]`, wantErr: `unknown field "gw": a route has only "dst"`},
		{name: "ipam plugin", json: `"networkCard": 1, "ipam": {"type": "host-local"}`, wantErr: `ipam "host-local" invalid`},
		{name: "no cniVersion", json: `"networkCard": 1, "cniVersion": ""`, wantErr: `cniVersion "" invalid`},
		{name: "old cniVersion", json: `"networkCard": 1, "cniVersion": "0.3.1"`, wantErr: `cniVersion "0.3.1" invalid`},
		{name: "cni-args mtu", json: `"networkCard": 1, "args": {"cni": {"mtu": 100000}}`, wantErr: "args.cni.mtu 100000 invalid"},
		{name: "cni-args mtu a string", json: `"networkCard": 1, "args": {"cni": {"mtu": "1500"}}`, wantErr: "args.cni invalid: mtu: want int"},
		{name: "cni-args route", json: `"networkCard": 1, "args": {"cni": {"routes": [{"dst": "x"}]}}`, wantErr: `args.cni.routes[0].dst "x" invalid`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(confJSON(tt.json))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Load passed, want an error with %q", tt.wantErr)
				}
				requireCode7(t, err)
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error = %q, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Raw = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("config =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestLoadConfNotJSON(t *testing.T) {
	for _, in := range []string{``, `null`, `[]`, `{`, `"x"`, `{"networkCard": 1,}`} {
		_, err := Load([]byte(in))
		if err == nil {
			t.Errorf("Load(%q) passed", in)
			continue
		}
		requireCode7(t, err)
	}
}

func requireCode7(t *testing.T, err error) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("error = %#v, want a *types.Error with code %d", err, types.ErrInvalidNetworkConfig)
	}
}

func FuzzLoadConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"multinic","networkCard":1}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","networkCard":2,"mode":"exclusive","mtu":1500,"routes":[{"dst":"10.0.0.0/8"}],"args":{"cni":{"mtu":9001}}}`))
	f.Add([]byte(`{"cniVersion":"0.4.0","networkCard":0,"ipvlanMode":"l3s","policyRouting":false,"agentSocket":"/a"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Load(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || e != err {
				t.Fatalf("error = %#v, want a bare *types.Error with code 7", err)
			}
			return
		}
		// What loads is valid.
		switch {
		case c.Card < 0 || c.Card > MaxNetworkCard:
			t.Fatalf("card %d accepted", c.Card)
		case c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU):
			t.Fatalf("mtu %d accepted", c.MTU)
		case c.MTU != 0 && c.MTU < MinIPv6MTU && api.WantsIPv6(c.Family):
			t.Fatalf("mtu %d accepted with family %s", c.MTU, c.Family)
		case c.Mode != ModeIPVlan && c.Mode != ModeExclusive, CheckIPVlanMode("ipvlanMode", c.IPVlanMode) != nil:
			t.Fatalf("mode %q (ipvlan %q) accepted", c.Mode, c.IPVlanMode)
		case !strings.HasPrefix(c.AgentSocket, "/"):
			t.Fatalf("socket %q accepted", c.AgentSocket)
		}
		for _, r := range c.Routes {
			if r.Addr().Is4() && !api.WantsIPv4(c.Family) || r.Addr().Is6() && !api.WantsIPv6(c.Family) || r.Addr().Is4In6() ||
				r != r.Masked() || r.Bits() == 0 {
				t.Fatalf("route %s accepted", r)
			}
		}
	})
}

// TestRender: the published form has the header first and only the keys set, and what Render refuses is
// what Load refuses.
func TestRender(t *testing.T) {
	card, mtu := 3, 1500
	b, err := Render("1.1.0", "multinic-card-3", Network{NetworkCard: &card, Mode: ModeIPVlan, IPVlanMode: IPVlanL3, MTU: &mtu})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"cniVersion":"1.1.0","name":"multinic-card-3","type":"multinic","networkCard":3,"mode":"ipvlan","ipvlanMode":"l3","mtu":1500}`
	if string(b) != want {
		t.Errorf("Render:\n got %s\nwant %s", b, want)
	}
	c, err := Load(b)
	if err != nil || c.Card != 3 || c.IPVlanMode != IPVlanL3 || c.MTU != 1500 {
		t.Errorf("Load(Render) = %+v, %v", c, err)
	}

	// The family renders after ipvlanMode, only when set.
	b, err = Render("1.1.0", "multinic-card-3", Network{NetworkCard: &card, Mode: ModeIPVlan, IPVlanMode: IPVlanL3, Family: FamilyDual})
	if want := `{"cniVersion":"1.1.0","name":"multinic-card-3","type":"multinic","networkCard":3,"mode":"ipvlan","ipvlanMode":"l3","family":"dual"}`; err != nil || string(b) != want {
		t.Errorf("Render with family:\n got %s, %v\nwant %s", b, err, want)
	}

	bad := 256
	for name, n := range map[string]Network{
		"bad family":         {NetworkCard: &card, Family: "ipv5"},
		"no card":            {Mode: ModeIPVlan},
		"card too big":       {NetworkCard: &bad},
		"bad mode":           {NetworkCard: &card, Mode: "macvlan"},
		"ipvlanMode on excl": {NetworkCard: &card, Mode: ModeExclusive, IPVlanMode: IPVlanL2},
		"relative socket":    {NetworkCard: &card, AgentSocket: "agent.sock"},
	} {
		if _, err := Render("1.1.0", "x", n); err == nil {
			t.Errorf("%s: Render passed", name)
		} else {
			requireCode7(t, err)
		}
	}
}

// TestChecks: each rule names the key it was given, so the NAD renderer's options read like its flags.
func TestChecks(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{CheckCard("card", -1), "card -1 invalid: must be 0 or more"},
		{CheckCard("card", MaxNetworkCard+1), "card 256 invalid: must be at most 255"},
		{CheckMode("nad mode", "macvlan"), `nad mode "macvlan" invalid: must be "ipvlan" or "exclusive"`},
		{CheckIPVlanMode("ipvlan mode", "l4"), `ipvlan mode "l4" invalid: must be l2, l3 or l3s`},
		{CheckMTU("mtu", MaxMTU+1), "mtu 9002 invalid: must be 68-9001, or 0 for the ENI's MTU"},
		{CheckFamily("family of card 3", "ipv7"), `family of card 3 "ipv7" invalid: must be "ipv4", "ipv6" or "dual"`},
		{CheckFamily("family", ""), `family "" invalid: must be "ipv4", "ipv6" or "dual"`},
	} {
		if tt.err == nil || tt.err.Error() != tt.want {
			t.Errorf("error %v, want %q", tt.err, tt.want)
			continue
		}
		requireCode7(t, tt.err)
	}
	for _, err := range []error{CheckCard("card", 0), CheckCard("card", MaxNetworkCard), CheckMode("mode", ModeExclusive),
		CheckIPVlanMode("ipvlanMode", IPVlanL3S), CheckMTU("mtu", 0), CheckMTU("mtu", MinMTU), CheckMTU("mtu", MaxMTU),
		CheckFamily("family", FamilyIPv4), CheckFamily("family", FamilyIPv6), CheckFamily("family", FamilyDual)} {
		if err != nil {
			t.Errorf("valid value refused: %v", err)
		}
	}
}
