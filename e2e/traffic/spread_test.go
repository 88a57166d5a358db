package traffic

import (
	"context"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/nettest"
)

func TestScalingSteps(t *testing.T) {
	for n, want := range map[int][]int{7: {1, 2, 4, 7}, 4: {1, 2, 4}, 3: {1, 2, 3}, 1: {1}, 0: nil} {
		if got := ScalingSteps(n); !slices.Equal(got, want) {
			t.Errorf("ScalingSteps(%d) = %v, want %v", n, got, want)
		}
	}
}

// TestSpreadAddsUpShapedCards gives a source two "cards" (a veth each, shaped to rate, to a different peer)
// and checks that one card carries about rate and both at once about twice that, each card its share.
func TestSpreadAddsUpShapedCards(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	const rate = 40_000_000 // bits/s per card
	src, peer1, peer2 := nettest.NewNS(t), nettest.NewNS(t), nettest.NewNS(t)
	card1Src, card1Dst := net.ParseIP("192.0.2.1"), net.ParseIP("192.0.2.2")
	card2Src, card2Dst := net.ParseIP("198.51.100.1"), net.ParseIP("198.51.100.2")
	vethPair(t, src, peer1, "card1", []net.IP{card1Src}, card1Dst, rate)
	vethPair(t, src, peer2, "card2", []net.IP{card2Src}, card2Dst, rate)

	s, err := NewSpread(
		Endpoint{Name: "src", NetNS: src, Addrs: map[int]net.IP{1: card1Src, 2: card2Src}},
		[]Endpoint{
			{Name: "peer1", NetNS: peer1, Addrs: map[int]net.IP{1: card1Dst}},
			{Name: "peer2", NetNS: peer2, Addrs: map[int]net.IP{2: card2Dst}},
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx := context.Background()

	// Card 2 alone goes to peer1 (peers in turn from the first card), which has no address on it.
	if _, err := s.Measure(ctx, []int{2}, 1, time.Millisecond); err == nil {
		t.Error("Measure to a peer without an address on the card succeeded")
	}
	if _, err := s.Measure(ctx, nil, 1, time.Millisecond); err != ErrNoFlows {
		t.Errorf("Measure(no cards) = %v, want ErrNoFlows", err)
	}

	one, err := s.Measure(ctx, []int{1}, 2, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	both, err := s.Measure(ctx, []int{1, 2}, 2, 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("card 1: %.1f Mbit/s; cards 1+2: %.1f + %.1f = %.1f Mbit/s", one.Total/1e6, both.PerFlow[0]/1e6, both.PerFlow[1]/1e6, both.Total/1e6)
	if one.Total < 0.8*rate || one.Total > 1.1*rate {
		t.Errorf("one card %.1f Mbit/s, want about %d", one.Total/1e6, rate/1_000_000)
	}
	if both.Total < 1.6*rate || both.Total > 2.2*rate {
		t.Errorf("two cards %.1f Mbit/s, want about %d", both.Total/1e6, 2*rate/1_000_000)
	}
	for i, f := range both.PerFlow {
		if f < 0.8*rate || f > 1.1*rate {
			t.Errorf("card %d of two: %.1f Mbit/s, want about %d", i+1, f/1e6, rate/1_000_000)
		}
	}
}
