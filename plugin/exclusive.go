package plugin

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/linkalias"
)

// origState is what a moved ENI link had in the host netns, restored when it goes back; it travels in the
// link's alias (package linkalias), so DEL needs no state on disk and a link without it is not ours to move.
type origState = linkalias.Orig

func parseAlias(alias string) (origState, bool) { return linkalias.Parse(alias) }

// MoveLinkIn moves the link hostName (in the calling thread's netns, the host's) into podNS as ifName,
// renaming it inside a temporary netns (no udev or NetworkManager race on either name) and recording its
// original name, MTU and up state in its alias. mac, when set, must be the link's: it guards against
// moving the wrong device. The link arrives down and unaddressed; on error it is back where it was.
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
	tempNS, err := ns.TempNetNS()
	if err != nil {
		return fmt.Errorf("create temporary netns: %w", err)
	}
	defer tempNS.Close()

	if err := netlink.LinkSetNsFd(l, int(tempNS.Fd())); err != nil {
		return fmt.Errorf("move to temporary netns: %w", err)
	}
	defer func() {
		if retErr == nil {
			return
		}
		// Closing tempNS with a virtual link in it would destroy the link: bring it back first.
		if err := tempNS.Do(func(ns.NetNS) error { return restoreLink(hostNS, hostName, ifName, orig) }); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("roll back: %w", err))
		}
	}()
	return tempNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(hostName)
		if err != nil {
			return fmt.Errorf("find link in temporary netns: %w", err)
		}
		if err := netlink.LinkSetName(l, ifName); err != nil {
			return fmt.Errorf("rename to %q: %w", ifName, err)
		}
		if err := netlink.LinkSetAlias(l, orig.Alias()); err != nil {
			return fmt.Errorf("set alias: %w", err)
		}
		if err := netlink.LinkSetNsFd(l, int(podNS.Fd())); err != nil {
			return fmt.Errorf("move to pod netns: %w", err)
		}
		return nil
	})
}

// restoreLink, in the calling thread's netns (a temporary one), finds the link by either name, gives it
// its original name, MTU and an empty alias, moves it to hostNS and brings it up if it was.
func restoreLink(hostNS ns.NetNS, origName, ifName string, orig origState) error {
	l, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		if l, err = netlinksafe.LinkByName(origName); err != nil {
			return fmt.Errorf("find link: %w", err)
		}
	}
	if l.Attrs().Name != orig.Name {
		if err := netlink.LinkSetName(l, orig.Name); err != nil {
			return fmt.Errorf("rename %q back to %q: %w", l.Attrs().Name, orig.Name, err)
		}
	}
	if l.Attrs().Alias != "" {
		if err := netlink.LinkSetAlias(l, ""); err != nil {
			return fmt.Errorf("clear alias: %w", err)
		}
	}
	if orig.MTU > 0 && l.Attrs().MTU != orig.MTU {
		if err := netlink.LinkSetMTU(l, orig.MTU); err != nil {
			return fmt.Errorf("restore mtu %d: %w", orig.MTU, err)
		}
	}
	if err := netlink.LinkSetNsFd(l, int(hostNS.Fd())); err != nil {
		return fmt.Errorf("move back to host netns: %w", err)
	}
	if !orig.Up {
		return nil
	}
	return hostNS.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(orig.Name)
		if err != nil {
			return fmt.Errorf("find link back in host netns: %w", err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %q up: %w", orig.Name, err)
		}
		return nil
	})
}

// MoveLinkOut moves the ENI link ifName from podNS back to the calling thread's netns under its original
// name, MTU and up state (from its alias), through a temporary netns. Its addresses and routes go with the
// move. found is false when there is no such link or it carries no multinic alias (not ours: left alone).
// On error the link stays in podNS.
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
	tempNS, err := ns.TempNetNS()
	if err != nil {
		return false, fmt.Errorf("create temporary netns: %w", err)
	}
	defer tempNS.Close()

	var orig origState
	found := false
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
		if err := netlink.LinkSetDown(l); err != nil {
			return fmt.Errorf("set down: %w", err)
		}
		if err := netlink.LinkSetNsFd(l, int(tempNS.Fd())); err != nil {
			return fmt.Errorf("move to temporary netns: %w", err)
		}
		return nil
	})
	if err != nil || !found {
		return found, err
	}
	err = tempNS.Do(func(ns.NetNS) error {
		err := restoreLink(hostNS, orig.Name, ifName, orig)
		if err == nil {
			return nil
		}
		// Not back in the host: return it to the pod under ifName so that a retry finds it, rather than
		// lose it with tempNS.
		l, lerr := netlinksafe.LinkByName(orig.Name)
		if lerr != nil {
			l, lerr = netlinksafe.LinkByName(ifName)
		}
		if lerr == nil {
			if l.Attrs().Name != ifName {
				lerr = netlink.LinkSetName(l, ifName)
			}
			if lerr == nil {
				lerr = netlink.LinkSetAlias(l, orig.Alias())
			}
			if lerr == nil {
				lerr = netlink.LinkSetNsFd(l, int(podNS.Fd()))
			}
		}
		if lerr != nil {
			return errors.Join(err, fmt.Errorf("return link to pod netns: %w", lerr))
		}
		return err
	})
	return true, err
}
