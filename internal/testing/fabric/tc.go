package fabric

import (
	"fmt"
	"math"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// minBurst holds a whole GSO super-packet (64 KiB on veth) plus slack, so a
// large rate is not throttled by the bucket size at timer granularity.
const minBurst = 128 << 10

// tbfParams sizes a token bucket for a rate in bit/s.
type tbfParams struct {
	rate  uint64 // bytes/s
	burst uint32 // bytes
	limit uint32 // bytes queued before tail drop
}

func rateParams(bitsPerSec uint64) tbfParams {
	rate := max(bitsPerSec/8, 1)
	// ~4 ms of traffic, but never less than minBurst.
	burst := uint32(min(max(rate/250, minBurst), math.MaxUint32/2))
	// Queue ~50 ms at the rate, like a shallow switch buffer.
	limit := uint32(min(uint64(burst)+rate/20, math.MaxUint32))
	return tbfParams{rate: rate, burst: burst, limit: limit}
}

// applyRateLimit limits both directions of an ENI at its fabric end fab:
//   - egress of fab is what the ENI receives: a root tbf qdisc on fab shapes it;
//   - ingress of fab is what the ENI sends: an ingress qdisc with a match-all
//     u32 filter redirects (mirred) every packet to the ifb device ifbName,
//     whose root tbf shapes it before ifb hands it back to fab's ingress path.
//
// ifb rather than an ingress policer because act_police is not in every kernel
// we run on (CONFIG_NET_ACT_POLICE is unset on the CI host); shaping also
// treats TCP more gently than dropping. The caller deletes fab and the ifb on
// failure; their qdiscs and filters go with them.
func applyRateLimit(h netlinksafe.Handle, fab netlink.Link, ifbName string, bitsPerSec uint64, mtu int) error {
	p := rateParams(bitsPerSec)
	ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifbName, MTU: mtu}}
	if err := h.LinkAdd(ifb); err != nil {
		return fmt.Errorf("create ifb %s: %w", ifbName, err)
	}
	ifbLink, err := h.LinkByName(ifbName)
	if err != nil {
		return fmt.Errorf("find ifb %s: %w", ifbName, err)
	}
	if err := addTbf(h, ifbLink, p); err != nil {
		return err
	}
	if err := h.LinkSetUp(ifbLink); err != nil {
		return fmt.Errorf("set %s up: %w", ifbName, err)
	}
	if err := addTbf(h, fab, p); err != nil {
		return err
	}
	return redirectIngress(h, fab, ifbLink)
}

func addTbf(h netlinksafe.Handle, link netlink.Link, p tbfParams) error {
	tbf := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index,
			Handle:    netlink.MakeHandle(1, 0),
			Parent:    netlink.HANDLE_ROOT,
		},
		Rate:   p.rate,
		Limit:  p.limit,
		Buffer: netlink.Xmittime(p.rate, p.burst), // the kernel wants the bucket in ticks
	}
	if err := h.QdiscAdd(tbf); err != nil {
		return fmt.Errorf("add tbf on %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// redirectIngress sends everything arriving on link through to's egress.
func redirectIngress(h netlinksafe.Handle, link, to netlink.Link) error {
	idx := link.Attrs().Index
	ingress := &netlink.Ingress{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: idx,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_INGRESS,
		},
	}
	if err := h.QdiscAdd(ingress); err != nil {
		return fmt.Errorf("add ingress qdisc on %s: %w", link.Attrs().Name, err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: idx,
			Parent:    netlink.MakeHandle(0xffff, 0),
			Priority:  1,
			Protocol:  unix.ETH_P_ALL,
		},
		Sel:     nil, // match all
		Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := h.FilterAdd(filter); err != nil {
		return fmt.Errorf("add redirect %s -> %s: %w", link.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}
