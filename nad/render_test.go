package nad

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/server"
	"github.com/multinic/multinic/netconf"
	"github.com/multinic/multinic/plugin"
)

func TestRenderExample(t *testing.T) {
	nads, err := Render([]int{3}, Options{Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive}})
	if err != nil {
		t.Fatal(err)
	}
	if len(nads) != 2 {
		t.Fatalf("rendered %d NADs, want 2", len(nads))
	}
	n := nads[0]
	if n.Name != "multinic-card-3" || n.Namespace != "kube-system" {
		t.Errorf("name %s/%s, want kube-system/multinic-card-3", n.Namespace, n.Name)
	}
	if n.APIVersion != "k8s.cni.cncf.io/v1" || n.Kind != "NetworkAttachmentDefinition" {
		t.Errorf("type %s %s", n.APIVersion, n.Kind)
	}
	wantCfg := `{"cniVersion":"1.1.0","name":"multinic-card-3","type":"multinic","networkCard":3,"mode":"ipvlan"}`
	if n.Spec.Config != wantCfg {
		t.Errorf("config\n got %s\nwant %s", n.Spec.Config, wantCfg)
	}
	if got := n.Annotations[ResourceNameAnnotation]; got != "multinic.io/card-3" {
		t.Errorf("resourceName %q, want multinic.io/card-3", got)
	}
	wantLabels := map[string]string{ManagedByLabel: ManagedByValue, CardLabel: "3", ModeLabel: "ipvlan"}
	if !reflect.DeepEqual(n.Labels, wantLabels) {
		t.Errorf("labels %v, want %v", n.Labels, wantLabels)
	}
	x := nads[1]
	if x.Name != "multinic-card-3-exclusive" || x.Labels[ModeLabel] != "exclusive" ||
		x.Annotations[ResourceNameAnnotation] != "multinic.io/card-3" ||
		x.Spec.Config != `{"cniVersion":"1.1.0","name":"multinic-card-3-exclusive","type":"multinic","networkCard":3,"mode":"exclusive"}` {
		t.Errorf("exclusive NAD %+v", x)
	}
}

// TestRenderFamily: each card's NAD carries the card's family; an ipv4 card's none, so that plugins older
// than the key still accept it.
func TestRenderFamily(t *testing.T) {
	o := Options{Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive},
		Families: map[int]string{2: netconf.FamilyDual, 3: netconf.FamilyIPv6, 4: netconf.FamilyIPv4}}
	nads, err := Render([]int{1, 2, 3, 4}, o)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"multinic-card-1": "", "multinic-card-1-exclusive": "",
		"multinic-card-2": netconf.FamilyDual, "multinic-card-2-exclusive": netconf.FamilyDual,
		"multinic-card-3": netconf.FamilyIPv6, "multinic-card-3-exclusive": netconf.FamilyIPv6,
		"multinic-card-4": "", "multinic-card-4-exclusive": "",
	}
	if len(nads) != len(want) {
		t.Fatalf("rendered %d NADs, want %d", len(nads), len(want))
	}
	for _, n := range nads {
		var nc netconf.NetConf
		if err := json.Unmarshal([]byte(n.Spec.Config), &nc); err != nil {
			t.Fatal(err)
		}
		if nc.Family != want[n.Name] || (want[n.Name] == "") == strings.Contains(n.Spec.Config, `"family"`) {
			t.Errorf("%s: family %q in %s, want %q", n.Name, nc.Family, n.Spec.Config, want[n.Name])
		}
		c, err := netconf.Load([]byte(n.Spec.Config))
		if err != nil || c.Family != api.NormalFamily(want[n.Name]) {
			t.Errorf("%s: Load = %+v, %v", n.Name, c, err)
		}
	}
}

// TestRenderDeterministic: the same input, in any order, renders byte-identical objects.
func TestRenderDeterministic(t *testing.T) {
	o := Options{Modes: []string{netconf.ModeExclusive, netconf.ModeIPVlan}, IPVlanMode: "l3", MTU: 8000, AgentSocket: "/run/x/agent.sock"}
	a, err := Render([]int{7, 1, 3, 1}, o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Render([]int{1, 3, 7}, o)
	if err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Fatalf("renders differ:\n%s\n%s", ja, jb)
	}
	var names []string
	for _, n := range a {
		names = append(names, n.Name)
	}
	want := []string{"multinic-card-1", "multinic-card-1-exclusive", "multinic-card-3", "multinic-card-3-exclusive",
		"multinic-card-7", "multinic-card-7-exclusive"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	// ipvlanMode only on ipvlan NADs (the plugin refuses it with exclusive).
	if !strings.Contains(a[0].Spec.Config, `"ipvlanMode":"l3"`) || strings.Contains(a[1].Spec.Config, "ipvlanMode") {
		t.Errorf("ipvlanMode placement: %s / %s", a[0].Spec.Config, a[1].Spec.Config)
	}
	// The default socket is left out, so that agents with and without --socket spelled out agree.
	d1, _ := NetConfig(1, netconf.ModeIPVlan, Options{AgentSocket: api.DefaultSocketPath})
	d2, _ := NetConfig(1, netconf.ModeIPVlan, Options{})
	if d1 != d2 || strings.Contains(d1, "agentSocket") {
		t.Errorf("default socket rendered: %s vs %s", d1, d2)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"defaults", Options{}, ""},
		{"bad namespace", Options{Namespace: "Kube_System"}, "nad namespace"},
		{"bad mode", Options{Modes: []string{"macvlan"}}, `nad mode "macvlan" invalid`},
		{"mode twice", Options{Modes: []string{"ipvlan", "ipvlan"}}, "given twice"},
		{"prefix without domain", Options{ResourcePrefix: "card-"}, "domain-qualified"},
		{"reserved domain", Options{ResourcePrefix: "kubernetes.io/card-"}, "reserved"},
		{"reserved subdomain", Options{ResourcePrefix: "foo.k8s.io/card-"}, "reserved"},
		{"bad prefix chars", Options{ResourcePrefix: "multinic.io/card_/"}, "invalid"},
		{"other prefix", Options{ResourcePrefix: "example.com/nic"}, ""},
		{"ipvlan mode", Options{IPVlanMode: "l4"}, "ipvlan mode"},
		{"mtu", Options{MTU: 10000}, "mtu 10000 invalid"},
		{"family", Options{Families: map[int]string{1: netconf.FamilyDual}}, ""},
		{"bad family", Options{Families: map[int]string{1: "ipv5"}}, `family of card 1 "ipv5" invalid`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if _, rerr := Render([]int{1}, tc.o); (rerr == nil) != (err == nil) {
				t.Errorf("Render error %v disagrees with Validate %v", rerr, err)
			}
		})
	}
	if _, err := Render([]int{256}, Options{}); err == nil {
		t.Error("card 256 rendered")
	}
}

