package dra

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	"github.com/multinic/multinic/ipam/api"
)

// fakeAllocations keeps allocations by (container, interface), one per card per container, as the
// allocator does; fail makes Allocate on that card fail.
type fakeAllocations struct {
	mu   sync.Mutex
	als  map[[2]string]api.Allocation
	next int
	fail map[int]error
}

func newFakeAllocations() *fakeAllocations {
	return &fakeAllocations{als: map[[2]string]api.Allocation{}, fail: map[int]error{}}
}

func (f *fakeAllocations) Allocate(_ context.Context, req api.AllocateRequest) (api.AllocateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[req.Card]; err != nil {
		return api.AllocateResponse{}, err
	}
	k := [2]string{req.ContainerID, req.IfName}
	if al, ok := f.als[k]; ok {
		return response(al), nil
	}
	for _, al := range f.als {
		if al.ContainerID == req.ContainerID && al.Card == req.Card {
			return api.AllocateResponse{}, api.ErrCardTaken
		}
	}
	f.next++
	al := api.Allocation{AllocateRequest: req, Address: netip.AddrFrom4([4]byte{10, 0, byte(req.Card), byte(f.next)})}
	f.als[k] = al
	return response(al), nil
}

// response answers al as the agent would for its family: no IPv4 address for ipv6, both for dual.
func response(al api.Allocation) api.AllocateResponse {
	r := api.AllocateResponse{PrefixLen: 24, Exclusive: al.Exclusive, MAC: fmt.Sprintf("02:00:00:00:00:%02x", al.Card)}
	if api.WantsIPv4(al.Family) {
		r.Address = al.Address
	}
	if api.WantsIPv6(al.Family) {
		r.IPv6 = &api.IPv6Lease{Address: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(al.Card)}), PrefixLen: 64}
	}
	return r
}

func (f *fakeAllocations) Release(_ context.Context, req api.ReleaseRequest) (api.ReleaseResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := [2]string{req.ContainerID, req.IfName}
	_, ok := f.als[k]
	delete(f.als, k)
	return api.ReleaseResponse{Released: ok}, nil
}

func (f *fakeAllocations) List(context.Context) ([]api.Allocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Allocation
	for _, al := range f.als {
		out = append(out, al)
	}
	return out, nil
}

func (f *fakeAllocations) of(uid types.UID) map[string]api.Allocation {
	out := map[string]api.Allocation{}
	als, _ := f.List(context.Background())
	for _, al := range als {
		if al.ContainerID == ClaimContainerID(uid) {
			out[al.IfName] = al
		}
	}
	return out
}

func claim(uid string, devices ...string) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "c-" + uid, UID: types.UID(uid)},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}}}
	for i, d := range devices {
		driver, pool, dev := DriverName, "node1", d
		if a, b, ok := strings.Cut(d, "/"); ok { // driver/device or pool:device
			driver, dev = a, b
		}
		if a, b, ok := strings.Cut(dev, ":"); ok {
			pool, dev = a, b
		}
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: fmt.Sprintf("r%d", i), Driver: driver, Pool: pool, Device: dev})
	}
	return c
}

func newTestPlugin(f *fakeAllocations) *Plugin {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &Plugin{cfg: PluginConfig{NodeName: "node1", Allocations: f, Statuses: NewStatuses(nil, log)}, log: log}
}

// withKube gives p (and its claims' status writer, not running) the API server behind kube.
func withKube(p *Plugin, kube kubernetes.Interface) {
	p.cfg.Kube, p.cfg.Statuses = kube, NewStatuses(kube, p.log)
}

func prepareOne(t *testing.T, p *Plugin, c *resourceapi.ResourceClaim) kubeletplugin.PrepareResult {
	t.Helper()
	res, err := p.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{c})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := res[c.UID]
	if !ok || len(res) != 1 {
		t.Fatalf("results %v: want one for %s", res, c.UID)
	}
	return r
}

