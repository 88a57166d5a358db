package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/multinic/multinic/internal/gobuild"
)

// The three images: multinic (agent, plugin and NRI plugin), and the two the real-node e2e imports into containerd
// instead of pulling them: the pause image (named like containerd 2.4's default sandbox image) and busybox.
const (
	Multinic = "multinic"
	Pause    = "pause"
	Busybox  = "busybox"
)

// Default references of the images. DefaultMultinicRef is the Makefile's IMAGE and the one
// manifests/kustomization.yaml sets.
const (
	DefaultMultinicRef = "ghcr.io/multinic/multinic:dev"
	DefaultPauseRef    = "registry.k8s.io/pause:3.10.2"
	DefaultBusyboxRef  = "docker.io/library/busybox:multinic-e2e"
)

// Paths in the images. The multinic image's are the Dockerfile's too (dockerfile_test.go).
const (
	AgentPath   = "/usr/local/bin/multinic-agent"
	PluginPath  = "/usr/local/bin/multinic"
	NRIPath     = "/usr/local/bin/multinic-nri"
	PausePath   = "/pause"
	BusyboxPath = "/bin/busybox"
	// HostBusybox is Debian's busybox-static binary, the busybox image's only file.
	HostBusybox = "/bin/busybox"
)

// Go packages of the images' programs.
const (
	agentPkg  = "github.com/multinic/multinic/cmd/multinic-agent"
	pluginPkg = "github.com/multinic/multinic/cmd/multinic"
	nriPkg    = "github.com/multinic/multinic/cmd/multinic-nri"
	pausePkg  = "github.com/multinic/multinic/tools/pause"
)

// BusyboxApplets are the applets the e2e runs in the busybox image; Busybox fails without them.
var BusyboxApplets = []string{"sh", "ip", "ping", "nc", "sleep", "cat"}

// DefaultRef is the default reference of the named image.
func DefaultRef(image string) string {
	return map[string]string{Multinic: DefaultMultinicRef, Pause: DefaultPauseRef, Busybox: DefaultBusyboxRef}[image]
}

// MultinicSpec is the multinic image from a directory holding the built multinic-agent, multinic and
// multinic-nri.
func MultinicSpec(binDir string) Spec {
	return Spec{
		Entries: []Entry{
			{Path: AgentPath, Mode: 0o755, Src: filepath.Join(binDir, path.Base(AgentPath))},
			{Path: PluginPath, Mode: 0o755, Src: filepath.Join(binDir, path.Base(PluginPath))},
			{Path: NRIPath, Mode: 0o755, Src: filepath.Join(binDir, path.Base(NRIPath))},
		},
		Entrypoint: []string{AgentPath},
		Arch:       runtime.GOARCH,
	}
}

// PauseSpec is the pause image from the built pause program.
func PauseSpec(pauseBin string) Spec {
	return Spec{
		Entries:    []Entry{{Path: PausePath, Mode: 0o755, Src: pauseBin}},
		Entrypoint: []string{PausePath},
		Arch:       runtime.GOARCH,
	}
}

// BusyboxSpec is the busybox image from a static busybox binary: the binary at /bin/busybox and a symlink
// to it for each of its applets, where `busybox --list-full` puts them (/bin/sh, /sbin/ip, /usr/bin/nc ...).
func BusyboxSpec(ctx context.Context, busybox string) (Spec, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return Spec{}, fmt.Errorf("list the applets of %s: %w", busybox, err)
	}
	s := Spec{
		Entries: []Entry{{Path: BusyboxPath, Mode: 0o755, Src: busybox}},
		Cmd:     []string{"sh"},
		Arch:    runtime.GOARCH,
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		p := "/" + strings.TrimSpace(sc.Text())
		if p == "/" || p == BusyboxPath {
			continue
		}
		s.Entries = append(s.Entries, Entry{Path: p, Link: BusyboxPath})
		names = append(names, path.Base(p))
	}
	for _, a := range BusyboxApplets {
		if !slices.Contains(names, a) {
			return Spec{}, fmt.Errorf("%s has no applet %q (the e2e needs %v): want Debian's busybox-static", busybox, a, BusyboxApplets)
		}
	}
	return s, nil
}

// BuildImage builds the named image (Multinic, Pause or Busybox) and writes it tagged ref (DefaultRef if
// empty) as a docker-archive to out; it returns the image digest. Multinic and Pause compile their
// programs (run it inside this module); Busybox takes HostBusybox.
func BuildImage(ctx context.Context, image, ref, out string) (string, error) {
	if ref == "" {
		ref = DefaultRef(image)
	}
	var spec Spec
	switch image {
	case Multinic, Pause:
		tmp, err := os.MkdirTemp("", "mkimage-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		if image == Multinic {
			if err := gobuild.Build(ctx, tmp, agentPkg, pluginPkg, nriPkg); err != nil {
				return "", err
			}
			spec = MultinicSpec(tmp)
		} else {
			if err := gobuild.Build(ctx, tmp, pausePkg); err != nil {
				return "", err
			}
			spec = PauseSpec(filepath.Join(tmp, path.Base(pausePkg)))
		}
	case Busybox:
		var err error
		if spec, err = BusyboxSpec(ctx, HostBusybox); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("unknown image %q: want %s, %s or %s", image, Multinic, Pause, Busybox)
	}
	d, err := BuildArchive(spec, ref, out)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", image, err)
	}
	return d.String(), nil
}
