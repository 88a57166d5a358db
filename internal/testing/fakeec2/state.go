package fakeec2

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// unattachedIPv4Limit bounds addresses on an ENI that is not attached to any
// instance (EC2 applies the instance type's limit once it is attached).
const unattachedIPv4Limit = 50

// unattachedIPv6Limit is the same bound for IPv6 addresses and prefixes.
const unattachedIPv6Limit = 50

type instance struct {
	id       string
	typ      *InstanceType
	az       string
	subnetID string
	primary  string // ENI ID
	tags     map[string]string
	launched time.Time
}

type subnet struct {
	id    string
	az    string
	pool  *pool
	pool6 *pool6 // nil: no IPv6 CIDR block
	assoc string // the IPv6 CIDR block's association ID
	tags  map[string]string
}

type attachment struct {
	id                  string
	instanceID          string
	card, device        int
	deleteOnTermination bool
	at                  time.Time
}

type eni struct {
	seq             int // creation order, for stable listings
	id              string
	subnetID        string
	mac             string
	description     string
	primaryIP       netip.Addr
	secondary       []netip.Addr
	prefixes        []netip.Prefix
	ipv6            []netip.Addr
	ipv6Prefixes    []netip.Prefix // /80s
	groups          []string
	tags            map[string]string
	sourceDestCheck bool
	clientToken     string
	att             *attachment
	primaryOfInst   bool   // card 0 device 0 of its instance: never detached
	interfaceType   string // "" is "interface"; "efa", "efa-only", "trunk"
}

func (e *eni) status() string {
	if e.att != nil {
		return "in-use"
	}
	return "available"
}

// slots counts what the per-ENI IPv4 limit is charged with. Real EC2 tracks
// prefixes separately; here each /28 prefix takes one slot, which keeps the
// limit meaningful without modelling prefix quotas.
func (e *eni) slots() int { return 1 + len(e.secondary) + len(e.prefixes) }

// slots6 counts what the per-ENI IPv6 limit is charged with: a /80 prefix is one slot, as on EC2.
func (e *eni) slots6() int { return len(e.ipv6) + len(e.ipv6Prefixes) }

// attachmentInfo is what the LinkMaker is told about e.
func (s *Server) attachmentInfo(e *eni) Attachment {
	sn := s.subnets[e.subnetID]
	a := Attachment{
		ENIID:      e.id,
		MAC:        e.mac,
		SubnetID:   e.subnetID,
		SubnetCIDR: sn.pool.cidr.String(),
		PrimaryIP:  e.primaryIP.String(),
		Primary:    e.primaryOfInst,
	}
	if sn.pool6 != nil {
		a.SubnetIPv6CIDR = sn.pool6.cidr.String()
	}
	for _, x := range e.ipv6 {
		a.IPv6Addresses = append(a.IPv6Addresses, x.String())
	}
	for _, x := range e.ipv6Prefixes {
		a.IPv6Prefixes = append(a.IPv6Prefixes, x.String())
	}
	if e.att != nil {
		a.InstanceID, a.NetworkCard, a.DeviceIndex = e.att.instanceID, e.att.card, e.att.device
	}
	return a
}

// ipLimit is the per-ENI IPv4 limit that applies to e now.
func (s *Server) ipLimit(e *eni) int {
	if e.att != nil {
		return s.instances[e.att.instanceID].typ.IPv4PerInterface
	}
	return unattachedIPv4Limit
}

// ipv6Limit is the per-ENI IPv6 limit that applies to e now (0 on a type without IPv6).
func (s *Server) ipv6Limit(e *eni) int {
	if e.att != nil {
		return s.instances[e.att.instanceID].typ.IPv6PerInterface
	}
	return unattachedIPv6Limit
}

