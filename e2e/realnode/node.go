package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/harness"
)

// Mounts of a node. Inside its mount namespace a node sees the usual paths of a node (containerd's and
// the kubelet's defaults, what the manifests mount); each is the node's own: /run is a tmpfs (gone with
// the node, as after a reboot), the others bind mounts of folders under Node.Dir (kept).
var (
	// All of /run: multus-daemon removes and recreates /run/multus, so that cannot be a mount point.
	nodeTmpfs = []string{"/run"}
	nodeBinds = [][2]string{ // folder under Node.Dir, mount point
		{"opt-cni-bin", "/opt/cni/bin"},
		{"etc-cni", "/etc/cni"},
		{"kubelet", "/var/lib/kubelet"},
		{"containerd", "/var/lib/containerd"},
		{"cni", "/var/lib/cni"},
		{"pod-logs", "/var/log/pods"},
		{"container-logs", "/var/log/containers"},
		{"run-multinic", "/run/multinic"},
		{"multinic", "/var/lib/multinic"},
	}
)

// Node is one real Kubernetes node: the netns of a fake-ec2 instance, a mount namespace of its own, and
// in them containerd (with runc) and the kubelet, all in the node's cgroup. After Attach it is a kind
// node: a container whose netns fake-ec2 serves; only Name, PodCIDR, InstanceID and kind are set.
type Node struct {
	// Name is the Node's name in the API (the harness node's name; kind's container name).
	Name string
	// IP is the node's InternalIP: its primary ENI's address.
	IP netip.Addr
	// PodCIDR is the range of the primary network on this node.
	PodCIDR netip.Prefix
	// InstanceID is the node's fake-ec2 instance.
	InstanceID string
	// Dir holds the node's config, logs and the folders bind-mounted into it (see nodeBinds).
	Dir string
	// Region is the fake-ec2 instance behind the node.
	Region *harness.Node

	env        *Env
	kind       bool   // a kind node: Exec is docker exec into the container Name
	cgroup     string // the cgroup name in every hierarchy, and the kubelet's cgroupRoot
	holder     *cluster.Process
	containerd *cluster.Process
	kubelet    *cluster.Process
}

// HostPath is where a path of the node's filesystem (one of nodeBinds) is on the host.
func (n *Node) HostPath(nodePath string) string {
	for _, b := range nodeBinds {
		if rel, err := filepath.Rel(b[1], nodePath); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.Join(n.Dir, b[0], rel)
		}
	}
	panic("realnode: " + nodePath + " is not a bind-mounted node path")
}

func (n *Node) logPath(name string) string { return filepath.Join(n.Dir, name+".log") }

// start brings the node up: its mount namespace, containerd, the images, the kubelet. It does not wait
// for the Node to be Ready.
func (n *Node) start(ctx context.Context) error {
	if err := createCgroup(n.cgroup); err != nil {
		return err
	}
	if err := n.startHolder(ctx); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.importImages(ctx, n.env.images); err != nil {
		return err
	}
	return n.StartKubelet()
}

// importImages imports docker-archive tars into the node's containerd (ctr, the k8s.io namespace).
func (n *Node) importImages(ctx context.Context, archives []string) error {
	for _, img := range archives {
		if out, err := n.Exec(ctx, n.env.tools.ctr, "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("node %s: import %s: %w\n%s", n.Name, img, err, out)
		}
	}
	return nil
}

// startNodeProcess runs bin in the node: in its cgroup (joined before exec, so every child is in it too),
// its netns and its mount namespace (those of the holder; before the holder exists, the netns only).
func (n *Node) startNodeProcess(name string, env []string, bin string, args ...string) (*cluster.Process, error) {
	var join strings.Builder
	for _, d := range cgroupDirs(n.cgroup) {
		fmt.Fprintf(&join, "echo $$ > %s/cgroup.procs; ", d)
	}
	enter := []string{"nsenter", "--net=" + n.Region.NetNSPath}
	if n.holder != nil {
		enter = []string{"nsenter", "-t", strconv.Itoa(n.holder.Pid()), "-m", "-n"}
	}
	shArgs := append([]string{"-c", join.String() + `exec env "$@"`, "sh"}, env...)
	shArgs = append(shArgs, enter...)
	shArgs = append(shArgs, "--", bin)
	shArgs = append(shArgs, args...)
	return cluster.StartProcess(name+"-"+n.Name, "/bin/sh", shArgs, n.logPath(name))
}

