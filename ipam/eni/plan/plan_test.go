package plan

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
)

var (
	t0  = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg = Config{WarmTarget: 4, MinFree: 1, MaxBatch: 10, SurplusDelay: time.Minute}
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func stats(warm, cooling, waiting int) allocator.Stats {
	return allocator.Stats{Counts: allocator.Counts{Warm: warm, Cooling: cooling}, Waiting: waiting}
}

// TestNeed: refill, with cooldown (resting addresses count as free, not as usable now) and waiting
// allocations on top.
func TestNeed(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		warm, cooling, waiting    int
		target, minFree, wantNeed int
	}{
		{"nothing wanted", 2, 1, 0, 0, 0, 0},
		{"warm and resting reach the target", 2, 1, 0, 3, 0, 0},
		{"up to the target", 2, 1, 0, 5, 0, 2},
		{"fewer usable now than min free", 2, 1, 0, 3, 3, 1},
		{"enough usable now", 2, 1, 0, 3, 2, 0},
		{"resting counts toward the target", 2, 1, 0, 4, 2, 1},
		{"below min free: the whole target usable now", 2, 1, 0, 6, 3, 4},
		{"min free above the target", 2, 1, 0, 2, 4, 2},
		{"empty card", 0, 0, 0, 3, 1, 3},
		{"empty card, min free only", 0, 0, 0, 0, 1, 1},
		{"waiting on top of the target", 0, 0, 3, 3, 1, 6},
		{"waiting on top of min free", 0, 0, 3, 0, 4, 7},
		{"waiting: resting addresses serve nobody now", 0, 5, 2, 4, 1, 6},
	} {
		got := Need(stats(tc.warm, tc.cooling, tc.waiting), Config{WarmTarget: tc.target, MinFree: tc.minFree})
		if got != tc.wantNeed {
			t.Errorf("%s: Need(warm %d, cooling %d, waiting %d; target %d, min %d) = %d, want %d",
				tc.name, tc.warm, tc.cooling, tc.waiting, tc.target, tc.minFree, got, tc.wantNeed)
		}
	}
}

func TestBatch(t *testing.T) {
	for _, tc := range []struct {
		name            string
		need, room, max int
		prefix          bool
		want            int
	}{
		{"need", 3, 14, 10, false, 3},
		{"capped by MaxBatch", 30, 49, 10, false, 10},
		{"capped by the ENI's room", 30, 5, 50, false, 5},
		{"nothing needed", 0, 5, 10, false, 0},
		{"no room", 3, 0, 10, false, 0},
		{"prefix: rounded up to whole /28s", 17, 14, 50, true, 2},
		{"prefix: at least one even with a small MaxBatch", 3, 14, 8, true, 1},
		{"prefix: MaxBatch in addresses", 100, 14, 32, true, 2},
		{"prefix: no room", 3, 0, 50, true, 0},
	} {
		if got := Batch(tc.need, tc.room, Config{MaxBatch: tc.max, PrefixMode: tc.prefix}); got != tc.want {
			t.Errorf("%s: Batch(need %d, room %d, max %d, prefix %v) = %d, want %d", tc.name, tc.need, tc.room, tc.max, tc.prefix, got, tc.want)
		}
	}
}

// TestSmaller: batch halving after the subnet could not give a batch.
func TestSmaller(t *testing.T) {
	for _, tc := range []struct {
		n      int
		create bool
		want   int
		ok     bool
	}{
		{10, false, 5, true},
		{5, false, 2, true},
		{2, false, 1, true},
		{1, false, 1, false},
		{10, true, 0, true}, // a create retries with the primary alone
		{0, true, 0, false},
	} {
		if got, ok := Smaller(tc.n, tc.create); got != tc.want || ok != tc.ok {
			t.Errorf("Smaller(%d, create %v) = %d, %v; want %d, %v", tc.n, tc.create, got, ok, tc.want, tc.ok)
		}
	}
}

// TestBackoff: the cooldown after failures doubles from a tenth of the refill interval up to the cap.
func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{1, 3 * time.Second}, {2, 6 * time.Second}, {3, 12 * time.Second}, {5, 48 * time.Second},
		{6, time.Minute}, {100, time.Minute},
	} {
		if got := Backoff(tc.failures, 30*time.Second, time.Minute); got != tc.want {
			t.Errorf("Backoff(%d) = %s, want %s", tc.failures, got, tc.want)
		}
	}
}