func TestPrepareUnprepare(t *testing.T) {
	f := newFakeAllocations()
	p := newTestPlugin(f)
	c := claim("u1", "card-1", "card-3-exclusive", "gpu.example.com/gpu-0")
	r := prepareOne(t, p, c)
	if r.Err != nil || len(r.Devices) != 2 || r.Devices[0].DeviceName != "card-1" || r.Devices[1].DeviceName != "card-3-exclusive" ||
		r.Devices[0].Requests[0] != "r0" || r.Devices[0].PoolName != "node1" {
		t.Fatalf("prepare: %+v", r)
	}
	got := f.of("u1")
	if len(got) != 2 || got["card1"].Card != 1 || got["card1"].Exclusive || !got["card3"].Exclusive || got["card3"].Network != Network {
		t.Fatalf("allocations %+v", got)
	}
	// Again (the kubelet restarted): the same allocations, nothing new.
	if r2 := prepareOne(t, p, c); r2.Err != nil || len(f.of("u1")) != 2 || f.of("u1")["card1"].Address != got["card1"].Address {
		t.Fatalf("second prepare %+v, allocations %+v", r2, f.of("u1"))
	}
	res, err := p.UnprepareResourceClaims(context.Background(), []kubeletplugin.NamespacedObject{
		{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "c-u1"}, UID: "u1"},
		{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "never"}, UID: "u9"},
	})
	if err != nil || len(res) != 2 || res["u1"] != nil || res["u9"] != nil || len(f.of("u1")) != 0 {
		t.Fatalf("unprepare: %v %v, left %+v", res, err, f.of("u1"))
	}
}

func TestPrepareRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before []*resourceapi.ResourceClaim // prepared first
		claim  *resourceapi.ResourceClaim
		fail   map[int]error
		want   string
		keep   int // allocations of the claim left after the failure
	}{
		{name: "same card twice", claim: claim("u1", "card-1", "card-1-exclusive"), want: "both on card 1"},
		{name: "other pool", claim: claim("u1", "node2:card-1"), want: "not this node's"},
		{name: "not a card", claim: claim("u1", "card-x"), want: "not a multinic.io card"},
		{name: "exclusive held by another claim", before: []*resourceapi.ResourceClaim{claim("u0", "card-2-exclusive")},
			claim: claim("u1", "card-2-exclusive"), want: "held by claim u0"},
		{name: "second card fails: the first is given back", claim: claim("u1", "card-1", "card-2"),
			fail: map[int]error{2: errors.New("subnet full")}, want: "subnet full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAllocations()
			p := newTestPlugin(f)
			for _, b := range tc.before {
				if r := prepareOne(t, p, b); r.Err != nil {
					t.Fatal(r.Err)
				}
			}
			f.fail = tc.fail
			r := prepareOne(t, p, tc.claim)
			if r.Err == nil || !strings.Contains(r.Err.Error(), tc.want) {
				t.Fatalf("prepare error %v, want one with %q", r.Err, tc.want)
			}
			if n := len(f.of(tc.claim.UID)); n != tc.keep {
				t.Errorf("%d allocations left for the refused claim, want %d", n, tc.keep)
			}
		})
	}
}

// TestPrepareFailureKeepsEarlierPrepare: a failing re-prepare never gives back what an earlier,
// successful prepare reserved (a running pod may use it).
func TestPrepareFailureKeepsEarlierPrepare(t *testing.T) {
	f := newFakeAllocations()
	p := newTestPlugin(f)
	if r := prepareOne(t, p, claim("u1", "card-1")); r.Err != nil {
		t.Fatal(r.Err)
	}
	f.fail = map[int]error{2: errors.New("boom")}
	if r := prepareOne(t, p, claim("u1", "card-1", "card-2")); r.Err == nil {
		t.Fatal("prepare with a failing card succeeded")
	}
	if got := f.of("u1"); len(got) != 1 || got["card1"].Card != 1 {
		t.Errorf("allocations after the failed re-prepare %+v, want card 1's kept", got)
	}
}

