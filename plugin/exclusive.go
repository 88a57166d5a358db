package plugin

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/linkalias"
)

// origState is what a moved ENI link had in the host netns, restored when it goes back; it travels in the
// link's alias (package linkalias), so DEL needs no state on disk and a link without it is not ours to move.
type origState = linkalias.Orig

func parseAlias(alias string) (origState, bool) { return linkalias.Parse(alias) }

// MoveLinkIn moves the link hostName (in the calling thread's netns, the host's) into podNS as ifName,
// recording its original name, MTU and up state in its alias. The move and the rename are one netlink
// request (moveAndRename), so the link never shows up under a new name in the host netns (no udev or
// NetworkManager race on either name) and no temporary netns is needed. mac, when set, must be the link's:
// it guards against moving the wrong device. The link arrives down and unaddressed; on error it is back
// where it was.
func MoveLinkIn(hostName, mac string, podNS ns.NetNS, ifName string) error {
	if err := moveLinkIn(hostName, mac, podNS, ifName); err != nil {
		return fmt.Errorf("move %q into %s as %q: %w", hostName, podNS.Path(), ifName, err)
	}
	return nil
}

func moveLinkIn(hostName, mac string, podNS ns.NetNS, ifName string) (retErr error) {
	l, err := netlinksafe.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("find link: %w", err)
	}
	if mac != "" && !strings.EqualFold(l.Attrs().HardwareAddr.String(), mac) {
		return fmt.Errorf("link has MAC %s, the agent's ENI has %s: refusing to move it", l.Attrs().HardwareAddr, mac)
	}
	if _, ours := parseAlias(l.Attrs().Alias); ours {
		return fmt.Errorf("link already carries a multinic alias %q", l.Attrs().Alias)
	}
	orig := origState{Name: hostName, MTU: l.Attrs().MTU, Up: l.Attrs().Flags&net.FlagUp != 0}

	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return err
	}
	defer hostNS.Close()
	// The alias first, while the link is still home: whatever happens later, a link in the pod is one
	// DEL recognises (the agent leaves an allocated ENI's link alone, and restores a freed one's).
	if err := netlink.LinkSetAlias(l, orig.Alias()); err != nil {
		return fmt.Errorf("set alias: %w", err)
	}
	err = moveAndRename(l.Attrs().Index, podNS.Fd(), ifName)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("move to pod netns: %w", err)
	// The kernel renames after the move: a failed rename (ifName taken meanwhile) leaves the link in the
	// pod under its host name. Bring it home from wherever it is.
	if rerr := podNS.Do(func(ns.NetNS) error { return sendHome(hostNS, orig, ifName) }); rerr != nil {
		return errors.Join(err, fmt.Errorf("roll back: %w", rerr))
	}
	return errors.Join(err, restoreHome(orig))
}

// moveAndRename moves the link with this index (in the calling thread's netns) into the netns of nsFd and
// names it name there, in one RTM_SETLINK (IFLA_NET_NS_FD with IFLA_IFNAME): the kernel moves the link,
// then renames it in the target netns while it still holds the RTNL lock, so no one can act on the link
// under its old name there. One move instead of two through a temporary netns halves the kernel's work
// (each move waits for RCU) and skips making a netns. Hand-written with vishvananda/netlink's nl package:
// the library sends IFLA_NET_NS_FD alone (LinkSetNsFd) and has no call that sends both.
func moveAndRename(index int, nsFd uintptr, name string) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(nsFd))))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// sendHome, in the calling thread's netns (the pod's), moves the link carrying orig's alias, under ifName
// or its host name, to hostNS. No such link is not an error (it never left home).
func sendHome(hostNS ns.NetNS, orig origState, ifName string) error {
	for _, name := range []string{ifName, orig.Name} {
		l, err := netlinksafe.LinkByName(name)
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			continue
		}
		if err != nil {
			return fmt.Errorf("find link %q: %w", name, err)
		}
		if got, ours := parseAlias(l.Attrs().Alias); ours && got == orig {
			return moveAndRename(l.Attrs().Index, hostNS.Fd(), orig.Name)
		}
	}
	return nil
}

