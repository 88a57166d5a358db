package realnode

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/internal/testing/fabric"
)

// Prefix names everything a run makes on the host: node netns and cgroups "<Prefix>-n<i>", the fabric's
// "<Prefix>-vpc", the host's veth to the fabric "<Prefix>-h". It is fixed (not per process) so that a run
// finds and removes what a killed run left; a lock keeps two runs apart.
const Prefix = "mnrn"

// Where a run keeps what must outlive it when it is killed: the lock and the host settings to restore.
const (
	stateDir  = "/run/multinic-realnode"
	lockName  = "lock" // in stateDir
	savedFile = stateDir + "/host-sysctls.json"
)

// hostSysctls are the kernel settings the kubelet changes (it sets them at start, not namespaced, with no
// opt-out; protectKernelDefaults makes it refuse to start instead). A run saves them first and puts them
// back when it ends.
var hostSysctls = []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"}

// lock takes the run lock, waiting up to timeout for another run to end, and removes the temp files a
// killed run's saveSysctls left.
func lock(timeout time.Duration) (*statefile.Lock, error) {
	l, err := statefile.LockDir(stateDir, lockName, timeout)
	if err != nil {
		return nil, fmt.Errorf("lock real-node run (another real-node e2e runs?): %w", err)
	}
	return l, nil
}

// saveSysctls records the host's kernel settings the kubelet changes, unless a killed run's record is
// still there (that one holds the values from before the killed run).
func saveSysctls() error {
	if _, err := os.Stat(savedFile); err == nil {
		return nil
	}
	saved := map[string]string{}
	for _, k := range hostSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return fmt.Errorf("save sysctl %s: %w", k, err)
		}
		saved[k] = strings.TrimSpace(string(b))
	}
	b, _ := json.Marshal(saved)
	if err := statefile.WriteFile(savedFile, b, 0o600); err != nil {
		return fmt.Errorf("save sysctls: %w", err)
	}
	return nil
}

// restoreSysctls writes the saved settings back and forgets them. Nothing saved: nothing to do.
func restoreSysctls() error {
	b, err := os.ReadFile(savedFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore sysctls: %w", err)
	}
	saved := map[string]string{}
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("restore sysctls from %s: %w", savedFile, err)
	}
	var errs []error
	for k, v := range saved {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, os.Remove(savedFile))
	}
	return errors.Join(errs...)
}

// cgroupDirs lists the node cgroups of a run in every mounted hierarchy: /sys/fs/cgroup/<controller>/<name>.
func cgroupDirs(name string) []string {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	return dirs
}

// createCgroup makes the node's cgroup in every hierarchy: the kubelet's cgroupRoot, which it requires to
// exist, and the home of the node's own processes. cpuset needs its cpus and mems filled in (cgroup v1).
func createCgroup(name string) error {
	hierarchies, err := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	if err != nil {
		return err
	}
	for _, procs := range hierarchies {
		root := filepath.Dir(procs)
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(root, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %w", dir, err)
				}
			}
		}
	}
	return nil
}

