package eni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/multinic/multinic/internal/linkalias"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
	"github.com/multinic/multinic/ipam/store"
)

const testCluster = "test"

// fakeLinks is both fake-ec2's LinkMaker and the manager's Links: an attach makes a "link" named like the
// fabric's (ens<card>d<device>) with the ENI's MAC, so the manager's wait-for-link path runs without root.
type fakeLinks struct {
	mu    sync.Mutex
	byMAC map[string]string
	up    map[string]bool
	mtu   map[string]int
	alias map[string]string
	// delay makes links appear this long after the attach, like udev on a real node.
	delay time.Duration
	born  map[string]time.Time
}

func newFakeLinks() *fakeLinks {
	return &fakeLinks{byMAC: map[string]string{}, up: map[string]bool{}, mtu: map[string]int{}, alias: map[string]string{},
		born: map[string]time.Time{}}
}

func (f *fakeLinks) Attach(a fakeec2.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := fmt.Sprintf("ens%dd%d", a.NetworkCard, a.DeviceIndex)
	f.byMAC[a.MAC] = name
	f.born[a.MAC] = time.Now().Add(f.delay)
	f.mtu[name] = 1500
	return nil
}

func (f *fakeLinks) Detach(a fakeec2.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := f.byMAC[a.MAC]
	delete(f.byMAC, a.MAC)
	delete(f.up, name)
	delete(f.mtu, name)
	return nil
}

func (f *fakeLinks) LinkNames(macs ...net.HardwareAddr) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := map[string]string{}
	for _, mac := range macs {
		if name, ok := f.byMAC[mac.String()]; ok && !time.Now().Before(f.born[mac.String()]) {
			names[mac.String()] = name
		}
	}
	return names, nil
}

func (f *fakeLinks) SetUp(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mtu[name]; !ok {
		return fmt.Errorf("no link %s", name)
	}
	f.up[name] = true
	return nil
}

func (f *fakeLinks) SetMTU(name string, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mtu[name]; !ok {
		return fmt.Errorf("no link %s", name)
	}
	f.mtu[name] = mtu
	return nil
}

func (f *fakeLinks) Restore(name, want string, mtu int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mtu[name]; !ok {
		return name, fmt.Errorf("no link %s", name)
	}
	if orig, ok := linkalias.Parse(f.alias[name]); ok {
		want = orig.Name
	}
	if _, taken := f.mtu[want]; want != "" && want != name && !taken {
		for mac, n := range f.byMAC {
			if n == name {
				f.byMAC[mac] = want
			}
		}
		delete(f.mtu, name)
		delete(f.up, name)
		name = want
	}
	delete(f.alias, name)
	f.mtu[name], f.up[name] = mtu, true
	return name, nil
}

// setLink renames the link with this MAC, or removes it when name is "" (it left the node netns).
func (f *fakeLinks) setLink(mac, name string) { f.setLinkAlias(mac, name, "") }

// setLinkAlias is setLink with an alias on the link, as a link that comes home from a dead pod netns
// carries the plugin's.
func (f *fakeLinks) setLinkAlias(mac, name, alias string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.byMAC[mac]; ok {
		delete(f.mtu, old)
		delete(f.up, old)
		delete(f.alias, old)
	}
	if name == "" {
		delete(f.byMAC, mac)
		return
	}
	f.byMAC[mac] = name
	f.mtu[name] = 1500
	f.alias[name] = alias
}

func (f *fakeLinks) state(name string) (up bool, mtu int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.up[name], f.mtu[name]
}

// env is one fake EC2 with one instance and an allocator.
type env struct {
	t     testing.TB
	srv   *fakeec2.Server
	ec2   *ec2.Client
	imds  *imds.Client
	inst  string
	st    *store.Memory
	alloc *allocator.Allocator
	links *fakeLinks
}