// restoreHome, in the host netns, gives the link back what it had before it left (from orig): no alias,
// its MTU, up if it was.
func restoreHome(orig origState) error {
	l, err := netlinksafe.LinkByName(orig.Name)
	if err != nil {
		return fmt.Errorf("find %q back in host netns: %w", orig.Name, err)
	}
	if l.Attrs().Alias != "" {
		if err := netlink.LinkSetAlias(l, ""); err != nil {
			return fmt.Errorf("clear alias of %q: %w", orig.Name, err)
		}
	}
	if orig.MTU > 0 && l.Attrs().MTU != orig.MTU {
		if err := netlink.LinkSetMTU(l, orig.MTU); err != nil {
			return fmt.Errorf("restore mtu %d of %q: %w", orig.MTU, orig.Name, err)
		}
	}
	if orig.Up && l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %q up: %w", orig.Name, err)
		}
	}
	return nil
}

// MoveLinkOut moves the ENI link ifName from podNS back to the calling thread's netns under its original
// name, MTU and up state (from its alias). It is renamed inside podNS first, where no udev runs, so that it
// arrives home under its own name; only when podNS holds a link of that name does it go through a
// temporary netns. Its addresses and routes go with the move. found is false when there is no such link or
// it carries no multinic alias (not ours: left alone). On error the link stays in podNS as ifName, or is
// home.
func MoveLinkOut(podNS ns.NetNS, ifName string) (found bool, err error) {
	found, err = moveLinkOut(podNS, ifName)
	if err != nil {
		return found, fmt.Errorf("move %q out of %s: %w", ifName, podNS.Path(), err)
	}
	return found, nil
}

func moveLinkOut(podNS ns.NetNS, ifName string) (bool, error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return false, err
	}
	defer hostNS.Close()
	var orig origState
	found, viaTemp := false, false
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("find link: %w", err)
		}
		var ours bool
		if orig, ours = parseAlias(l.Attrs().Alias); !ours {
			return nil
		}
		found = true
		// The kernel renames a link only while it is down.
		if err := netlink.LinkSetDown(l); err != nil {
			return fmt.Errorf("set down: %w", err)
		}
		if err := netlink.LinkSetName(l, orig.Name); errors.Is(err, unix.EEXIST) {
			viaTemp = true
			return nil
		} else if err != nil {
			return fmt.Errorf("rename to %q: %w", orig.Name, err)
		}
		if err := netlink.LinkSetNsFd(l, int(hostNS.Fd())); err != nil {
			// Keep it findable by the next DEL.
			if rerr := netlink.LinkSetName(l, ifName); rerr != nil {
				err = errors.Join(err, fmt.Errorf("rename back to %q: %w", ifName, rerr))
			}
			return fmt.Errorf("move to host netns: %w", err)
		}
		return nil
	})
	switch {
	case err != nil || !found:
		return found, err
	case viaTemp:
		return true, moveOutViaTemp(podNS, hostNS, ifName, orig)
	}
	return true, restoreHome(orig)
}

// moveOutViaTemp moves the (down) link ifName from podNS to hostNS through a temporary netns, where it is
// renamed: for a pod that holds a link of the ENI's host name. On error it is back in podNS as ifName.
func moveOutViaTemp(podNS, hostNS ns.NetNS, ifName string, orig origState) error {
	tempNS, err := ns.TempNetNS()
	if err != nil {
		return fmt.Errorf("create temporary netns: %w", err)
	}
	defer tempNS.Close()
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find link: %w", err)
		}
		return moveAndRename(l.Attrs().Index, tempNS.Fd(), orig.Name)
	})
	if err != nil {
		return fmt.Errorf("move to temporary netns: %w", err)
	}
	err = tempNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(orig.Name)
		if err != nil {
			return fmt.Errorf("find link in temporary netns: %w", err)
		}
		if err := netlink.LinkSetNsFd(l, int(hostNS.Fd())); err != nil {
			// Closing tempNS with a virtual link in it would destroy the link: return it to the pod.
			if rerr := moveAndRename(l.Attrs().Index, podNS.Fd(), ifName); rerr != nil {
				err = errors.Join(err, fmt.Errorf("return link to pod netns: %w", rerr))
			}
			return fmt.Errorf("move to host netns: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return restoreHome(orig)
}