// startHolder starts the process that owns the node's mount namespace: private (nothing it mounts
// reaches the host), then shared inside (so mountPropagation in pod specs works), with the node's
// tmpfs and bind mounts. It sleeps until the node is torn down or crashes.
func (n *Node) startHolder(ctx context.Context) error {
	var script strings.Builder
	script.WriteString("set -e; mount --make-rshared /; ")
	for _, d := range nodeTmpfs {
		fmt.Fprintf(&script, "mount -t tmpfs -o mode=0755 %s %s; ", n.cgroup, d)
	}
	for _, b := range nodeBinds {
		src := filepath.Join(n.Dir, b[0])
		if err := os.MkdirAll(src, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		if strings.HasPrefix(b[1], "/run/") { // on the node's own /run tmpfs
			fmt.Fprintf(&script, "mkdir -p %s; ", b[1])
		} else if err := ensureMountPoint(b[1]); err != nil {
			return err
		}
		fmt.Fprintf(&script, "mount --bind %s %s; ", src, b[1])
	}
	// The fabric's fake sysfs of this node (the ENI links' PCI devices on their cards' PCIe roots), where
	// the DaemonSet's agent reads it with DRA on (AgentOverlay.DRA).
	sysfs := n.env.Region.SysfsRoot(n.Region.NetNSName)
	if err := os.MkdirAll(sysfs, 0o755); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := ensureMountPoint(NodeSysfs); err != nil {
		return err
	}
	fmt.Fprintf(&script, "mount --bind %s %s; ", sysfs, NodeSysfs)
	ready := filepath.Join(n.Dir, "holder.ready")
	_ = os.Remove(ready)
	fmt.Fprintf(&script, "touch %s; exec sleep infinity", ready)
	var err error
	n.holder, err = n.startNodeProcess("holder", nil, "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script.String())
	if err != nil {
		return err
	}
	return waitFor(ctx, 30*time.Second, "node "+n.Name+" mount namespace", n.holder, func() error {
		_, err := os.Stat(ready)
		return err
	})
}

// startContainerd starts containerd with the node's config and waits for its socket.
func (n *Node) startContainerd(ctx context.Context) error {
	cfg := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(containerdConfig(n.env.tools.runc)), 0o644); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	var err error
	n.containerd, err = n.startNodeProcess("containerd", []string{"PATH=" + n.env.tools.dir + ":/usr/sbin:/usr/bin:/sbin:/bin"},
		n.env.tools.containerd, "--config", cfg)
	if err != nil {
		return err
	}
	return waitFor(ctx, 60*time.Second, "containerd on "+n.Name, n.containerd, func() error {
		_, err := n.Exec(ctx, n.env.tools.ctr, "version")
		return err
	})
}

// StartKubelet starts the kubelet (at start, or again after StopKubelet).
func (n *Node) StartKubelet() error {
	cfg := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(kubeletConfig(n)), 0o644); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	var err error
	n.kubelet, err = n.startNodeProcess("kubelet", []string{"PATH=" + n.env.tools.dir + ":/usr/sbin:/usr/bin:/sbin:/bin"},
		n.env.tools.kubelet, "--config", cfg, "--kubeconfig", n.env.Cluster.Kubeconfig,
		"--hostname-override", n.Name, "--node-ip", n.IP.String(), "--v=1")
	return err
}

