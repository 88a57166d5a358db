// Package nlretry retries the netlink dumps that netlinksafe.Handle does not wrap.
//
// The kernel flags a dump NLM_F_DUMP_INTR when the table changed while it was read (in a pod's netns
// that is routine: IPv6 link-local addresses appear on new links for a while after ADD). netlink then
// returns ErrDumpInterrupted with results that may be incomplete; the only safe answer is to read
// again, which netlinksafe does for its package-level AddrList but not for a Handle's.
package nlretry

import (
	"errors"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// attempts matches netlinksafe's: a table that keeps changing for this long is reported, not hidden.
const attempts = 5

// AddrList is h.AddrList(link, family), read again while the kernel says the dump was interrupted.
func AddrList(h netlinksafe.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	var addrs []netlink.Addr
	var err error
	for range attempts {
		if addrs, err = h.AddrList(link, family); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return addrs, err
}
