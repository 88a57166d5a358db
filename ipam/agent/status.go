package agent

import (
	"context"
	"slices"
	"time"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/server"
)

var _ server.Introspector = (*Agent)(nil)

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
func (a *Agent) Node(ctx context.Context) (api.NodeStatus, error) {
	st := api.NodeStatus{Node: a.cfg.NodeName, Ready: a.pools.Ready(), Time: a.cfg.Now().UTC(), Cards: []api.CardStatus{}}
	if a.cfg.InstanceID != nil {
		st.Instance = a.cfg.InstanceID()
	}
	for _, ci := range a.cardInfos() {
		ready, err := a.Status(ctx, ci.Card)
		if err != nil {
			return api.NodeStatus{}, err
		}
		pool := a.alloc.Stats(ci.Card)
		mode := "single"
		if ci.PrefixMode {
			mode = "prefix"
		}
		st.Cards = append(st.Cards, api.CardStatus{
			Card: ci.Card, Mode: mode, Subnet: ci.Subnet,
			ENIs: nonNil(ci.ENIs), ExclusiveENIs: ci.Exclusive, MaxENIs: ci.MaxENIs,
			Shared: counts(pool.Counts), Exclusive: counts(pool.Exclusive),
			Ready: ready.Ready, Reason: ready.Reason,
			LastError: ci.LastError, LastErrorAt: ci.LastErrorAt.UTC(),
		})
	}
	return st, nil
}

// cardInfos is the ENI manager's view of the cards, or the bare list of cards without it.
func (a *Agent) cardInfos() []CardInfo {
	if a.cfg.CardInfo != nil {
		return a.cfg.CardInfo()
	}
	var out []CardInfo
	if a.cfg.Cards != nil {
		for _, c := range a.cfg.Cards() {
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
func (a *Agent) Logs(context.Context) (api.LogsResponse, error) {
	resp := api.LogsResponse{Lines: []string{}}
	if a.cfg.Logs != nil {
		resp.Lines = append(resp.Lines, a.cfg.Logs()...)
	}
	return resp, nil
}
