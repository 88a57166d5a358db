package fakeec2

import (
	"encoding/binary"
	"net/netip"
)

// pool6 hands out the IPv6 addresses and /80 prefixes of one subnet's IPv6 CIDR (a /64 on EC2; up to a
// /120 here, so that a test can exhaust one). As for IPv4, EC2 reserves the first four addresses and the
// last one; a /80 holding a reserved address is never a prefix. Every address has at most one owner:
// a single address and a prefix never overlap.
type pool6 struct {
	cidr    netip.Prefix
	last    uint64                  // offset of the last address in the CIDR
	addrs   map[netip.Addr]string   // single addresses -> ENI ID
	blocks  map[netip.Prefix]string // /80 prefixes -> ENI ID
	inBlock map[netip.Prefix]int    // /80 -> how many single addresses lie inside it
	hint    uint64                  // no free single address below this offset
}

const prefix6Bits = 80

func newPool6(cidr netip.Prefix) *pool6 {
	return &pool6{
		cidr:    cidr,
		last:    ^uint64(0) >> (64 - (128 - cidr.Bits())),
		addrs:   map[netip.Addr]string{},
		blocks:  map[netip.Prefix]string{},
		inBlock: map[netip.Prefix]int{},
		hint:    reservedLow,
	}
}

func low64(a netip.Addr) uint64 {
	b := a.As16()
	return binary.BigEndian.Uint64(b[8:])
}

// addr is the address at offset off; host bits are at most 64, so only the low half changes.
func (p *pool6) addr(off uint64) netip.Addr {
	b := p.cidr.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], low64(p.cidr.Addr())+off)
	return netip.AddrFrom16(b)
}

// offset returns a's offset, and whether a is inside the CIDR.
func (p *pool6) offset(a netip.Addr) (uint64, bool) {
	if !a.Is6() || a.Is4In6() || a.Zone() != "" || !p.cidr.Contains(a) {
		return 0, false
	}
	return low64(a) - low64(p.cidr.Addr()), true
}

func (p *pool6) reserved(off uint64) bool { return off < reservedLow || off == p.last }

// block is the /80 that holds a.
func block(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, prefix6Bits).Masked() }

// ownerOf reports who holds a ("" if free), and whether a is assignable at all.
func (p *pool6) ownerOf(a netip.Addr) (string, bool) {
	off, ok := p.offset(a)
	if !ok || p.reserved(off) {
		return "", false
	}
	if o, ok := p.addrs[a]; ok {
		return o, true
	}
	return p.blocks[block(a)], true
}

func (p *pool6) claimIP(a netip.Addr, owner string) {
	p.addrs[a] = owner
	p.inBlock[block(a)]++
}

func (p *pool6) releaseIP(a netip.Addr) {
	if _, ok := p.addrs[a]; !ok {
		return
	}
	delete(p.addrs, a)
	b := block(a)
	if p.inBlock[b]--; p.inBlock[b] == 0 {
		delete(p.inBlock, b)
	}
	if off, ok := p.offset(a); ok {
		p.hint = min(p.hint, off)
	}
}

// allocIP gives the lowest free address to owner, skipping prefixes.
func (p *pool6) allocIP(owner string) (netip.Addr, bool) {
	const blockMask = 1<<(128-prefix6Bits) - 1
	for off := p.hint; off < p.last; {
		a := p.addr(off)
		if _, taken := p.blocks[block(a)]; taken {
			// Prefixes exist only in CIDRs of /80 or shorter, so blocks start at offsets that are multiples of 2^48.
			if off|blockMask == ^uint64(0) {
				break
			}
			off = (off | blockMask) + 1
			continue
		}
		if _, used := p.addrs[a]; !used {
			p.claimIP(a, owner)
			p.hint = off + 1
			return a, true
		}
		off++
	}
	p.hint = p.last
	return netip.Addr{}, false
}

// prefixOK reports whether pfx is an aligned /80 inside the CIDR that holds no reserved address, and
// whether it is free.
func (p *pool6) prefixOK(pfx netip.Prefix) (valid, free bool) {
	first, ok := p.offset(pfx.Addr())
	if !ok || pfx.Bits() != prefix6Bits || pfx != pfx.Masked() || p.cidr.Bits() > prefix6Bits {
		return false, false
	}
	lastOff := first + 1<<(128-prefix6Bits) - 1
	if p.reserved(first) || lastOff == p.last {
		return false, false
	}
	_, owned := p.blocks[pfx]
	return true, !owned && p.inBlock[pfx] == 0
}

func (p *pool6) claimPrefix(pfx netip.Prefix, owner string) { p.blocks[pfx] = owner }

func (p *pool6) releasePrefix(pfx netip.Prefix) {
	delete(p.blocks, pfx)
	if off, ok := p.offset(pfx.Addr()); ok {
		p.hint = min(p.hint, off)
	}
}

// allocPrefix gives the lowest free /80 to owner.
func (p *pool6) allocPrefix(owner string) (netip.Prefix, bool) {
	if p.cidr.Bits() > prefix6Bits {
		return netip.Prefix{}, false
	}
	n := uint64(1) << (prefix6Bits - p.cidr.Bits())
	for i := range n {
		pfx := netip.PrefixFrom(p.addr(i<<(128-prefix6Bits)), prefix6Bits)
		if valid, free := p.prefixOK(pfx); valid && free {
			p.claimPrefix(pfx, owner)
			return pfx, true
		}
	}
	return netip.Prefix{}, false
}
