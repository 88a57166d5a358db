package eni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni/awsec2"
	"github.com/multinic/multinic/ipam/eni/plan"
)

// cardLoop keeps one card's ENIs and pool in shape: on every Kick, every RefillInterval, and when a
// surplus address comes due. After a failure it waits (plan.Backoff) and ignores Kicks meanwhile, so
// waiting allocations cannot hammer EC2 with a request that keeps failing; LastError tells them why.
func (m *Manager) cardLoop(ctx context.Context, cs *cardState) {
	log := m.log.With("card", cs.index)
	stepCtx := awsec2.WithAttemptObserver(ctx, func(action string, err error) {
		if err != nil {
			err = fmt.Errorf("%s on card %d (retrying): %w", action, cs.index, err)
		}
		m.setLastErr(cs, err)
	})
	failures := 0
	for {
		next, err := m.step(stepCtx, cs)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			if awsec2.Throttled(err) {
				// EC2 said "later", not "no": the calls' own backoff paced the attempts already, and a card
				// that waited longer after each throttle would sit out the end of a scale-up's storm.
				failures = 1
			}
			m.mu.Lock()
			cs.setErrLocked(err)
			cs.failedSteps++
			m.mu.Unlock()
			wait := plan.Backoff(failures, m.cfg.RefillInterval, m.cfg.ErrorBackoffMax)
			log.Warn("card pool step failed", "err", err, "failures", failures, "retryIn", wait)
			if ctxtime.Sleep(ctx, wait) != nil {
				return
			}
			select {
			case <-cs.kick:
			default:
			}
			continue
		}
		failures = 0
		m.setLastErr(cs, nil)
		wait := m.cfg.RefillInterval
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-cs.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// maxPlans bounds the plans one step executes: each makes progress, so only a bug reaches it.
const maxPlans = 10000

// step looks at the links of the card's free exclusive ENIs (exclusive.go), then plans (package plan) and
// executes the plan until a plan has nothing to do. next is when a surplus address or exclusive ENI comes
// due (zero: none pending).
func (m *Manager) step(ctx context.Context, cs *cardState) (next time.Time, err error) {
	cs.exclMu.Lock()
	err = m.checkExclusive(ctx, cs, true)
	cs.exclMu.Unlock()
	if err != nil {
		return time.Time{}, err
	}
	for range maxPlans {
		p := plan.Step(m.planInput(cs), m.cfg.policy())
		m.mu.Lock()
		cs.surplusSince, cs.exclSince = p.SurplusSince, p.ExclusiveSince
		m.mu.Unlock()
		if len(p.Actions) == 0 {
			return p.Next, nil
		}
		for _, a := range p.Actions {
			err := m.execute(ctx, cs, a)
			if err != nil && a.Idle && !m.cfg.Eager && awsec2.Throttled(err) {
				// It gave way to calls something waits for; the next plan sees EC2 busy and waits too.
				m.log.Debug("idle EC2 work throttled; it waits until EC2 is not busy", "card", cs.index, "eni", a.ENIID, "err", err)
				break
			}
			if err != nil {
				return time.Time{}, err
			}
		}
	}
	return time.Time{}, fmt.Errorf("card %d: no progress after %d plans", cs.index, maxPlans)
}

// planInput is the card as the planner sees it now.
func (m *Manager) planInput(cs *cardState) plan.Card {
	in := plan.Card{
		Pool: m.alloc.Stats(cs.index), Warm: m.alloc.Warm(cs.index), Now: time.Now(),
	}
	if !m.cfg.Eager {
		// EC2 counts as busy for ErrorBackoffMax after the start (the node may be one of many an autoscaler
		// launched together, whose first calls find the account's bucket full) and after every throttle: as
		// long as a card still in a scale-up's storm may wait between its tries, so that it tries again
		// before idle work does.
		since := m.started
		if at := m.ec2.ThrottledAt(); at.After(since) {
			since = at
		}
		in.BusyUntil = since.Add(m.cfg.ErrorBackoffMax)
	}
	free := m.alloc.FreeExclusive(cs.index)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range free {
		if e := m.enis[p.ENIID]; e == nil || !e.launch { // a launch ENI is never given back
			in.FreeExclusive = append(in.FreeExclusive, p)
		}
	}
	for _, e := range m.enis {
		if e.card != cs.index {
			continue
		}
		in.ENIs = append(in.ENIs, plan.ENI{
			// A launch ENI's DeleteOnTermination is the launch template's to decide.
			ID: e.id, Device: e.device, Exclusive: e.exclusive, DeleteOnTermination: e.dot || e.launch,
			Ready:            e.linkReady && len(e.pending) == 0 && !e.pendingExclusive,
			PendingExclusive: e.pendingExclusive, Slots: e.slots(), Prefixes: slices.Clone(e.prefixes),
			IPv6Prefixes: len(e.prefixes6),
		})
	}
	in.NoIPv4, in.IPv6 = !api.WantsIPv4(cs.family), api.WantsIPv6(cs.family)
	in.Attached, in.MaxENIs, in.SlotsPerENI = len(m.occupied[cs.index]), m.limits.enisPerCard[cs.index], m.limits.ipv4PerENI
	in.ExclusiveWaiting, in.ExclusiveAsked = cs.exclWaiting, !cs.exclAsked.IsZero()
	in.SurplusSince, in.ExclusiveSince = cs.surplusSince, cs.exclSince
	return in
}

// execute does one planned action. Idle work gives way to a busy EC2 (awsec2.YieldOnThrottle).
func (m *Manager) execute(ctx context.Context, cs *cardState, a plan.Action) error {
	if a.Idle && !m.cfg.Eager {
		ctx = awsec2.YieldOnThrottle(ctx)
	}
	m.mu.Lock()
	e := m.enis[a.ENIID]
	m.mu.Unlock()
	switch a.Kind {
	case plan.SetDeleteOnTermination:
		if e != nil {
			return m.setDeleteOnTermination(ctx, e)
		}
	case plan.FinishENI:
		if e != nil {
			return m.finishENI(ctx, e)
		}
	case plan.CreateENI:
		if !a.Exclusive {
			_, err := m.createENI(ctx, cs, false, a.Batch)
			return err
		}
		cs.exclMu.Lock()
		defer cs.exclMu.Unlock()
		if _, err := m.createENI(ctx, cs, true, 0); err != nil {
			return err
		}
		m.mu.Lock()
		cs.exclAsked = time.Time{} // served
		m.mu.Unlock()
	case plan.Assign:
		if e != nil {
			return m.assign(ctx, cs, e, a)
		}
	case plan.GiveBack:
		if e != nil {
			return m.giveBack(ctx, cs, e, a.Addresses, a.Prefix)
		}
	case plan.AssignIPv6Prefix:
		if e != nil {
			return m.assignIPv6Prefix(ctx, cs, e)
		}
	case plan.RemoveExclusive:
		cs.exclMu.Lock()
		defer cs.exclMu.Unlock()
		return m.removeExclusive(ctx, cs, a.ENIID, a.Addresses[0])
	}
	return nil
}

// assign adds one batch of addresses (or prefixes) to e and to the allocator. A subnet that cannot give
// the whole batch is asked for less (plan.Smaller).
func (m *Manager) assign(ctx context.Context, cs *cardState, e *eniState, a plan.Action) error {
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	n := a.Batch
	what := "addresses"
	if m.cfg.PrefixMode {
		what = "/28 prefixes"
	}
	var got awsec2.Assigned
	for {
		var err error
		got, err = m.ec2.Assign(ctx, e.id, n, m.cfg.PrefixMode)
		if smaller, ok := plan.Smaller(n, false); ok && awsec2.SubnetFull(err) {
			m.log.Warn("subnet too full for the batch; asking for half", "card", cs.index, "eni", e.id, "batch", n, "err", err)
			n = smaller
			continue
		}
		if err != nil {
			return fmt.Errorf("assign %d %s on card %d (%s, subnet %s): %w", n, what, cs.index, e.id, e.subnetID, err)
		}
		break
	}
	addrs := got.All()
	m.recent.assign(e.id, addrs...)
	m.saveRecent()
	m.mu.Lock()
	e.secondaries += len(got.Addresses)
	e.prefixes = append(e.prefixes, got.Prefixes...)
	m.mu.Unlock()
	if len(addrs) == 0 {
		return fmt.Errorf("assign %d %s on card %d (%s): ec2 returned none", n, what, cs.index, e.id)
	}
	if _, err := m.alloc.AddAddresses(cs.index, e.id, addrs...); err != nil {
		// EC2 has them, the allocator could not record them: give them back rather than leak them.
		if uerr := m.unassignEC2(ctx, e, got.Addresses, got.Prefixes); uerr != nil {
			m.log.Error("addresses left on ENI after a failed checkpoint; reconcile will pick them up",
				"card", cs.index, "eni", e.id, "err", uerr)
		}
		return fmt.Errorf("add %d addresses of %s to card %d: %w", len(addrs), e.id, cs.index, err)
	}
	m.log.Info("assigned addresses", "card", cs.index, "eni", e.id, "addresses", len(addrs), "prefixes", len(got.Prefixes), "need", a.Need, "waiting", a.Waiting)
	return nil
}

// assignIPv6Prefix gives e one IPv6 /80 and adds it to the card's IPv6 pool; if the allocator cannot
// record it, it goes back to EC2.
func (m *Manager) assignIPv6Prefix(ctx context.Context, cs *cardState, e *eniState) error {
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	got, err := m.ec2.AssignIPv6Prefixes(ctx, e.id, 1)
	if err != nil {
		return fmt.Errorf("assign an IPv6 prefix on card %d (%s, subnet %s): %w", cs.index, e.id, e.subnetID, err)
	}
	if len(got) == 0 {
		return fmt.Errorf("assign an IPv6 prefix on card %d (%s): ec2 returned none", cs.index, e.id)
	}
	m.recent.assign(e.id, prefixAddrs(got)...)
	m.saveRecent()
	m.mu.Lock()
	e.prefixes6 = append(e.prefixes6, got...)
	m.mu.Unlock()
	if _, err := m.alloc.AddIPv6Prefixes(cs.index, e.id, got...); err != nil {
		m.recent.unassign(e.id, prefixAddrs(got)...)
		m.saveRecent()
		if uerr := m.ec2.UnassignIPv6(ctx, e.id, nil, got); uerr != nil {
			m.log.Error("IPv6 prefix left on ENI after a failed checkpoint; reconcile will pick it up",
				"card", cs.index, "eni", e.id, "prefixes", got, "err", uerr)
		} else {
			m.mu.Lock()
			e.prefixes6 = slices.DeleteFunc(e.prefixes6, func(p netip.Prefix) bool { return slices.Contains(got, p) })
			m.mu.Unlock()
		}
		return fmt.Errorf("add IPv6 prefixes of %s to card %d: %w", e.id, cs.index, err)
	}
	m.log.Info("assigned IPv6 prefix", "card", cs.index, "eni", e.id, "prefixes", got)
	return nil
}

// unassignEC2 gives addresses and prefixes of e back to EC2 and updates e's counts.
func (m *Manager) unassignEC2(ctx context.Context, e *eniState, addrs []netip.Addr, pfxs []netip.Prefix) error {
	if len(addrs)+len(pfxs) == 0 {
		return nil
	}
	// Remembered (and saved) first, and kept if the call fails: see recent.unassign.
	m.recent.unassign(e.id, awsec2.Assigned{Addresses: addrs, Prefixes: pfxs}.All()...)
	m.saveRecent()
	if err := m.ec2.Unassign(ctx, e.id, addrs, pfxs); err != nil {
		return fmt.Errorf("unassign %d addresses and %d prefixes from card %d (%s): %w", len(addrs), len(pfxs), e.card, e.id, err)
	}
	m.mu.Lock()
	e.secondaries = max(e.secondaries-len(addrs), 0)
	e.prefixes = slices.DeleteFunc(e.prefixes, func(p netip.Prefix) bool { return slices.Contains(pfxs, p) })
	m.mu.Unlock()
	return nil
}

// giveBack removes free addresses from the allocator first, then unassigns what was removed (a whole
// prefix or nothing, in prefix mode); on an EC2 failure the addresses go back into the pool.
func (m *Manager) giveBack(ctx context.Context, cs *cardState, e *eniState, addrs []netip.Addr, pfx netip.Prefix) error {
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	removed, err := m.alloc.RemoveAddresses(cs.index, addrs...)
	if err != nil {
		return fmt.Errorf("return surplus of card %d (%s): %w", cs.index, e.id, err)
	}
	if len(removed) == 0 {
		return nil
	}
	var pfxs []netip.Prefix
	ips := removed
	if pfx.IsValid() {
		if len(removed) != len(addrs) { // one was allocated meanwhile: keep the prefix
			if _, err := m.alloc.AddAddresses(cs.index, e.id, removed...); err != nil {
				return fmt.Errorf("put back addresses of %s on card %d: %w", pfx, cs.index, err)
			}
			return nil
		}
		pfxs, ips = []netip.Prefix{pfx}, nil
	}
	if err := m.unassignEC2(ctx, e, ips, pfxs); err != nil {
		if _, aerr := m.alloc.AddAddresses(cs.index, e.id, removed...); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return err
	}
	m.log.Info("returned surplus to EC2", "card", cs.index, "eni", e.id, "addresses", len(removed), "prefix", pfx)
	return nil
}

// removeExclusive takes a free exclusive ENI out of the allocator, then detaches and deletes it; on a
// failure it goes back into the pool.
func (m *Manager) removeExclusive(ctx context.Context, cs *cardState, id string, primary netip.Addr) error {
	m.mu.Lock()
	launch := m.enis[id] != nil && m.enis[id].launch
	m.mu.Unlock()
	if launch {
		return nil // never detached or deleted by the agent
	}
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	removed, err := m.alloc.RemoveAddresses(cs.index, primary)
	if err != nil || len(removed) == 0 {
		return err
	}
	m.mu.Lock()
	e := m.enis[id]
	m.mu.Unlock()
	if e == nil {
		return nil
	}
	if err := m.detachDelete(ctx, e); err != nil {
		if aerr := m.alloc.AddExclusiveENI(cs.index, id, primary, e.ipv6Arg()...); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return err
	}
	return nil
}

// detachDelete detaches e and deletes it once EC2 lets it (it refuses while the detach is under way): by
// trying the delete, not by waiting for Describe to say "available", which may lag. A delete still
// refused after LinkTimeout is left to the detached-ENI cleanup (the ENI carries this node's tags).
func (m *Manager) detachDelete(ctx context.Context, e *eniState) error {
	if err := m.ec2.Detach(ctx, e.attachmentID); err != nil && !awsec2.NotFound(err) {
		return fmt.Errorf("detach %s from card %d: %w", e.id, e.card, err)
	}
	m.recent.detach(e.id)
	m.saveRecent()
	m.mu.Lock()
	delete(m.enis, e.id)
	if m.occupied[e.card][e.device] == e.id {
		delete(m.occupied[e.card], e.device)
	}
	m.mu.Unlock()
	deadline := time.Now().Add(m.cfg.LinkTimeout)
	for {
		err := m.deleteENI(ctx, e.card, e.id)
		if err == nil {
			m.log.Info("deleted surplus exclusive ENI", "card", e.card, "eni", e.id)
			return nil
		}
		if !awsec2.InUse(err) || time.Now().After(deadline) || ctxtime.Sleep(ctx, m.cfg.LinkPoll) != nil {
			m.log.Warn("detached ENI not deleted yet; left for the detached-ENI cleanup", "card", e.card, "eni", e.id, "err", err)
			return nil
		}
	}
}

// deleteENI deletes a detached ENI even if ctx is cancelled; NotFound counts as deleted. A failure is
// returned, and left to the detached-ENI cleanup.
func (m *Manager) deleteENI(ctx context.Context, card int, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := m.ec2.Delete(ctx, id)
	if err != nil && !awsec2.NotFound(err) {
		if !awsec2.InUse(err) {
			m.log.Error("delete ENI failed; the detached-ENI cleanup will retry", "card", card, "eni", id, "err", err)
		}
		return fmt.Errorf("delete %s: %w", id, err)
	}
	return nil
}
