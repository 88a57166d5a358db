package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/namedns"
	"github.com/multinic/multinic/internal/testing/fabric"
	"github.com/multinic/multinic/internal/testing/fakeec2"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/store"
)

// agentStopTimeout bounds the wait for an agent after SIGTERM before it is killed.
const agentStopTimeout = 20 * time.Second

// Node is one instance: its netns (holding its ENI links), its IMDS listener and its running agent.
type Node struct {
	region *Region
	// Index is the node's position (0-based); its name is "node<Index+1>".
	Index int
	// Name is the Kubernetes node name the agent runs with.
	Name       string
	InstanceID string
	// NetNSName is the node's netns under /var/run/netns; NetNSPath its path.
	NetNSName, NetNSPath string
	// PrimaryIP is the primary ENI's address (card 0, device 0, on the node's ens0d0).
	PrimaryIP netip.Addr
	// PodCIDR is the range of the pods' eth0 addresses on this node: 10.244.<Index+1>.0/24.
	PodCIDR netip.Prefix
	// Dir holds the agent's socket, state dir and log; Socket and StateDir are inside it.
	Dir, Socket, StateDir string
	// IMDSEndpoint is this instance's own IMDS listener.
	IMDSEndpoint string
	// Client talks to the agent over its socket.
	Client *api.Client

	netns ns.NetNS
	h     netlinksafe.Handle

	mu       sync.Mutex
	agent    *exec.Cmd
	exited   chan struct{} // closed when the agent process has been reaped
	agentLog *os.File
	podSeq   int
}

