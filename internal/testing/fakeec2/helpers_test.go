package fakeec2

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// TestMain pins the fake's own tests to no lag: they check EC2's semantics exactly, and TestLag and
// TestLagEnv check the lag itself. MULTINIC_FAKE_EC2_LAG is for the fake's users (make test-lag).
func TestMain(m *testing.M) {
	os.Unsetenv(LagEnv)
	os.Exit(m.Run())
}

// fixture is a running fake with two real SDK clients: one with the standard
// retryer and one that returns the first answer (to read error codes).
type fixture struct {
	srv     *Server
	url     string
	ec2     *ec2.Client
	noRetry *ec2.Client
	inst    string // first instance ID
}

func start(t *testing.T, cfg Config, opts ...Option) *fixture {
	t.Helper()
	srv, u, err := Start(cfg, opts...)
	if err != nil {
		t.Fatalf("start fake: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close fake: %v", err)
		}
	})
	return &fixture{
		srv:     srv,
		url:     u,
		ec2:     srv.Client(),
		noRetry: srv.Client(func(o *ec2.Options) { o.Retryer = aws.NopRetryer{} }),
		inst:    srv.DefaultInstanceID(),
	}
}

// perCard is a config with one subnet per card of typ.
func perCard(t *testing.T, typ string) Config {
	t.Helper()
	it, ok := LookupInstanceType(typ)
	if !ok {
		t.Fatalf("no type %s", typ)
	}
	subnets, err := SubnetsPerCard(it.NetworkCards)
	if err != nil {
		t.Fatal(err)
	}
	return Config{Subnets: subnets, Instances: []InstanceConfig{{ID: "i-0123456789abcdef0", Type: typ}}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// apiErr returns the EC2 error code and HTTP status of err, failing the test if err is not one.
func apiErr(t *testing.T, err error) (string, int) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want an EC2 API error, got %v", err)
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	return ae.ErrorCode(), status
}

func wantCode(t *testing.T, err error, code string, status int) {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s, got success", code)
	}
	gotCode, gotStatus := apiErr(t, err)
	if gotCode != code || (status != 0 && gotStatus != status) {
		t.Fatalf("want %s (%d), got %s (%d): %v", code, status, gotCode, gotStatus, err)
	}
}

func (f *fixture) createENI(t *testing.T, subnet string, mod ...func(*ec2.CreateNetworkInterfaceInput)) types.NetworkInterface {
	t.Helper()
	in := &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)}
	for _, m := range mod {
		m(in)
	}
	out, err := f.ec2.CreateNetworkInterface(ctx(t), in)
	if err != nil {
		t.Fatalf("create ENI in %s: %v", subnet, err)
	}
	return *out.NetworkInterface
}

func (f *fixture) attach(t *testing.T, eni string, card, device int32) string {
	t.Helper()
	out, err := f.ec2.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(f.inst),
		DeviceIndex: aws.Int32(device), NetworkCardIndex: aws.Int32(card),
	})
	if err != nil {
		t.Fatalf("attach %s card %d device %d: %v", eni, card, device, err)
	}
	if aws.ToInt32(out.NetworkCardIndex) != card {
		t.Fatalf("attach %s: networkCardIndex %d, want %d", eni, aws.ToInt32(out.NetworkCardIndex), card)
	}
	return aws.ToString(out.AttachmentId)
}