func pool(eni string, addrs ...string) []allocator.PoolAddress {
	var out []allocator.PoolAddress
	for _, a := range addrs {
		out = append(out, allocator.PoolAddress{Card: 1, ENIID: eni, Address: ip(a)})
	}
	return out
}

func TestSurplus(t *testing.T) {
	warm := pool("eni-a", "10.0.0.3", "10.0.0.1", "10.0.0.2")
	for _, tc := range []struct {
		target int
		want   []allocator.PoolAddress
	}{
		{0, pool("eni-a", "10.0.0.3", "10.0.0.2", "10.0.0.1")},
		{1, pool("eni-a", "10.0.0.3", "10.0.0.2")},
		{3, nil},
		{5, nil},
	} {
		if got := Surplus(warm, tc.target); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Surplus(target %d) = %v, want %v (highest first)", tc.target, got, tc.want)
		}
	}
}

// shared is a ready shared ENI at device with slots used.
func shared(id string, device, slots int) ENI {
	return ENI{ID: id, Device: device, Ready: true, DeleteOnTermination: true, Slots: slots}
}

func exclusive(id string, device int) ENI {
	return ENI{ID: id, Device: device, Exclusive: true, Ready: true, DeleteOnTermination: true, Slots: 1}
}

func withPrefix(e ENI) ENI {
	e.IPv6Prefixes = 1
	return e
}

// card is a card with room for 4 ENIs of 15 slots, one shared ENI half full and the pool at its target.
func card() Card {
	return Card{ENIs: []ENI{shared("eni-a", 1, 8)}, Attached: 2, MaxENIs: 4, SlotsPerENI: 15, Pool: stats(4, 0, 0), Now: t0}
}

