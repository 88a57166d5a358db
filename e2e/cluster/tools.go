package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Versions of the real binaries the e2e runs. They are pinned by the wrapper modules under e2e/tools
// (a unit test keeps these constants and those go.mod files in step) and name the cache folders
// e2e/tools/build.sh builds into.
const (
	KubernetesVersion = "v1.37.2" // kube-apiserver, k8s.io/kubernetes
	EtcdVersion       = "v3.6.16" // go.etcd.io/etcd/server/v3
	MultusVersion     = "v4.3.0"  // gopkg.in/k8snetworkplumbingwg/multus-cni.v4, thin plugin cmd/multus
	CNIPluginsVersion = "v1.10.0" // github.com/containernetworking/plugins
	CNIToolVersion    = "v1.3.1"  // github.com/containernetworking/cni/cnitool
	// The real-node e2e's (e2e/realnode) node stack.
	ContainerdVersion = "v2.4.2"  // github.com/containerd/containerd/v2: containerd, containerd-shim-runc-v2, ctr
	RuncVersion       = "v1.5.3"  // github.com/opencontainers/runc
	CrictlVersion     = "v1.37.0" // sigs.k8s.io/cri-tools/cmd/crictl
)

// NodeTool names one binary of the real-node e2e: the build.sh component it belongs to and its version.
type NodeTool struct{ Component, Version, Binary string }

// The real-node e2e's binaries, by build.sh component.
var (
	Kubelet               = NodeTool{"kube-node", KubernetesVersion, "kubelet"}
	KubeScheduler         = NodeTool{"kube-node", KubernetesVersion, "kube-scheduler"}
	KubeControllerManager = NodeTool{"kube-node", KubernetesVersion, "kube-controller-manager"}
	Kubectl               = NodeTool{"kube-node", KubernetesVersion, "kubectl"}
	Containerd            = NodeTool{"containerd", ContainerdVersion, "containerd"}
	ContainerdShim        = NodeTool{"containerd", ContainerdVersion, "containerd-shim-runc-v2"}
	Ctr                   = NodeTool{"containerd", ContainerdVersion, "ctr"}
	Runc                  = NodeTool{"runc", RuncVersion, "runc"}
	Crictl                = NodeTool{"crictl", CrictlVersion, "crictl"}
	MultusDaemon          = NodeTool{"multus", MultusVersion, "multus-daemon"}
	MultusShim            = NodeTool{"multus", MultusVersion, "multus-shim"}
	MultusThinEntrypoint  = NodeTool{"multus", MultusVersion, "thin_entrypoint"}
	MultusInstaller       = NodeTool{"multus", MultusVersion, "install_multus"}
)

