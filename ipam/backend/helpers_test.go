package backend

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/multinic/multinic/internal/logring"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/store"
)

// fakePools is an enipool.Pools whose behaviour the test sets: which cards are managed, what Kick does, what
// EnsureExclusive does, and what LastError says.
type fakePools struct {
	mu        sync.Mutex
	ready     bool
	managed   map[int]bool
	enis      map[string]enipool.ENIInfo
	kicks     map[int]int
	lastErr   map[int]error
	exclusive []int
	onKick    func(card int)
	ensure    func(ctx context.Context, card int) error
	// families: the cards that serve ipv6 or dual.
	families map[int]string
}

var _ enipool.Pools = (*fakePools)(nil)

func newFakePools(cards ...int) *fakePools {
	fp := &fakePools{ready: true, managed: map[int]bool{}, enis: map[string]enipool.ENIInfo{}, kicks: map[int]int{}, lastErr: map[int]error{}}
	for _, c := range cards {
		fp.managed[c] = true
		fp.enis[eniOf(c)] = enipool.ENIInfo{ID: eniOf(c), Card: c, LinkName: fmt.Sprintf("ens%d", c), MAC: fmt.Sprintf("02:00:00:00:00:%02x", c),
			MTU: 9001, SubnetCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c), 0, 0}), 20), Gateway: netip.AddrFrom4([4]byte{10, byte(c), 0, 1})}
	}
	return fp
}

func (f *fakePools) Ready() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready
}

func (f *fakePools) Family(card int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return api.NormalFamily(f.families[card])
}

func (f *fakePools) Managed(card int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.managed[card]
}

func (f *fakePools) ENI(id string) (enipool.ENIInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.enis[id]
	return e, ok
}

func (f *fakePools) Kick(card int) {
	f.mu.Lock()
	f.kicks[card]++
	fn := f.onKick
	f.mu.Unlock()
	if fn != nil {
		fn(card)
	}
}

func (f *fakePools) LastError(card int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastErr[card]
}

func (f *fakePools) EnsureExclusive(ctx context.Context, card int) error {
	f.mu.Lock()
	f.exclusive = append(f.exclusive, card)
	fn := f.ensure
	f.mu.Unlock()
	if fn != nil {
		return fn(ctx, card)
	}
	return nil
}

func (f *fakePools) kicked(card int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kicks[card]
}

func eniOf(card int) string { return fmt.Sprintf("eni-%02d", card) }

// addrOf returns 10.<card>.0.<i+10>.
func addrOf(card, i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(card), 0, byte(i + 10)}) }

type testBackend struct {
	*Backend
	alloc *allocator.Allocator
	pools *fakePools
	clock *testingclock.FakeClock
	store *store.FileStore
	cfg   Config
	logs  *logring.Ring
}

// lockedAllocator returns an allocator (no cooldown) restored from a file store in dir, whose lock it
// holds until the test ends or it is unlocked.
func lockedAllocator(t testing.TB, dir string) (*allocator.Allocator, *store.FileStore) {
	t.Helper()
	st, err := store.NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Lock(time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Unlock() })
	al, err := allocator.New(st, allocator.WithCooldown(0))
	if err != nil {
		t.Fatal(err)
	}
	return al, st
}

// newTestBackend returns an agent over a fresh allocator on a file store in a temp dir, with warm addresses
// on the given cards (warm[card] = count). change edits the config before New.
func newTestBackend(t testing.TB, fp *fakePools, warm map[int]int, change func(*Config)) *testBackend {
	t.Helper()
	al, st := lockedAllocator(t, t.TempDir())
	for card, n := range warm {
		addrs := make([]netip.Addr, n)
		for i := range addrs {
			addrs[i] = addrOf(card, i)
		}
		if _, err := al.AddAddresses(card, eniOf(card), addrs...); err != nil {
			t.Fatal(err)
		}
	}
	clk := testingclock.NewFakeClock(time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC))
	logs := logring.New(10000, 4096) // safe for the logger's concurrent writes
	cfg := Config{Allocator: al, Pools: fp, WaitTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Now: clk.Now}
	if change != nil {
		change(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testBackend{Backend: a, alloc: al, pools: fp, clock: clk, store: st, cfg: cfg, logs: logs}
}

// restart is the agent after a restart of its process: the old one's lock let go, then a new allocator
// restored from the same state dir and a new agent with the same config over it.
func (ta *testBackend) restart(t *testing.T) *testBackend {
	t.Helper()
	if err := ta.store.Unlock(); err != nil {
		t.Fatal(err)
	}
	al, st := lockedAllocator(t, ta.store.Dir())
	cfg := ta.cfg
	cfg.Allocator = al
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testBackend{Backend: a, alloc: al, pools: ta.pools, clock: ta.clock, store: st, cfg: cfg, logs: ta.logs}
}
