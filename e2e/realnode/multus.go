package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/multinic/multinic/e2e/cluster"
	"github.com/multinic/multinic/tools/imagebuild"
)

// Multus modes: the thin plugin (the runtime execs multus, which calls the delegates) and the thick
// plugin (the runtime execs multus-shim, which asks multus-daemon over a socket; the daemon runs the
// delegates from its container, chrooted to the host's root).
const (
	MultusThin  = "thin"
	MultusThick = "thick"
)

// The upstream DaemonSets' images (deployments/multus-daemonset.yml and -thick.yml name them), built
// locally with upstream's layout (images/Dockerfile and Dockerfile.thick): no registry is reached.
var multusImages = map[string]string{
	MultusThin:  "ghcr.io/k8snetworkplumbingwg/multus-cni:snapshot",
	MultusThick: "ghcr.io/k8snetworkplumbingwg/multus-cni:snapshot-thick",
}

// multusManifests are the upstream DaemonSet manifests of each mode, in the Multus module.
var multusManifests = map[string]string{
	MultusThin:  "deployments/multus-daemonset.yml",
	MultusThick: "deployments/multus-daemonset-thick.yml",
}

// multusBins maps upstream's /usr/src/multus-cni/bin names to what build.sh builds.
var multusBins = map[string]string{
	"multus": "multus", "multus-daemon": "multus-daemon", "multus-shim": "multus-shim",
	"install_multus": "install_multus", "thin_entrypoint": "thin_entrypoint", "passthru": "passthru-cni",
}

// BuildMultusImages writes both Multus images into dir from the static (CGO_ENABLED=0) Multus binaries in
// binDir (MULTINIC_TOOLS_STATIC=1 e2e/tools/build.sh multus): the images have an empty base, no libc.
func BuildMultusImages(binDir, dir string) ([]string, error) {
	// multus-daemon checks it runs as root with os/user, which without cgo reads /etc/passwd (upstream's
	// thick image is Debian's, which has one).
	passwd := filepath.Join(dir, "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/sbin/nologin\n"), 0o644); err != nil {
		return nil, err
	}
	// The daemon opens the pod netns at the path the runtime gives, /var/run/netns/...: upstream's Debian
	// base has /var/run -> /run.
	entries := []imagebuild.Entry{{Path: "/etc/passwd", Mode: 0o644, Src: passwd}, {Path: "/var/run", Link: "/run"}}
	for name, built := range multusBins {
		entries = append(entries, imagebuild.Entry{Path: "/usr/src/multus-cni/bin/" + name, Mode: 0o755, Src: filepath.Join(binDir, built)})
	}
	thin := imagebuild.Spec{Entries: append(entries,
		imagebuild.Entry{Path: "/thin_entrypoint", Mode: 0o755, Src: filepath.Join(binDir, "thin_entrypoint")},
		imagebuild.Entry{Path: "/install_multus", Mode: 0o755, Src: filepath.Join(binDir, "install_multus")},
	), Entrypoint: []string{"/thin_entrypoint"}, Arch: runtime.GOARCH}
	thick := imagebuild.Spec{Entries: entries, Entrypoint: []string{"/usr/src/multus-cni/bin/multus-daemon"}, Arch: runtime.GOARCH}
	var out []string
	for mode, spec := range map[string]imagebuild.Spec{MultusThin: thin, MultusThick: thick} {
		p := filepath.Join(dir, "multus-"+mode+"-image.tar")
		if _, err := imagebuild.BuildArchive(spec, multusImages[mode], p); err != nil {
			return nil, fmt.Errorf("multus %s image: %w", mode, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// multusModuleDir is where the Go module cache holds the pinned Multus release (build.sh downloaded it).
func multusModuleDir(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "gopkg.in/k8snetworkplumbingwg/multus-cni.v4@"+cluster.MultusVersion)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("locate Multus %s: %w", cluster.MultusVersion, err)
	}
	var m struct{ Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		return "", fmt.Errorf("locate Multus %s: %q: %v", cluster.MultusVersion, out, err)
	}
	return m.Dir, nil
}

// InstallMultus applies upstream's DaemonSet manifest of the mode unchanged, as its users do, and waits
// for the rollout.
func (e *Env) InstallMultus(ctx context.Context, mode string) error {
	dir, err := multusModuleDir(ctx)
	if err != nil {
		return err
	}
	if out, err := e.Kubectl(ctx, nil, "apply", "-f", filepath.Join(dir, multusManifests[mode])); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/kube-multus-ds", "--timeout=3m"); err != nil {
		return fmt.Errorf("%w\n%s\n%s", err, out, e.describe(ctx, "kube-system", "name=multus"))
	}
	e.multusMode = mode
	// The DaemonSet is Ready once its entrypoint wrote the Multus config; wait until the runtime sees it
	// (00-multus.conflist from the thin entrypoint, 00-multus.conf from the thick daemon).
	for _, n := range e.Nodes {
		deadline := time.Now().Add(time.Minute)
		for {
			out, err := n.Exec(ctx, "sh", "-c", "ls /etc/cni/net.d/00-multus.conf*")
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("node %s: no /etc/cni/net.d/00-multus.conf* a minute after the Multus rollout: %v: %s", n.Name, err, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	return nil
}

// UninstallMultus deletes the Multus DaemonSet and, as Multus' docs tell, its config and kubeconfig on
// every node (the CRD and RBAC stay: the NADs live on).
func (e *Env) UninstallMultus(ctx context.Context) error {
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "delete", "daemonset", "kube-multus-ds", "--wait=true", "--timeout=2m"); err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, nil, "-n", "kube-system", "wait", "--for=delete", "pod", "-l", "name=multus", "--timeout=2m"); err != nil &&
		!strings.Contains(err.Error(), "no matching resources") {
		return fmt.Errorf("%w\n%s", err, out)
	}
	e.multusMode = ""
	for _, n := range e.Nodes {
		if out, err := n.Exec(ctx, "rm", "-rf", "/etc/cni/net.d/00-multus.conf", "/etc/cni/net.d/00-multus.conflist", "/etc/cni/net.d/multus.d"); err != nil {
			return fmt.Errorf("node %s: remove the Multus config: %w: %s", n.Name, err, out)
		}
	}
	return nil
}
