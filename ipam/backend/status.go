package backend

import (
	"context"
	"slices"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/server"
)

var _ server.Introspector = (*Backend)(nil)

// CardInfo is what the ENI manager knows of one managed card, for the operators' node status.
type CardInfo struct {
	Card       int
	Subnet     string
	ENIs       []string // serving the shared pool
	Exclusive  []string // whole ENIs for exclusive pods
	MaxENIs    int
	PrefixMode bool
	// LastError is the card's most recent failure and LastErrorAt when it happened, kept after recovery.
	LastError   string
	LastErrorAt time.Time
}

// Node describes the node and each managed card: the ENI manager's view (Config.CardInfo), the
// allocator's counts, and whether an ADD could be served now (Status).
func (b *Backend) Node(ctx context.Context) (api.NodeStatus, error) {
	st := api.NodeStatus{Node: b.cfg.NodeName, Ready: b.pools.Ready(), Time: b.cfg.Now().UTC(), Cards: []api.CardStatus{}}
	if b.cfg.InstanceID != nil {
		st.Instance = b.cfg.InstanceID()
	}
	for _, ci := range b.cardInfos() {
		ready, err := b.Status(ctx, ci.Card)
		if err != nil {
			return api.NodeStatus{}, err
		}
		pool := b.alloc.Stats(ci.Card)
		mode := "single"
		if ci.PrefixMode {
			mode = "prefix"
		}
		cs := api.CardStatus{
			Card: ci.Card, Mode: mode, Subnet: ci.Subnet,
			ENIs: nonNil(ci.ENIs), ExclusiveENIs: ci.Exclusive, MaxENIs: ci.MaxENIs,
			Shared: counts(pool.Counts), Exclusive: counts(pool.Exclusive), Family: b.pools.Family(ci.Card),
			Ready: ready.Ready, Reason: ready.Reason,
			LastError: ci.LastError, LastErrorAt: ci.LastErrorAt.UTC(),
		}
		if pool.IPv6.Prefixes > 0 || api.WantsIPv6(cs.Family) {
			cs.IPv6 = &api.IPv6Counts{Prefixes: pool.IPv6.Prefixes, Allocated: pool.IPv6.Allocated}
		}
		st.Cards = append(st.Cards, cs)
	}
	return st, nil
}

// cardInfos is the ENI manager's view of the cards, or the bare list of cards without it.
func (b *Backend) cardInfos() []CardInfo {
	if b.cfg.CardInfo != nil {
		return b.cfg.CardInfo()
	}
	var out []CardInfo
	if b.cfg.Cards != nil {
		for _, c := range b.cfg.Cards() {
			out = append(out, CardInfo{Card: c})
		}
	}
	return out
}

func counts(c allocator.Counts) api.PoolCounts {
	return api.PoolCounts{Allocated: c.Allocated, Warm: c.Warm, Cooling: c.Cooling}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return slices.Clone(s)
}

// Logs returns the agent's recent log lines (Config.Logs), oldest first.
func (b *Backend) Logs(context.Context) (api.LogsResponse, error) {
	resp := api.LogsResponse{Lines: []string{}}
	if b.cfg.Logs != nil {
		resp.Lines = append(resp.Lines, b.cfg.Logs()...)
	}
	return resp, nil
}
