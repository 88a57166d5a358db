package fabric

import (
	"net"
	"strings"
	"testing"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

func TestNames(t *testing.T) {
	mac, _ := net.ParseMAC("02:4F:1a:00:00:05")
	if got, want := FabricLinkName(mac), "v024f1a000005"; got != want {
		t.Errorf("FabricLinkName = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		card, dev int
		want      string
	}{{0, 0, "ens0d0"}, {3, 1, "ens3d1"}, {31, 14, "ens31d14"}} {
		if got := NodeLinkName(tc.card, tc.dev); got != tc.want {
			t.Errorf("NodeLinkName(%d, %d) = %q, want %q", tc.card, tc.dev, got, tc.want)
		}
	}
	if got := FabricNetNSName("mn1"); got != "mn1-vpc" {
		t.Errorf("FabricNetNSName = %q", got)
	}
	if got, want := IfbLinkName(mac), "i024f1a000005"; got != want {
		t.Errorf("IfbLinkName = %q, want %q", got, want)
	}
	if n := len(FabricLinkName(mac)); n > maxIfNameLen {
		t.Errorf("fabric link name has %d characters, more than %d", n, maxIfNameLen)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{Prefix: "mn-1", Nodes: map[string]string{"i-1": "mn-1-n1"}}, ""},
		{"empty prefix", Config{}, "prefix"},
		{"slash in prefix", Config{Prefix: "a/b"}, "invalid"},
		{"long prefix", Config{Prefix: strings.Repeat("a", 33)}, "1-32"},
		{"bad node netns", Config{Prefix: "mn", Nodes: map[string]string{"i-1": "../x"}}, "node i-1"},
		{"node is fabric", Config{Prefix: "mn", Nodes: map[string]string{"i-1": "mn-vpc"}}, "fabric's own"},
		{"shared netns", Config{Prefix: "mn", Nodes: map[string]string{"i-1": "n", "i-2": "n"}}, "already used"},
		{"bad mtu", Config{Prefix: "mn", MTU: 10}, "mtu 10 invalid"},
		{"bad card", Config{Prefix: "mn", CardRates: map[int]uint64{-1: 1}}, "card -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if tc.wantErr == "" && err != nil {
				t.Fatalf("validate: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("validate = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRateFor(t *testing.T) {
	c := Config{RatePerCard: 100, CardRates: map[int]uint64{1: 50, 2: 0}}
	for card, want := range map[int]uint64{0: 100, 1: 50, 2: 0, 3: 100} {
		if got := c.rateFor(card); got != want {
			t.Errorf("rateFor(%d) = %d, want %d", card, got, want)
		}
	}
}

func TestRateParams(t *testing.T) {
	p := rateParams(20_000_000)
	if p.rate != 2_500_000 {
		t.Errorf("rate %d, want 2500000 bytes/s", p.rate)
	}
	if p.burst < minBurst || p.limit <= p.burst {
		t.Errorf("burst %d limit %d: want burst >= %d and limit > burst", p.burst, p.limit, minBurst)
	}
	if p := rateParams(400_000_000_000); p.rate != 50_000_000_000 || p.burst != 200_000_000 {
		t.Errorf("400 Gbit/s: rate %d burst %d, want 50e9 B/s and 4 ms burst", p.rate, p.burst)
	}
}

func TestParseAttachment(t *testing.T) {
	base := fakeec2.Attachment{
		InstanceID: "i-1", ENIID: "eni-1", MAC: "02:00:00:00:00:01", SubnetID: "subnet-a",
		SubnetCIDR: "10.1.0.0/24", PrimaryIP: "10.1.0.5", Primary: true,
	}
	p, err := parseAttachment(base)
	if err != nil {
		t.Fatal(err)
	}
	if p.addr.String() != "10.1.0.5/24" || p.mac.String() != base.MAC {
		t.Errorf("parsed %v %v", p.addr, p.mac)
	}
	for _, tc := range []struct {
		name    string
		mod     func(*fakeec2.Attachment)
		wantErr string
	}{
		{"bad mac", func(a *fakeec2.Attachment) { a.MAC = "zz" }, "mac"},
		{"multicast mac", func(a *fakeec2.Attachment) { a.MAC = "01:00:00:00:00:01" }, "multicast"},
		{"no subnet", func(a *fakeec2.Attachment) { a.SubnetID = "" }, "subnet id"},
		{"ip outside", func(a *fakeec2.Attachment) { a.PrimaryIP = "10.2.0.5" }, "must be in 10.1.0.0/24"},
		{"bad cidr", func(a *fakeec2.Attachment) { a.SubnetCIDR = "x" }, "subnet cidr"},
		{"negative card", func(a *fakeec2.Attachment) { a.NetworkCard = -1 }, "card -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := base
			tc.mod(&a)
			if _, err := parseAttachment(a); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("parseAttachment = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
	// Non-primary ENIs get no address, so their IP is not checked.
	a := base
	a.Primary, a.PrimaryIP = false, ""
	if p, err := parseAttachment(a); err != nil || p.addr != nil {
		t.Fatalf("non-primary: %v, addr %v", err, p.addr)
	}
}
