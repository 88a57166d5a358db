// Package traffic measures TCP throughput between network namespaces: one sink per
// destination address, and senders bound to a chosen source address, all running at once.
// It exists so the demo and the benchmarks can show aggregate bandwidth over several
// network cards without depending on an external tool's output format.
package traffic

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Flow is one stream of traffic: from Src (an address in SrcNS) to Dst (an address in the
// sink's namespace).
type Flow struct {
	SrcNS ns.NetNS
	Src   net.IP
	Dst   net.IP
}

// Sink accepts connections on every address it was given and counts what it receives per
// source address. Counting at the receiver matters: a sender's count includes bytes still
// queued in its socket buffer, which overstates a shaped link's rate.
type Sink struct {
	listeners []net.Listener
	wg        sync.WaitGroup

	mu       sync.Mutex
	received map[string]int64 // source IP -> bytes
}

// Port is the TCP port sinks listen on.
const Port = 5201

// NewSink listens on each address inside netns. A socket keeps the namespace it was
// created in, so the listeners keep working after we leave it.
func NewSink(netns ns.NetNS, addrs []net.IP) (*Sink, error) {
	s := &Sink{received: map[string]int64{}}
	err := netns.Do(func(ns.NetNS) error {
		for _, a := range addrs {
			l, err := net.Listen("tcp", net.JoinHostPort(a.String(), fmt.Sprint(Port)))
			if err != nil {
				return fmt.Errorf("listen on %s: %w", a, err)
			}
			s.listeners = append(s.listeners, l)
		}
		return nil
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.accept(l)
	}
	return s, nil
}

func (s *Sink) accept(l net.Listener) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go s.drain(c)
	}
}

func (s *Sink) drain(c net.Conn) {
	defer c.Close()
	src := c.RemoteAddr().(*net.TCPAddr).IP.String()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		s.mu.Lock()
		s.received[src] += int64(n)
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (s *Sink) bytesFrom(src net.IP) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received[src.String()]
}

// Close stops accepting; open connections end when their senders stop.
func (s *Sink) Close() {
	for _, l := range s.listeners {
		_ = l.Close()
	}
	s.wg.Wait()
}

// Result is what one Run measured.
type Result struct {
	PerFlow []float64 // bits per second, in the order of the flows given
	Total   float64   // bits per second, all flows together
}

// Run sends as fast as it can on every flow at once for d (each flow uses conns
// concurrent connections) and reports the rate the sink received from each flow's source.
// Flows must have distinct source addresses, and every destination must be one of sink's.
func Run(ctx context.Context, sink *Sink, flows []Flow, conns int, d time.Duration) (Result, error) {
	if len(flows) == 0 {
		return Result{}, ErrNoFlows
	}
	if conns < 1 {
		conns = 1
	}
	sockets := make([][]net.Conn, len(flows))
	defer func() {
		for _, cs := range sockets {
			for _, c := range cs {
				_ = c.Close()
			}
		}
	}()
	for i, f := range flows {
		for range conns {
			c, err := dial(ctx, f)
			if err != nil {
				return Result{}, err
			}
			sockets[i] = append(sockets[i], c)
		}
	}

	var wg sync.WaitGroup
	buf := make([]byte, 64<<10) // read-only, shared by every sender
	stop := time.Now().Add(d + time.Second)
	for _, cs := range sockets {
		for _, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				send(c, buf, stop)
			}()
		}
	}
	// Measure a window inside the sending period: senders start before it and stop
	// after it, so queues are full for the whole window.
	time.Sleep(500 * time.Millisecond)
	before := make([]int64, len(flows))
	for i, f := range flows {
		before[i] = sink.bytesFrom(f.Src)
	}
	start := time.Now()
	time.Sleep(d)
	elapsed := time.Since(start).Seconds()
	r := Result{PerFlow: make([]float64, len(flows))}
	for i, f := range flows {
		r.PerFlow[i] = float64(sink.bytesFrom(f.Src)-before[i]) * 8 / elapsed
		r.Total += r.PerFlow[i]
	}
	for _, cs := range sockets {
		for _, c := range cs {
			_ = c.SetWriteDeadline(time.Now())
		}
	}
	wg.Wait()
	return r, nil
}

// send writes until the deadline or until the connection is cut short.
func send(c net.Conn, buf []byte, deadline time.Time) {
	_ = c.SetWriteDeadline(deadline)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// dial opens the socket inside the flow's source namespace, bound to its source address,
// so the kernel picks the route (and so the network card) that belongs to that address.
func dial(ctx context.Context, f Flow) (net.Conn, error) {
	var c net.Conn
	err := f.SrcNS.Do(func(ns.NetNS) error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: f.Src}, Timeout: 5 * time.Second}
		var err error
		c, err = d.DialContext(ctx, "tcp", net.JoinHostPort(f.Dst.String(), fmt.Sprint(Port)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connect %s -> %s: %w", f.Src, f.Dst, err)
	}
	return c, nil
}

// ErrNoFlows is returned when a run is asked to measure nothing.
var ErrNoFlows = errors.New("no flows to measure")