type envOpts struct {
	typ      string
	subnets  []fakeec2.SubnetConfig
	faults   fakeec2.Faults
	cooldown time.Duration
	links    fakeec2.LinkMaker // default a fakeLinks
	// more instances of the same type, after the env's own (another node of the account)
	more int
	// launch: the ENIs the env's own instance was launched with (its launch template's)
	launch fakeec2.LaunchTemplateData
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	if o.typ == "" {
		o.typ = "trn1.32xlarge"
	}
	if o.subnets == nil {
		it, ok := fakeec2.LookupInstanceType(o.typ)
		if !ok {
			t.Fatalf("unknown type %s", o.typ)
		}
		var err error
		if o.subnets, err = fakeec2.SubnetsPerCard(it.NetworkCards); err != nil {
			t.Fatal(err)
		}
	}
	fl := newFakeLinks()
	lm := o.links
	if lm == nil {
		lm = fl
	}
	instances := []fakeec2.InstanceConfig{{Type: o.typ, LaunchTemplateData: o.launch}}
	for range o.more {
		instances = append(instances, fakeec2.InstanceConfig{Type: o.typ})
	}
	srv, _, err := fakeec2.Start(fakeec2.Config{Subnets: o.subnets, Faults: o.faults, Seed: 42, Instances: instances},
		fakeec2.WithLinkMaker(lm))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	inst := srv.DefaultInstanceID()
	u, err := srv.ListenIMDS(inst, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, srv: srv, ec2: srv.Client(), imds: imds.New(imds.Options{Endpoint: u}), inst: inst,
		st: store.NewMemory(), links: fl}
	e.alloc = e.newAllocator(o.cooldown)
	return e
}

