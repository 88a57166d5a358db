package eni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/multinic/multinic/internal/ctxtime"
	"github.com/multinic/multinic/ipam/allocator"
)

// cardLoop keeps one card's ENIs and pool in shape: on every Kick, every RefillInterval, and when a
// surplus address comes due. After a failure it waits (RefillInterval/10, doubling up to ErrorBackoffMax)
// and ignores Kicks meanwhile, so waiting allocations cannot hammer EC2 with a request that keeps failing;
// LastError tells them why.
func (m *Manager) cardLoop(ctx context.Context, cs *cardState) {
	log := m.log.With("card", cs.index)
	stepCtx := withAttemptObserver(ctx, func(action string, err error) {
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
			m.mu.Lock()
			cs.setErrLocked(err)
			cs.failedSteps++
			m.mu.Unlock()
			wait := min(m.cfg.ErrorBackoffMax, (m.cfg.RefillInterval/10)<<min(failures-1, 20))
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

// step makes sure the card has a ready shared ENI, brings home, creates and gives back exclusive ENIs
// (exclusive.go), and refills and shrinks the shared pool. next is when a surplus address or exclusive ENI
// comes due (zero: none pending).
func (m *Manager) step(ctx context.Context, cs *cardState) (next time.Time, err error) {
	if err := m.ensureENIs(ctx, cs); err != nil {
		return time.Time{}, err
	}
	n2, err := m.stepExclusive(ctx, cs)
	if err != nil {
		return time.Time{}, err
	}
	if err := m.refill(ctx, cs); err != nil {
		return time.Time{}, err
	}
	n1, err := m.shrink(ctx, cs)
	if err != nil {
		return time.Time{}, err
	}
	switch {
	case n1.IsZero():
		return n2, nil
	case n2.IsZero() || n1.Before(n2):
		return n1, nil
	}
	return n2, nil
}

// ensureENIs finishes ENIs whose link or DeleteOnTermination is not set up yet and creates the card's
// first shared ENI.
func (m *Manager) ensureENIs(ctx context.Context, cs *cardState) error {
	m.mu.Lock()
	var unready, noDOT []*eniState
	shared := 0
	for _, e := range m.enis {
		if e.card != cs.index {
			continue
		}
		if !e.linkReady || len(e.pending) > 0 || e.pendingExclusive {
			unready = append(unready, e)
		}
		if !e.dot {
			noDOT = append(noDOT, e)
		}
		if !e.exclusive {
			shared++
		}
	}
	m.mu.Unlock()
	for _, e := range noDOT {
		if err := m.setDeleteOnTermination(ctx, e); err != nil {
			return err
		}
	}
	for _, e := range unready {
		if err := m.finishENI(ctx, e); err != nil {
			return err
		}
	}
	if shared == 0 {
		if _, err := m.createENI(ctx, cs, false, allocator.Demand{Need: *m.cfg.WarmTarget}); err != nil {
			return err
		}
	}
	return nil
}

// refill asks EC2 for addresses until the allocator needs none, adding ENIs when the card's are full.
func (m *Manager) refill(ctx context.Context, cs *cardState) error {
	for range 10000 {
		d := m.alloc.Demand(cs.index, *m.cfg.WarmTarget, *m.cfg.MinFree)
		if d.Need == 0 {
			return nil
		}
		e := m.sharedWithRoom(cs.index)
		if e == nil {
			if _, err := m.createENI(ctx, cs, false, d); err != nil {
				return err
			}
			continue
		}
		if err := m.assign(ctx, cs, e, d); err != nil {
			return err
		}
	}
	return fmt.Errorf("refill card %d: no progress", cs.index)
}

// sharedWithRoom is the card's ready shared ENI with the lowest device index that can take one more
// address or prefix.
func (m *Manager) sharedWithRoom(card int) *eniState {
	m.mu.Lock()
	defer m.mu.Unlock()
	var best *eniState
	for _, e := range m.enis {
		if e.card != card || e.exclusive || !e.linkReady || e.slots() >= m.limits.ipv4PerENI {
			continue
		}
		if best == nil || e.device < best.device {
			best = e
		}
	}
	return best
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// batch is what one call asks for: addresses, or prefixes in prefix mode; at most MaxBatch addresses.
func (m *Manager) batch(d allocator.Demand, room int) int {
	if m.cfg.PrefixMode {
		return max(min(ceilDiv(d.Need, PrefixSize), room, max(1, m.cfg.MaxBatch/PrefixSize)), 0)
	}
	return max(min(d.Need, room, m.cfg.MaxBatch), 0)
}

// assign adds one batch of addresses (or prefixes) to e and to the allocator. A subnet that cannot give
// the whole batch is asked for half, down to one.
func (m *Manager) assign(ctx context.Context, cs *cardState, e *eniState, d allocator.Demand) error {
	m.opMu.RLock()
	defer m.opMu.RUnlock()
	m.mu.Lock()
	n := m.batch(d, m.limits.ipv4PerENI-e.slots())
	m.mu.Unlock()
	what := "addresses"
	if m.cfg.PrefixMode {
		what = "/28 prefixes"
	}
	var out *ec2.AssignPrivateIpAddressesOutput
	for {
		in := &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(e.id)}
		if m.cfg.PrefixMode {
			in.Ipv4PrefixCount = aws.Int32(int32(n))
		} else {
			in.SecondaryPrivateIpAddressCount = aws.Int32(int32(n))
		}
		var err error
		out, err = do(ctx, m.ec2, "AssignPrivateIpAddresses", func(ctx context.Context, o func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error) {
			return m.ec2.api.AssignPrivateIpAddresses(ctx, in, o)
		})
		if code := ErrorCode(err); n > 1 && (code == "InsufficientFreeAddressesInSubnet" || code == "InsufficientCidrBlocks") {
			m.log.Warn("subnet too full for the batch; asking for half", "card", cs.index, "eni", e.id, "batch", n, "err", err)
			n /= 2
			continue
		}
		if err != nil {
			return fmt.Errorf("assign %d %s on card %d (%s, subnet %s): %w", n, what, cs.index, e.id, e.subnetID, err)
		}
		break
	}
	var addrs []netip.Addr
	var pfxs []netip.Prefix
	for _, a := range out.AssignedPrivateIpAddresses {
		if ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress)); err == nil {
			addrs = append(addrs, ip)
		}
	}
	for _, p := range out.AssignedIpv4Prefixes {
		if pfx, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
			pfxs = append(pfxs, pfx)
			addrs = append(addrs, expand(pfx)...)
		}
	}
	m.recent.assign(e.id, addrs...)
	m.mu.Lock()
	e.secondaries += len(out.AssignedPrivateIpAddresses)
	e.prefixes = append(e.prefixes, pfxs...)
	m.mu.Unlock()
	if len(addrs) == 0 {
		return fmt.Errorf("assign %d %s on card %d (%s): ec2 returned none", n, what, cs.index, e.id)
	}
	if _, err := m.alloc.AddAddresses(cs.index, e.id, addrs...); err != nil {
		// EC2 has them, the allocator could not record them: give them back rather than leak them.
		if uerr := m.unassignEC2(ctx, e, addrs[:len(out.AssignedPrivateIpAddresses)], pfxs); uerr != nil {
			m.log.Error("addresses left on ENI after a failed checkpoint; reconcile will pick them up",
				"card", cs.index, "eni", e.id, "err", uerr)
		}
		return fmt.Errorf("add %d addresses of %s to card %d: %w", len(addrs), e.id, cs.index, err)
	}
	m.log.Info("assigned addresses", "card", cs.index, "eni", e.id, "addresses", len(addrs), "prefixes", len(pfxs), "need", d.Need, "waiting", d.Waiting)
	return nil
}

