package faults

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/multinic/multinic/internal/nettest"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/journal"
)

// leakWait bounds how long the leak count waits to reach 0: the agent's pool and EC2 converge
// asynchronously (a refill between its EC2 call and its checkpoint, a reconcile after a restart).
const leakWait = 20 * time.Second

// netState is what a netns holds, as comparable strings.
type netState struct {
	links, rules, routes []string
}

// snapshotNetNS lists the links (name type mac), IPv4 rules and IPv4 routes of every table.
func snapshotNetNS(h netlinksafe.Handle) (netState, error) {
	var st netState
	links, err := h.LinkList()
	if err != nil {
		return st, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		st.links = append(st.links, fmt.Sprintf("%s %s %s", a.Name, l.Type(), a.HardwareAddr))
	}
	rules, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return st, fmt.Errorf("list rules: %w", err)
	}
	for _, r := range rules {
		st.rules = append(st.rules, fmt.Sprintf("pref %d from %v to %v table %d", r.Priority, r.Src, r.Dst, r.Table))
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return st, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		st.routes = append(st.routes, fmt.Sprintf("table %d %v via %v dev %s", r.Table, r.Dst, r.Gw, names[r.LinkIndex]))
	}
	return st, nil
}

// watch is what the leak count compares against: the node's netns before the test and the test's pods.
type watch struct {
	region *harness.Region
	node   *harness.Node
	base   netState
	pods   []*harness.Pod
	// stateDir is the agent's --state-dir (the node's unless a test overrides the flag).
	stateDir string
}

// newWatch snapshots the node netns; call it once the region is up and before the fault.
func newWatch(t *testing.T, region *harness.Region, node *harness.Node) *watch {
	t.Helper()
	base, err := snapshotNetNS(node.Handle())
	if err != nil {
		t.Fatalf("snapshot node netns: %v", err)
	}
	return &watch{region: region, node: node, base: base, stateDir: node.StateDir}
}

// track adds a pod whose leftovers count.
func (w *watch) track(p *harness.Pod) { w.pods = append(w.pods, p) }

// podLeaks counts what the plugin left in a pod after DEL; a pod whose netns is gone has nothing left.
func podLeaks(p *harness.Pod) (links, rules, routes int, details []string, err error) {
	if _, serr := os.Stat(p.NetNSPath); errors.Is(serr, os.ErrNotExist) {
		return 0, 0, 0, nil, nil
	}
	h := p.Handle()
	ls, err := h.LinkList()
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("list links of pod %s: %w", p.Name, err)
	}
	keep := map[int]bool{}
	for _, l := range ls {
		if n := l.Attrs().Name; n == "lo" || n == harness.PrimaryIfName {
			keep[l.Attrs().Index] = true
			continue
		}
		links++
		details = append(details, fmt.Sprintf("pod %s: link %s (%s)", p.Name, l.Attrs().Name, l.Type()))
	}
	rs, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("list rules of pod %s: %w", p.Name, err)
	}
	for _, r := range rs {
		if r.Table == unix.RT_TABLE_LOCAL || r.Table == unix.RT_TABLE_MAIN || r.Table == unix.RT_TABLE_DEFAULT {
			continue
		}
		rules++
		details = append(details, fmt.Sprintf("pod %s: rule pref %d from %v table %d", p.Name, r.Priority, r.Src, r.Table))
	}
	rts, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("list routes of pod %s: %w", p.Name, err)
	}
	for _, r := range rts {
		if keep[r.LinkIndex] {
			continue
		}
		routes++
		details = append(details, fmt.Sprintf("pod %s: route table %d %v via %v", p.Name, r.Table, r.Dst, r.Gw))
	}
	return links, rules, routes, details, nil
}

