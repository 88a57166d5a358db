package eni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/multinic/multinic/internal/netnsdir"
	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/plan"
	"github.com/multinic/multinic/ipam/enipool"
)

// Exclusive ENIs. The plugin moves an exclusive ENI's link into its pod, so the node netns not holding the
// link says nothing about whether a pod still uses the ENI. The rule: an exclusive ENI is reused, detached
// or deleted only once its allocation was released AND its link was seen back in the node netns. A
// released ENI is away (allocator.SetAway) until then:
//   - its link comes home (a DEL moved it out, or its pod netns died and the kernel moved the device back,
//     possibly under the pod-side name and with the plugin's alias): the link is restored (name, alias,
//     MTU, up) and the ENI is usable again;
//   - its link is gone for good: only a virtual device dies with its netns, and that is a dead ENI only
//     when the released allocation's netns is itself gone (it lived in one of NetnsDirs) and the link
//     stayed away deadLinkGrace longer. The card loop, never an ADD, then deletes the ENI;
//   - anything else (netns alive, or unknown): the ENI is kept, away, and never handed out.
// An exclusive ENI the allocator does not know (no checkpoint) is registered only when its link is home;
// one in a pod stays out of the pools (multinic-agent --recover gives it back to its pod).

// EnsureExclusive waits until the card has a usable exclusive ENI, or ctx ends. It never calls EC2: it
// looks at the card's free exclusive ENIs' links (a released ENI whose link is home is usable at once) and
// asks the card loop, which creates ENIs with its backoff after EC2 errors. Once a card loop step failed
// after this call asked, the answer is that failure, EC2's code in it: ADDs retried while EC2 refuses
// make no EC2 calls of their own, and wait at most for the card loop's next step. On a full card with an
// ENI resting or away, it waits.
func (m *Manager) EnsureExclusive(ctx context.Context, card int) error {
	m.mu.Lock()
	cs := m.cards[card]
	if cs != nil {
		cs.exclWaiting++
		if cs.exclAsked.IsZero() {
			cs.exclAsked = time.Now()
		}
	}
	m.mu.Unlock()
	if cs == nil {
		return fmt.Errorf("ensure exclusive ENI on card %d: %w", card, api.ErrNotManaged)
	}
	defer func() {
		m.mu.Lock()
		cs.exclWaiting--
		m.mu.Unlock()
	}()
	m.mu.Lock()
	steps := cs.failedSteps
	m.mu.Unlock()
	tick := time.NewTicker(max(m.cfg.LinkPoll, 5*time.Millisecond))
	defer tick.Stop()
	for kicked := false; ; kicked = true {
		cs.exclMu.Lock()
		err := m.checkExclusive(ctx, cs, false)
		cs.exclMu.Unlock()
		if err != nil {
			return fmt.Errorf("ensure exclusive ENI on card %d: %w", card, err)
		}
		st := m.alloc.Stats(card).Exclusive
		if st.Warm > 0 {
			m.mu.Lock()
			cs.exclAsked = time.Time{}
			m.mu.Unlock()
			return nil
		}
		m.mu.Lock()
		failed, last := cs.failedSteps != steps, cs.lastErr
		m.mu.Unlock()
		if failed && last != nil && !(errors.Is(last, enipool.ErrCardFull) && plan.WorthWaiting(st)) {
			return fmt.Errorf("ensure exclusive ENI on card %d: %w", card, last)
		}
		if !kicked {
			m.Kick(card)
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("ensure exclusive ENI on card %d: %w (last EC2 error: %w)", card, ctx.Err(), last)
			}
			return fmt.Errorf("ensure exclusive ENI on card %d: %w", card, ctx.Err())
		case <-tick.C:
		}
	}
}

// checkExclusive looks, in one link dump, for the links of the card's free exclusive ENIs: a usable one
// whose link left the node netns becomes away; an away one whose link is home is restored and usable
// again. With deleteDead (the card loop) an away ENI whose link is dead is deleted. Exclusive ENIs of
// this node the allocator does not know are registered when their link is home.
func (m *Manager) checkExclusive(ctx context.Context, cs *cardState, deleteDead bool) error {
	free := m.alloc.FreeExclusive(cs.index)
	away := m.alloc.AwayExclusive(cs.index)
	known := map[string]bool{}
	for _, p := range m.alloc.Known() {
		if p.Card == cs.index && p.Exclusive {
			known[p.ENIID] = true
		}
	}
	type cand struct {
		e    *eniState
		pool allocator.PoolAddress
	}
	var cands []cand
	var unknown []*eniState
	var macs []net.HardwareAddr
	m.mu.Lock()
	for _, p := range append(free, away...) {
		if e := m.enis[p.ENIID]; e != nil && e.linkReady {
			cands = append(cands, cand{e, p})
			macs = append(macs, e.mac)
		}
	}
	for _, e := range m.enis {
		if e.card == cs.index && e.exclusive && e.linkReady && !e.pendingExclusive && !known[e.id] {
			unknown = append(unknown, e)
			macs = append(macs, e.mac)
		}
	}
	m.mu.Unlock()
	if len(macs) == 0 {
		return nil
	}
	names, err := m.links.LinkNames(macs...)
	if err != nil {
		return fmt.Errorf("find the links of card %d's free exclusive ENIs: %w", cs.index, err)
	}
	for _, c := range cands {
		name, home := names[c.e.mac.String()]
		switch {
		case home:
			if err := m.comeHome(cs, c.e, name, c.pool.Away); err != nil {
				return err
			}
		case !c.pool.Away: // a usable ENI's link left home: someone else moved it
			m.log.Warn("free exclusive ENI's link left the node netns; not handed out until it is back",
				"card", cs.index, "eni", c.e.id, "link", c.e.linkName)
			if err := m.alloc.SetAway(cs.index, c.e.id, true); err != nil {
				return err
			}
		case deleteDead:
			if err := m.deleteIfDead(ctx, cs, c.e, c.pool); err != nil {
				return err
			}
		}
	}
	for _, e := range unknown {
		name, home := names[e.mac.String()]
		if !home {
			m.logOnce(cs, e.id, "exclusive ENI in no allocation and not in the node netns: kept, never handed out (multinic-agent --recover gives it back to its pod)",
				"card", cs.index, "eni", e.id)
			continue
		}
		if _, err := m.restoreLink(cs, e, name); err != nil {
			return err
		}
		if err := m.alloc.AddExclusiveENI(e.card, e.id, e.primary, e.ipv6Arg()...); err != nil {
			return fmt.Errorf("register exclusive ENI %s on card %d: %w", e.id, e.card, err)
		}
		m.log.Info("registered exclusive ENI found in the node netns", "card", cs.index, "eni", e.id, "link", name)
	}
	return nil
}

