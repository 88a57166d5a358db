//go:build e2e

package multus

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/e2e/bench"
	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/netconf"
)

// The ipvlan cases need a kernel with ipvlan, which this host may lack: they run in the test VM
// (e2e/vm/vmtest.sh) against the control plane the host runs. The host side
// (TestMultinicThroughMultusIPVlanVM) starts kube-apiserver and etcd on 127.0.0.1, writes what the guest
// needs into a folder under the repository's git-ignored .vmtest/ (the guest sees the repository read-only
// below /mnt/host), and boots the VM with user networking, in which the guest reaches the host's
// 127.0.0.1 at 10.0.2.2. The guest side (TestMultinicThroughMultusIPVlan) relays its own 127.0.0.1:<port>
// there (cluster.Connect), so the kubeconfig, the serving certificate and ServeInNetNS work as on the host,
// and runs the cases of TestMultinicThroughMultus with the ipvlan NADs (kube-system/multinic-card-N).
const (
	// vmDirEnv is the guest path of the folder the host prepared (see vmFiles).
	vmDirEnv = "MULTINIC_E2E_MULTUS_VM"
	// inVMEnv is set to "1" by e2e/vm/vmtest.sh inside the VM (internal/nettest.InVMEnv; not imported, so
	// that `make test-vm` does not pick this package up).
	inVMEnv = "MULTINIC_IN_VM"
	// slirpHost is the host's loopback as QEMU's user network shows it to the guest.
	slirpHost = "10.0.2.2"
)

// vmAllCards are the cards of the "all-cards" pod in the VM: all seven, as on the host (a Multus ADD of
// three cards takes about 5 s under TCG emulation on one vCPU; narrow this if the VM gets too slow).
var vmAllCards = managedCards

// Files of the folder the host prepares for the guest.
const (
	vmRemoteFile = "remote.json" // cluster.Remote, CACert and Upstream as the guest sees them
	vmCAFile     = "ca.crt"
	vmToolsDir   = "tools" // static (CGO_ENABLED=0) vmTools: the guest has no libc
)

// vmTools are the CNI binaries the guest needs: Multus, the primary network's delegates, and ipvlan, the
// reference delegate of the Multus benchmark (bench_test.go).
var vmTools = []string{"multus", "ptp", "host-local", "ipvlan"}

// vmE2EEnv turns on the ipvlan cases in the test VM (make e2e-vm).
const vmE2EEnv = "MULTINIC_E2E_VM"

// TestMultinicThroughMultusIPVlanVM runs TestMultinicThroughMultusIPVlan in the test VM against a control
// plane on this host.
func TestMultinicThroughMultusIPVlanVM(t *testing.T) {
	tools := cluster.RequireE2E(t)
	// Its own gate: under heavy load on a 2-core host, a Multus GET through the guest's relays and QEMU's
	// user networking once timed out; until that is understood it runs as `make e2e-vm`, not in make test.
	if os.Getenv(vmE2EEnv) != "1" {
		t.Skipf("ipvlan e2e in the test VM runs with %s=1: `make e2e-vm`", vmE2EEnv)
	}
	runInVM(t, tools, "TestMultinicThroughMultusIPVlan", 14*time.Minute, nil)
}