// sortedENIs lists ENIs in creation order.
func sortedENIs(enis map[string]*eni) []*eni {
	out := slices.Collect(maps.Values(enis))
	slices.SortFunc(out, func(a, b *eni) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// instanceENIs lists the ENIs attached to an instance by card, then device.
func (s *Server) instanceENIs(id string) []*eni { return s.instanceENIsIn(s.enis, id) }

// instanceENIsIn is instanceENIs among enis (a lagged view).
func (s *Server) instanceENIsIn(enis map[string]*eni, id string) []*eni {
	var out []*eni
	for _, e := range enis {
		if e.att != nil && e.att.instanceID == id {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *eni) int {
		return cmp.Or(cmp.Compare(a.att.card, b.att.card), cmp.Compare(a.att.device, b.att.device))
	})
	return out
}

// newID returns prefix-<17 hex digits>, unique among used.
func (s *Server) newID(prefix string, used func(string) bool) string {
	for {
		id := fmt.Sprintf("%s-%017x", prefix, s.rng.Uint64())
		if !used(id) {
			return id
		}
	}
}

// newMAC returns a unique locally administered unicast MAC.
func (s *Server) newMAC() string {
	for {
		v := s.rng.Uint64()
		mac := fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(v>>32), byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
		if !s.macs[mac] {
			s.macs[mac] = true
			return mac
		}
	}
}

// releaseAll returns every address of e to its subnet.
func (s *Server) releaseAll(e *eni) {
	p := s.subnets[e.subnetID].pool
	p.releaseIP(e.primaryIP)
	giveBack(p, e.secondary, e.prefixes)
	if p6 := s.subnets[e.subnetID].pool6; p6 != nil {
		giveBack(p6, e.ipv6, e.ipv6Prefixes)
	}
}

// addrRequest is what Create and Assign (IPv4 or IPv6) ask for beyond the primary address.
type addrRequest struct {
	count       int          // secondary addresses chosen by EC2
	explicit    []netip.Addr // secondary addresses chosen by the caller
	prefixCount int
	prefixes    []netip.Prefix
	reassign    bool // AllowReassignment (IPv4 only): explicit addresses may move from another ENI
}

func (r addrRequest) slots() int { return r.count + len(r.explicit) + r.prefixCount + len(r.prefixes) }

// assign gives e the requested addresses all-or-nothing and returns the new ones.
func (s *Server) assign(e *eni, r addrRequest) (ips []netip.Addr, pfxs []netip.Prefix, retErr error) {
	sn := s.subnets[e.subnetID]
	p := sn.pool
	if e.slots()+r.slots() > s.ipLimit(e) {
		return nil, nil, errIPLimit()
	}
	// Validate explicit requests before touching anything.
	seen := map[netip.Addr]bool{}
	for _, a := range r.explicit {
		owner, ok := p.ownerOf(a)
		switch {
		case !ok:
			return nil, nil, errInvalidParam("Address %s does not fall within the subnet's address range or is reserved", a)
		case seen[a] || owner == e.id:
			return nil, nil, newErr("InvalidIPAddress.InUse", "Address %s is in use.", a)
		case owner != "" && (!r.reassign || !s.isSecondaryOf(owner, a)):
			return nil, nil, newErr("InvalidIPAddress.InUse", "Address %s is in use.", a)
		}
		seen[a] = true
	}
	if err := checkPrefixes(p, r.prefixes, func(pfx netip.Prefix) error {
		return errInvalidParam("Prefix %s is not a /28 block in subnet %s", pfx, sn.id)
	}); err != nil {
		return nil, nil, err
	}
	defer func() {
		if retErr != nil {
			giveBack(p, ips, pfxs)
			ips, pfxs = nil, nil
		}
	}()
	if err := takePrefixes(p, e.id, sn.id, r.prefixes, r.prefixCount, &pfxs); err != nil {
		return ips, pfxs, err
	}
	for range r.count {
		a, ok := p.allocIP(e.id)
		if !ok {
			return ips, pfxs, errNoFreeAddresses(sn.id)
		}
		ips = append(ips, a)
	}
	// Explicit addresses last: reassignment cannot be rolled back, so nothing may fail after it.
	for _, a := range r.explicit {
		if owner, _ := p.ownerOf(a); owner != "" {
			o := s.enis[owner]
			o.secondary = slices.DeleteFunc(o.secondary, func(x netip.Addr) bool { return x == a })
		}
		p.claimIP(a, e.id)
	}
	e.secondary = append(e.secondary, ips...)
	e.secondary = append(e.secondary, r.explicit...)
	e.prefixes = append(e.prefixes, pfxs...)
	return append(ips, r.explicit...), pfxs, nil
}

func (s *Server) isSecondaryOf(eniID string, a netip.Addr) bool {
	o, ok := s.enis[eniID]
	return ok && slices.Contains(o.secondary, a)
}

// kinds counts how many of the four ways to ask are used; EC2 takes one per request.
func (r addrRequest) kinds() int {
	n := 0
	for _, used := range []bool{r.count > 0, len(r.explicit) > 0, r.prefixCount > 0, len(r.prefixes) > 0} {
		if used {
			n++
		}
	}
	return n
}

// assign6 gives e the requested IPv6 addresses or prefixes all-or-nothing and returns the new ones.
func (s *Server) assign6(e *eni, r addrRequest) (ips []netip.Addr, pfxs []netip.Prefix, retErr error) {
	if r.slots() == 0 {
		return nil, nil, nil
	}
	sn := s.subnets[e.subnetID]
	p := sn.pool6
	if p == nil {
		return nil, nil, errNoIPv6CIDR()
	}
	if e.slots6()+r.slots() > s.ipv6Limit(e) {
		return nil, nil, errIPv6Limit()
	}
	for i, a := range r.explicit {
		owner, ok := p.ownerOf(a)
		switch {
		case !ok:
			return nil, nil, errInvalidParam("Address %s does not fall within the IPv6 CIDR block %s of subnet %s or is reserved", a, p.cidr, sn.id)
		case owner != "" || slices.Contains(r.explicit[:i], a):
			return nil, nil, newErr("InvalidIPAddress.InUse", "Address %s is in use.", a)
		}
	}
	if err := checkPrefixes(p, r.prefixes, func(pfx netip.Prefix) error {
		return errInvalidParam("Prefix %s is not a /80 block in the IPv6 CIDR block %s of subnet %s", pfx, p.cidr, sn.id)
	}); err != nil {
		return nil, nil, err
	}
	defer func() {
		if retErr != nil {
			giveBack(p, ips, pfxs)
			ips, pfxs = nil, nil
		}
	}()
	if err := takePrefixes(p, e.id, sn.id, r.prefixes, r.prefixCount, &pfxs); err != nil {
		return ips, pfxs, err
	}
	for _, a := range r.explicit {
		p.claimIP(a, e.id)
		ips = append(ips, a)
	}
	for range r.count {
		a, ok := p.allocIP(e.id)
		if !ok {
			return ips, pfxs, errNoFreeAddresses(sn.id)
		}
		ips = append(ips, a)
	}
	e.ipv6 = append(e.ipv6, ips...)
	e.ipv6Prefixes = append(e.ipv6Prefixes, pfxs...)
	return ips, pfxs, nil
}

// prefixPool is what assign and assign6 share of pool (IPv4, /28s) and pool6 (IPv6, /80s).
type prefixPool interface {
	prefixOK(pfx netip.Prefix) (valid, free bool)
	claimPrefix(pfx netip.Prefix, owner string)
	allocPrefix(owner string) (netip.Prefix, bool)
	releaseIP(a netip.Addr)
	releasePrefix(pfx netip.Prefix)
}

// checkPrefixes validates the prefixes a caller named before anything is taken; notBlock words EC2's error
// for one that is not an aligned block of the subnet.
func checkPrefixes(p prefixPool, pfxs []netip.Prefix, notBlock func(netip.Prefix) error) error {
	for i, pfx := range pfxs {
		valid, free := p.prefixOK(pfx)
		if !valid {
			return notBlock(pfx)
		}
		if !free || slices.Contains(pfxs[:i], pfx) {
			return errInvalidParam("Prefix %s is in use.", pfx)
		}
	}
	return nil
}

// takePrefixes claims the named prefixes, then count more of EC2's choosing, adding each to *taken as it
// goes so that the caller's rollback gives back exactly what was taken.
func takePrefixes(p prefixPool, owner, subnetID string, named []netip.Prefix, count int, taken *[]netip.Prefix) error {
	for _, pfx := range named {
		p.claimPrefix(pfx, owner)
		*taken = append(*taken, pfx)
	}
	for range count {
		pfx, ok := p.allocPrefix(owner)
		if !ok {
			return errNoFreePrefixes(subnetID)
		}
		*taken = append(*taken, pfx)
	}
	return nil
}

// giveBack returns addresses and prefixes to their pool (a failed assign's, or a deleted ENI's).
func giveBack(p prefixPool, ips []netip.Addr, pfxs []netip.Prefix) {
	for _, a := range ips {
		p.releaseIP(a)
	}
	for _, pfx := range pfxs {
		p.releasePrefix(pfx)
	}
}

// Terminate ends an instance as EC2 does: every ENI attached to it is detached (its link goes), and deleted
// when its attachment has DeleteOnTermination; the others stay "available" with their addresses and tags,
// for whoever deletes them. The instance stays listed, as EC2 shows terminated instances for a while; tests
// use it for a node that dies between an ENI's attach and its DeleteOnTermination.
func (s *Server) Terminate(instanceID string) error {
	if s.faults.lag() > 0 { // as serveEC2 does for a mutating action
		s.mutMu.Lock()
		defer s.mutMu.Unlock()
		s.mu.Lock()
		s.recordLocked(time.Now())
		s.mu.Unlock()
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	s.mu.Lock()
	if _, ok := s.instances[instanceID]; !ok {
		s.mu.Unlock()
		return errInstanceNotFound(instanceID)
	}
	attached := s.instanceENIs(instanceID)
	infos := make([]Attachment, len(attached))
	for i, e := range attached {
		infos[i] = s.attachmentInfo(e)
	}
	s.mu.Unlock()
	if s.links != nil { // the links go first, as in DetachNetworkInterface
		for _, a := range infos {
			if err := s.links.Detach(a); err != nil {
				return fmt.Errorf("terminate %s: detach link of %s: %w", instanceID, a.ENIID, err)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range attached {
		delete(s.attachments, e.att.id)
		dot := e.att.deleteOnTermination
		e.att = nil
		if dot {
			s.releaseAll(e)
			delete(s.macs, e.mac)
			if e.clientToken != "" {
				delete(s.tokens, e.clientToken)
			}
			delete(s.enis, e.id)
		}
	}
	return nil
}