// cgroupPids lists every process in the cgroup trees at dirs.
func cgroupPids(dirs []string) []int {
	var pids []int
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroup kills every process left in the node's cgroups (kubelet, containerd, shims, containers)
// and removes the cgroups, deepest first.
func removeCgroup(name string) error {
	dirs := cgroupDirs(name)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := cgroupPids(dirs)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v still alive after SIGKILL", name, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var errs []error
	for _, d := range dirs {
		var sub []string
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		for i := len(sub) - 1; i >= 0; i-- {
			if err := rmdirRetry(sub[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// rmdirRetry removes an empty cgroup; a cgroup whose last process just died may be busy for a moment.
func rmdirRetry(dir string) error {
	var err error
	for range 50 {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

// Cleanup removes everything a run with Prefix made on the host, also when that run was killed: the
// processes of its nodes (all in the nodes' cgroups, so their mount namespaces go with them), the
// cgroups, the host's veth to the fabric, the fabric's and the nodes' netns, the mount points it created,
// all but the logs of its folder; then it restores the kernel settings the kubelets changed.
// Control-plane processes die with the test process (Pdeathsig).
func Cleanup() error {
	var errs []error
	names, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", Prefix+"-*"))
	seen := map[string]bool{}
	for _, d := range names {
		if n := filepath.Base(d); !seen[n] {
			seen[n] = true
			errs = append(errs, removeCgroup(n))
		}
	}
	errs = append(errs, deleteHostLink(), fabric.Cleanup(Prefix), restoreSysctls(), removeCreatedDirs())
	// Run folders (os.MkdirTemp(Prefix+"-")) keep only their logs: a killed run's images, containers and
	// etcd data go.
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), Prefix+"-*"))
	for _, d := range dirs {
		if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
			errs = append(errs, pruneToLogs(d))
		}
	}
	return errors.Join(errs...)
}

// The host's veth to the fabric's router: the API server (on the host) reaches each kubelet at its node's
// primary address through it, for exec, logs and port-forward. Link-local, so no host route can clash.
const (
	hostLinkName  = Prefix + "-h"
	hostLinkPeer  = "host"
	hostLinkAddr  = "169.254.77.1/30"
	routerLinkAdr = "169.254.77.2/30"
)

// createdDirsFile lists mount points a run created on the host (directories are not namespaced), so that
// Cleanup removes them, empty, even after a killed run.
const createdDirsFile = stateDir + "/created-dirs"

// ensureMountPoint creates dir if missing and records it, and every folder above it that it creates, for
// Cleanup.
func ensureMountPoint(dir string) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	if len(missing) == 0 {
		return nil
	}
	f, err := os.OpenFile(createdDirsFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record mount point %s: %w", dir, err)
	}
	_, err = fmt.Fprintln(f, strings.Join(missing, "\n"))
	err = errors.Join(err, f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("record mount point %s: %w", dir, err)
	}
	return os.MkdirAll(dir, 0o755)
}

// removeCreatedDirs removes the recorded mount points that are empty (deepest first), then the record.
func removeCreatedDirs() error {
	b, err := os.ReadFile(createdDirsFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	dirs := strings.Fields(string(b))
	slices.Sort(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i]) // not empty: something else put files there; leave it
	}
	return os.Remove(createdDirsFile)
}

// Leftovers lists what a run with Prefix left on the host: cgroups, netns, the host link, unrestored
// kernel settings, processes and mounts. Empty after a clean teardown.
func Leftovers() []string {
	var out []string
	cgs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", Prefix+"-*"))
	out = append(out, cgs...)
	nss, _ := filepath.Glob(filepath.Join(fabric.NetNSDir, Prefix+"-*"))
	out = append(out, nss...)
	if _, err := os.Stat(filepath.Join("/sys/class/net", hostLinkName)); err == nil {
		out = append(out, "link "+hostLinkName)
	}
	for _, f := range []string{savedFile, createdDirsFile} {
		if _, err := os.Stat(f); err == nil {
			out = append(out, f)
		}
	}
	// Processes and host mounts that name a run's folder (os.MkdirTemp(Prefix+"-")): the control plane,
	// kubelets, containerds, a node's mount-namespace holder. (Node mounts are in the nodes' own mount
	// namespaces: none is expected here.)
	runDir := filepath.Join(os.TempDir(), Prefix+"-")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		pid := filepath.Base(filepath.Dir(p))
		if err == nil && pid != strconv.Itoa(os.Getpid()) && strings.Contains(string(b), runDir) {
			out = append(out, "process "+pid+": "+strings.ReplaceAll(strings.TrimSpace(string(b)), "\x00", " "))
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, runDir) || strings.Contains(l, " "+Prefix+"-") {
				out = append(out, "mount "+l)
			}
		}
	}
	return out
}

// runDir is the folder of the run in progress, for the signal handler (TestMain).
var runDir atomic.Value

// RunDir is the folder of the run in progress, "" between runs.
func RunDir() string {
	d, _ := runDir.Load().(string)
	return d
}

// pruneToLogs removes everything of a run's folder but its logs (*.log): after a failure or Ctrl-C the
// logs stay for a look, not the images, containers and etcd data (over a GB).
func pruneToLogs(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		switch {
		case err != nil:
			return nil
		case d.IsDir():
			dirs = append(dirs, p)
		case !strings.HasSuffix(p, ".log"):
			_ = os.Remove(p)
		}
		return nil
	})
	for i := len(dirs) - 1; i > 0; i-- { // deepest first; the run's folder itself stays
		_ = syscall.Rmdir(dirs[i])
	}
	return err
}

// runDying runs cmd so that its process gets SIGKILL when the test process dies (Pdeathsig), as the
// control plane's do (cluster.StartProcess): after Ctrl-C the signal handler exits while a case may have
// just started kubectl or an exec into a node. Pdeathsig follows the forking thread, and the Go runtime
// ends locked threads whose goroutine exits (netns helpers do), so the fork happens on a thread of its own
// that stays locked until the child has exited.
func runDying(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after the child
		errc <- cmd.Run()
	}()
	return <-errc
}