func (e *env) newAllocator(cooldown time.Duration) *allocator.Allocator {
	a, err := allocator.New(e.st, allocator.WithCooldown(cooldown))
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// newAllocatorOn is an allocator on another store (no cooldown): an agent restarted without its checkpoint.
func (e *env) newAllocatorOn(st store.Store) *allocator.Allocator {
	a, err := allocator.New(st, allocator.WithCooldown(0))
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

func testLogger() *slog.Logger {
	if os.Getenv("ENI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fastConfig is a Config with per-card subnets and short timings; tests override what they need.
func (e *env) fastConfig(cards int) Config {
	cc := map[int]CardConfig{}
	for k := range cards {
		cc[k] = CardConfig{SubnetID: fakeec2.CardSubnetID(k)}
	}
	return Config{
		Cluster: testCluster, NodeName: "node-a", Cards: cc,
		WarmTarget: ptr(4), MinFree: ptr(1), MaxBatch: 10,
		SurplusDelay: time.Hour, RefillInterval: 200 * time.Millisecond, ReconcileInterval: -1,
		LinkTimeout: 5 * time.Second, LinkPoll: 5 * time.Millisecond,
		EC2Rate: 1000, EC2Burst: 1000, BackoffBase: 5 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		ErrorBackoffMax: 300 * time.Millisecond, Logger: testLogger(),
	}
}

// cardOneConfig is fastConfig managing card 1 alone, in its own subnet.
func (e *env) cardOneConfig() Config {
	cfg := e.fastConfig(0)
	cfg.ManagedCards = []int{1}
	cfg.Cards = map[int]CardConfig{1: {SubnetID: fakeec2.CardSubnetID(1)}}
	return cfg
}

// start builds and starts a manager, stopped at cleanup.
func (e *env) start(cfg Config, alloc *allocator.Allocator) *Manager {
	e.t.Helper()
	return e.startWith(cfg, alloc, e.imds)
}

// startOn is start on the i-th instance of envOpts.more (from 1), as another node of the account.
func (e *env) startOn(i int, cfg Config, alloc *allocator.Allocator) *Manager {
	e.t.Helper()
	u, err := e.srv.ListenIMDS(e.srv.State().Instances[i].ID, "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	return e.startWith(cfg, alloc, imds.New(imds.Options{Endpoint: u}))
}

func (e *env) startWith(cfg Config, alloc *allocator.Allocator, md awsec2.IMDSAPI) *Manager {
	e.t.Helper()
	var links Links = e.links
	m, err := New(cfg, Deps{EC2: e.ec2, IMDS: md, Allocator: alloc, Links: links})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(m.Stop)
	return m
}

func waitReady(t testing.TB, m *Manager, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := m.WaitReady(ctx); err != nil {
		for _, c := range m.Stats().Cards {
			t.Logf("card %d ready=%v shared=%d lastErr=%s", c.Card, c.Ready, c.SharedENIs, c.LastError)
		}
		t.Fatal(err)
	}
}

// eventually polls cond every 10ms until it is true or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ours returns the fake's ENIs the manager owns (by tags), by ID.
func (e *env) ours() map[string]fakeec2.ENIState {
	out := map[string]fakeec2.ENIState{}
	for _, x := range e.srv.State().ENIs {
		if x.Tags[TagCluster] == testCluster && x.Tags[TagNode] == e.inst && x.Tags[TagNoManage] != "true" {
			out[x.ID] = x
		}
	}
	return out
}

// ec2Addresses is every address EC2 holds on the manager's ENIs beyond their primary (prefixes expanded).
func (e *env) ec2Addresses(card int) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for id, x := range e.ours() {
		if x.Card != card || x.Status != "in-use" {
			continue
		}
		for _, a := range x.SecondaryIPs {
			out[netip.MustParseAddr(a)] = id
		}
		for _, p := range x.Prefixes {
			for _, a := range awsec2.Expand(netip.MustParsePrefix(p)) {
				out[a] = id
			}
		}
	}
	return out
}

// checkNoLeak fails unless the allocator's shared addresses on card are exactly what EC2 holds there.
func checkNoLeak(t testing.TB, e *env, a *allocator.Allocator, card int) {
	t.Helper()
	inEC2 := e.ec2Addresses(card)
	known := map[netip.Addr]string{}
	for _, p := range a.Known() {
		if p.Card == card && !p.Exclusive {
			known[p.Address] = p.ENIID
		}
	}
	for ad, id := range inEC2 {
		if known[ad] != id {
			t.Errorf("card %d: EC2 has %s on %s, allocator has it on %q", card, ad, id, known[ad])
		}
	}
	for ad, id := range known {
		if inEC2[ad] != id {
			t.Errorf("card %d: allocator has %s on %s, EC2 on %q", card, ad, id, inEC2[ad])
		}
	}
}

// allocWait is the agent's allocate path: allocate from the pool, or kick the card and wait for a refill.
func allocWait(ctx context.Context, m *Manager, a *allocator.Allocator, r api.AllocateRequest) (api.Allocation, error) {
	if r.Exclusive { // as the agent does: a free exclusive ENI is checked before it is handed out
		if err := m.EnsureExclusive(ctx, r.Card); err != nil {
			return api.Allocation{}, err
		}
	}
	for {
		al, err := a.Allocate(r)
		if err == nil {
			m.Kick(r.Card)
			return al, nil
		}
		if !errors.Is(err, allocator.ErrPoolEmpty) {
			return al, err
		}
		m.Kick(r.Card)
		if r.Exclusive {
			if err := m.EnsureExclusive(ctx, r.Card); err != nil {
				return al, err
			}
		}
		if err := a.WaitForAddress(ctx, r); err != nil {
			return al, fmt.Errorf("%w (last EC2 error: %v)", err, m.LastError(r.Card))
		}
	}
}

// exclusiveReq is podReq asking for a whole ENI.
func exclusiveReq(p, card int) api.AllocateRequest {
	r := podReq(p, card)
	r.Exclusive = true
	return r
}

func podReq(p, card int) api.AllocateRequest {
	return api.AllocateRequest{Card: card, ContainerID: fmt.Sprintf("sandbox-%d", p), IfName: fmt.Sprintf("net%d", card),
		PodRef: api.PodRef{PodNamespace: "ns", PodName: fmt.Sprintf("pod-%d", p), PodUID: fmt.Sprintf("uid-%d", p)}}
}

// foreignENI creates and attaches an ENI the manager must not touch, with two secondary addresses.
func (e *env) foreignENI(card, device int, tags map[string]string) string {
	e.t.Helper()
	ctx := context.Background()
	in := &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(fakeec2.CardSubnetID(card)),
		SecondaryPrivateIpAddressCount: aws.Int32(2)}
	if len(tags) > 0 {
		var ts []types.Tag
		for k, v := range tags {
			ts = append(ts, types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
		in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface, Tags: ts}}
	}
	out, err := e.ec2.CreateNetworkInterface(ctx, in)
	if err != nil {
		e.t.Fatal(err)
	}
	id := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	if device >= 0 {
		if _, err := e.ec2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(id),
			InstanceId: aws.String(e.inst), DeviceIndex: aws.Int32(int32(device)), NetworkCardIndex: aws.Int32(int32(card))}); err != nil {
			e.t.Fatal(err)
		}
	}
	return id
}

// waitDescribed waits until fake-ec2's Describe shows its ENIs as they are: for a step that needs EC2's
// view of what was done a moment ago (an agent without memory of it), when fake-ec2 lags
// (MULTINIC_FAKE_EC2_LAG).
func (e *env) waitDescribed() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.srv.WaitDescribed(ctx); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) eniState(id string) (fakeec2.ENIState, bool) { return e.srv.State().ENI(id) }

func newMemStore() *store.Memory { return store.NewMemory() }

// need is the shared pool's refill need on card under the policy (plan.Need) for a warm target and min free.
func need(a *allocator.Allocator, card, warmTarget, minFree int) int {
	return plan.Need(a.Stats(card), plan.Config{WarmTarget: warmTarget, MinFree: minFree})
}
