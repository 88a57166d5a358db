// Command demo is `make demo`: the whole of multinic on embedded defaults, with no cloud account.
//
// fake-ec2 plays a trn1.32xlarge region (8 network cards, 5 ENIs per card) whose ENIs are real links on a
// fake VPC fabric with a per-card rate limit; the REAL multinic-agent runs on each node and manages cards
// 1-7; four pods are each attached to every non-primary card by exec'ing the REAL multinic CNI plugin
// (ipvlan L2 children of each card's ENI), exactly as Multus would. The demo prints what every pod got
// (node, pod, card, interface, address, ENI), then measures TCP throughput from pod-1 to its peers over 1,
// 2, 4 and 7 cards at once, with several connections per card, and prints the aggregate: each card has its
// own bandwidth budget, so a multi-homed pod gets about N times one card's. Then everything is torn down
// (pods DEL'd through the plugin, addresses back in the agents' pools, agents stopped, ENIs detached,
// namespaces removed) and the demo checks that nothing of it remains.
//
// With -ipv6 the agents serve every card with IPv6 only and the throughput runs over IPv6; with -dual each
// pod gets an address of each family per card and the demo measures over IPv4, then over IPv6 (IPv6 goes
// through fake-ec2's VPC router, fe80:ec2::1, rather than the subnet's bridge).
//
// Two nodes, not one: ipvlan L2 children of one ENI reach each other inside the kernel without touching
// the ENI's link, so traffic between pods of one node would never cross the fabric, where each card's
// rate limit lives (as on EC2, where a card's budget applies to what leaves the instance). pod-1 is on
// node 1 and its peers pod-2, pod-3 and pod-4 on node 2, so every byte measured crosses its card's ENI on
// both nodes.
//
// The demo needs a kernel with ipvlan. Where the kernel lacks it (`-vm auto`, the default), the demo runs
// itself inside the test VM instead: e2e/vm/vmtest.sh --run ./e2e/demo (Debian's kernel under QEMU).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/e2e/traffic"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/internal/testing/testbin"
)

// prefix names every netns of the demo; a fixed one, so that a killed run's leftovers are removed by the
// next run (harness.NewRegion cleans the prefix first).
const prefix = "mndemo"

// inVMEnv is set to "1" by e2e/vm/vmtest.sh inside the test VM.
const inVMEnv = "MULTINIC_IN_VM"

type options struct {
	instanceType string
	rate         uint64
	duration     time.Duration
	conns        int
	pods         int
	family       string // the cards' and the pods': "ipv4", "ipv6" or "dual" (-ipv6, -dual)
}

func main() {
	var o options
	flag.StringVar(&o.instanceType, "instance-type", harness.DefaultInstanceType, "instance type of the nodes (fake-ec2's catalog)")
	// 20 Mbit/s: 7 cards (140 Mbit/s) stay far below what the test VM's one emulated CPU carries through the
	// fabric with its rate limits (about 450 Mbit/s at 100 Mbit/s per card, when it stops scaling), so the
	// aggregate shows the cards, not the CPU, even on a busy host.
	flag.Uint64Var(&o.rate, "rate-per-card", 20_000_000, "per-card bandwidth limit on the fabric, bit/s, each direction (0: none)")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each throughput measurement")
	flag.IntVar(&o.conns, "conns", 4, "concurrent TCP connections per card")
	flag.IntVar(&o.pods, "pods", 4, "pods, each attached to every non-primary card: pod-1 on node 1, the others (its peers) on node 2")
	ipv6 := flag.Bool("ipv6", false, "IPv6 only: the agents serve every card with family ipv6 (addresses from /80 prefixes), the pods get one IPv6 address per card, the throughput runs over IPv6")
	dual := flag.Bool("dual", false, "dual stack: one IPv4 and one IPv6 address per pod per card; throughput over IPv4, then over IPv6")
	vm := flag.String("vm", "auto", "run inside the test VM (e2e/vm/vmtest.sh): auto (when this kernel lacks ipvlan), always or never")
	flag.Parse()
	o.family = map[[2]bool]string{{false, false}: "ipv4", {true, false}: "ipv6", {false, true}: "dual"}[[2]bool{*ipv6, *dual}]
	if flag.NArg() > 0 || o.pods < 2 || o.conns < 1 || o.duration <= 0 || !slices.Contains([]string{"auto", "always", "never"}, *vm) ||
		o.family == "" {
		flag.Usage()
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces and links, and runs the agent)")
		os.Exit(1)
	}
	if *vm == "always" || (*vm == "auto" && os.Getenv(inVMEnv) != "1" && !hasIPVlan()) {
		os.Exit(runInVM(*vm))
	}
	os.Exit(run(o))
}

