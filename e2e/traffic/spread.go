package traffic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Endpoint is a multi-homed pod as the meter sees it: its netns and its address on each network card.
type Endpoint struct {
	Name  string
	NetNS ns.NetNS
	Addrs map[int]net.IP // network card -> the pod's address on it
}

// Spread measures what one source pod sends over several cards at once to its peers. It keeps one sink per
// peer, listening on the peer's address of every card, for as many measurements as wanted.
type Spread struct {
	src   Endpoint
	peers []Endpoint
	sinks []*Sink
}

// NewSpread starts a sink in every peer. Close stops them.
func NewSpread(src Endpoint, peers []Endpoint) (*Spread, error) {
	if len(peers) == 0 {
		return nil, errors.New("spread: no peers")
	}
	s := &Spread{src: src, peers: peers}
	for _, p := range peers {
		var addrs []net.IP
		for _, c := range sortedCards(p.Addrs) {
			addrs = append(addrs, p.Addrs[c])
		}
		sink, err := NewSink(p.NetNS, addrs)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("sink in %s: %w", p.Name, err)
		}
		s.sinks = append(s.sinks, sink)
	}
	return s, nil
}

// Close stops the sinks.
func (s *Spread) Close() {
	for _, sink := range s.sinks {
		sink.Close()
	}
	s.sinks = nil
}

// Measure sends from the source over every card of cards at once for d, conns TCP connections per card:
// card cards[k]'s flow goes from the source's address on it to peer k mod len(peers)'s address on it, so
// the peers share the receiving. PerFlow of the result is in the order of cards; Total is the aggregate.
// Every card must be one that the source and its peers have an address on.
func (s *Spread) Measure(ctx context.Context, cards []int, conns int, d time.Duration) (Result, error) {
	if len(cards) == 0 {
		return Result{}, ErrNoFlows
	}
	// byPeer[i] are the flows to peers[i], at[i] their positions in cards.
	byPeer := make([][]Flow, len(s.peers))
	at := make([][]int, len(s.peers))
	for k, c := range cards {
		i := k % len(s.peers)
		src, dst := s.src.Addrs[c], s.peers[i].Addrs[c]
		if src == nil || dst == nil {
			return Result{}, fmt.Errorf("card %d: %s or %s has no address on it", c, s.src.Name, s.peers[i].Name)
		}
		byPeer[i] = append(byPeer[i], Flow{SrcNS: s.src.NetNS, Src: src, Dst: dst})
		at[i] = append(at[i], k)
	}
	out := Result{PerFlow: make([]float64, len(cards))}
	errs := make([]error, len(s.peers))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range s.peers {
		if len(byPeer[i]) == 0 {
			continue
		}
		// One Run per peer, all at once: a Run counts at one sink.
		wg.Go(func() {
			r, err := Run(ctx, s.sinks[i], byPeer[i], conns, d)
			if err != nil {
				errs[i] = fmt.Errorf("to %s: %w", s.peers[i].Name, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for j, k := range at[i] {
				out.PerFlow[k] = r.PerFlow[j]
			}
			out.Total += r.Total
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Result{}, fmt.Errorf("throughput over cards %v: %w", cards, err)
	}
	return out, nil
}

// ScalingSteps are the card counts a bandwidth measurement goes through with n cards at hand: 1, 2, 4 and
// n (issue 6's 1, 2, 4, 7 on a trn1.32xlarge), those above n left out.
func ScalingSteps(n int) []int {
	var steps []int
	for _, k := range []int{1, 2, 4, n} {
		if k >= 1 && k <= n && !slices.Contains(steps, k) {
			steps = append(steps, k)
		}
	}
	return steps
}

func sortedCards(addrs map[int]net.IP) []int {
	cards := make([]int, 0, len(addrs))
	for c := range addrs {
		cards = append(cards, c)
	}
	slices.Sort(cards)
	return cards
}