func TestParseDeviceName(t *testing.T) {
	for name, want := range map[string]int{"card-0": 0, "card-31": 31, "card-7-exclusive": 7, "card-01": -1, "card--1": -1,
		"card-": -1, "card-1-exclusivex": -1, "gpu-1": -1, "card-1-shared": -1} {
		got, ok := ParseDeviceName(name)
		if ok != (want >= 0) || (ok && got != want) {
			t.Errorf("ParseDeviceName(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
}

// TestPrepareStatus: a prepared claim's status.devices carries each device's addresses and MAC, written by
// server-side apply beside another driver's entry, which stays; unprepare takes only ours away.
func TestPrepareStatus(t *testing.T) {
	c := claim("u1", "card-1", "card-2-exclusive")
	other := resourceapi.AllocatedDeviceStatus{Driver: "gpu.example.com", Pool: "node1", Device: "gpu-0"}
	c.Status.Devices = []resourceapi.AllocatedDeviceStatus{other}
	kube := kubefake.NewClientset(c)
	p := newTestPlugin(newFakeAllocations())
	withKube(p, kube)
	if r := prepareOne(t, p, c); r.Err != nil {
		t.Fatal(r.Err)
	}
	got, err := kube.ResourceV1().ResourceClaims("ns").Get(context.Background(), c.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byDev := map[string]resourceapi.AllocatedDeviceStatus{}
	for _, d := range got.Status.Devices {
		byDev[d.Device] = d
	}
	if _, ok := byDev["gpu-0"]; !ok {
		t.Errorf("the other driver's entry is gone: %+v", got.Status.Devices)
	}
	for dev, card := range map[string]int{"card-1": 1, "card-2-exclusive": 2} {
		d, ok := byDev[dev]
		if !ok || d.Driver != DriverName || d.NetworkData == nil || len(d.NetworkData.IPs) != 1 ||
			!strings.HasSuffix(d.NetworkData.IPs[0], "/24") || d.NetworkData.HardwareAddress != fmt.Sprintf("02:00:00:00:00:%02x", card) {
			t.Errorf("status of %s: %+v", dev, d)
		}
	}
	if _, err := p.UnprepareResourceClaims(context.Background(), []kubeletplugin.NamespacedObject{
		{NamespacedName: types.NamespacedName{Namespace: "ns", Name: c.Name}, UID: c.UID}}); err != nil {
		t.Fatal(err)
	}
	got, _ = kube.ResourceV1().ResourceClaims("ns").Get(context.Background(), c.Name, metav1.GetOptions{})
	if len(got.Status.Devices) != 1 || got.Status.Devices[0].Device != "gpu-0" {
		t.Errorf("status after unprepare %+v, want the other driver's entry only", got.Status.Devices)
	}
}

// TestPrepareFamilies: a claim's allocation asks for the family its card serves (as the card's NAD would;
// the agent refuses any other), and its status lists exactly that family's addresses: an IPv6 card's
// device has no IPv4 entry.
func TestPrepareFamilies(t *testing.T) {
	c := claim("u1", "card-1", "card-2", "card-3-exclusive")
	kube := kubefake.NewClientset(c)
	f := newFakeAllocations()
	p := newTestPlugin(f)
	withKube(p, kube)
	families := map[int]string{1: api.FamilyIPv4, 2: api.FamilyIPv6, 3: api.FamilyDual}
	p.cfg.Family = func(card int) string { return families[card] }
	if r := prepareOne(t, p, c); r.Err != nil {
		t.Fatal(r.Err)
	}
	for ifName, al := range f.of("u1") {
		if al.Family != families[al.Card] {
			t.Errorf("%s asked for family %q, want the card's %q", ifName, al.Family, families[al.Card])
		}
	}
	got, err := kube.ResourceV1().ResourceClaims("ns").Get(context.Background(), c.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"card-1": {"/24"}, "card-2": {"::2/64"}, "card-3-exclusive": {"/24", "::3/64"}}
	for _, d := range got.Status.Devices {
		w := want[d.Device]
		if d.NetworkData == nil || len(d.NetworkData.IPs) != len(w) {
			t.Errorf("%s: %+v, want IPs ending %v", d.Device, d.NetworkData, w)
			continue
		}
		for i, ip := range d.NetworkData.IPs {
			if _, err := netip.ParsePrefix(ip); err != nil || !strings.HasSuffix(ip, w[i]) {
				t.Errorf("%s: IP %q (%v), want a valid prefix ending %s", d.Device, ip, err, w[i])
			}
		}
		delete(want, d.Device)
	}
	if len(want) != 0 {
		t.Errorf("no status for %v", want)
	}
}

// TestPrepareExclusiveHeldByPod: once a pod's Multus attachment took a claim's exclusive reservation over
// (the allocation is then the pod's, not under dra-<uid>), a second claim allocated the same exclusive device
// (the scheduler and the agent disagree) is refused, naming the card and the pod, and takes nothing; the
// claim the pod took it from prepares again without a second ENI.
func TestPrepareExclusiveHeldByPod(t *testing.T) {
	f := newFakeAllocations()
	p := newTestPlugin(f)
	c0 := claim("u0", "card-1", "card-2-exclusive")
	withKube(p, kubefake.NewClientset(c0))
	if r := prepareOne(t, p, c0); r.Err != nil {
		t.Fatal(r.Err)
	}
	// The pod's ADD of card 2 takes the reservation over, as allocator.Transfer does: same ENI and address,
	// now under the sandbox's container ID, interface and pod.
	k := [2]string{ClaimContainerID("u0"), ClaimIfName(2)}
	al := f.als[k]
	delete(f.als, k)
	al.ContainerID, al.IfName, al.Network, al.ENIID = "sandbox-a", "net1", "card2-exclusive", "eni-2a"
	al.PodRef = api.PodRef{PodNamespace: "ns", PodName: "pod-a", PodUID: "pod-a-uid"}
	f.als[[2]string{al.ContainerID, al.IfName}] = al
	c0.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "pod-a", UID: "pod-a-uid"}}
	before, _ := f.List(context.Background())

	c1 := claim("u1", "card-3", "card-2-exclusive")
	c1.Status.ReservedFor = []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "pod-b", UID: "pod-b-uid"}}
	r := prepareOne(t, p, c1)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "card 2's exclusive ENI eni-2a is held by pod ns/pod-a (uid pod-a-uid), container sandbox-a interface net1") {
		t.Errorf("second claim of card-2-exclusive: error %v, want one naming card 2 and pod-a", r.Err)
	}
	if after, _ := f.List(context.Background()); len(after) != len(before) || len(f.of("u1")) != 0 {
		t.Errorf("the refused claim took something: %d allocations before, %d after (%d of u1)", len(before), len(after), len(f.of("u1")))
	}

	// The claim the pod took card 2 from, prepared again (the kubelet lost its checkpoint): its devices are
	// prepared, card 1 is its own allocation still, card 2 the pod's; no second ENI of card 2.
	r = prepareOne(t, p, c0)
	if r.Err != nil || len(r.Devices) != 2 || r.Devices[1].DeviceName != "card-2-exclusive" {
		t.Fatalf("re-prepare of the claim its pod took card 2 from: %+v", r)
	}
	after, _ := f.List(context.Background())
	if len(after) != len(before) || len(f.of("u0")) != 1 || f.of("u0")["card1"].Card != 1 {
		t.Errorf("re-prepare changed the allocations: %d before, %d after: %+v", len(before), len(after), after)
	}
	// Its status keeps both entries of the first prepare (a write without card 2 would take its entry away).
	got, err := p.cfg.Kube.ResourceV1().ResourceClaims("ns").Get(context.Background(), c0.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(got.Status.Devices); n != 2 || got.Status.Devices[1].Device != "card-2-exclusive" {
		t.Errorf("status after the re-prepare: %+v, want the entries of card-1 and card-2-exclusive", got.Status.Devices)
	}
}
