package fakeec2

import (
	"encoding/binary"
	"net/netip"
)

// pool hands out the addresses of one subnet. Offsets 0-3 and the broadcast
// address are reserved by AWS. Every address has at most one owner (an ENI ID),
// whether it is a primary, a secondary or part of a /28 prefix: the single
// owner map is what guarantees it.
type pool struct {
	cidr  netip.Prefix
	base  uint32
	size  uint32            // addresses in the CIDR, reserved ones included
	owner map[uint32]string // offset -> ENI ID
	hint  uint32            // no free address below this offset
}

const (
	reservedLow = 4  // network, router, DNS, future use
	prefixSize  = 16 // a /28
)

func newPool(cidr netip.Prefix) *pool {
	b := cidr.Addr().As4()
	return &pool{
		cidr:  cidr,
		base:  binary.BigEndian.Uint32(b[:]),
		size:  1 << (32 - cidr.Bits()),
		owner: map[uint32]string{},
		hint:  reservedLow,
	}
}

func (p *pool) usable() int { return int(p.size) - reservedLow - 1 }
func (p *pool) free() int   { return p.usable() - len(p.owner) }

func (p *pool) addr(off uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], p.base+off)
	return netip.AddrFrom4(b)
}

// offset returns the offset of a, and whether a is inside the CIDR.
func (p *pool) offset(a netip.Addr) (uint32, bool) {
	if !a.Is4() || !p.cidr.Contains(a) {
		return 0, false
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:]) - p.base, true
}

func (p *pool) reserved(off uint32) bool { return off < reservedLow || off == p.size-1 }

// allocIP gives the lowest free address to owner.
func (p *pool) allocIP(owner string) (netip.Addr, bool) {
	for off := p.hint; off < p.size-1; off++ {
		if _, used := p.owner[off]; !used {
			p.owner[off] = owner
			p.hint = off + 1
			return p.addr(off), true
		}
	}
	p.hint = p.size - 1
	return netip.Addr{}, false
}

// ownerOf reports who holds a ("" if free), and whether a is assignable at all.
func (p *pool) ownerOf(a netip.Addr) (string, bool) {
	off, ok := p.offset(a)
	if !ok || p.reserved(off) {
		return "", false
	}
	return p.owner[off], true
}

// claimIP gives a to owner; the caller checked that it is assignable and free
// (or is moving it on purpose).
func (p *pool) claimIP(a netip.Addr, owner string) {
	off, _ := p.offset(a)
	p.owner[off] = owner
}

func (p *pool) releaseIP(a netip.Addr) {
	off, ok := p.offset(a)
	if !ok {
		return
	}
	delete(p.owner, off)
	p.hint = min(p.hint, off)
}

// blockFree reports whether the /28 at off is entirely free and unreserved.
func (p *pool) blockFree(off uint32) bool {
	if off+prefixSize > p.size {
		return false
	}
	for o := off; o < off+prefixSize; o++ {
		if _, used := p.owner[o]; used || p.reserved(o) {
			return false
		}
	}
	return true
}

// allocPrefix carves the lowest free aligned /28 for owner.
func (p *pool) allocPrefix(owner string) (netip.Prefix, bool) {
	for off := uint32(0); off+prefixSize <= p.size; off += prefixSize {
		if p.blockFree(off) {
			pfx := netip.PrefixFrom(p.addr(off), 28)
			p.claimPrefix(pfx, owner)
			return pfx, true
		}
	}
	return netip.Prefix{}, false
}

// prefixOK reports whether pfx is an aligned /28 inside the subnet, and whether it is free.
func (p *pool) prefixOK(pfx netip.Prefix) (valid, free bool) {
	off, ok := p.offset(pfx.Addr())
	if !ok || pfx.Bits() != 28 || pfx != pfx.Masked() {
		return false, false
	}
	return true, p.blockFree(off)
}

func (p *pool) claimPrefix(pfx netip.Prefix, owner string) {
	off, _ := p.offset(pfx.Addr())
	for o := off; o < off+prefixSize; o++ {
		p.owner[o] = owner
	}
}

func (p *pool) releasePrefix(pfx netip.Prefix) {
	off, ok := p.offset(pfx.Addr())
	if !ok {
		return
	}
	for o := off; o < off+prefixSize; o++ {
		delete(p.owner, o)
	}
	p.hint = min(p.hint, off)
}