func (r *Region) newNode(tb TB, i int, in fakeec2.InstanceState, netnsName string) (*Node, error) {
	n := &Node{
		region: r, Index: i, Name: fmt.Sprintf("node%d", i+1), InstanceID: in.ID,
		NetNSName: netnsName, NetNSPath: filepath.Join(fabric.NetNSDir, netnsName),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
	}
	if e, ok := r.fake.State().ENI(in.PrimaryENI); ok {
		n.PrimaryIP, _ = netip.ParseAddr(e.PrimaryIP)
	}
	if !n.PrimaryIP.IsValid() {
		return nil, fmt.Errorf("node %s: no primary address for %s", n.Name, in.ID)
	}
	var err error
	// A short path: unix socket paths are limited to 107 bytes.
	if n.Dir, err = os.MkdirTemp("", "mnh-"+n.Name+"-"); err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.Socket, n.StateDir = filepath.Join(n.Dir, "agent.sock"), filepath.Join(n.Dir, "state")
	if n.netns, n.h, err = namedns.Open(n.NetNSPath); err != nil {
		return n, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := n.setupRouting(); err != nil {
		return n, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if n.IMDSEndpoint, err = r.fake.ListenIMDS(in.ID, "127.0.0.1:0"); err != nil {
		return n, fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.Client = api.NewClient(n.Socket, 0)
	if r.cfg.NoAgents {
		return n, nil
	}
	if err := n.StartAgent(); err != nil {
		return n, err
	}
	return n, nil
}

// setupRouting makes the node a router for its pods' eth0: forwarding on, no reverse path filter (a pod's
// reply from a multinic address may come back through eth0 when policy routing is off), default route
// through the primary ENI's subnet gateway (the fabric's router).
func (n *Node) setupRouting() error {
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"}, {"net/ipv4/conf/all/rp_filter", "0"}, {"net/ipv4/conf/default/rp_filter", "0"},
	} {
		if err := writeSysctl(n.netns, kv[0], kv[1], false); err != nil {
			return err
		}
	}
	primary, err := n.h.LinkByName(fabric.NodeLinkName(0, 0))
	if err != nil {
		return fmt.Errorf("find primary link %s: %w", fabric.NodeLinkName(0, 0), err)
	}
	var gw netip.Addr
	for _, sn := range n.region.fake.State().Subnets {
		if p := netip.MustParsePrefix(sn.CIDR); p.Contains(n.PrimaryIP) {
			gw = Gateway(p)
		}
	}
	def := netlink.Route{LinkIndex: primary.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.IP(gw.AsSlice())}
	if err := n.h.RouteReplace(&def); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return nil
}

// NetNS is the node's netns, open for the region's lifetime (do not close it).
func (n *Node) NetNS() ns.NetNS { return n.netns }

// Handle is a route netlink handle bound to the node's netns (do not close it).
func (n *Node) Handle() netlinksafe.Handle { return n.h }

// agentArgs are the agent's flags: its own socket, state and IMDS; ENI links in the node's netns; each
// managed card's ENIs in that card's subnet (fakeec2.SubnetsPerCard); short intervals and (unless
// Config.AgentDefaults) a quick pool and EC2 rate for tests; then Config.AgentArgs.
func (n *Node) agentArgs() []string {
	cfg := n.region.cfg
	cards := make([]string, len(cfg.ManagedCards))
	subnets := make([]string, len(cfg.ManagedCards))
	for i, c := range cfg.ManagedCards {
		cards[i] = strconv.Itoa(c)
		subnets[i] = fmt.Sprintf("%d=%s", c, fakeec2.CardSubnetID(c)) // each card in its own subnet
	}
	args := []string{
		"--cluster", DefaultCluster, "--node-name", n.Name,
		"--socket", n.Socket, "--state-dir", n.StateDir,
		"--ec2-endpoint", n.region.endpoint, "--imds-endpoint", n.IMDSEndpoint,
		"--link-netns", n.NetNSPath, "--sysfs", n.region.SysfsRoot(n.NetNSName),
		"--kubelet-registry-dir", filepath.Join(n.Dir, "kubelet-registry"), "--kubelet-plugin-dir", n.DRAPluginDir(),
		"--managed-cards", strings.Join(cards, ","), "--subnet-per-card", strings.Join(subnets, ","),
		"--refill-interval", "1s", "--metrics-addr", "", "--lock-timeout", "5s", "--log-level", "debug",
	}
	if !cfg.AgentDefaults {
		args = append(args, "--warm-target", strconv.Itoa(cfg.WarmTarget), "--min-free", "1", "--cooldown", "1s",
			"--ec2-rate", "100", "--ec2-burst", "100")
	}
	return append(args, cfg.AgentArgs...)
}

// StartAgent starts the node's agent (after StopAgent, or at NewRegion) without waiting for it to be ready;
// see WaitReady.
func (n *Node) StartAgent() error { return n.StartAgentWith() }

// StartAgentWith is StartAgent with extra flags for this start only (e.g. --recover).
func (n *Node) StartAgentWith(extra ...string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent != nil {
		return fmt.Errorf("start agent on %s: already running", n.Name)
	}
	if n.agentLog == nil {
		f, err := os.Create(filepath.Join(n.Dir, "agent.log"))
		if err != nil {
			return fmt.Errorf("start agent on %s: %w", n.Name, err)
		}
		n.agentLog = f
	}
	cmd := exec.Command(filepath.Join(n.region.binDir, AgentBinary), append(n.agentArgs(), extra...)...)
	// Static credentials and region: nothing is read from the host's AWS config.
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + n.Dir,
		"AWS_ACCESS_KEY_ID=AKIDHARNESS", "AWS_SECRET_ACCESS_KEY=harness", "AWS_REGION=" + fakeec2.DefaultRegion,
		"AWS_CONFIG_FILE=" + filepath.Join(n.Dir, "aws-config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(n.Dir, "aws-credentials"),
	}
	cmd.Stdout, cmd.Stderr = n.agentLog, n.agentLog
	// Its own process group: a terminal's Ctrl-C reaches only the harness's process, which stops the agent
	// in order (pods first) instead of the agent dying under them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(n.agentLog, "=== harness: %s %s\n", cmd.Path, strings.Join(cmd.Args[1:], " "))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent on %s: %w", n.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	n.agent, n.exited = cmd, exited
	return nil
}

// StopAgent sends SIGTERM to the agent and waits for it (SIGKILL after 20s). It returns an error unless the
// agent exited 0 on SIGTERM (an agent that had exited by itself is an error too). Stopping a stopped agent
// does nothing.
func (n *Node) StopAgent() error {
	cmd, exited := n.takeAgent()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return fmt.Errorf("agent on %s had exited by itself: %v", n.Name, cmd.ProcessState)
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(agentStopTimeout):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("agent on %s ignored SIGTERM for %s: killed", n.Name, agentStopTimeout)
	}
	if !cmd.ProcessState.Success() {
		return fmt.Errorf("agent on %s after SIGTERM: %v, want exit 0", n.Name, cmd.ProcessState)
	}
	return nil
}

// KillAgent SIGKILLs the agent, as a crash or the OOM killer would, and reaps it: its state dir and socket
// stay as it left them. StartAgent starts it again.
func (n *Node) KillAgent() error {
	cmd, exited := n.takeAgent()
	if cmd == nil {
		return fmt.Errorf("kill agent on %s: not running", n.Name)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill agent on %s: %w", n.Name, err)
	}
	<-exited
	return nil
}

// takeAgent hands the running agent and its exit channel (nil when stopped) to the caller, which ends it.
func (n *Node) takeAgent() (*exec.Cmd, chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd, exited := n.agent, n.exited
	n.agent, n.exited = nil, nil
	return cmd, exited
}

// WaitReady waits until the agent reports cards ready, every managed card when none are given.
func (n *Node) WaitReady(cards ...int) error {
	if len(cards) == 0 {
		cards = n.region.cfg.ManagedCards
	}
	return n.waitReady(n.region.cfg.ReadyTimeout, cards)
}

func (n *Node) waitReady(timeout time.Duration, cards []int) error {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return fmt.Errorf("agent on %s is not running", n.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, c := range cards {
		for {
			st, err := n.Client.Status(ctx, c)
			if err == nil && st.Ready {
				break
			}
			if err == nil {
				err = errors.New(st.Reason)
			}
			select {
			case <-exited:
				return fmt.Errorf("agent on %s exited while starting (log %s):\n%s", n.Name, n.agentLog.Name(), tail(n.agentLog.Name()))
			case <-ctx.Done():
				return fmt.Errorf("agent on %s not ready on card %d after %s: %w (log %s):\n%s", n.Name, c, timeout, err, n.agentLog.Name(), tail(n.agentLog.Name()))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// Allocations lists the agent's live allocations.
func (n *Node) Allocations() ([]api.Allocation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return n.Client.List(ctx)
}

// Allocation is the agent's allocation of (containerID, ifName); ok is false when it has none.
func (n *Node) Allocation(containerID, ifName string) (a api.Allocation, ok bool, err error) {
	all, err := n.Allocations()
	if err != nil {
		return a, false, err
	}
	for _, x := range all {
		if x.ContainerID == containerID && x.IfName == ifName {
			return x, true, nil
		}
	}
	return a, false, nil
}

// Checkpoint reads the agent's checkpoint in its state dir (LoadCheckpoint).
func (n *Node) Checkpoint() (store.Checkpoint, bool, error) { return LoadCheckpoint(n.StateDir) }

// LoadCheckpoint reads an agent's checkpoint in its state dir, running or not (reading takes no lock); found
// is false when the agent has written none yet.
func LoadCheckpoint(stateDir string) (cp store.Checkpoint, found bool, err error) {
	// NewFileStore would create a missing folder.
	if _, err := os.Stat(stateDir); err != nil {
		return cp, false, fmt.Errorf("agent state dir: %w", err)
	}
	s, err := store.NewFileStore(stateDir)
	if err != nil {
		return cp, false, fmt.Errorf("open agent checkpoint: %w", err)
	}
	if cp, found, err = s.Load(); err != nil {
		return cp, found, fmt.Errorf("load agent checkpoint: %w", err)
	}
	return cp, found, nil
}

// ENIs are the ENIs of st (a snapshot of fake-ec2's state) that the node's agent created: tagged with the
// harness's cluster and the node's instance, attached or not.
func (n *Node) ENIs(st fakeec2.State) []fakeec2.ENIState {
	var out []fakeec2.ENIState
	for _, e := range st.ENIs {
		if e.Tags[eni.TagCluster] == DefaultCluster && e.Tags[eni.TagNode] == n.InstanceID {
			out = append(out, e)
		}
	}
	return out
}

// DRAPluginDir is the folder of the agent's DRA kubelet plugin socket (dra.sock), with --dra.
func (n *Node) DRAPluginDir() string { return filepath.Join(n.Dir, "dra-plugin") }

// AgentLog is the path of the agent's log (stdout and stderr of every start).
func (n *Node) AgentLog() string { return filepath.Join(n.Dir, "agent.log") }

// LinkStats reads the counters of a link in the node's netns.
func (n *Node) LinkStats(name string) (netlink.LinkStatistics, error) { return linkStats(n.h, name) }

// close stops the agent and releases the node's handles; the node dir goes unless the test failed.
func (n *Node) close(tb TB) error {
	err := n.StopAgent()
	if n.Client != nil {
		n.Client.Close()
	}
	if n.h.Handle != nil {
		n.h.Close()
	}
	if n.netns != nil {
		err = errors.Join(err, n.netns.Close())
	}
	if n.agentLog != nil {
		_ = n.agentLog.Close()
		if tb.Failed() || err != nil {
			tb.Logf("--- %s agent log (tail of %s):\n%s", n.Name, n.agentLog.Name(), tail(n.agentLog.Name()))
		}
	}
	if n.Dir != "" {
		err = errors.Join(err, os.RemoveAll(n.Dir))
	}
	return err
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	const max = 8000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}
