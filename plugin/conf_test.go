package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

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
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 0, Mode: ModeIPVlan, IPVlanMode: netlink.IPVLAN_MODE_L2,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true},
		},
		{
			name: "everything",
			json: `"networkCard": 3, "mode": "ipvlan", "ipvlanMode": "l3s", "mtu": 1500, "agentSocket": "/run/x.sock",
				"policyRouting": false, "routes": [{"dst": "10.100.0.0/16"}, {"dst": "10.200.0.0/16"}, {"dst": "10.100.0.0/16"}]`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 3, Mode: ModeIPVlan, IPVlanMode: netlink.IPVLAN_MODE_L3S,
				MTU: 1500, AgentSocket: "/run/x.sock", PolicyRouting: false,
				Routes: []netip.Prefix{netip.MustParsePrefix("10.100.0.0/16"), netip.MustParsePrefix("10.200.0.0/16")}},
		},
		{
			name: "exclusive, mtu 0 means the ENI's",
			json: `"networkCard": 1, "mode": "exclusive", "mtu": 0`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeExclusive, IPVlanMode: netlink.IPVLAN_MODE_L2,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true},
		},
		{
			name: "standard keys and cni-args",
			json: `"networkCard": 1, "capabilities": {"mac": true}, "runtimeConfig": {"mac": "x"}, "dns": {"nameservers": ["10.0.0.2"]},
				"ipam": {}, "prevResult": {"cniVersion": "1.1.0"}, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "net1"}],
				"args": {"cni": {"mtu": 1400, "routes": [{"dst": "10.9.0.0/16"}], "sysctl": {"x": "1"}}, "other": 1}`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: netlink.IPVLAN_MODE_L2,
				MTU: 1400, AgentSocket: api.DefaultSocketPath, PolicyRouting: true,
				Routes:           []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")},
				DNS:              types.DNS{Nameservers: []string{"10.0.0.2"}},
				ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "net1"}}},
		},
		{
			name: "old attachments spelling",
			json: `"networkCard": 1, "cni.dev/attachments": [{"containerID": "a", "ifname": "net1"}]`,
			want: &Config{Name: "card1", CNIVersion: "1.1.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: netlink.IPVLAN_MODE_L2,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true,
				ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "net1"}}},
		},
		{name: "cniVersion 0.4.0", json: `"networkCard": 1, "cniVersion": "0.4.0"`,
			want: &Config{Name: "card1", CNIVersion: "0.4.0", Card: 1, Mode: ModeIPVlan, IPVlanMode: netlink.IPVLAN_MODE_L2,
				AgentSocket: api.DefaultSocketPath, PolicyRouting: true}},

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
		{name: "route ipv6", json: `"networkCard": 1, "routes": [{"dst": "fd00::/64"}]`, wantErr: "must be IPv4"},
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
			got, err := loadConf(confJSON(tt.json))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("loadConf passed, want an error with %q", tt.wantErr)
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
		_, err := loadConf([]byte(in))
		if err == nil {
			t.Errorf("loadConf(%q) passed", in)
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

func TestParseArgs(t *testing.T) {
	tests := []struct {
		in      string
		want    K8sArgs
		wantErr string
	}{
		{in: "", want: K8sArgs{}},
		{
			in: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;FOO=bar",
			want: K8sArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}, K8S_POD_NAMESPACE: "default", K8S_POD_NAME: "pod-a",
				K8S_POD_INFRA_CONTAINER_ID: "abc", K8S_POD_UID: "u-1"},
		},
		{in: "K8S_POD_NAME=a", want: K8sArgs{K8S_POD_NAME: "a"}},
		{in: "K8S_POD_NAME=a;FOO=bar", wantErr: `unknown args ["FOO=bar"]`},
		{in: "K8S_POD_NAME", wantErr: `invalid pair "K8S_POD_NAME"`},
		{in: "K8S_POD_NAME=a=b", wantErr: "invalid pair"},
		{in: "IgnoreUnknown=maybe", wantErr: "IgnoreUnknown=maybe"},
		{in: "CommonArgs=x", wantErr: "CommonArgs"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseArgs(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parseArgs passed, want %q", tt.wantErr)
				}
				requireCode7(t, err)
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "CNI_ARGS invalid: ") {
					t.Errorf("error = %q, want CNI_ARGS named and %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != tt.want {
				t.Errorf("args = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func FuzzLoadConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"multinic","networkCard":1}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","networkCard":2,"mode":"exclusive","mtu":1500,"routes":[{"dst":"10.0.0.0/8"}],"args":{"cni":{"mtu":9001}}}`))
	f.Add([]byte(`{"cniVersion":"0.4.0","networkCard":0,"ipvlanMode":"l3s","policyRouting":false,"agentSocket":"/a"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := loadConf(data)
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
		case c.Mode != ModeIPVlan && c.Mode != ModeExclusive:
			t.Fatalf("mode %q accepted", c.Mode)
		case !strings.HasPrefix(c.AgentSocket, "/"):
			t.Fatalf("socket %q accepted", c.AgentSocket)
		}
		for _, r := range c.Routes {
			if !r.Addr().Is4() || r != r.Masked() || r.Bits() == 0 {
				t.Fatalf("route %s accepted", r)
			}
		}
	})
}