func (f *fixture) describeENI(t *testing.T, id string) types.NetworkInterface {
	t.Helper()
	out, err := f.ec2.DescribeNetworkInterfaces(ctx(t), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if err != nil {
		t.Fatalf("describe %s: %v", id, err)
	}
	if len(out.NetworkInterfaces) != 1 {
		t.Fatalf("describe %s: %d results", id, len(out.NetworkInterfaces))
	}
	return out.NetworkInterfaces[0]
}

// checkInvariants fails if any address has two owners, sits outside its subnet or on a
// reserved address, or if a subnet's counters disagree with the ENIs.
func checkInvariants(t *testing.T, st State) {
	t.Helper()
	owner := map[netip.Addr]string{}
	used := map[string]int{}
	subnets := map[string]netip.Prefix{}
	for _, sn := range st.Subnets {
		subnets[sn.ID] = netip.MustParsePrefix(sn.CIDR)
	}
	claim := func(e ENIState, a netip.Addr) {
		p := subnets[e.SubnetID]
		if !p.Contains(a) {
			t.Errorf("%s: address %s outside subnet %s", e.ID, a, p)
		}
		first := p.Addr()
		off := addrDiff(first, a)
		if off < 4 || off == 1<<(32-p.Bits())-1 {
			t.Errorf("%s: reserved address %s of %s given out", e.ID, a, p)
		}
		if o, ok := owner[a]; ok {
			t.Errorf("address %s owned by %s and %s", a, o, e.ID)
		}
		owner[a] = e.ID
		used[e.SubnetID]++
	}
	for _, e := range st.ENIs {
		claim(e, netip.MustParseAddr(e.PrimaryIP))
		for _, s := range e.SecondaryIPs {
			claim(e, netip.MustParseAddr(s))
		}
		for _, s := range e.Prefixes {
			p := netip.MustParsePrefix(s)
			if p.Bits() != 28 || p.Masked() != p {
				t.Errorf("%s: prefix %s is not an aligned /28", e.ID, p)
			}
			a := p.Addr()
			for range 16 {
				claim(e, a)
				a = a.Next()
			}
		}
	}
	for _, sn := range st.Subnets {
		p := subnets[sn.ID]
		usable := 1<<(32-p.Bits()) - 5
		if sn.Used != used[sn.ID] || sn.Available != usable-used[sn.ID] {
			t.Errorf("subnet %s: used %d available %d, ENIs hold %d of %d", sn.ID, sn.Used, sn.Available, used[sn.ID], usable)
		}
	}
	checkInvariants6(t, st)
}

// checkInvariants6 fails if an IPv6 address or /80 has two owners, lies outside its subnet's IPv6 block,
// holds a reserved address (the first four and the last), or if an address lies inside another's /80.
func checkInvariants6(t *testing.T, st State) {
	t.Helper()
	cidr6 := map[string]netip.Prefix{}
	for _, sn := range st.Subnets {
		if sn.IPv6CIDR != "" {
			cidr6[sn.ID] = netip.MustParsePrefix(sn.IPv6CIDR)
		}
	}
	reserved := func(p netip.Prefix, a netip.Addr) bool {
		first, last := p.Addr(), lastAddr(p)
		return a == first || a == first.Next() || a == first.Next().Next() || a == first.Next().Next().Next() || a == last
	}
	addrOwner := map[netip.Addr]string{}
	prefixOwner := map[netip.Prefix]string{}
	for _, e := range st.ENIs {
		p, ok := cidr6[e.SubnetID]
		if !ok && len(e.IPv6Addresses)+len(e.IPv6Prefixes) > 0 {
			t.Errorf("%s: IPv6 in subnet %s that has no IPv6 block", e.ID, e.SubnetID)
		}
		for _, s := range e.IPv6Addresses {
			a := netip.MustParseAddr(s)
			if !p.Contains(a) || reserved(p, a) {
				t.Errorf("%s: IPv6 address %s outside %s or reserved", e.ID, a, p)
			}
			if o, dup := addrOwner[a]; dup {
				t.Errorf("IPv6 address %s owned by %s and %s", a, o, e.ID)
			}
			addrOwner[a] = e.ID
		}
		for _, s := range e.IPv6Prefixes {
			x := netip.MustParsePrefix(s)
			if x.Bits() != 80 || x.Masked() != x || !p.Contains(x.Addr()) || reserved(p, x.Addr()) || reserved(p, lastAddr(x)) {
				t.Errorf("%s: IPv6 prefix %s is not a usable /80 of %s", e.ID, x, p)
			}
			if o, dup := prefixOwner[x]; dup {
				t.Errorf("IPv6 prefix %s owned by %s and %s", x, o, e.ID)
			}
			prefixOwner[x] = e.ID
		}
	}
	for a, o := range addrOwner {
		if po, in := prefixOwner[netip.PrefixFrom(a, 80).Masked()]; in {
			t.Errorf("IPv6 address %s of %s lies in the /80 of %s", a, o, po)
		}
	}
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom16(b)
}

func addrDiff(a, b netip.Addr) int {
	x, y := a.As4(), b.As4()
	return (int(y[0])<<24 | int(y[1])<<16 | int(y[2])<<8 | int(y[3])) - (int(x[0])<<24 | int(x[1])<<16 | int(x[2])<<8 | int(x[3]))
}

var macRE = regexp.MustCompile(`^02(:[0-9a-f]{2}){5}$`)