// RestartKubelet stops and starts the node's kubelet; pods keep running under containerd.
func (n *Node) RestartKubelet(ctx context.Context) error {
	if n.kind {
		if out, err := n.Exec(ctx, "systemctl", "restart", "kubelet"); err != nil {
			return fmt.Errorf("node %s: systemctl restart kubelet: %w: %s", n.Name, err, out)
		}
		return nil
	}
	if err := n.StopKubelet(); err != nil {
		return err
	}
	return n.StartKubelet()
}

// Crictl runs crictl against the node's containerd and returns its stdout; stderr is in the error.
func (n *Node) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	bin := "crictl"
	if !n.kind {
		bin, args = n.env.tools.crictl, append([]string{"--runtime-endpoint", "unix:///run/containerd/containerd.sock"}, args...)
	}
	var stdout, stderr bytes.Buffer
	if err := n.run(ctx, &stdout, &stderr, bin, args...); err != nil {
		return stdout.Bytes(), fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// StopKubelet stops the kubelet (SIGTERM); pods keep running under containerd.
func (n *Node) StopKubelet() error {
	if n.kubelet == nil {
		return nil
	}
	err := n.kubelet.Stop()
	n.kubelet = nil
	return err
}

// Crash kills every process of the node at once (kubelet, containerd, shims, containers, the holder), as a
// power cut does: the mount namespace and its tmpfs (/run/containerd, /run/netns: the pods' netns) go, the
// bind-mounted state (/var/lib/...) stays. Start it again with Restart.
func (n *Node) Crash() error {
	err := removeCgroup(n.cgroup) // kills, then removes the (now empty) cgroups
	n.holder, n.containerd, n.kubelet = nil, nil, nil
	return err
}

// Restart starts a crashed node again, as after a reboot.
func (n *Node) Restart(ctx context.Context) error { return n.start(ctx) }

// Exec runs a command inside the node (its netns and mount namespace) and returns its combined output.
func (n *Node) Exec(ctx context.Context, bin string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := n.run(ctx, &out, &out, bin, args...)
	return out.Bytes(), err
}

// run runs a command inside the node with the given stdout and stderr.
func (n *Node) run(ctx context.Context, stdout, stderr io.Writer, bin string, args ...string) error {
	var enter []string
	switch {
	case n.kind:
		enter = []string{"docker", "exec", n.Name}
	case n.holder == nil || n.holder.Exited():
		return fmt.Errorf("node %s is not running", n.Name)
	default:
		enter = []string{"nsenter", "-t", strconv.Itoa(n.holder.Pid()), "-m", "-n", "--"}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, enter[0], append(append(enter[1:], bin), args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return runDying(cmd)
}

// stop tears the node down in order: kubelet, the pods' sandboxes through the CRI (CNI DEL runs), then
// every process left (Crash). The Pods should be deleted through the API before.
func (n *Node) stop(ctx context.Context) error {
	var errs []error
	errs = append(errs, n.StopKubelet())
	if n.containerd != nil && !n.containerd.Exited() {
		if out, err := n.Crictl(ctx, "rmp", "-fa"); err != nil {
			errs = append(errs, fmt.Errorf("node %s: crictl rmp -fa: %w\n%s", n.Name, err, out))
		}
		errs = append(errs, n.containerd.Stop())
	}
	errs = append(errs, n.Crash())
	return errors.Join(errs...)
}

// logTails returns the last lines of the node's kubelet and containerd logs.
func (n *Node) logTails(lines int) string {
	var b strings.Builder
	for _, name := range []string{"containerd", "kubelet"} {
		p := cluster.Process{Name: name, LogPath: n.logPath(name)}
		fmt.Fprintf(&b, "--- %s of %s (%s):\n%s\n", name, n.Name, p.LogPath, p.LogTail(lines))
	}
	return b.String()
}

// waitFor polls check until it succeeds, p exits or the timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, p *cluster.Process, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("%s: %s exited; last log lines of %s:\n%s", what, p.Name, p.LogPath, p.LogTail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v; last log lines of %s:\n%s", what, timeout, err, p.LogPath, p.LogTail(30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}
