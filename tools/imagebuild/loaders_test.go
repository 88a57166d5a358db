package imagebuild

import (
	"context"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// builtArchive is one image built by BuildImage for the loader tests.
type builtArchive struct {
	image, ref, path string
	img              v1.Image
}

// buildAll builds the three images for real (the programs compiled as `make image` compiles them) into a
// temp dir, and reads each back.
func buildAll(t *testing.T) []builtArchive {
	t.Helper()
	if _, err := os.Stat(HostBusybox); err != nil {
		t.Fatalf("needs %s from Debian's busybox-static (.ci/run installs it): %v", HostBusybox, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // a cold build of the agent
	defer cancel()
	dir := t.TempDir()
	var out []builtArchive
	for _, image := range []string{Multinic, Pause, Busybox} {
		a := builtArchive{image: image, ref: DefaultRef(image), path: filepath.Join(dir, image+".tar")}
		digest, err := BuildImage(ctx, image, "", a.path)
		if err != nil {
			t.Fatal(err)
		}
		a.img, _, _ = readBack(t, a.path, a.ref)
		if d, _ := a.img.Digest(); d.String() != digest {
			t.Fatalf("%s: digest read back %s, built %s", image, d, digest)
		}
		out = append(out, a)
	}
	return out
}

// requireTool fails the test when the named program is missing, naming its Debian package: .ci/run
// installs it, so a missing one is a broken machine, not a reason to prove nothing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("needs %s (apt-get install %s; .ci/run installs it): %v", name, name, err)
	}
	return p
}

// TestImages builds the three images for real, as `make image` does, then checks their content and that
// the loaders accept them.
func TestImages(t *testing.T) {
	archives := buildAll(t)
	t.Run("content", func(t *testing.T) { checkContent(t, archives) })
	t.Run("skopeo and podman", func(t *testing.T) { checkLoaders(t, archives) })
}

// checkLoaders: skopeo and podman, two independent readers of docker-archives, accept the three images
// and see in them what was built: the tag, the config (same digest, entrypoint, layers) and, for podman,
// the same image ID. podman keeps its storage in a temp dir (vfs: no mounts), removed afterwards.
func checkLoaders(t *testing.T, archives []builtArchive) {
	skopeo := requireTool(t, "skopeo")
	podman := requireTool(t, "podman")
	if os.Geteuid() != 0 {
		t.Skip("needs root: podman load without the host's rootless setup")
	}

	store := t.TempDir()
	tmp := filepath.Join(store, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	podmanCmd := func(args ...string) (string, error) {
		base := []string{"--root", filepath.Join(store, "root"), "--runroot", filepath.Join(store, "run"),
			"--storage-driver", "vfs", "--events-backend", "none", "--cgroup-manager", "cgroupfs", "--tmpdir", tmp}
		cmd := exec.Command(podman, append(base, args...)...)
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := podmanCmd("rmi", "--all", "--force"); err != nil {
			t.Errorf("podman rmi: %v\n%s", err, out)
		}
	})

	for _, a := range archives {
		configName, err := a.img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		cf, err := a.img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}

		// skopeo: the manifest it derives names our config; the config is ours.
		raw, err := exec.Command(skopeo, "inspect", "--raw", "docker-archive:"+a.path).Output()
		if err != nil {
			t.Fatalf("skopeo inspect --raw %s: %v", a.image, err)
		}
		var m v1.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s: skopeo's manifest: %v\n%s", a.image, err, raw)
		}
		if m.Config.Digest != configName || len(m.Layers) != 1 {
			t.Errorf("%s: skopeo sees config %s and %d layers, want %s and 1", a.image, m.Config.Digest, len(m.Layers), configName)
		}
		rawCfg, err := exec.Command(skopeo, "inspect", "--config", "docker-archive:"+a.path).Output()
		if err != nil {
			t.Fatalf("skopeo inspect --config %s: %v", a.image, err)
		}
		var sc v1.ConfigFile
		if err := json.Unmarshal(rawCfg, &sc); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(sc.RootFS.DiffIDs, cf.RootFS.DiffIDs) || !reflect.DeepEqual(sc.Config.Entrypoint, cf.Config.Entrypoint) ||
			!reflect.DeepEqual(sc.Config.Cmd, cf.Config.Cmd) || sc.Architecture != cf.Architecture {
			t.Errorf("%s: skopeo reads config %+v, built %+v", a.image, sc, cf)
		}

		// podman: loads it under its tag, with our config as the image ID.
		out, err := podmanCmd("load", "--input", a.path)
		if err != nil || !strings.Contains(out, "Loaded image: "+a.ref) {
			t.Fatalf("podman load %s: %v\n%s", a.image, err, out)
		}
		out, err = podmanCmd("image", "inspect", "--format", "{{.Id}} {{.Os}}/{{.Architecture}} {{json .RepoTags}}", a.ref)
		if err != nil {
			t.Fatalf("podman image inspect %s: %v\n%s", a.ref, err, out)
		}
		f := strings.Fields(out)
		var tags []string
		if len(f) == 3 {
			json.Unmarshal([]byte(f[2]), &tags)
		}
		if len(f) != 3 || f[0] != configName.Hex || f[1] != "linux/"+cf.Architecture || !slices.Contains(tags, a.ref) {
			t.Errorf("podman sees %q, want ID %s, linux/%s, tag %s", out, configName.Hex, cf.Architecture, a.ref)
		}
		t.Logf("%s: %s loads in skopeo and podman (config %s)", a.image, a.ref, configName)
	}
}

// checkContent: the three images hold what the e2e relies on: the agent, plugin and NRI plugin (static, 0755) with
// the agent as entrypoint; the pause program as entrypoint; busybox with the applets the e2e runs.
func checkContent(t *testing.T, archives []builtArchive) {
	for _, a := range archives {
		files := flatten(t, a.img)
		cf, _ := a.img.ConfigFile()
		var want map[string]fileInfo
		var entry []string
		switch a.image {
		case Multinic:
			want = map[string]fileInfo{"usr/local/bin/multinic-agent": {Mode: 0o755}, "usr/local/bin/multinic": {Mode: 0o755},
				"usr/local/bin/multinic-nri": {Mode: 0o755}}
			entry = []string{AgentPath}
		case Pause:
			want = map[string]fileInfo{"pause": {Mode: 0o755}}
			entry = []string{PausePath}
		case Busybox:
			want = map[string]fileInfo{"bin/busybox": {Mode: 0o755}}
			for _, app := range BusyboxApplets {
				found := false
				for name, f := range files {
					found = found || (filepath.Base(name) == app && f.Link == BusyboxPath)
				}
				if !found {
					t.Errorf("busybox: no %s linked to %s", app, BusyboxPath)
				}
			}
		}
		for name, w := range want {
			f, ok := files[name]
			if !ok || f.Mode != w.Mode || len(f.Data) < 100_000 || !strings.HasPrefix(f.Data, "\x7fELF") {
				t.Errorf("%s: %s mode %o, %d bytes: want an executable of mode %o", a.image, name, f.Mode, len(f.Data), w.Mode)
				continue
			}
			if elfFile, err := elf.NewFile(strings.NewReader(f.Data)); err != nil {
				t.Errorf("%s: %s: %v", a.image, name, err)
			} else if slices.ContainsFunc(elfFile.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
				t.Errorf("%s: %s is dynamically linked", a.image, name)
			}
		}
		if !reflect.DeepEqual(cf.Config.Entrypoint, entry) {
			t.Errorf("%s: entrypoint %v, want %v", a.image, cf.Config.Entrypoint, entry)
		}
	}
}