func TestParseModes(t *testing.T) {
	for in, want := range map[string][]string{
		"ipvlan": {"ipvlan"}, "exclusive": {"exclusive"}, "both": {"ipvlan", "exclusive"},
	} {
		got, err := ParseModes(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseModes(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseModes("all"); err == nil {
		t.Error(`ParseModes("all") accepted`)
	}
}

// statusAgent answers STATUS for the plugin and records the card it was asked about.
type statusAgent struct {
	mu    sync.Mutex
	cards []int
}

func (s *statusAgent) Allocate(context.Context, api.AllocateRequest) (api.AllocateResponse, error) {
	return api.AllocateResponse{}, errors.New("not in this test")
}
func (s *statusAgent) Release(context.Context, api.ReleaseRequest) (api.ReleaseResponse, error) {
	return api.ReleaseResponse{}, nil
}
func (s *statusAgent) List(context.Context) ([]api.Allocation, error) { return nil, nil }
func (s *statusAgent) Status(_ context.Context, card int) (api.Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cards = append(s.cards, card)
	return api.Status{Card: card, Ready: true}, nil
}

// TestConfigAcceptedByPlugin runs the plugin's own STATUS verb (its real parser, netconf.Load, then a call to
// the agent) on every rendered configuration: it must parse (no code 7) and ask the agent about the card
// the NAD is for. The configurations also decode into netconf.NetConf with the right card and mode.
func TestConfigAcceptedByPlugin(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := server.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	backend := &statusAgent{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.Serve(ctx, l, backend, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	for _, o := range []Options{
		{AgentSocket: sock, Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive}},
		{AgentSocket: sock, Modes: []string{netconf.ModeIPVlan}, IPVlanMode: "l3s", MTU: 1500},
		{AgentSocket: sock, Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive},
			Families: map[int]string{1: netconf.FamilyDual, 31: netconf.FamilyIPv6}},
	} {
		nads, err := Render([]int{0, 1, 31}, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nads {
			var nc netconf.NetConf
			if err := json.Unmarshal([]byte(n.Spec.Config), &nc); err != nil {
				t.Fatalf("%s: %v", n.Name, err)
			}
			if nc.Type != "multinic" || nc.CNIVersion != "1.1.0" || nc.NetworkCard == nil ||
				n.Labels[CardLabel] != strconv.Itoa(*nc.NetworkCard) || nc.Mode != n.Labels[ModeLabel] || nc.Name != n.Name {
				t.Errorf("%s: decoded %+v", n.Name, nc)
			}
			backend.mu.Lock()
			before := len(backend.cards)
			backend.mu.Unlock()
			p := plugin.New()
			p.JournalDir = t.TempDir()
			p.Logf = t.Logf
			err := p.Status(&skel.CmdArgs{StdinData: []byte(n.Spec.Config)})
			if err != nil {
				t.Fatalf("%s: plugin STATUS on %s: %v", n.Name, n.Spec.Config, err)
			}
			backend.mu.Lock()
			asked := backend.cards[before:]
			backend.mu.Unlock()
			if len(asked) != 1 || strconv.Itoa(asked[0]) != n.Labels[CardLabel] {
				t.Errorf("%s: plugin asked the agent about cards %v", n.Name, asked)
			}
		}
	}

	// With the default socket the parser still accepts the config: whatever STATUS says, it is not 7.
	nads, _ := Render([]int{2}, Options{Modes: []string{netconf.ModeIPVlan, netconf.ModeExclusive}})
	for _, n := range nads {
		p := plugin.New()
		p.JournalDir = t.TempDir()
		p.Logf = t.Logf
		var te *types.Error
		if err := p.Status(&skel.CmdArgs{StdinData: []byte(n.Spec.Config)}); errors.As(err, &te) && te.Code == types.ErrInvalidNetworkConfig {
			t.Errorf("%s: plugin refused the config: %v", n.Name, err)
		}
	}
	// And the parser does refuse a broken one, so the check above can fail.
	p := plugin.New()
	p.JournalDir = t.TempDir()
	var te *types.Error
	if err := p.Status(&skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.1.0","type":"multinic","mode":"ipvlan"}`)}); !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("config without networkCard: %v, want code 7", err)
	}
}