// count takes one leak count.
func (w *watch) count() (Leaks, []string, error) {
	var l Leaks
	var details []string
	n := w.node
	ours := map[string]bool{}
	ourNetns := map[string]bool{}
	for _, p := range w.pods {
		ours[p.ContainerID] = true
		ourNetns[p.NetNSPath] = true
	}

	// The agent's allocations of our pods, by container or, for one rebuilt by --recover (its container
	// is not knowable), by netns.
	allocs, err := n.Allocations()
	if err != nil {
		return l, nil, fmt.Errorf("list allocations: %w", err)
	}
	for _, a := range allocs {
		if ours[a.ContainerID] || (a.Netns != "" && ourNetns[a.Netns]) {
			l.Allocations++
			details = append(details, fmt.Sprintf("allocation %s/%s card %d %s on %s", short(a.ContainerID), a.IfName, a.Card, a.Address, a.ENIID))
		}
	}

	// EC2 against the agent's pool (its checkpoint: what it would come back with).
	cp, _, err := harness.LoadCheckpoint(w.stateDir)
	if err != nil {
		return l, nil, err
	}
	pool := map[string]map[netip.Addr]bool{}
	for _, a := range cp.Addresses {
		if pool[a.ENIID] == nil {
			pool[a.ENIID] = map[netip.Addr]bool{}
		}
		pool[a.ENIID][a.Address] = true
	}
	st := w.region.State()
	attachedMACs := map[string]string{} // MAC -> ENI of every ENI attached to the node
	seen := map[string]bool{}
	for _, e := range st.ENIs {
		if e.Status == "in-use" && e.InstanceID == n.InstanceID {
			attachedMACs[strings.ToLower(e.MAC)] = e.ID
		}
		if e.Tags[eni.TagCluster] != harness.DefaultCluster || e.Tags[eni.TagNode] != n.InstanceID {
			continue
		}
		if e.Status != "in-use" {
			l.OrphanENIs++
			details = append(details, fmt.Sprintf("orphan ENI %s (%s, %s)", e.ID, e.Status, e.Tags[eni.TagMode]))
			continue
		}
		seen[e.ID] = true
		var have []netip.Addr
		if e.Tags[eni.TagMode] == eni.ModeExclusive {
			have = append(have, netip.MustParseAddr(e.PrimaryIP))
		} else {
			for _, s := range e.SecondaryIPs {
				have = append(have, netip.MustParseAddr(s))
			}
			for _, s := range e.Prefixes {
				p := netip.MustParsePrefix(s)
				for a := p.Addr(); p.Contains(a); a = a.Next() {
					have = append(have, a)
				}
			}
		}
		for _, a := range have {
			if !pool[e.ID][a] {
				l.EC2NotInPool++
				details = append(details, fmt.Sprintf("EC2 has %s on %s, the agent's pool does not", a, e.ID))
			}
		}
		for a := range pool[e.ID] {
			if !slices.Contains(have, a) {
				l.PoolNotInEC2++
				details = append(details, fmt.Sprintf("the agent's pool has %s on %s, EC2 does not", a, e.ID))
			}
		}
	}
	for id, addrs := range pool {
		if !seen[id] {
			l.PoolNotInEC2 += len(addrs)
			details = append(details, fmt.Sprintf("the agent's pool has %d addresses on %s, which is not attached to the node", len(addrs), id))
		}
	}

	// The pods' netns (those still there).
	for _, p := range w.pods {
		pl, pr, prt, d, err := podLeaks(p)
		if err != nil {
			return l, nil, err
		}
		l.PodLinks, l.PodRules, l.PodRoutes = l.PodLinks+pl, l.PodRules+pr, l.PodRoutes+prt
		details = append(details, d...)
	}

	// The node netns against its baseline; ENI links come and go with the pool.
	now, err := snapshotNetNS(n.Handle())
	if err != nil {
		return l, nil, fmt.Errorf("snapshot node netns: %w", err)
	}
	linkMACs := map[string]bool{}
	for _, s := range now.links {
		f := strings.Fields(s)
		mac := ""
		if len(f) == 3 {
			mac = strings.ToLower(f[2])
		}
		linkMACs[mac] = true
		if slices.Contains(w.base.links, s) || attachedMACs[mac] != "" {
			continue
		}
		l.NodeLinks++
		details = append(details, "node link "+s)
	}
	held := map[string]bool{} // ENIs in a live pod (exclusive); none once every pod is gone
	for _, p := range w.pods {
		if _, err := os.Stat(p.NetNSPath); err == nil {
			for _, a := range p.Attachments {
				if al, ok, _ := n.Allocation(p.ContainerID, a.IfName); ok && al.Exclusive {
					held[al.ENIID] = true
				}
			}
		}
	}
	for mac, id := range attachedMACs {
		if !linkMACs[mac] && !held[id] {
			l.ENILinksMissing++
			details = append(details, fmt.Sprintf("ENI %s (%s) is attached but its link is not in the node netns", id, mac))
		}
	}
	for _, s := range now.rules {
		if !slices.Contains(w.base.rules, s) {
			l.NodeRules++
			details = append(details, "node rule "+s)
		}
	}
	for _, s := range now.routes {
		if !slices.Contains(w.base.routes, s) {
			l.NodeRoutes++
			details = append(details, "node route "+s)
		}
	}

	// Releases the plugin journaled and nobody replayed.
	j, err := journaled(ours)
	if err != nil {
		return l, nil, err
	}
	l.Journal = len(j)
	for _, c := range j {
		details = append(details, "journaled release of "+short(c))
	}
	slices.Sort(details)
	return l, details, nil
}