func TestStep(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		edit func(c *Card)
		want Plan
	}{
		{name: "in shape: nothing to do", want: Plan{}},
		{
			name: "repairs first, alone", edit: func(c *Card) {
				c.ENIs = []ENI{{ID: "eni-b", Device: 2, Slots: 1}, {ID: "eni-a", Device: 1, DeleteOnTermination: true, Slots: 1}}
				c.Pool = stats(0, 0, 5)
			},
			want: Plan{Actions: []Action{{Kind: FinishENI, ENIID: "eni-a"}, {Kind: FinishENI, ENIID: "eni-b"}}},
		},
		{
			name: "DeleteOnTermination: idle work, after what allocations wait for", edit: func(c *Card) {
				c.ENIs = []ENI{{ID: "eni-b", Device: 2, Ready: true, Slots: 15}, shared("eni-a", 1, 15)}
				c.Pool = stats(0, 0, 1)
			},
			want: Plan{Actions: []Action{{Kind: CreateENI, Batch: 5, Need: 5, Waiting: 1}}},
		},
		{
			name: "DeleteOnTermination: idle work, once the pool is in shape", edit: func(c *Card) {
				c.ENIs = []ENI{{ID: "eni-b", Device: 2, Ready: true, Slots: 15}, shared("eni-a", 1, 15), {ID: "eni-c", Device: 3, Ready: true, Slots: 1}}
			},
			want: Plan{Actions: []Action{{Kind: SetDeleteOnTermination, ENIID: "eni-b", Idle: true}, {Kind: SetDeleteOnTermination, ENIID: "eni-c", Idle: true}}},
		},
		{
			name: "busy: DeleteOnTermination waits until EC2 is no longer busy", edit: func(c *Card) {
				c.ENIs = []ENI{{ID: "eni-a", Device: 1, Ready: true, Slots: 15}}
				c.BusyUntil = t0.Add(20 * time.Second)
			},
			want: Plan{Next: t0.Add(20 * time.Second)},
		},
		{
			name: "busy: a top-up nothing waits for waits (MinFree usable)", edit: func(c *Card) {
				c.Pool = stats(1, 0, 0)
				c.BusyUntil = t0.Add(20 * time.Second)
			},
			want: Plan{Next: t0.Add(20 * time.Second)},
		},
		{
			name: "busy: below MinFree the refill goes, with the whole need", edit: func(c *Card) {
				c.Pool = stats(0, 1, 0)
				c.BusyUntil = t0.Add(20 * time.Second)
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 4, Need: 4}}},
		},
		{
			name: "busy: waiting allocations are served", edit: func(c *Card) {
				c.Pool = stats(2, 0, 1)
				c.BusyUntil = t0.Add(20 * time.Second)
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 3, Need: 3, Waiting: 1}}},
		},
		{
			name: "busy no longer: the top-up goes, idle", edit: func(c *Card) {
				c.Pool = stats(1, 0, 0)
				c.BusyUntil = t0
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 3, Need: 3, Idle: true}}},
		},
		{
			name: "first shared ENI whatever the demand", cfg: Config{WarmTarget: 0, MaxBatch: 10}, edit: func(c *Card) {
				c.ENIs = []ENI{exclusive("eni-x", 1)}
				c.Pool = stats(0, 0, 0)
			},
			want: Plan{Actions: []Action{{Kind: CreateENI, Batch: 0}}},
		},
		{
			name: "first shared ENI starts with the warm target", edit: func(c *Card) { c.ENIs = nil; c.Pool = stats(0, 0, 0) },
			want: Plan{Actions: []Action{{Kind: CreateENI, Batch: 4, Need: 4}}},
		},
		{
			name: "refill: assign on the lowest device with room", edit: func(c *Card) {
				c.ENIs = []ENI{shared("eni-c", 3, 3), shared("eni-a", 1, 15), shared("eni-b", 2, 14), exclusive("eni-x", 4)}
				c.Pool = stats(1, 0, 0)
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-b", Batch: 1, Need: 3, Idle: true}}},
		},
		{
			name: "refill: waiting allocations asked for at once, up to MaxBatch", edit: func(c *Card) {
				c.ENIs = []ENI{shared("eni-a", 1, 1)}
				c.Pool = stats(0, 0, 30)
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 10, Need: 34, Waiting: 30}}},
		},
		{
			name: "refill: a new ENI when every one is full", edit: func(c *Card) {
				c.ENIs = []ENI{shared("eni-a", 1, 15)}
				c.Pool = stats(0, 0, 0)
			},
			want: Plan{Actions: []Action{{Kind: CreateENI, Batch: 4, Need: 4}}},
		},
		{
			name: "refill: prefix mode asks for /28s", cfg: Config{WarmTarget: 20, MinFree: 1, MaxBatch: 50, PrefixMode: true},
			edit: func(c *Card) { c.Pool = stats(0, 0, 0) },
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 2, Need: 20}}},
		},
		{
			name: "hysteresis: surplus starts its timer, nothing given back yet", edit: func(c *Card) {
				c.Pool = stats(6, 0, 0)
				c.Warm = pool("eni-a", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")
			},
			want: Plan{Next: t0.Add(time.Minute), SurplusSince: map[netip.Addr]time.Time{ip("10.0.0.6"): t0, ip("10.0.0.5"): t0}},
		},
		{
			name: "shrink: the highest surplus for SurplusDelay goes back, by ENI; a new surplus waits", edit: func(c *Card) {
				c.ENIs = []ENI{shared("eni-a", 1, 8), shared("eni-b", 2, 4)}
				c.Pool = stats(7, 0, 0)
				c.Warm = append(pool("eni-a", "10.0.0.1", "10.0.0.2", "10.0.0.7"), pool("eni-b", "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.9")...)
				c.SurplusSince = map[netip.Addr]time.Time{ip("10.0.1.9"): t0.Add(-time.Minute), ip("10.0.1.3"): t0.Add(-2 * time.Minute),
					ip("10.0.0.1"): t0.Add(-time.Hour)} // .0.1 is no longer surplus: its timer goes
			},
			want: Plan{Actions: []Action{{Kind: GiveBack, ENIID: "eni-b", Addresses: []netip.Addr{ip("10.0.1.3"), ip("10.0.1.9")}}},
				Next:         t0.Add(time.Minute),
				SurplusSince: map[netip.Addr]time.Time{ip("10.0.1.9"): t0.Add(-time.Minute), ip("10.0.1.3"): t0.Add(-2 * time.Minute), ip("10.0.1.2"): t0}},
		},
		{
			name: "shrink: never while the refill needs addresses (resting ones are not warm)", edit: func(c *Card) {
				c.Pool = stats(3, 0, 2) // 2 waiting: need 2 + 4 - 3
				c.Warm = pool("eni-a", "10.0.0.1", "10.0.0.2", "10.0.0.3")
				c.SurplusSince = map[netip.Addr]time.Time{ip("10.0.0.3"): t0.Add(-time.Hour)}
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 3, Need: 3, Waiting: 2}},
				SurplusSince: map[netip.Addr]time.Time{ip("10.0.0.3"): t0.Add(-time.Hour)}},
		},
		{
			name: "shrink: prefix mode gives back whole /28s only", cfg: Config{WarmTarget: 4, MaxBatch: 50, PrefixMode: true, SurplusDelay: time.Minute},
			edit: func(c *Card) {
				c.ENIs = []ENI{{ID: "eni-a", Device: 1, Ready: true, DeleteOnTermination: true, Slots: 3,
					Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/28"), netip.MustParsePrefix("10.0.0.16/28")}}}
				c.Pool = stats(36, 0, 0)
				c.SurplusSince = map[netip.Addr]time.Time{}
				for i := range 36 {
					a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
					c.Warm = append(c.Warm, allocator.PoolAddress{Card: 1, ENIID: "eni-a", Address: a})
					c.SurplusSince[a] = t0.Add(-time.Hour)
				}
			},
			want: func() Plan {
				p := Plan{SurplusSince: map[netip.Addr]time.Time{}}
				var second []netip.Addr
				for i := range 32 { // the 32 highest: .4 .. .35; only 10.0.0.16/28 is whole
					p.SurplusSince[netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 4)})] = t0.Add(-time.Hour)
				}
				for i := 16; i < 32; i++ {
					second = append(second, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
				}
				p.Actions = []Action{{Kind: GiveBack, ENIID: "eni-a", Addresses: second, Prefix: netip.MustParsePrefix("10.0.0.16/28")}}
				return p
			}(),
		},
		{
			name: "exclusive: one ENI per waiting allocation, counting those being made", edit: func(c *Card) {
				c.ENIs = append(c.ENIs, ENI{ID: "eni-x", Device: 2, Exclusive: true, Ready: true, PendingExclusive: true, DeleteOnTermination: true})
				c.ExclusiveWaiting = 3
				c.Pool.Exclusive.Warm = 1
			},
			want: Plan{Actions: []Action{{Kind: CreateENI, Exclusive: true}}},
		},
		{
			name: "exclusive: enough being made", edit: func(c *Card) {
				c.ENIs = append(c.ENIs, ENI{ID: "eni-x", Device: 2, Exclusive: true, Ready: true, PendingExclusive: true, DeleteOnTermination: true})
				c.ExclusiveWaiting = 1
			},
			want: Plan{},
		},
		{
			name: "exclusive: an ask not served yet wants one", edit: func(c *Card) { c.ExclusiveAsked = true },
			want: Plan{Actions: []Action{{Kind: CreateENI, Exclusive: true}}},
		},
		{
			name: "exclusive: a full card with one resting waits", edit: func(c *Card) {
				c.ExclusiveWaiting, c.Attached = 1, 4
				c.Pool.Exclusive.Cooling = 1
			},
			want: Plan{},
		},
		{
			name: "exclusive: a full card with none coming back is tried (and fails, card full)", edit: func(c *Card) {
				c.ExclusiveWaiting, c.Attached = 1, 4
			},
			want: Plan{Actions: []Action{{Kind: CreateENI, Exclusive: true}}},
		},
		{
			name: "exclusive: free ENIs rested SurplusDelay go back", edit: func(c *Card) {
				c.ENIs = append(c.ENIs, exclusive("eni-y", 3), exclusive("eni-x", 2), exclusive("eni-z", 4))
				c.FreeExclusive = []allocator.PoolAddress{{ENIID: "eni-y", Address: ip("10.0.9.3")}, {ENIID: "eni-x", Address: ip("10.0.9.2")},
					{ENIID: "eni-z", Address: ip("10.0.9.4")}}
				c.ExclusiveSince = map[string]time.Time{"eni-x": t0.Add(-time.Minute), "eni-y": t0.Add(-time.Hour), "eni-gone": t0}
			},
			want: Plan{Actions: []Action{{Kind: RemoveExclusive, ENIID: "eni-x", Addresses: []netip.Addr{ip("10.0.9.2")}},
				{Kind: RemoveExclusive, ENIID: "eni-y", Addresses: []netip.Addr{ip("10.0.9.3")}}},
				Next:           t0.Add(time.Minute),
				ExclusiveSince: map[string]time.Time{"eni-x": t0.Add(-time.Minute), "eni-y": t0.Add(-time.Hour), "eni-z": t0}},
		},
		{
			name: "exclusive: none goes back while one is asked for; the timers stand still", edit: func(c *Card) {
				c.ENIs = append(c.ENIs, exclusive("eni-x", 2))
				c.FreeExclusive = []allocator.PoolAddress{{ENIID: "eni-x", Address: ip("10.0.9.2")}}
				c.ExclusiveSince = map[string]time.Time{"eni-x": t0.Add(-time.Hour)}
				c.ExclusiveAsked = true
				c.Pool.Exclusive.Warm = 1
			},
			want: Plan{ExclusiveSince: map[string]time.Time{"eni-x": t0.Add(-time.Hour)}},
		},
		{
			name: "ipv6: a shared ENI without a /80 gets one, with the repairs; exclusive ENIs and ENIs not ready do not", edit: func(c *Card) {
				c.IPv6 = true
				c.ENIs = []ENI{shared("eni-a", 1, 8), {ID: "eni-b", Device: 2, DeleteOnTermination: true, Slots: 1},
					exclusive("eni-x", 3), withPrefix(shared("eni-c", 4, 2))}
				c.Pool = stats(0, 0, 3)
			},
			want: Plan{Actions: []Action{{Kind: AssignIPv6Prefix, ENIID: "eni-a"}, {Kind: FinishENI, ENIID: "eni-b"}}},
		},
		{
			name: "ipv6: every shared ENI with its /80, dual refills IPv4 as ipv4 does", edit: func(c *Card) {
				c.IPv6 = true
				c.ENIs = []ENI{withPrefix(shared("eni-a", 1, 8))}
				c.Pool = stats(1, 0, 0)
			},
			want: Plan{Actions: []Action{{Kind: Assign, ENIID: "eni-a", Batch: 3, Need: 3, Idle: true}}},
		},
		{
			name: "ipv4 card: no /80 asked for", edit: func(c *Card) { c.IPv6 = false },
			want: Plan{},
		},
		{
			name: "ipv6 only: the first ENI without IPv4 addresses", edit: func(c *Card) {
				c.NoIPv4, c.IPv6 = true, true
				c.ENIs = nil
				c.Pool = stats(0, 0, 0)
			},
			want: Plan{Actions: []Action{{Kind: CreateENI, Batch: 0}}},
		},
		{
			name: "ipv6 only: no IPv4 refill, and IPv4 addresses found warm are surplus", edit: func(c *Card) {
				c.NoIPv4, c.IPv6 = true, true
				c.ENIs = []ENI{withPrefix(shared("eni-a", 1, 3))}
				c.Pool = stats(2, 0, 0)
				c.Warm = pool("eni-a", "10.0.0.1", "10.0.0.2")
			},
			want: Plan{Next: t0.Add(time.Minute), SurplusSince: map[netip.Addr]time.Time{ip("10.0.0.1"): t0, ip("10.0.0.2"): t0}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := card()
			if tc.edit != nil {
				tc.edit(&c)
			}
			conf := cfg
			if tc.cfg != (Config{}) {
				conf = tc.cfg
			}
			got := Step(c, conf)
			if len(got.SurplusSince) == 0 && len(tc.want.SurplusSince) == 0 {
				got.SurplusSince, tc.want.SurplusSince = nil, nil
			}
			if len(got.ExclusiveSince) == 0 && len(tc.want.ExclusiveSince) == 0 {
				got.ExclusiveSince, tc.want.ExclusiveSince = nil, nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Step:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