func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=b;K8S_POD_UID=c")
	f.Add("K8S_POD_NAME=a;X=y")
	f.Add("=;;=")
	f.Fuzz(func(t *testing.T, s string) {
		_, err := parseArgs(s)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error = %#v, want a *types.Error with code 7", err)
			}
		}
	})
}

func TestCNIError(t *testing.T) {
	tests := []struct {
		err  error
		want uint
	}{
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeInvalid}), types.ErrInvalidNetworkConfig},
		{fmt.Errorf("allocate: %w", &api.Error{Code: api.CodeTryAgain, Message: "RequestLimitExceeded"}), types.ErrTryAgainLater},
		{fmt.Errorf("allocate: %w: connect", api.ErrUnavailable), types.ErrTryAgainLater},
		{&api.Error{Code: api.CodeCardTaken}, ErrCardTaken},
		{&api.Error{Code: api.CodeInterfaceTaken}, ErrInterfaceTaken},
		{&api.Error{Code: api.CodeNotManaged}, ErrCardNotManaged},
		{&api.Error{Code: api.CodeInternal}, types.ErrInternal},
		{errors.New("netlink: boom"), types.ErrInternal},
		{fmt.Errorf("ctx: %w", types.NewError(types.ErrInvalidNetNS, "host netns", "")), types.ErrInvalidNetNS},
	}
	for _, tt := range tests {
		got := cniError(tt.err)
		var e *types.Error
		if !errors.As(got, &e) || e.Code != tt.want || e.Msg != tt.err.Error() {
			t.Errorf("cniError(%v) = %#v, want code %d with the whole message", tt.err, got, tt.want)
		}
	}
	if cniError(nil) != nil {
		t.Error("cniError(nil) != nil")
	}
}

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

// fakeReleaser records releases and fails with err.
type fakeReleaser struct {
	got []api.ReleaseRequest
	err error
}

func (f *fakeReleaser) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	if f.err != nil {
		return api.ReleaseResponse{}, f.err
	}
	f.got = append(f.got, req)
	return api.ReleaseResponse{Released: true}, nil
}

func TestJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pending")
	ctx := context.Background()
	if n, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, &fakeReleaser{}); n != 0 || err != nil {
		t.Fatalf("replay of a missing dir = %d, %v", n, err)
	}
	for _, rec := range []journalRecord{{ContainerID: "a", IfName: "net1"}, {ContainerID: "a", IfName: "net1"}, {ContainerID: "b", IfName: "net2", Card: 2}} {
		if err := addJournal(dir, rec); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("journal dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	if !hasJournal(dir, "a", "net1") || hasJournal(dir, "a", "net2") {
		t.Error("hasJournal wrong")
	}
	// The agent still down: nothing removed.
	down := &fakeReleaser{err: fmt.Errorf("release: %w", api.ErrUnavailable)}
	if _, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, down); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("replay with the agent down = %v, want ErrUnavailable", err)
	}
	// An unreadable record stays and is reported; the others are applied and removed.
	if err := os.WriteFile(filepath.Join(dir, "junk.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := &fakeReleaser{}
	n, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, up)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "junk.json") {
		t.Fatalf("replay = %d, %v; want 2 and an error about junk.json", n, err)
	}
	if len(up.got) != 2 || hasJournal(dir, "a", "net1") || hasJournal(dir, "b", "net2") {
		t.Errorf("released %v; records left: a %t b %t", up.got, hasJournal(dir, "a", "net1"), hasJournal(dir, "b", "net2"))
	}
	// An invalid record can never succeed: dropped.
	if err := os.Remove(filepath.Join(dir, "junk.json")); err != nil {
		t.Fatal(err)
	}
	if err := addJournal(dir, journalRecord{ContainerID: "c", IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, &fakeReleaser{err: &api.Error{Code: api.CodeInvalid}}); err == nil {
		t.Error("replay of an invalid record reported nothing")
	}
	if hasJournal(dir, "c", "net1") {
		t.Error("invalid record kept")
	}
	// A record for another agent's socket is that agent's to replay.
	if err := addJournal(dir, journalRecord{ContainerID: "d", IfName: "net1", AgentSocket: "/run/other/agent.sock"}); err != nil {
		t.Fatal(err)
	}
	if n, err := ReplayJournal(ctx, dir, api.DefaultSocketPath, &fakeReleaser{}); n != 0 || err != nil || !hasJournal(dir, "d", "net1") {
		t.Fatalf("replay for the default socket = %d, %v, record left %t; want 0, nil and the other socket's record kept", n, err, hasJournal(dir, "d", "net1"))
	}
	other := &fakeReleaser{}
	if n, err := ReplayJournal(ctx, dir, "/run/other/agent.sock", other); n != 1 || err != nil || hasJournal(dir, "d", "net1") {
		t.Fatalf("replay for the other socket = %d, %v; want 1 and the record gone", n, err)
	}
}
