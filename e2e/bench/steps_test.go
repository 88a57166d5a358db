package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/harness"
	mnplugin "github.com/multinic/multinic/plugin"
)

// stepSamples are the step durations of traced multinic calls by name ("ADD: link"), in the order the
// steps came (issue 13: where ADD and DEL spend their time).
type stepSamples struct {
	dir   string // where the traces are written
	order []string
	dur   map[string][]time.Duration
}

func (s *stepSamples) add(name string, d time.Duration) {
	if s.dur == nil {
		s.dur = map[string][]time.Duration{}
	}
	if _, ok := s.dur[name]; !ok {
		s.order = append(s.order, name)
	}
	s.dur[name] = append(s.dur[name], d)
}

// traceSteps runs one more ADD and DEL of p (multinic, not timed in the figure) with the plugin's step
// trace on (plugin.TraceEnv), and adds how long each step took: "process start" from just before fork+exec
// to the plugin's main, each step from the end of the one before, and "exit" from the last step to wait's
// return (result printed, process gone). The plugin and the test read the same wall clock.
func traceSteps(t *testing.T, node *harness.Node, pod *harness.Pod, p plugin, s *stepSamples) {
	t.Helper()
	if s.dir == "" {
		s.dir = t.TempDir()
	}
	cid := newContainerID()
	for _, verb := range []string{"ADD", "DEL"} {
		path := filepath.Join(s.dir, verb)
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		c, err := execCNI(node.NetNS(), p, verb, cid, pod.NetNSPath, "net1", pod.Name, mnplugin.TraceEnv+"="+path)
		if err != nil {
			t.Fatal(err)
		}
		marks, err := mnplugin.ReadTrace(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(marks) < 2 || marks[0].Step != mnplugin.StepStart {
			t.Fatalf("%s trace %+v: want the start and at least one step", verb, marks)
		}
		prev := c.start
		for _, m := range marks {
			name := string(m.Step)
			if m.Step == mnplugin.StepStart {
				name = "process start"
			}
			s.add(verb+": "+name, m.At.Sub(prev))
			prev = m.At
		}
		s.add(verb+": exit", c.start.Add(c.dur).Sub(prev))
	}
}

// kernelMove returns a sampler of the kernel's own link move, netlink only: the link name (a veth made like
// fabric's ENI links: refDevice) from the node netns into the pod netns and back, each one RTM_SETLINK
// with IFLA_NET_NS_FD sent through a handle already open in the link's netns (no thread changes netns, no
// temporary netns, no rename); only the request is timed. The link is up at home before each move, as an
// ENI link the agent serves is.
func kernelMove(t *testing.T, node *harness.Node, pod *harness.Pod, name string) func(*testing.T, *stepSamples) {
	t.Helper()
	podNS, ph := openPod(t, pod)
	nh := node.Handle()
	return func(t *testing.T, s *stepSamples) {
		t.Helper()
		l, err := nh.LinkByName(name)
		if err == nil {
			err = nh.LinkSetUp(l)
		}
		if err != nil {
			t.Fatalf("kernel move: %v", err)
		}
		start := time.Now()
		err = nh.LinkSetNsFd(l, int(podNS.Fd()))
		in := time.Since(start)
		if err != nil {
			t.Fatalf("kernel move into the pod: %v", err)
		}
		if l, err = ph.LinkByName(name); err != nil {
			t.Fatalf("kernel move: %v", err)
		}
		start = time.Now()
		err = ph.LinkSetNsFd(l, int(node.NetNS().Fd()))
		out := time.Since(start)
		if err != nil {
			t.Fatalf("kernel move back: %v", err)
		}
		s.add(kernelMoveIn, in)
		s.add(kernelMoveOut, out)
	}
}

// openPod opens pod's netns and a netlink handle in it, both closed when the test ends.
func openPod(t *testing.T, pod *harness.Pod) (ns.NetNS, netlinksafe.Handle) {
	t.Helper()
	podNS, err := ns.GetNS(pod.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { podNS.Close() })
	return podNS, nettest.Handle(t, podNS)
}

const (
	kernelMoveIn  = "kernel alone: link move node -> pod"
	kernelMoveOut = "kernel alone: link move pod -> node"
)

// kernelIPVlan returns a sampler of the kernel's own ipvlan child, netlink only: a child of parent (l2)
// created straight into the pod netns under its final name (one RTM_NEWLINK with IFLA_NET_NS_FD, through a
// handle in the node netns) and deleted (one RTM_DELLINK, through a handle in the pod netns); only the
// requests are timed.
func kernelIPVlan(t *testing.T, node *harness.Node, pod *harness.Pod, parent string) func(*testing.T, *stepSamples) {
	t.Helper()
	podNS, ph := openPod(t, pod)
	nh := node.Handle()
	p, err := nh.LinkByName(parent)
	if err != nil {
		t.Fatal(err)
	}
	const name = "kernel1"
	return func(t *testing.T, s *stepSamples) {
		t.Helper()
		child := &netlink.IPVlan{Mode: netlink.IPVLAN_MODE_L2, LinkAttrs: netlink.LinkAttrs{Name: name,
			ParentIndex: p.Attrs().Index, Namespace: netlink.NsFd(int(podNS.Fd()))}}
		start := time.Now()
		err := nh.LinkAdd(child)
		add := time.Since(start)
		if err != nil {
			t.Fatalf("kernel ipvlan create: %v", err)
		}
		l, err := ph.LinkByName(name)
		if err != nil {
			t.Fatalf("kernel ipvlan: %v", err)
		}
		start = time.Now()
		err = ph.LinkDel(l)
		del := time.Since(start)
		if err != nil {
			t.Fatalf("kernel ipvlan delete: %v", err)
		}
		s.add("kernel alone: ipvlan child create (in the pod netns)", add)
		s.add("kernel alone: ipvlan child delete", del)
	}
}

// stepsResult is figure 1's per-step table of multinic's ADD and DEL in one mode: the whole calls of the
// interleaved run next to the reference's, then multinic's steps (traced calls), then the kernel alone.
func stepsResult(key, title, refTitle string, ours, ref *samples) Result {
	ms := func(d []time.Duration) Stat { return Summarize(Millis(d)) }
	s := &ours.steps
	var steps, kernel []Row
	for _, name := range s.order {
		row := Row{Metric: name, Unit: "ms", Ours: ms(s.dur[name])}
		if strings.HasPrefix(name, "kernel alone: ") {
			kernel = append(kernel, row)
			continue
		}
		steps = append(steps, row)
	}
	var rows []Row
	for _, verb := range []string{"ADD", "DEL"} {
		whole := [2][]time.Duration{ours.add, ref.add}
		if verb == "DEL" {
			whole = [2][]time.Duration{ours.del, ref.del}
		}
		rows = append(rows, Compare(verb+": whole call (the interleaved run)", "ms", ms(whole[0]), ms(whole[1]), 0))
		for _, r := range steps {
			if strings.HasPrefix(r.Metric, verb+": ") {
				rows = append(rows, r)
			}
		}
	}
	rows = append(rows, kernel...)
	notes := []string{
		fmt.Sprintf("The whole-call rows are the run above's ADD and DEL, multinic against %s. The step rows come from one extra ADD and DEL of multinic every %d iterations of that run (not timed there), with %s set: the plugin appends each step's end time (one write per step) to a file. Each step row is the time from the end of the step before (process start: from just before fork+exec to the plugin's main, Go runtime init included; exit: from the last step to wait's return, the result printed and the process gone).", refTitle, sampleEvery, mnplugin.TraceEnv),
		"ADD: netns = config and CNI_ARGS parsed, pod netns opened, a netlink socket opened there, the interface name checked free; allocate = journal replay, the agent's round trip; link = ipvlan child made in the pod netns under its name / ENI moved into the pod and renamed; address = MTU, address, up; routes = extra routes and the per-card table; rule = the source rule; sysctl = rp_filter; result = the result read back from the pod netns. DEL: netns = config parsed, journal replay, pod netns opened; rule = the rules deleted; link = the ipvlan child deleted / the ENI moved home, renamed, its MTU and up state restored; release = the agent's round trip.",
	}
	if _, ok := s.dur[kernelMoveIn]; ok {
		p50 := func(name string) float64 { return ms(s.dur[name]).Value }
		add, in, del, out := p50("ADD: link"), p50(kernelMoveIn), p50("DEL: link"), p50(kernelMoveOut)
		notes = append(notes, fmt.Sprintf("Kernel alone: the same kind of link (a veth, peer in the fabric netns, MTU 9001) moved by one netlink request each way, right after the traced calls. p50: ADD's link step %.2f ms against %.2f ms for the kernel's move alone (the plugin spends %+.2f ms beyond it); DEL's link step %.2f ms against %.2f ms for the kernel's move back alone (%+.2f ms beyond it). A difference within a millisecond or two either way is noise between two sets of samples.",
			add, in, add-in, del, out, del-out))
	}
	return Result{Figure: 1, Key: key + "-steps", Title: title, Iterations: len(s.dur[s.order[0]]), Ours: "multinic", Ref: refTitle, Rows: rows, Notes: notes}
}

// TestStepsResult: the per-step table puts each verb's whole call (against the reference) before that
// verb's steps, the kernel-alone rows last, and says what the link steps spend beyond the kernel's move.
func TestStepsResult(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	ours := &samples{add: ms(30, 32, 31), del: ms(20, 22, 21)}
	ref := &samples{add: ms(60, 61, 62), del: ms(40, 41, 42)}
	for _, r := range []struct {
		name string
		d    int
	}{{"ADD: process start", 5}, {"ADD: link", 12}, {"DEL: process start", 5}, {"DEL: link", 9}, {kernelMoveIn, 8}, {kernelMoveOut, 6}} {
		ours.steps.add(r.name, time.Duration(r.d)*time.Millisecond)
	}
	res := stepsResult("exclusive", "title", "host-device + static", ours, ref)
	var metrics []string
	for _, row := range res.Rows {
		metrics = append(metrics, row.Metric)
	}
	want := []string{"ADD: whole call (the interleaved run)", "ADD: process start", "ADD: link",
		"DEL: whole call (the interleaved run)", "DEL: process start", "DEL: link", kernelMoveIn, kernelMoveOut}
	if !slices.Equal(metrics, want) {
		t.Fatalf("rows %q, want %q", metrics, want)
	}
	if r := res.Rows[0]; r.Ours.Value != 31 || r.Ref == nil || r.Ref.Value != 61 {
		t.Errorf("ADD whole call row %+v, want 31 ms against 61 ms", r)
	}
	if r := res.Rows[3]; r.Ours.Value != 21 || r.Ref == nil || r.Ref.Value != 41 {
		t.Errorf("DEL whole call row %+v, want 21 ms against 41 ms", r)
	}
	if res.Key != "exclusive-steps" || res.Iterations != 1 || res.Ref != "host-device + static" {
		t.Errorf("result key %q, iterations %d, ref %q", res.Key, res.Iterations, res.Ref)
	}
	beyond := "ADD's link step 12.00 ms against 8.00 ms for the kernel's move alone (the plugin spends +4.00 ms beyond it); DEL's link step 9.00 ms against 6.00 ms for the kernel's move back alone (+3.00 ms beyond it)"
	if !slices.ContainsFunc(res.Notes, func(n string) bool { return strings.Contains(n, beyond) }) {
		t.Errorf("notes %q, want one saying %q", res.Notes, beyond)
	}
}