// expand lists every address of a delegated prefix: on EC2 all 16 addresses of a /28 are usable.
func expand(p netip.Prefix) []netip.Addr {
	p = p.Masked()
	n := 1 << (32 - p.Bits())
	out := make([]netip.Addr, 0, n)
	for a, i := p.Addr(), 0; i < n; a, i = a.Next(), i+1 {
		out = append(out, a)
	}
	return out
}

// unassignEC2 gives addresses and prefixes of e back to EC2 and updates e's counts.
func (m *Manager) unassignEC2(ctx context.Context, e *eniState, addrs []netip.Addr, pfxs []netip.Prefix) error {
	if len(addrs)+len(pfxs) == 0 {
		return nil
	}
	in := &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(e.id)}
	for _, a := range addrs {
		in.PrivateIpAddresses = append(in.PrivateIpAddresses, a.String())
	}
	gone := slices.Clone(addrs)
	for _, p := range pfxs {
		in.Ipv4Prefixes = append(in.Ipv4Prefixes, p.String())
		gone = append(gone, expand(p)...)
	}
	// Remembered (and saved) first, and kept if the call fails: see recent.unassign.
	m.recent.unassign(e.id, gone...)
	m.saveRecent()
	_, err := do(ctx, m.ec2, "UnassignPrivateIpAddresses", func(ctx context.Context, o func(*ec2.Options)) (*ec2.UnassignPrivateIpAddressesOutput, error) {
		return m.ec2.api.UnassignPrivateIpAddresses(ctx, in, o)
	})
	if err != nil {
		return fmt.Errorf("unassign %d addresses and %d prefixes from card %d (%s): %w", len(addrs), len(pfxs), e.card, e.id, err)
	}
	m.mu.Lock()
	e.secondaries = max(e.secondaries-len(addrs), 0)
	e.prefixes = slices.DeleteFunc(e.prefixes, func(p netip.Prefix) bool { return slices.Contains(pfxs, p) })
	m.mu.Unlock()
	return nil
}