// runInVM starts the control plane on this host and runs the guest side test guestTest in the test VM
// against it, with the guest's environment variables guestEnv on top of what the guest needs to reach
// it; the test may run for timeout. Result lines (bench.ResultPrefix) the guest prints go to stdout as
// they are, for e2e/bench/run.sh.
func runInVM(t *testing.T, tools *cluster.Tools, guestTest string, timeout time.Duration, guestEnv map[string]string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("%s needs the test VM (qemu-system-x86_64: %v); see e2e/vm/vmtest.sh", guestTest, err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	vmtest := filepath.Join(root, "e2e", "vm", "vmtest.sh")
	if _, err := os.Stat(vmtest); err != nil {
		t.Fatalf("vmtest.sh: %v", err)
	}
	start := time.Now()
	static := buildStaticTools(t, root)
	c := cluster.Start(t, cluster.Options{Tools: tools})

	// The folder for the guest, under .vmtest/ (git-ignored; vmtest.sh puts its runs there too).
	if err := os.MkdirAll(filepath.Join(root, ".vmtest"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(filepath.Join(root, ".vmtest"), "multus-ipvlan.")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.RemoveAll(dir)
		_ = os.Remove(filepath.Join(root, ".vmtest")) // only if empty
	})
	guestDir := "/mnt/host/" + strings.TrimPrefix(dir, root+"/")
	if err := os.Mkdir(filepath.Join(dir, vmToolsDir), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range vmTools {
		if err := copyFile(filepath.Join(static, name), filepath.Join(dir, vmToolsDir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := copyFile(c.CACert, filepath.Join(dir, vmCAFile), 0o644); err != nil {
		t.Fatal(err)
	}
	r := c.Remote()
	r.CACert = guestDir + "/" + vmCAFile
	r.Upstream = slirpHost + ":" + strconv.Itoa(c.Port)
	data, _ := json.Marshal(r)
	if err := os.WriteFile(filepath.Join(dir, vmRemoteFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane at %s, static tools and guest files in %s ready in %s; booting the VM",
		c.Server, dir, time.Since(start).Round(time.Millisecond))

	names := []string{vmDirEnv}
	env := append(os.Environ(), vmDirEnv+"="+guestDir)
	for k, v := range guestEnv {
		names = append(names, k)
		env = append(env, k+"="+v)
	}
	cmd := exec.Command("bash", vmtest, "./e2e/multus/")
	cmd.Dir = root
	cmd.Env = append(env,
		// The guest side is behind the e2e build tag: vmtest.sh's go list and go test -c read GOFLAGS.
		"GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -tags="+cluster.BuildTag),
		"MULTINIC_VM_NET=user",
		"MULTINIC_VM_ENV="+strings.Join(names, " "),
		"MULTINIC_VM_TESTFLAGS=-test.run=^"+guestTest+"$",
		"MULTINIC_VM_TEST_TIMEOUT="+timeout.String(),
		// The VM's own limit: the test's, plus booting and the test binary's start over 9p.
		"MULTINIC_VM_TIMEOUT="+strconv.Itoa(int(timeout.Seconds())+120),
	)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	done := make(chan struct{})
	go func() { // the VM's console, line by line, as it comes
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, bench.ResultPrefix) {
				fmt.Println(line)
			} else {
				t.Log(line)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err = cmd.Run()
	_ = pw.Close()
	<-done
	if err != nil {
		var ee *exec.ExitError
		code := -1
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		what := map[int]string{1: guestTest + " failed in the VM", 2: "vmtest.sh setup failed on the host",
			3: "the VM crashed", 4: "the VM timed out"}[code]
		t.Fatalf("e2e/vm/vmtest.sh ./e2e/multus/: %v (%s)", err, what)
	}
	t.Logf("%s passed in the VM; total %s", guestTest, time.Since(start).Round(time.Millisecond))
}

// TestMultinicThroughMultusIPVlan is the guest side: the cases of TestMultinicThroughMultus with the
// ipvlan NADs, against the host's control plane.
func TestMultinicThroughMultusIPVlan(t *testing.T) {
	start := time.Now()
	c, tools := guestCluster(t, "TestMultinicThroughMultusIPVlanVM (`make e2e-vm`)")
	setupBinaries(t, harness.BinDir(t))
	runCases(t, c, tools, netconf.ModeIPVlan, vmAllCards, start)
}

// guestCluster is the guest side's start, in the test VM (skipped elsewhere; bootedBy names the host side
// test): the host's control plane, reached through relays on the guest's 127.0.0.1 (closed when t ends),
// and the static tools the host prepared.
func guestCluster(t *testing.T, bootedBy string) (*cluster.Cluster, *cluster.Tools) {
	t.Helper()
	dir := os.Getenv(vmDirEnv)
	if os.Getenv(inVMEnv) != "1" || dir == "" {
		t.Skipf("vm e2e: runs inside the test VM, booted by %s, with %s set", bootedBy, vmDirEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the test VM runs tests as root")
	}
	data, err := os.ReadFile(filepath.Join(dir, vmRemoteFile))
	if err != nil {
		t.Fatal(err)
	}
	var r cluster.Remote
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("%s: %v", vmRemoteFile, err)
	}
	c, err := cluster.Connect(context.Background(), r, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close the control plane's relays: %v", err)
		}
	})
	t.Logf("the host's API server answers at %s (relayed to %s)", c.Server, r.Upstream)
	toolsDir := filepath.Join(dir, vmToolsDir)
	return c, &cluster.Tools{Multus: filepath.Join(toolsDir, "multus"), CNIBinDir: toolsDir}
}

// buildStaticTools builds (once, cached by e2e/tools/build.sh) static multus and reference plugins and
// returns the folder that holds them.
func buildStaticTools(t *testing.T, root string) string {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(root, "e2e", "tools", "build.sh"), "multus", "cni-plugins")
	cmd.Dir = root
	// Its own link folder: never the one of the usual tools (a $MULTINIC_TOOLS_DIR of the caller).
	cmd.Env = append(os.Environ(), "MULTINIC_TOOLS_STATIC=1", "MULTINIC_TOOLS_DIR="+filepath.Join(root, "bin", "tools-static"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("MULTINIC_TOOLS_STATIC=1 e2e/tools/build.sh multus cni-plugins: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	dir := lines[len(lines)-1]
	for _, name := range vmTools {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("static tools: %v", err)
		}
	}
	return dir
}

// copyFile copies src (following links) to dst.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}
