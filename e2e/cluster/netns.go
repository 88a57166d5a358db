package cluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// ServeInNetNS makes the API server reachable at the same address, 127.0.0.1:<Port>, from inside the
// network namespace at nsPath (a "node"), so a kubeconfig works unchanged for anything that runs there
// (the Multus thin plugin, the agent). The loopback of a netns is its own, so a TCP relay listens on
// that netns' 127.0.0.1 and forwards each connection to the API server in the caller's netns; TLS passes
// through untouched. It brings the netns' lo up. The relay stops on Close.
func (c *Cluster) ServeInNetNS(nsPath string) error {
	return c.serveInNetNS(nsPath, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(c.Port)))
}

// ServiceIP and ServicePort are the kubernetes Service's ClusterIP (the first address of ServiceCIDR) and
// port: what the kubelet tells every pod in KUBERNETES_SERVICE_HOST and _PORT.
var (
	ServiceIP   = netip.MustParseAddr("10.96.0.1")
	ServicePort = uint16(443)
)

// ServeServiceInNetNS makes the API server reachable at the kubernetes Service's address, ServiceIP:443,
// inside the netns at nsPath, as kube-proxy would for the pods of a node: in-cluster clients in host-network
// pods (the agent, Multus) work unchanged. There is no kube-proxy here; ServiceIP goes on the netns' lo and
// a relay listens there (the serving certificate names ServiceIP).
func (c *Cluster) ServeServiceInNetNS(nsPath string) error {
	return c.serveInNetNS(nsPath, netip.AddrPortFrom(ServiceIP, ServicePort))
}

func (c *Cluster) serveInNetNS(nsPath string, at netip.AddrPort) error {
	netns, err := ns.GetNS(nsPath)
	if err != nil {
		return fmt.Errorf("serve API server in netns %s: %w", nsPath, err)
	}
	defer netns.Close()
	var l net.Listener
	// A socket belongs to the netns of the thread that creates it, for its whole life.
	err = netns.Do(func(ns.NetNS) error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		if !at.Addr().IsLoopback() {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: at.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}
			if err := netlink.AddrReplace(lo, a); err != nil {
				return fmt.Errorf("add %s to lo: %w", at.Addr(), err)
			}
		}
		l, err = net.Listen("tcp", at.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("serve API server at %s in netns %s: %w", at, nsPath, err)
	}
	r := &relay{l: l, upstream: net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)), conns: map[net.Conn]struct{}{}}
	go r.serve()
	c.mu.Lock()
	c.proxies = append(c.proxies, r)
	c.mu.Unlock()
	return nil
}

// relay accepts on l and copies bytes both ways to upstream, dialled from the caller's netns.
type relay struct {
	l        net.Listener
	upstream string
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
}

func (r *relay) serve() {
	for {
		down, err := r.l.Accept()
		if err != nil {
			return // closed
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.pipe(down)
		}()
	}
}

func (r *relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		if r.closed {
			return false
		}
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	return true
}

func (r *relay) pipe(down net.Conn) {
	defer down.Close()
	if !r.track(down, true) {
		return
	}
	defer r.track(down, false)
	up, err := net.Dial("tcp", r.upstream)
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(up, true) {
		return
	}
	defer r.track(up, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, down)
	go cp(down, up)
	<-done
	<-done
}

// Close stops accepting, closes every relayed connection and waits for the copiers.
func (r *relay) Close() error {
	err := r.l.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