// shrink gives back warm addresses that have been beyond the warm target for SurplusDelay. Resting
// addresses are never candidates (the allocator does not offer them), so an address goes back to EC2 at
// the earliest SurplusDelay after its cooldown ended. In prefix mode only whole /28s whose 16 addresses
// are all due go back.
func (m *Manager) shrink(ctx context.Context, cs *cardState) (next time.Time, err error) {
	surplus := m.alloc.Surplus(cs.index, *m.cfg.WarmTarget)
	now := time.Now()
	due := map[netip.Addr]string{} // address -> ENI
	m.mu.Lock()
	in := make(map[netip.Addr]bool, len(surplus))
	for _, p := range surplus {
		in[p.Address] = true
		since, ok := cs.surplusSince[p.Address]
		if !ok {
			since = now
			cs.surplusSince[p.Address] = now
		}
		if at := since.Add(m.cfg.SurplusDelay); !at.After(now) {
			due[p.Address] = p.ENIID
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	for a := range cs.surplusSince {
		if !in[a] {
			delete(cs.surplusSince, a)
		}
	}
	type job struct {
		e     *eniState
		addrs []netip.Addr
		pfx   netip.Prefix
	}
	var jobs []job
	if m.cfg.PrefixMode {
		for _, e := range m.enis {
			if e.card != cs.index || e.exclusive {
				continue
			}
			for _, p := range e.prefixes {
				all := expand(p)
				if !slices.ContainsFunc(all, func(a netip.Addr) bool { return due[a] != e.id }) {
					jobs = append(jobs, job{e: e, addrs: all, pfx: p})
				}
			}
		}
	} else {
		byENI := map[string][]netip.Addr{}
		for a, id := range due {
			byENI[id] = append(byENI[id], a)
		}
		for id, addrs := range byENI {
			if e := m.enis[id]; e != nil {
				slices.SortFunc(addrs, netip.Addr.Compare)
				jobs = append(jobs, job{e: e, addrs: addrs})
			}
		}
	}
	m.mu.Unlock()
	for _, j := range jobs {
		if err := m.giveBack(ctx, cs, j.e, j.addrs, j.pfx); err != nil {
			return time.Time{}, err
		}
	}
	return next, nil
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
	m.mu.Lock()
	for _, a := range removed {
		delete(cs.surplusSince, a)
	}
	m.mu.Unlock()
	m.log.Info("returned surplus to EC2", "card", cs.index, "eni", e.id, "addresses", len(removed), "prefix", pfx)
	return nil
}

// shrinkExclusive detaches and deletes exclusive ENIs that have been free and rested for SurplusDelay,
// unless exclusive ADDs are waiting for one.
func (m *Manager) shrinkExclusive(ctx context.Context, cs *cardState) (next time.Time, err error) {
	m.mu.Lock()
	asked := cs.exclWaiting > 0 || !cs.exclAsked.IsZero()
	m.mu.Unlock()
	if asked {
		return time.Time{}, nil
	}
	now := time.Now()
	var due []string
	free := map[string]netip.Addr{}
	for _, p := range m.alloc.FreeExclusive(cs.index) {
		free[p.ENIID] = p.Address
	}
	m.mu.Lock()
	for id := range free {
		since, ok := cs.exclSince[id]
		if !ok {
			since = now
			cs.exclSince[id] = now
		}
		if at := since.Add(m.cfg.SurplusDelay); !at.After(now) {
			due = append(due, id)
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	for id := range cs.exclSince {
		if _, ok := free[id]; !ok {
			delete(cs.exclSince, id)
		}
	}
	m.mu.Unlock()
	for _, id := range due {
		if err := m.removeExclusive(ctx, cs, id, free[id]); err != nil {
			return time.Time{}, err
		}
	}
	return next, nil
}

func (m *Manager) removeExclusive(ctx context.Context, cs *cardState, id string, primary netip.Addr) error {
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
		if aerr := m.alloc.AddExclusiveENI(cs.index, id, primary); aerr != nil {
			err = errors.Join(err, aerr)
		}
		return err
	}
	m.mu.Lock()
	delete(cs.exclSince, id)
	m.mu.Unlock()
	return nil
}

// detachDelete detaches e and deletes it once EC2 lets it (it refuses while the detach is under way): by
// trying the delete, not by waiting for Describe to say "available", which may lag. A delete still
// refused after LinkTimeout is left to the detached-ENI cleanup (the ENI carries this node's
// tags).
func (m *Manager) detachDelete(ctx context.Context, e *eniState) error {
	_, err := do(ctx, m.ec2, "DetachNetworkInterface", func(ctx context.Context, o func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error) {
		return m.ec2.api.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(e.attachmentID)}, o)
	})
	if err != nil && ErrorCode(err) != "InvalidAttachmentID.NotFound" {
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
		if !eniInUse(err) || time.Now().After(deadline) || ctxtime.Sleep(ctx, m.cfg.LinkPoll) != nil {
			m.log.Warn("detached ENI not deleted yet; left for the detached-ENI cleanup", "card", e.card, "eni", e.id, "err", err)
			return nil
		}
	}
}

// eniInUse: EC2 refuses to delete an ENI that is attached (or still detaching).
func eniInUse(err error) bool {
	return ErrorCode(err) == "InvalidParameterValue" && strings.Contains(err.Error(), "currently in use")
}

// deleteENI deletes a detached ENI even if ctx is cancelled; NotFound counts as deleted. A failure is
// returned, and left to the detached-ENI cleanup.
func (m *Manager) deleteENI(ctx context.Context, card int, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, err := do(ctx, m.ec2, "DeleteNetworkInterface", func(ctx context.Context, o func(*ec2.Options)) (*ec2.DeleteNetworkInterfaceOutput, error) {
		return m.ec2.api.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)}, o)
	})
	if err != nil && ErrorCode(err) != "InvalidNetworkInterfaceID.NotFound" {
		if !eniInUse(err) {
			m.log.Error("delete ENI failed; the detached-ENI cleanup will retry", "card", card, "eni", id, "err", err)
		}
		return fmt.Errorf("delete %s: %w", id, err)
	}
	return nil
}