// hasIPVlan probes the kernel: an ipvlan child of a veth, in a throwaway netns.
func hasIPVlan() bool {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine, netns and all
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "probe0"}, PeerName: "probe1"}); err != nil {
			errc <- err
			return
		}
		l, err := netlink.LinkByName("probe0")
		if err == nil {
			err = netlink.LinkAdd(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "probe2", ParentIndex: l.Attrs().Index}, Mode: netlink.IPVLAN_MODE_L2})
		}
		errc <- err
	}()
	return <-errc == nil
}

// runInVM runs this demo, with the same flags, inside the test VM and returns its status.
func runInVM(why string) int {
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if why == "auto" {
		step("this kernel has no ipvlan: running the demo inside the test VM (Debian's kernel under QEMU, e2e/vm/vmtest.sh --run)")
	} else {
		step("running the demo inside the test VM (e2e/vm/vmtest.sh --run)")
	}
	args := []string{filepath.Join(root, "e2e/vm/vmtest.sh"), "--run", "./e2e/demo", "--", "-vm=never"}
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "vm" {
			args = append(args, "-"+f.Name+"="+f.Value.String())
		}
	})
	cmd := exec.Command("bash", args...)
	cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr = root, os.Stdin, os.Stdout, os.Stderr
	// Ctrl-C reaches vmtest.sh and QEMU through the terminal; the VM takes everything with it. Caught here
	// (not ignored: an ignored signal stays ignored in the child, and bash could not trap it); a TERM meant
	// for the demo alone is passed on.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	err = cmd.Start()
	if err == nil {
		done := make(chan struct{})
		go func() {
			for {
				select {
				case s := <-sigs:
					if s == syscall.SIGTERM {
						_ = cmd.Process.Signal(s)
					}
				case <-done:
					return
				}
			}
		}()
		err = cmd.Wait()
		close(done)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	return 0
}

// moduleRoot is the folder of this module's go.mod, above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/multinic/multinic\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the demo from the multinic checkout (`make demo`): no go.mod of github.com/multinic/multinic above the working directory")
		}
		dir = parent
	}
}

func run(o options) int {
	start := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	finished := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			step("interrupted: stopping at the next step, then tearing down")
		case <-finished:
		}
	}()
	tb := &demoTB{}
	tb.Do(func() { demo(ctx, tb, o) })
	close(finished)
	if ctx.Err() != nil && !tb.Failed() {
		tb.Errorf("interrupted")
	}
	step("tearing down: agents stopped, ENIs detached, namespaces removed")
	tb.runCleanups()
	testbin.Remove()
	if err := leftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	step("no namespace, link or process of the demo remains")
	if tb.Failed() {
		fmt.Fprintln(os.Stderr, "demo: FAILED")
		return 1
	}
	step("done in %.1fs", time.Since(start).Seconds())
	return 0
}

