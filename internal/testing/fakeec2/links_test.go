package fakeec2

import (
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// recorder is a LinkMaker that records calls and can be told to fail.
type recorder struct {
	mu       sync.Mutex
	events   []string // "attach eni-.." / "detach eni-.."
	links    map[string]Attachment
	failNext error
	failOn   string // ENI ID whose attach fails
	inFlight atomic.Int32
	overlap  atomic.Bool
}

func newRecorder() *recorder { return &recorder{links: map[string]Attachment{}} }

func (r *recorder) enter() func() {
	if r.inFlight.Add(1) > 1 {
		r.overlap.Store(true)
	}
	time.Sleep(2 * time.Millisecond) // widen the window so overlap would show
	return func() { r.inFlight.Add(-1) }
}

func (r *recorder) Attach(a Attachment) error {
	defer r.enter()()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.failNext; err != nil {
		r.failNext = nil
		return err
	}
	if a.ENIID == r.failOn {
		return errors.New("injected link failure")
	}
	r.events = append(r.events, "attach "+a.ENIID)
	r.links[a.ENIID] = a
	return nil
}

func (r *recorder) Detach(a Attachment) error {
	defer r.enter()()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "detach "+a.ENIID)
	delete(r.links, a.ENIID)
	return nil
}

// SetIPv6 makes the recorder an IPv6Router: it records the ENI's whole IPv6 set, as the fabric routes it.
func (r *recorder) SetIPv6(a Attachment) error {
	defer r.enter()()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.failNext; err != nil {
		r.failNext = nil
		return err
	}
	r.events = append(r.events, "ipv6 "+a.ENIID)
	r.links[a.ENIID] = a
	return nil
}

func (r *recorder) snapshot() (map[string]Attachment, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]Attachment, len(r.links))
	for k, v := range r.links {
		m[k] = v
	}
	return m, append([]string(nil), r.events...)
}

func TestLinkMaker(t *testing.T) {
	rec := newRecorder()
	cfg := perCard(t, "trn1.32xlarge")
	srv, u, err := Start(cfg, WithLinkMaker(rec))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = srv.Close()
		}
	})
	f := &fixture{srv: srv, url: u, ec2: srv.Client(), noRetry: srv.Client(func(o *ec2.Options) { o.Retryer = aws.NopRetryer{} }), inst: srv.DefaultInstanceID()}

	st := srv.State()
	prim, _ := st.ENI(st.Instances[0].PrimaryENI)
	links, _ := rec.snapshot()
	want := Attachment{InstanceID: f.inst, ENIID: prim.ID, MAC: prim.MAC, SubnetID: CardSubnetID(0), SubnetCIDR: "10.0.0.0/20",
		NetworkCard: 0, DeviceIndex: 0, PrimaryIP: prim.PrimaryIP, Primary: true, SubnetIPv6CIDR: "2001:db8:ec2::/64"}
	if got := links[prim.ID]; !reflect.DeepEqual(got, want) {
		t.Fatalf("primary link %+v, want %+v", got, want)
	}

	e := f.createENI(t, CardSubnetID(2))
	id := aws.ToString(e.NetworkInterfaceId)
	attID := f.attach(t, id, 2, 1)
	links, _ = rec.snapshot()
	want = Attachment{InstanceID: f.inst, ENIID: id, MAC: aws.ToString(e.MacAddress), SubnetID: CardSubnetID(2), SubnetCIDR: "10.0.32.0/20",
		NetworkCard: 2, DeviceIndex: 1, PrimaryIP: aws.ToString(e.PrivateIpAddress), SubnetIPv6CIDR: "2001:db8:ec2:2::/64"}
	if got := links[id]; !reflect.DeepEqual(got, want) {
		t.Fatalf("card 2 link %+v, want %+v", got, want)
	}
	if _, err := f.ec2.DetachNetworkInterface(ctx(t), &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(attID)}); err != nil {
		t.Fatal(err)
	}
	if links, _ = rec.snapshot(); len(links) != 1 {
		t.Fatalf("links after detach: %v", links)
	}

	// A failing link maker fails the attach and leaves the ENI available.
	rec.mu.Lock()
	rec.failNext = errors.New("no such netns")
	rec.mu.Unlock()
	_, err = f.noRetry.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(id),
		InstanceId: aws.String(f.inst), DeviceIndex: aws.Int32(1), NetworkCardIndex: aws.Int32(2)})
	wantCode(t, err, "InternalError", 500)
	if s, _ := srv.State().ENI(id); s.Status != "available" || s.AttachmentID != "" {
		t.Fatalf("after failed link: %+v", s)
	}
	// ... and the device index it wanted is still free.
	f.attach(t, id, 2, 1)

	// Concurrent attaches reach the link maker one at a time.
	var wg sync.WaitGroup
	for card := int32(3); card < 8; card++ {
		x := aws.ToString(f.createENI(t, CardSubnetID(int(card))).NetworkInterfaceId)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.ec2.AttachNetworkInterface(ctx(t), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(x),
				InstanceId: aws.String(f.inst), DeviceIndex: aws.Int32(1), NetworkCardIndex: aws.Int32(card)}); err != nil {
				t.Errorf("attach card %d: %v", card, err)
			}
		}()
	}
	wg.Wait()
	if rec.overlap.Load() {
		t.Fatal("link maker called concurrently")
	}
	if links, _ = rec.snapshot(); len(links) != 7 {
		t.Fatalf("%d links, want 7 (primary + card 2 + cards 3-7)", len(links))
	}
	if err := srv.SetLinkMaker(newRecorder()); err == nil {
		t.Fatal("second SetLinkMaker accepted")
	}

	// Close removes every link, the primary last.
	closed = true
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	links, events := rec.snapshot()
	if len(links) != 0 || events[len(events)-1] != "detach "+prim.ID {
		t.Fatalf("after close: links %v, last events %v", links, events[len(events)-3:])
	}
}

func TestSetLinkMakerLater(t *testing.T) {
	f := start(t, Config{})
	id := aws.ToString(f.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	f.attach(t, id, 0, 1)
	rec := newRecorder()
	if err := f.srv.SetLinkMaker(rec); err != nil {
		t.Fatal(err)
	}
	links, events := rec.snapshot()
	prim := f.srv.State().Instances[0].PrimaryENI
	if len(links) != 2 || events[0] != "attach "+prim || !links[prim].Primary || links[id].Primary {
		t.Fatalf("links %v events %v", links, events)
	}
	// A failing link maker at set time is refused and leaves no links.
	f2 := start(t, Config{})
	id2 := aws.ToString(f2.createENI(t, CardSubnetID(0)).NetworkInterfaceId)
	f2.attach(t, id2, 0, 1)
	bad := newRecorder()
	bad.failOn = id2 // the primary's link is made first, then must be undone
	if err := f2.srv.SetLinkMaker(bad); err == nil {
		t.Fatal("failing link maker accepted")
	}
	if links, events := bad.snapshot(); len(links) != 0 || len(events) != 2 {
		t.Fatalf("links left behind: %v (events %v)", links, events)
	}
}
