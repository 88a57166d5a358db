package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/internal/testing/testbin"
	"github.com/multinic/multinic/ipam/api"
)

// tinySubnets is fake-ec2's default one-subnet-per-card layout for one trn1.32xlarge, with card 2's
// subnet a /28: 11 usable addresses, fewer than card 2's ENI and its warm target need.
func tinySubnets(t *testing.T) []fakeec2.SubnetConfig {
	t.Helper()
	subnets, err := fakeec2.SubnetsPerCard(8)
	if err != nil {
		t.Fatal(err)
	}
	subnets[2].CIDR = "10.0.32.0/28"
	return subnets
}

// runStatusCmd runs the real binary's status subcommand against the node's agent.
func runStatusCmd(t *testing.T, n *harness.Node, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(testbin.Path(t, testbin.Agent), append([]string{"status", "--socket", n.Socket}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TestStatusCommand: `multinic-agent status` against a running agent and fake-ec2. Card 1 serves two pods;
// card 2's subnet is too small for its warm target, so EC2 refuses the refill. Every column of the JSON
// and the table is checked against the agent's allocations and fake-ec2's state; with the agent stopped,
// the command says so and fails.
func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	// The harness gives the agent --managed-cards 1,2 and each card its own subnet (--subnet-per-card).
	region, n := startNode(t, harness.Config{ManagedCards: []int{1, 2}, Subnets: tinySubnets(t)})
	start := time.Now()
	agentArgs := []string{"--warm-target", "12", "--cooldown", "1h"}
	startAgent(t, n, agentArgs, 1)
	ctx := context.Background()
	for _, pod := range []string{"pod-a", "pod-b"} {
		if _, err := n.Client.Allocate(ctx, podReq(1, "c-"+pod, "net1", pod)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Client.Release(ctx, api.ReleaseRequest{ContainerID: "c-pod-b", IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Client.Allocate(ctx, podReq(1, "c-pod-c", "net1", "pod-c")); err != nil {
		t.Fatal(err)
	}
	// Card 2's subnet has room for its ENI and 10 more addresses: 10 pods take them all.
	for i := range 10 {
		pod := fmt.Sprintf("pod-2-%d", i)
		if _, err := n.Client.Allocate(ctx, podReq(2, "c-"+pod, "net2", pod)); err != nil {
			t.Fatal(err)
		}
	}

	// Card 2 fails its refill on EC2's InsufficientFreeAddressesInSubnet and has no free address left: it
	// is not ready. Wait until the agent says so.
	var rep statusReport
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, stderr, err := runStatusCmd(t, n, "-o", "json", "--allocations")
		if err != nil {
			t.Fatalf("status -o json: %v\n%s", err, stderr)
		}
		rep = statusReport{}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("status -o json printed %q: %v", out, err)
		}
		// Card 1 settles too: 12 free, its warm target, after pod-c took one.
		if len(rep.Cards) == 2 && !rep.Cards[1].Ready && strings.Contains(rep.Cards[1].LastError, "InsufficientFreeAddressesInSubnet") &&
			rep.Cards[0].Shared.Warm+rep.Cards[0].Shared.Cooling == 12 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("card 2 not down on InsufficientFreeAddressesInSubnet, or card 1 not settled, after 60s: %+v", rep.Cards)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := region.State()
	// The state is read after the status: card 2's ENIs and addresses do not change any more (every
	// refill fails), card 1's are settled (warm target reached, nothing released but resting).

	if rep.Node != n.Name || rep.Instance != st.Instances[0].ID {
		t.Errorf("node %q instance %q, want %s and fake-ec2's %s", rep.Node, rep.Instance, n.Name, st.Instances[0].ID)
	}
	if !rep.Time.After(start) || rep.Time.After(time.Now()) {
		t.Errorf("agent time %s not between the test's start %s and now", rep.Time, start)
	}
	subnetOf := map[string]string{}
	for _, s := range st.Subnets {
		subnetOf[s.CIDR] = s.ID
	}
	als, err := n.Client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	enis := ourENIs(n, st)
	for i, c := range rep.Cards {
		if c.Card != i+1 {
			t.Fatalf("cards %+v, want 1 and 2 in order", rep.Cards)
		}
		var want []string
		addrs := 0
		for _, e := range enis {
			if e.Card == c.Card && e.InstanceID == rep.Instance && e.Status == "in-use" {
				want = append(want, e.ID)
				addrs += len(e.SecondaryIPs)
				if e.SubnetID != c.Subnet {
					t.Errorf("card %d: subnet %s, fake-ec2 has its ENI %s in %s", c.Card, c.Subnet, e.ID, e.SubnetID)
				}
			}
		}
		slices.Sort(want)
		if !slices.Equal(c.ENIs, want) || len(want) == 0 {
			t.Errorf("card %d: ENIs %v, fake-ec2 has %v", c.Card, c.ENIs, want)
		}
		if c.Mode != "single" {
			t.Errorf("card %d: mode %q, want single", c.Card, c.Mode)
		}
		allocated := 0
		for _, a := range als {
			if a.Card == c.Card {
				allocated++
			}
		}
		if got := c.Shared.Allocated; got != allocated {
			t.Errorf("card %d: allocated %d, the agent lists %d allocations", c.Card, got, allocated)
		}
		if got := c.Shared.Allocated + c.Shared.Warm + c.Shared.Cooling; got != addrs {
			t.Errorf("card %d: allocated+warm+cooling = %d, fake-ec2 has %d secondary addresses on its ENIs", c.Card, got, addrs)
		}
		if c.MaxENIs != 5 { // trn1.32xlarge: 5 ENIs per card
			t.Errorf("card %d: max ENIs %d, want 5", c.Card, c.MaxENIs)
		}
	}
	c1, c2 := rep.Cards[0], rep.Cards[1]
	if c1.Shared != (api.PoolCounts{Allocated: 2, Warm: 11, Cooling: 1}) {
		t.Errorf("card 1 pool %+v, want 2 allocated (pod-a, pod-c), 1 cooling (pod-b's) and 11 warm: 12 free, the target", c1.Shared)
	}
	if !c1.Ready || c1.Reason != "" || c1.LastError != "" {
		t.Errorf("card 1: ready %v reason %q last error %q, want ready and no error", c1.Ready, c1.Reason, c1.LastError)
	}
	if c1.Subnet != fakeec2.CardSubnetID(1) || c2.Subnet != fakeec2.CardSubnetID(2) {
		t.Errorf("subnets %s and %s, want the agent's --subnet-per-card", c1.Subnet, c2.Subnet)
	}
	if c2.Shared != (api.PoolCounts{Allocated: 10}) {
		t.Errorf("card 2 pool %+v, want all 10 addresses allocated", c2.Shared)
	}
	if !strings.Contains(c2.Reason, "InsufficientFreeAddressesInSubnet") {
		t.Errorf("card 2: reason %q, want it to name EC2's InsufficientFreeAddressesInSubnet", c2.Reason)
	}
	if c2.LastErrorAt.Before(start) || c2.LastErrorAt.After(rep.Time) {
		t.Errorf("card 2: last error at %s, not between the agent's start %s and its answer %s", c2.LastErrorAt, start, rep.Time)
	}

	// Allocations: the agent's list, sorted by pod, each address on its ENI in fake-ec2.
	if len(rep.Allocations) != len(als) || len(als) != 12 {
		t.Fatalf("status lists %d allocations, the agent %d, want 12", len(rep.Allocations), len(als))
	}
	for i, a := range rep.Allocations {
		want := []string{"pod-2-0", "pod-2-1", "pod-2-2", "pod-2-3", "pod-2-4", "pod-2-5", "pod-2-6", "pod-2-7",
			"pod-2-8", "pod-2-9", "pod-a", "pod-c"}[i]
		if a.PodName != want || a.ContainerID != "c-"+want || !slices.ContainsFunc(als, func(b api.Allocation) bool {
			return b.ContainerID == a.ContainerID && b.IfName == a.IfName && b.Card == a.Card && b.Address == a.Address &&
				b.ENIID == a.ENIID && b.AllocatedAt.Equal(a.AllocatedAt)
		}) {
			t.Errorf("allocation %d: %+v, want %s as the agent lists it", i, a, want)
		}
		e, ok := enis[a.ENIID]
		if !ok || !onENI(e, a.Address) || e.Card != a.Card {
			t.Errorf("allocation %d: %s on %s, not on that ENI of card %d in fake-ec2", i, a.Address, a.ENIID, a.Card)
		}
		if a.AllocatedAt.Before(start) || a.AllocatedAt.After(rep.Time) {
			t.Errorf("allocation %d: allocated at %s, outside the test", i, a.AllocatedAt)
		}
	}

	// The table shows the same figures. Card 2's refill keeps failing, so its last error's time moves on
	// between two answers: the table is compared with the JSON of the answer right after it, a few times
	// if that time moved in between.
	var diffs []string
	for range 5 {
		out, stderr, err := runStatusCmd(t, n, "--allocations")
		if err != nil {
			t.Fatalf("status: %v\n%s", err, stderr)
		}
		jout, stderr, err := runStatusCmd(t, n, "-o", "json", "--allocations")
		if err != nil {
			t.Fatalf("status -o json: %v\n%s", err, stderr)
		}
		var now statusReport
		if err := json.Unmarshal([]byte(jout), &now); err != nil {
			t.Fatal(err)
		}
		if diffs = statusTableDiffs(out, now); len(diffs) == 0 {
			t.Logf("multinic-agent status --allocations:\n%s", out)
			break
		}
	}
	for _, d := range diffs {
		t.Error(d)
	}

	// The support bundle, from the real binary against the running agent: its status, its own log lines
	// and the checkpoint on disk.
	bundle := filepath.Join(dir, "bundle.tar.gz")
	if out, err := exec.Command(testbin.Path(t, testbin.Agent), "support-bundle", "-o", bundle, "--socket", n.Socket, "--state-dir", n.StateDir,
		"--netns-dirs", dir).CombinedOutput(); err != nil {
		t.Fatalf("support-bundle: %v\n%s", err, out)
	}
	got := readBundle(t, bundle)
	var inBundle statusReport
	if err := json.Unmarshal([]byte(got["status.json"]), &inBundle); err != nil || inBundle.Node != n.Name || len(inBundle.Allocations) != 12 {
		t.Errorf("bundle's status.json: %v, %q", err, got["status.json"])
	}
	if !strings.Contains(got["agent-log.jsonl"], `"msg":"allocated"`) || !strings.Contains(got["agent-log.jsonl"], "c-pod-a") {
		t.Errorf("bundle's agent-log.jsonl lacks the allocations' log lines: %.500s", got["agent-log.jsonl"])
	}
	if cp, err := os.ReadFile(filepath.Join(n.StateDir, "checkpoint.json")); err != nil || len(got["checkpoint.json"]) == 0 ||
		!strings.Contains(string(cp), `"c-pod-a"`) || !strings.Contains(got["checkpoint.json"], `"c-pod-a"`) {
		t.Errorf("bundle's checkpoint.json %.300q, want the agent's checkpoint (%v)", got["checkpoint.json"], err)
	}

	killAgent(t, n)
	out, stderr, err := runStatusCmd(t, n)
	if err == nil {
		t.Fatalf("status with the agent down succeeded: %s", out)
	}
	if !strings.Contains(stderr, "the multinic agent is not running on this node") {
		t.Errorf("status with the agent down says %q, want it to say the agent is not running", stderr)
	}
	// Restart it so that the test ends with the graceful stop every harness test checks.
	startAgent(t, n, agentArgs, 1)
}

// statusTableDiffs parses the table's card and allocation rows and compares every column with rep.
func statusTableDiffs(out string, rep statusReport) []string {
	var diffs []string
	lines := strings.Split(out, "\n")
	want := "node " + rep.Node + "  instance " + rep.Instance + "  ready "
	if !strings.HasPrefix(lines[0], want) {
		diffs = append(diffs, fmt.Sprintf("first line %q, want it to start %q", lines[0], want))
	}
	rows := map[string][]string{}
	var allocRows [][]string
	inAllocs := false
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case f[0] == "POD":
			inAllocs = true
		case inAllocs:
			allocRows = append(allocRows, f)
		case f[0] != "CARD" && f[0] != "card":
			rows[f[0]] = f
		}
	}
	for _, c := range rep.Cards {
		f := rows[strconv.Itoa(c.Card)]
		ready, last := "yes", "-"
		if !c.Ready {
			ready = "no"
		}
		if c.LastError != "" {
			last = age(rep.Time, c.LastErrorAt)
		}
		want := []string{strconv.Itoa(c.Card), c.Mode, c.Subnet, strings.Join(c.ENIs, ","),
			strconv.Itoa(c.Shared.Allocated), strconv.Itoa(c.Shared.Warm), strconv.Itoa(c.Shared.Cooling),
			strconv.Itoa(c.Exclusive.Allocated) + "/" + strconv.Itoa(c.Exclusive.Warm) + "/" + strconv.Itoa(c.Exclusive.Cooling),
			ready, last}
		if c.LastError != "" {
			want = append(want, "ago")
		}
		if !slices.Equal(f, want) {
			diffs = append(diffs, fmt.Sprintf("card %d row %q, want %q", c.Card, f, want))
		}
		if !c.Ready && !strings.Contains(out, "card "+strconv.Itoa(c.Card)+" not ready: "+c.Reason) {
			diffs = append(diffs, fmt.Sprintf("card %d: the table does not say why it is not ready (%q)", c.Card, c.Reason))
		}
		if c.LastError != "" && !strings.Contains(out, c.LastErrorAt.Format(time.RFC3339)+"): "+c.LastError) {
			diffs = append(diffs, fmt.Sprintf("card %d: the table does not show its last error %q", c.Card, c.LastError))
		}
	}
	if len(allocRows) != len(rep.Allocations) {
		return append(diffs, fmt.Sprintf("%d allocation rows, want %d", len(allocRows), len(rep.Allocations)))
	}
	for i, a := range rep.Allocations {
		want := []string{a.PodNamespace + "/" + a.PodName, a.IfName, strconv.Itoa(a.Card), a.Address.String(), a.ENIID,
			"no", age(rep.Time, a.AllocatedAt), a.ContainerID}
		if !slices.Equal(allocRows[i], want) {
			diffs = append(diffs, fmt.Sprintf("allocation row %q, want %q", allocRows[i], want))
		}
	}
	return diffs
}