// settle counts leaks until there are none or leakWait passes, and returns the last count.
func (w *watch) settle(t *testing.T) (Leaks, []string) {
	t.Helper()
	deadline := time.Now().Add(leakWait)
	for {
		l, d, err := w.count()
		if err == nil && l.Total() == 0 {
			return l, d
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("count leaks: %v", err)
			}
			return l, d
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// journaled lists the container IDs in ours that have a pending release in the plugin's journal.
func journaled(ours map[string]bool) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(journal.DefaultDir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // replayed meanwhile
		}
		var rec struct {
			ContainerID string `json:"containerID"`
		}
		if json.Unmarshal(b, &rec) == nil && ours[rec.ContainerID] {
			out = append(out, rec.ContainerID)
		}
	}
	return out, nil
}

func short(id string) string { return id[:min(12, len(id))] }

// cleanup does what a runtime does once it gives up on the pods: DEL every attachment (DEL must succeed),
// count what the plugin left in each pod, remove the pods; then it waits for the agent and EC2 to settle
// and counts the rest.
func (w *watch) cleanup(t *testing.T) (Leaks, []string) {
	t.Helper()
	var pod Leaks
	var podDetails []string
	for _, p := range w.pods {
		if err := p.Del(); err != nil {
			t.Errorf("DEL of pod %s after the fault: %v", p.Name, err)
		}
		links, rules, routes, d, err := podLeaks(p)
		if err != nil {
			t.Errorf("count leaks in pod %s: %v", p.Name, err)
		}
		pod.PodLinks, pod.PodRules, pod.PodRoutes = pod.PodLinks+links, pod.PodRules+rules, pod.PodRoutes+routes
		podDetails = append(podDetails, d...)
		if err := p.Remove(); err != nil {
			t.Errorf("remove pod %s: %v", p.Name, err)
		}
	}
	l, d := w.settle(t)
	l.PodLinks, l.PodRules, l.PodRoutes = pod.PodLinks, pod.PodRules, pod.PodRoutes
	return l, append(podDetails, d...)
}

// faultCase is one fault test: a one-node region serving card 1, the leak watch on its node, and the
// record of the run with its notes.
type faultCase struct {
	*watch
	run   *run
	notes []string
}

// newFaultCase starts a fault test (root: it makes netns) on a region made with regionConfig(flags...);
// finish ends it.
func newFaultCase(t *testing.T, fault, mode, injected string, flags ...string) *faultCase {
	t.Helper()
	return newFaultCaseIn(t, regionConfig(flags...), fault, mode, injected)
}

// newFaultCaseIn is newFaultCase on a region made with cfg.
func newFaultCaseIn(t *testing.T, cfg harness.Config, fault, mode, injected string) *faultCase {
	t.Helper()
	nettest.RequireRoot(t)
	region := harness.NewRegion(t, cfg)
	return &faultCase{watch: newWatch(t, region, region.Node(0)), run: newRun(t, fault, mode, injected)}
}

// note adds to the run's note (repeats in a row are said once).
func (c *faultCase) note(s string) { c.notes = append(c.notes, s) }

// finish does the runtime's cleanup, counts the leaks and records the run.
func (c *faultCase) finish(t *testing.T) {
	t.Helper()
	l, details := c.cleanup(t)
	c.run.finish(l, details, strings.Join(dedup(c.notes), "; "))
}

// recover is the last step of every fault round: once the fault is gone, a new pod's ADD (the runtime's
// retry with a new sandbox) must work. It records how long that took; what names the situation.
func (c *faultCase) recover(t *testing.T, round int, att harness.Attachment, what string) *harness.Pod {
	t.Helper()
	p := c.newPod(t, fmt.Sprintf("r%d", round))
	d, err := attachTimed(p, att)
	c.run.recovered(d, err)
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
	return p
}

// endRound ends round i of a multi-round run, unless it is the last: it removes the round's pods as a
// runtime would and waits until the agent has given their exclusive ENIs back to EC2 (the long variant's
// --surplus-delay is short), so the next round meets an empty exclusive pool, as the first did.
func (w *watch) endRound(t *testing.T, i int, pods ...*harness.Pod) {
	t.Helper()
	if i == rounds()-1 {
		return // the last round's pods are the cleanup's
	}
	for _, p := range pods {
		if err := p.Remove(); err != nil {
			t.Errorf("remove pod %s: %v", p.Name, err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, e := range w.region.State().ENIs {
			if e.Tags[eni.TagNode] == w.node.InstanceID && e.Tags[eni.TagMode] == eni.ModeExclusive {
				left = append(left, e.ID)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("exclusive ENIs %v still there 30 s after their pods went", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newPod creates a pod on the watched node, removed when the test ends, and tracks it.
func (w *watch) newPod(t *testing.T, name string) *harness.Pod {
	t.Helper()
	p, err := w.node.NewPod(name)
	if err != nil {
		t.Fatalf("new pod %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := p.Remove(); err != nil {
			t.Errorf("remove pod %s: %v", name, err)
		}
	})
	w.track(p)
	return p
}