// FindNodeTool locates one binary the way FindTools does: in $MULTINIC_TOOLS_DIR when set, else in the
// repository's bin/tools, else in its build.sh cache folder for the running Go version.
func FindNodeTool(t NodeTool) (string, error) {
	var dirs []string
	if dir := os.Getenv(ToolsDirEnv); dir != "" {
		dirs = append(dirs, dir)
	} else {
		if root, err := repoRoot(); err == nil {
			dirs = append(dirs, filepath.Join(root, "bin", "tools"))
		}
		cache, err := toolsCache()
		if err != nil {
			return "", err
		}
		dirs = append(dirs, filepath.Join(cache, t.Component+"-"+t.Version+"-"+runtime.Version()))
	}
	for _, d := range dirs {
		p, _ := filepath.Abs(filepath.Join(d, t.Binary))
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s %s not in %s (bash e2e/tools/build.sh node)", ErrToolsMissing, t.Binary, t.Version, strings.Join(dirs, ", "))
}

// Environment variables that place the tools; build.sh reads the same ones.
const (
	// ToolsDirEnv names one folder holding every binary (what build.sh links into, default <repo>/bin/tools).
	ToolsDirEnv = "MULTINIC_TOOLS_DIR"
	// ToolsCacheEnv is the cache root build.sh builds into (default ${XDG_CACHE_HOME:-$HOME/.cache}/multinic/tools).
	ToolsCacheEnv = "MULTINIC_TOOLS_CACHE"
)

// CNIPlugins are the reference plugins build.sh builds; all of them must be present.
var CNIPlugins = []string{"bridge", "host-device", "ipvlan", "loopback", "macvlan", "ptp", "vlan",
	"host-local", "static", "tuning"}

// ErrToolsMissing is wrapped by FindTools when a binary is not built.
var ErrToolsMissing = errors.New("e2e tools not built: run `bash e2e/tools/build.sh` (or `make e2e`)")

// Tools are the absolute paths of the real binaries.
type Tools struct {
	KubeAPIServer string
	Etcd          string
	Multus        string
	CNITool       string
	// CNIBinDir holds the reference plugins (bridge, ptp, host-local, ...): a CNI_PATH / Multus binDir entry.
	CNIBinDir string
}

// FindTools locates the binaries: in $MULTINIC_TOOLS_DIR when set (and only there), else in the
// repository's bin/tools (found from the working directory upwards), else in the build cache folders
// for the pinned versions and the running Go version.
func FindTools() (*Tools, error) {
	if dir := os.Getenv(ToolsDirEnv); dir != "" {
		t := flatTools(dir)
		if err := t.check(); err != nil {
			return nil, fmt.Errorf("find tools in $%s=%s: %w", ToolsDirEnv, dir, err)
		}
		return t, nil
	}
	var errs []error
	if root, err := repoRoot(); err == nil {
		t := flatTools(filepath.Join(root, "bin", "tools"))
		err := t.check()
		if err == nil {
			return t, nil
		}
		errs = append(errs, fmt.Errorf("in %s: %w", filepath.Join(root, "bin", "tools"), err))
	}
	cache, err := toolsCache()
	if err != nil {
		return nil, err
	}
	t := cachedTools(cache, runtime.Version())
	if err := t.check(); err != nil {
		errs = append(errs, fmt.Errorf("in cache %s: %w", cache, err))
		return nil, fmt.Errorf("find tools: %w", errors.Join(errs...))
	}
	return t, nil
}

func flatTools(dir string) *Tools {
	dir, _ = filepath.Abs(dir)
	return &Tools{
		KubeAPIServer: filepath.Join(dir, "kube-apiserver"),
		Etcd:          filepath.Join(dir, "etcd"),
		Multus:        filepath.Join(dir, "multus"),
		CNITool:       filepath.Join(dir, "cnitool"),
		CNIBinDir:     dir,
	}
}

// cachedTools names the folders build.sh creates: <cache>/<component>-<version>-<go version>/.
func cachedTools(cache, goVersion string) *Tools {
	dir := func(component, version string) string {
		return filepath.Join(cache, component+"-"+version+"-"+goVersion)
	}
	return &Tools{
		KubeAPIServer: filepath.Join(dir("kube-apiserver", KubernetesVersion), "kube-apiserver"),
		Etcd:          filepath.Join(dir("etcd", EtcdVersion), "etcd"),
		Multus:        filepath.Join(dir("multus", MultusVersion), "multus"),
		CNITool:       filepath.Join(dir("cnitool", CNIToolVersion), "cnitool"),
		CNIBinDir:     dir("cni-plugins", CNIPluginsVersion),
	}
}

func toolsCache() (string, error) {
	if c := os.Getenv(ToolsCacheEnv); c != "" {
		return c, nil
	}
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
		return filepath.Join(x, "multinic", "tools"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("locate tools cache: %w", err)
	}
	return filepath.Join(home, ".cache", "multinic", "tools"), nil
}

// check reports every missing or non-executable binary, wrapping ErrToolsMissing.
func (t *Tools) check() error {
	paths := []string{t.KubeAPIServer, t.Etcd, t.Multus, t.CNITool}
	for _, p := range CNIPlugins {
		paths = append(paths, filepath.Join(t.CNIBinDir, p))
	}
	var missing []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s", ErrToolsMissing, strings.Join(missing, ", "))
	}
	return nil
}

// repoRoot walks up from the working directory to the folder holding e2e/tools/build.sh.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "e2e", "tools", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root not found above the working directory")
		}
		dir = parent
	}
}