func demo(ctx context.Context, tb *demoTB, o options) {
	it, ok := fakeec2.LookupInstanceType(o.instanceType)
	if !ok {
		tb.Fatalf("instance type %q is not in fake-ec2's catalog %v", o.instanceType, fakeec2.InstanceTypes())
	}
	if it.NetworkCards < 2 {
		tb.Fatalf("%s has one network card: nothing to spread over", it.Name)
	}
	var cards []int
	for c := 1; c < it.NetworkCards; c++ {
		cards = append(cards, c)
	}
	t0 := time.Now()
	step("fake-ec2: 2 x %s (%d network cards x %d ENIs), VPC fabric with one subnet per card and %s per card; a multinic-agent per node managing cards %d-%d, family %s",
		it.Name, it.NetworkCards, it.InterfacesPerCard, rateString(o.rate), cards[0], cards[len(cards)-1], o.family)
	var agentArgs []string
	if o.family != "ipv4" {
		agentArgs = []string{"--family", o.family}
	}
	region := harness.NewRegion(tb, harness.Config{
		InstanceType: it.Name, Nodes: 2, Prefix: prefix, ManagedCards: cards,
		WarmTarget: o.pods + 2, RatePerCard: o.rate, // every pod's address warm: no EC2 call while they start
		AgentArgs: agentArgs,
	})
	for _, n := range region.Nodes() {
		agentDirs = append(agentDirs, n.Dir)
	}
	enis := map[string]bool{}
	for _, e := range region.State().ENIs {
		if e.Card > 0 {
			enis[e.ID] = true
		}
	}
	step("agents ready in %.1fs: %d ENIs attached on cards %d-%d of both nodes, warm addresses assigned",
		time.Since(t0).Seconds(), len(enis), cards[0], cards[len(cards)-1])
	checkInterrupt(ctx, tb)

	atts := make([]harness.Attachment, len(cards))
	for i, c := range cards {
		atts[i] = harness.Attachment{Card: c, Mode: "ipvlan", IPVlanMode: "l2", Family: o.family}
	}
	// The pods start at once, as a scheduler would start them; each one's attachments in order, as Multus
	// runs its delegates. A pod that fails is removed by the region's cleanup.
	step("starting %d pods (pod-1 on node1, its peers on node2): CNI ADD of the multinic plugin for cards %d-%d (net1-net%d) of each",
		o.pods, cards[0], cards[len(cards)-1], len(cards))
	pods := make([]*harness.Pod, o.pods)
	errs := make([]error, o.pods)
	var wg sync.WaitGroup
	for i := range o.pods {
		node := region.Node(min(i, 1)) // pod-1 on node 1, its peers on node 2
		name := fmt.Sprintf("pod-%d", i+1)
		wg.Go(func() {
			t := time.Now()
			p, err := node.NewPod(name)
			for _, a := range atts {
				if err != nil {
					break
				}
				_, err = p.Attach(a)
			}
			if errs[i] = err; err == nil {
				pods[i] = p
				step("%s on %s: %d attachments in %.1fs", name, node.Name, len(atts), time.Since(t).Seconds())
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("start pods: %v", err)
	}
	checkInterrupt(ctx, tb)
	printTable(tb, region, pods)

	if o.family != "ipv6" {
		throughput(ctx, tb, o, cards, pods, false)
		checkInterrupt(ctx, tb)
	}
	if o.family != "ipv4" {
		throughput(ctx, tb, o, cards, pods, true)
		checkInterrupt(ctx, tb)
	}

	// Explicit teardown of the pods, so that the pools can be checked while the agents still run.
	t := time.Now()
	step("deleting the pods: CNI DEL of every attachment through the plugin")
	for _, p := range pods {
		wg.Go(func() {
			if err := p.Remove(); err != nil {
				tb.Errorf("remove %s: %v", p.Name, err)
			}
		})
	}
	wg.Wait()
	for _, n := range region.Nodes() {
		allocs, err := n.Allocations()
		if err != nil || len(allocs) != 0 {
			tb.Errorf("%s after every pod is gone: %d allocations left (%v)", n.Name, len(allocs), err)
		}
	}
	if !tb.Failed() {
		step("pods deleted in %.1fs: 0 allocations left on both agents, every address back in its card's pool", time.Since(t).Seconds())
	}
}

func checkInterrupt(ctx context.Context, tb *demoTB) {
	if ctx.Err() != nil {
		tb.Fatalf("interrupted")
	}
}

// printTable shows what every pod got, and from which ENI in fake-ec2.
func printTable(tb *demoTB, region *harness.Region, pods []*harness.Pod) {
	st := region.State()
	byAddr := map[netip.Addr]fakeec2.ENIState{}
	var prefixes []fakeec2.ENIState
	for _, e := range st.ENIs {
		for _, a := range append(append([]string{e.PrimaryIP}, e.SecondaryIPs...), e.IPv6Addresses...) {
			if ip, err := netip.ParseAddr(a); err == nil {
				byAddr[ip] = e
			}
		}
		if len(e.Prefixes) > 0 || len(e.IPv6Prefixes) > 0 {
			prefixes = append(prefixes, e)
		}
	}
	eniOf := func(a netip.Addr) (fakeec2.ENIState, bool) {
		if e, ok := byAddr[a]; ok {
			return e, true
		}
		for _, e := range prefixes {
			for _, p := range append(slices.Clone(e.Prefixes), e.IPv6Prefixes...) {
				if pp, err := netip.ParsePrefix(p); err == nil && pp.Contains(a) {
					return e, true
				}
			}
		}
		return fakeec2.ENIState{}, false
	}
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tPOD\tCARD\tINTERFACE\tADDRESS\tENI\tENI LINK")
	for _, p := range pods {
		for _, a := range p.Attachments {
			// Each address of the attachment (IPv4 first), on one ENI of the card.
			var addrs []string
			var e fakeec2.ENIState
			for _, addr := range []netip.Addr{p.Addr(a.IfName), p.Addr6(a.IfName)} {
				if !addr.IsValid() {
					continue
				}
				x, ok := eniOf(addr)
				if !ok || x.Card != a.Card || x.InstanceID != p.Node.InstanceID || (e.ID != "" && x.ID != e.ID) {
					tb.Errorf("%s %s: address %s is not registered on the card-%d ENI of %s in fake-ec2", p.Name, a.IfName, addr, a.Card, p.Node.InstanceID)
				}
				e = x
				addrs = append(addrs, addr.String())
			}
			want := 1
			if a.Family == "dual" {
				want = 2
			}
			if len(addrs) != want {
				tb.Errorf("%s %s: addresses %v, want those of family %s", p.Name, a.IfName, addrs, a.Family)
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.Node.Name, p.Name, a.Card, a.IfName, strings.Join(addrs, " "), e.ID, fabric.NodeLinkName(e.Card, e.Device))
		}
	}
	_ = w.Flush()
	fmt.Println()
	if tb.Failed() {
		tb.Fatalf("addresses not registered in fake-ec2")
	}
}

// throughput sends from pod-1 over 1, 2, 4 and every card at once (traffic.Spread: card c's flow goes from
// pod-1's address on card c to a peer's address on card c, peers taken in turn), with conns connections
// each, and prints what the peers received.
func throughput(ctx context.Context, tb *demoTB, o options, cards []int, pods []*harness.Pod, v6 bool) {
	src, peers := pods[0], pods[1:]
	endpoint, family := traffic.PodEndpoint, "IPv4"
	if v6 {
		endpoint, family = traffic.PodEndpoint6, "IPv6"
	}
	var names []string
	var ends []traffic.Endpoint
	for _, p := range peers {
		names = append(names, p.Name)
		ends = append(ends, endpoint(p))
	}
	spread, err := traffic.NewSpread(endpoint(src), ends)
	if err != nil {
		tb.Fatalf("throughput: %v", err)
	}
	defer spread.Close()
	step("throughput over %s %s (%s) -> %s (%s), %d TCP connections per card, %s per card, %s per run",
		family, src.Name, src.Node.Name, strings.Join(names, ", "), peers[0].Node.Name, o.conns, rateString(o.rate), o.duration)
	fmt.Println()
	// Rows print as they are measured, so fixed widths rather than a tabwriter.
	fmt.Printf("  %5s  %-20s  %13s  %13s  %10s\n", "CARDS", "FLOWS", "AGGREGATE", "PER CARD", "x ONE CARD")
	var one float64
	for _, n := range traffic.ScalingSteps(len(cards)) {
		checkInterrupt(ctx, tb)
		r, err := spread.Measure(ctx, cards[:n], o.conns, o.duration)
		if err != nil {
			tb.Fatalf("%v", err)
		}
		var desc []string
		for _, c := range cards[:n] {
			desc = append(desc, fmt.Sprint(c))
		}
		if n == 1 {
			one = r.Total
		}
		ratio := 0.0
		if one > 0 {
			ratio = r.Total / one
		}
		fmt.Printf("  %5d  %-20s  %13s  %13s  %9.2fx\n", n, "cards "+strings.Join(desc, ","), mbit(r.Total), mbit(r.Total/float64(n)), ratio)
	}
	fmt.Println()
}

// agentDirs are the nodes' folders (agent socket, state, log), which teardown removes.
var agentDirs []string

// leftovers reports anything of the demo still on the machine: a netns with its prefix, a link in this
// netns named like the fabric's, a process (agent, plugin) whose command line names the demo's netns, an
// agent's folder.
func leftovers() error {
	var left []string
	if m, _ := filepath.Glob(filepath.Join(fabric.NetNSDir, prefix+"*")); len(m) > 0 {
		left = append(left, fmt.Sprintf("netns %v", m))
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if name := l.Attrs().Name; fabricLink.MatchString(name) {
				left = append(left, "link "+name)
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), filepath.Join(fabric.NetNSDir, prefix+"-")) {
			left = append(left, "process "+filepath.Base(filepath.Dir(p))+" ("+strings.ReplaceAll(string(b), "\x00", " ")+")")
		}
	}
	for _, d := range agentDirs {
		if _, err := os.Stat(d); err == nil {
			left = append(left, "agent folder "+d)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("left after teardown: %s", strings.Join(left, "; "))
	}
	return nil
}

// fabricLink matches the names of the links the fabric makes (node end, fabric end, ifb), which must never
// be in this netns.
var fabricLink = regexp.MustCompile(`^(ens[0-9]+d[0-9]+|[vi][0-9a-f]{12})$`)

// started is when the program started; progress lines carry the time since.
var started = time.Now()

func step(format string, args ...any) {
	fmt.Printf("==> [%5.1fs] "+format+"\n", append([]any{time.Since(started).Seconds()}, args...)...)
}

func mbit(bps float64) string { return fmt.Sprintf("%.1f Mbit/s", bps/1e6) }

func rateString(r uint64) string {
	if r == 0 {
		return "no rate limit"
	}
	return fmt.Sprintf("%g Mbit/s", float64(r)/1e6)
}

// demoTB is the harness.TB of a program: Fatal panics with fatal{} (Do recovers it), cleanups run when the
// demo says so, logs go to stderr indented.
type demoTB struct {
	mu       sync.Mutex
	failed   bool
	cleanups []func()
}

var _ harness.TB = (*demoTB)(nil)

type fatal struct{}

// Do runs f, stopping at the first Fatal.
func (d *demoTB) Do(f func()) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(fatal); !ok {
				panic(r)
			}
		}
	}()
	f()
}

func (d *demoTB) runCleanups() {
	for {
		d.mu.Lock()
		if len(d.cleanups) == 0 {
			d.mu.Unlock()
			return
		}
		f := d.cleanups[len(d.cleanups)-1]
		d.cleanups = d.cleanups[:len(d.cleanups)-1]
		d.mu.Unlock()
		d.Do(f)
	}
}

func (d *demoTB) Helper() {}

func (d *demoTB) Cleanup(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cleanups = append(d.cleanups, f)
}

func (d *demoTB) Logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	fmt.Fprintln(os.Stderr, "    "+strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    "))
}

func (d *demoTB) Errorf(format string, args ...any) {
	d.mu.Lock()
	d.failed = true
	d.mu.Unlock()
	fmt.Fprintf(os.Stderr, "demo: error: "+format+"\n", args...)
}

func (d *demoTB) Fatal(args ...any) { d.Fatalf("%s", fmt.Sprint(args...)) }

func (d *demoTB) Fatalf(format string, args ...any) {
	d.Errorf(format, args...)
	panic(fatal{})
}

func (d *demoTB) Skip(args ...any) { d.Fatalf("cannot run: %s", fmt.Sprint(args...)) }

func (d *demoTB) Failed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}
