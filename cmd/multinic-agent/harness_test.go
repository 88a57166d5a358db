package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/multinic/multinic/e2e/fabric"
	"github.com/multinic/multinic/e2e/fakeec2"
	"github.com/multinic/multinic/internal/testing/testbin"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/store"
)

// The binaries under test, set by requireBinaries.
var (
	fakeBin   string
	agentBin  string
	prefixSeq atomic.Int32
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// requireBinaries skips the test unless it runs as root, and builds the binaries (once per process).
func requireBinaries(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs fake-ec2 and the agent in network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs root and ip(8) from iproute2")
	}
	dir := testbin.Dir(t, testbin.FakeEC2, testbin.Agent)
	fakeBin, agentBin = filepath.Join(dir, "fake-ec2"), filepath.Join(dir, "multinic-agent")
}

// node is one fake-ec2 instance with its netns, and the agent that runs in it.
type node struct {
	t        *testing.T
	prefix   string
	netns    string
	endpoint string // fake-ec2, reachable from the host and (same address) inside the netns
	dir      string // state dir, socket, logs
	socket   string
	stateDir string
	client   *api.Client
	agent    *exec.Cmd
	agentLog *os.File
	starts   int
}

// freePort returns a TCP port free on the host's loopback (and so, in a fresh netns, there too).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNode starts fake-ec2 with one trn1.32xlarge (8 cards) whose ENIs become links in a fresh netns;
// fakeArgs go to fake-ec2 too (a --config replaces that one instance). Everything is torn down when the
// test ends, failed or not.
func startNode(t *testing.T, fakeArgs ...string) *node {
	t.Helper()
	requireBinaries(t)
	prefix := fmt.Sprintf("mna%d%d", os.Getpid()%1000, prefixSeq.Add(1))
	n := &node{t: t, prefix: prefix, netns: prefix + "-n1"}
	dir, err := os.MkdirTemp("", "mnagent")
	if err != nil {
		t.Fatal(err)
	}
	n.dir, n.socket, n.stateDir = dir, filepath.Join(dir, "agent.sock"), filepath.Join(dir, "state")
	port := freePort(t)
	ready := filepath.Join(dir, "ready.json")
	logf, err := os.Create(filepath.Join(dir, "fake-ec2.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fakeBin, append([]string{"--nodes", "1", "--netns", n.netns, "--fabric-prefix", prefix,
		"--ready-file", ready, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, fakeArgs...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Agent first (registered later, so it runs earlier), then fake-ec2, which removes its netns.
		stopProcess(t, cmd, 20*time.Second)
		logf.Close()
		if t.Failed() {
			dumpTail(t, logf.Name())
		}
		for _, ns := range []string{n.netns, prefix + "-vpc"} {
			if _, err := os.Stat(filepath.Join(fabric.NetNSDir, ns)); err == nil {
				t.Logf("netns %s left behind by fake-ec2, removing it", ns)
				exec.Command("ip", "netns", "del", ns).Run()
			}
		}
		if err := fabric.Cleanup(prefix); err != nil {
			t.Errorf("clean up fabric %s: %v", prefix, err)
		}
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("kept %s for inspection", dir)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			dumpTail(t, logf.Name())
			t.Fatal("fake-ec2 not ready after 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.endpoint = fmt.Sprintf("http://127.0.0.1:%d", port)
	n.client = api.NewClient(n.socket, 0)
	t.Cleanup(n.client.Close)
	return n
}

// stopProcess sends SIGTERM and waits; SIGKILL after timeout.
func stopProcess(t *testing.T, cmd *exec.Cmd, timeout time.Duration) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		t.Errorf("%s did not stop %s after SIGTERM, killing it", filepath.Base(cmd.Path), timeout)
		cmd.Process.Kill()
		<-done
	}
}

func dumpTail(t *testing.T, path string) {
	b, _ := os.ReadFile(path)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	t.Logf("--- tail of %s:\n%s", path, b)
}

// agentArgs are the flags every test agent gets; extra ones override them (the flag package keeps the
// last value).
func (n *node) agentArgs(extra ...string) []string {
	args := []string{"netns", "exec", n.netns, agentBin,
		"--cluster", "test", "--node-name", "node-1",
		"--state-dir", n.stateDir, "--socket", n.socket,
		"--ec2-endpoint", n.endpoint, "--imds-endpoint", n.endpoint,
		"--metrics-addr", "127.0.0.1:61679", "--lock-timeout", "5s",
		"--refill-interval", "1s", "--log-level", "debug",
	}
	return append(args, extra...)
}

// startAgent runs the agent in the node's netns (ip netns exec execs it, so the pid is the agent's). It is
// stopped with SIGTERM when the test ends.
func (n *node) startAgent(extra ...string) {
	n.t.Helper()
	if n.agentLog == nil {
		f, err := os.Create(filepath.Join(n.dir, "agent.log"))
		if err != nil {
			n.t.Fatal(err)
		}
		n.agentLog = f
		n.t.Cleanup(func() {
			// Every test ends with a graceful stop: SIGTERM must end the agent promptly and cleanly.
			stopProcess(n.t, n.agent, 20*time.Second)
			if ps := n.agent.ProcessState; ps != nil && !ps.Success() {
				n.t.Errorf("agent after SIGTERM: %v, want exit 0", ps)
			}
			f.Close()
			if n.t.Failed() {
				dumpTail(n.t, f.Name())
			}
		})
	}
	n.starts++
	fmt.Fprintf(n.agentLog, "=== start %d\n", n.starts)
	cmd := exec.Command("ip", n.agentArgs(extra...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + n.dir,
		"AWS_ACCESS_KEY_ID=AKIDTEST", "AWS_SECRET_ACCESS_KEY=secret", "AWS_EC2_METADATA_DISABLED=false"}
	cmd.Stdout, cmd.Stderr = n.agentLog, n.agentLog
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.agent = cmd
}

// kill SIGKILLs the agent and reaps it.
func (n *node) kill() {
	n.t.Helper()
	if err := n.agent.Process.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatalf("kill agent: %v", err)
	}
	n.agent.Wait()
}

// waitReady waits until the agent serves and every card in cards reports ready.
func (n *node) waitReady(timeout time.Duration, cards ...int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for _, c := range cards {
		for {
			st, err := n.client.Status(ctx, c)
			if err == nil && st.Ready {
				break
			}
			if err == nil {
				err = errors.New(st.Reason)
			}
			last = err
			if n.agent.ProcessState != nil {
				n.t.Fatalf("agent exited while waiting for ready: %v", n.agent.ProcessState)
			}
			select {
			case <-ctx.Done():
				n.t.Fatalf("agent not ready on card %d after %s: %v", c, timeout, last)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// state returns fake-ec2's state from its debug endpoint.
func (n *node) state() fakeec2.State {
	n.t.Helper()
	resp, err := http.Get(n.endpoint + "/fake/state")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st fakeec2.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		n.t.Fatal(err)
	}
	return st
}

// checkpoint reads the agent's checkpoint (no lock needed to read).
func (n *node) checkpoint() store.Checkpoint {
	n.t.Helper()
	st, err := store.NewFileStore(n.stateDir)
	if err != nil {
		n.t.Fatal(err)
	}
	cp, _, err := st.Load()
	if err != nil {
		n.t.Fatal(err)
	}
	return cp
}

// ourENIs returns the ENIs the agent created (tagged for cluster "test"), attached ones by ID.
func ourENIs(st fakeec2.State) map[string]fakeec2.ENIState {
	out := map[string]fakeec2.ENIState{}
	for _, e := range st.ENIs {
		if e.Tags[eni.TagCluster] == "test" {
			out[e.ID] = e
		}
	}
	return out
}

// onENI reports whether EC2 has addr as a secondary address (or inside a prefix) of e.
func onENI(e fakeec2.ENIState, addr netip.Addr) bool {
	for _, s := range e.SecondaryIPs {
		if s == addr.String() {
			return true
		}
	}
	for _, p := range e.Prefixes {
		if pp, err := netip.ParsePrefix(p); err == nil && pp.Contains(addr) {
			return true
		}
	}
	return e.PrimaryIP == addr.String()
}

// poolMatchesEC2 compares the agent's checkpoint with EC2: every secondary address EC2 has on our ENIs is in
// the agent's pool, every pool address is on its ENI in EC2, and nothing is allocated. It returns what
// differs, "" when nothing does.
func poolMatchesEC2(cp store.Checkpoint, st fakeec2.State) string {
	var diffs []string
	if len(cp.Allocations) > 0 {
		diffs = append(diffs, fmt.Sprintf("%d allocations left", len(cp.Allocations)))
	}
	enis := ourENIs(st)
	pool := map[netip.Addr]store.Address{}
	for _, a := range cp.Addresses {
		pool[a.Address] = a
		e, ok := enis[a.ENIID]
		if !ok || !onENI(e, a.Address) || e.Card != a.Card {
			diffs = append(diffs, fmt.Sprintf("pool address %s (card %d, %s) not on that ENI in EC2", a.Address, a.Card, a.ENIID))
		}
	}
	for _, e := range enis {
		for _, s := range e.SecondaryIPs {
			if a, ok := pool[netip.MustParseAddr(s)]; !ok || a.ENIID != e.ID {
				diffs = append(diffs, fmt.Sprintf("EC2 address %s on %s (card %d) not in the agent's pool", s, e.ID, e.Card))
			}
		}
	}
	return strings.Join(diffs, "; ")
}

func podReq(card int, container, ifname, pod string) api.AllocateRequest {
	return api.AllocateRequest{Card: card, ContainerID: container, IfName: ifname,
		PodRef: api.PodRef{PodNamespace: "default", PodName: pod, PodUID: "uid-" + pod}}
}
