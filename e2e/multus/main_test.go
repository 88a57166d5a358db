//go:build e2e

package multus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/multinic/multinic/internal/testing/harness"
	"github.com/multinic/multinic/internal/testing/testbin"
	"github.com/multinic/multinic/ipam/api"
)

// runtimeEnv, set to ADD or DEL, makes the test binary the container runtime for one CNI call (see
// runRuntime); the other runtime* variables carry its arguments.
const (
	runtimeEnv          = "MULTINIC_E2E_MULTUS_RUNTIME"
	runtimeConfEnv      = "MULTINIC_E2E_MULTUS_CONFLIST"
	runtimeNetNSEnv     = "MULTINIC_E2E_MULTUS_NETNS"
	runtimeContainerEnv = "MULTINIC_E2E_MULTUS_CONTAINER"
	runtimeCacheEnv     = "MULTINIC_E2E_MULTUS_CACHE"
	runtimeArgsEnv      = "MULTINIC_E2E_MULTUS_ARGS"
	runtimePathEnv      = "MULTINIC_E2E_MULTUS_CNI_PATH"
	// runtimeElapsedEnv names a file the runtime writes the duration of the libcni call to, in
	// nanoseconds: the CNI call itself, without this child's own start (see env.runTimed).
	runtimeElapsedEnv = "MULTINIC_E2E_MULTUS_ELAPSED"
)

func TestMain(m *testing.M) {
	if verb := os.Getenv(runtimeEnv); verb != "" {
		os.Exit(runRuntime(verb))
	}
	code := testbin.Main(m)
	removeBuilt()
	os.Exit(code)
}

// runRuntime is what containerd does for a pod sandbox's network, with libcni: one ADD or DEL of the
// conflist, the result (or the CNI error) as JSON on stdout. It runs in a child process started in the
// node's netns and the node's mount namespace (see runtime.run).
func runRuntime(verb string) int {
	fail := func(err error) int {
		var e *types.Error
		if !errors.As(err, &e) {
			e = types.NewError(types.ErrInternal, err.Error(), "")
		}
		_ = json.NewEncoder(os.Stdout).Encode(e)
		return 1
	}
	data, err := os.ReadFile(os.Getenv(runtimeConfEnv))
	if err != nil {
		return fail(err)
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return fail(err)
	}
	var args [][2]string
	for _, kv := range strings.Split(os.Getenv(runtimeArgsEnv), ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			args = append(args, [2]string{k, v})
		}
	}
	rt := &libcni.RuntimeConf{
		ContainerID: os.Getenv(runtimeContainerEnv), NetNS: os.Getenv(runtimeNetNSEnv), IfName: "eth0", Args: args,
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv(runtimePathEnv)), os.Getenv(runtimeCacheEnv), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	var res types.Result
	switch verb {
	case "ADD":
		res, err = cni.AddNetworkList(ctx, list, rt)
	case "DEL":
		err = cni.DelNetworkList(ctx, list, rt)
	default:
		err = fmt.Errorf("runtime verb %q: want ADD or DEL", verb)
	}
	elapsed := time.Since(start)
	if err != nil {
		return fail(err)
	}
	if path := os.Getenv(runtimeElapsedEnv); path != "" {
		if err := os.WriteFile(path, []byte(strconv.FormatInt(int64(elapsed), 10)), 0o600); err != nil {
			return fail(err)
		}
	}
	if res != nil {
		if err := res.PrintTo(os.Stdout); err != nil {
			return fail(err)
		}
	}
	return 0
}

// socketDir is where the NADs (which name no socket) make the plugin look for the agent: the directory of
// api.DefaultSocketPath. Each node's agent and runtime see their node's folder there.
var socketDir = filepath.Dir(api.DefaultSocketPath)

// kubeletDir is the kubelet's folder on a node. Multus reads the kubelet's device-plugin checkpoint there
// (or asks its pod-resources socket) for every NAD with a k8s.v1.cni.cncf.io/resourceName annotation, as
// multinic's are; each node's runtime sees its own (see writeKubeletCheckpoint).
const kubeletDir = "/var/lib/kubelet"

// bindDirs is the command prefix that runs the rest of a command line in a mount namespace of its own in
// which each binds[i][1] is binds[i][0] (slave propagation: netns mounted later on the host are seen).
func bindDirs(binds [][2]string) []string {
	args := []string{"unshare", "--mount", "--propagation", "slave", "/bin/sh", "-c",
		`while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@"`, "sh"}
	for _, b := range binds {
		args = append(args, b[0], b[1])
	}
	return append(args, "--")
}

// agentWrapper is the harness's multinic-agent: the real agent in its node's mount namespace. The node's
// folder is the parent of the --state-dir the harness passes first.
const agentWrapper = `#!/bin/sh
# multinic-agent for the Multus e2e (e2e/multus): runs the real agent with the node's harness folder at
# %[2]s, as the DaemonSet's hostPath mount of /run/multinic does on a real node.
node_dir=
prev=
for a in "$@"; do
	if [ "$prev" = --state-dir ]; then node_dir=${a%%/*}; break; fi
	prev=$a
done
[ -n "$node_dir" ] || { echo "multinic-agent wrapper: no --state-dir" >&2; exit 2; }
exec unshare --mount --propagation slave /bin/sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$node_dir" %[2]q %[1]q "$@"
`

var (
	binOnce     sync.Once
	binErr      error
	realBinDir  string // the real plugin and agent
	wrapBinDir  string // the real plugin and the agent wrapper: the regions' harness.Config.BinDir
	builtDirs   []string
	createdDirs []string // mount points this process created on the host, removed (if empty) at the end
)

// setupBinaries makes the regions run the agent wrapper: it writes a folder with the wrapper around the
// real agent in dir and the real plugin (wrapBinDir). The first call of the process decides dir.
func setupBinaries(t *testing.T, dir string) {
	t.Helper()
	binOnce.Do(func() { binErr = doSetupBinaries(dir) })
	if binErr != nil {
		t.Fatal(binErr)
	}
}

func doSetupBinaries(dir string) error {
	realBinDir = dir
	wrap, err := os.MkdirTemp("", "multinic-multus-wrap-")
	if err != nil {
		return err
	}
	builtDirs = append(builtDirs, wrap)
	if err := os.Symlink(filepath.Join(realBinDir, harness.PluginBinary), filepath.Join(wrap, harness.PluginBinary)); err != nil {
		return err
	}
	script := fmt.Sprintf(agentWrapper, filepath.Join(realBinDir, harness.AgentBinary), socketDir)
	if err := os.WriteFile(filepath.Join(wrap, harness.AgentBinary), []byte(script), 0o755); err != nil {
		return err
	}
	// The bind mounts need their mount points on the host; they stay empty there.
	for _, dir := range []string{socketDir, kubeletDir} {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			createdDirs = append(createdDirs, dir)
		}
	}
	wrapBinDir = wrap
	return nil
}

func removeBuilt() {
	for _, d := range builtDirs {
		_ = os.RemoveAll(d)
	}
	for _, d := range createdDirs {
		_ = os.Remove(d) // only if still empty
	}
}