// comeHome restores the link of a free exclusive ENI found in the node netns and, when it was away,
// makes the ENI usable again.
func (m *Manager) comeHome(cs *cardState, e *eniState, name string, away bool) error {
	if _, err := m.restoreLink(cs, e, name); err != nil {
		return err
	}
	m.mu.Lock()
	delete(cs.exclGone, e.id)
	m.mu.Unlock()
	if !away {
		return nil
	}
	if err := m.alloc.ConfirmHome(cs.index, e.id); err != nil {
		return err
	}
	m.log.Info("exclusive ENI's link is home; usable again", "card", cs.index, "eni", e.id, "link", e.linkName)
	return nil
}

// restoreLink gives e's link, found in the node netns as name, the name it had before a pod (from the
// plugin's alias, or the one the manager knew), no alias, the MTU, and up.
func (m *Manager) restoreLink(cs *cardState, e *eniState, name string) (string, error) {
	m.mu.Lock()
	want := e.linkName
	m.mu.Unlock()
	got, err := m.links.Restore(name, want, m.cfg.MTU)
	if err != nil {
		return "", fmt.Errorf("restore the link of exclusive ENI %s on card %d: %w", e.id, cs.index, err)
	}
	m.mu.Lock()
	if e.linkName != got {
		m.log.Warn("exclusive ENI's link renamed", "card", cs.index, "eni", e.id, "was", e.linkName, "now", got)
		e.linkName = got
	}
	m.mu.Unlock()
	return got, nil
}

// deadLinkGrace is how long a released exclusive ENI's link may take to come home after its netns is gone
// (the kernel moves a real device back while it tears the netns down) before the ENI counts as dead. Its
// allocation was released and its netns is gone, so nothing live uses it either way: the grace only saves
// an ENI that would come home late from being deleted and created again.
const deadLinkGrace = 5 * time.Second

// deleteIfDead deletes an away exclusive ENI once its released allocation's netns is gone and its link
// stayed away deadLinkGrace (at most LinkTimeout) longer: a real ENI's device comes home when its netns
// dies, only a virtual one dies with it. An unknown netns, or one in a directory the agent cannot see, is
// no evidence: the ENI is kept.
func (m *Manager) deleteIfDead(ctx context.Context, cs *cardState, e *eniState, p allocator.PoolAddress) error {
	if e.launch {
		m.logOnce(cs, e.id, "released exclusive launch ENI's link is not home: kept, not handed out (the agent never deletes a launch ENI)",
			"card", cs.index, "eni", e.id, "netns", p.AwayNetns)
		return nil
	}
	if gone, _ := netnsdir.Gone(m.cfg.NetnsDirs, p.AwayNetns); !gone {
		m.logOnce(cs, e.id, "released exclusive ENI's link is not home and its netns is not known gone: kept, not handed out",
			"card", cs.index, "eni", e.id, "netns", p.AwayNetns)
		return nil
	}
	now := time.Now()
	m.mu.Lock()
	since, ok := cs.exclGone[e.id]
	if !ok {
		cs.exclGone[e.id] = now
		since = now
	}
	m.mu.Unlock()
	if now.Sub(since) < min(m.cfg.LinkTimeout, deadLinkGrace) {
		return nil
	}
	m.log.Warn("released exclusive ENI's netns is gone and its link did not come home; deleting the ENI",
		"card", cs.index, "eni", e.id, "netns", p.AwayNetns, "link", e.linkName)
	if err := m.removeExclusive(ctx, cs, e.id, p.Address); err != nil {
		return err
	}
	m.mu.Lock()
	delete(cs.exclGone, e.id)
	m.mu.Unlock()
	return nil
}

// logOnce logs a warning about an ENI the first time a card loop sees it in that condition.
func (m *Manager) logOnce(cs *cardState, eniID, msg string, args ...any) {
	m.mu.Lock()
	seen := cs.warned[eniID+msg]
	cs.warned[eniID+msg] = true
	m.mu.Unlock()
	if !seen {
		m.log.Warn(msg, args...)
	}
}
