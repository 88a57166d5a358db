package main

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/internal/testing/testbin"
	"github.com/multinic/multinic/manifests"
	"github.com/multinic/multinic/netconf"
	"github.com/multinic/multinic/tools/imagebuild"
)

// pluginFile writes a stand-in plugin binary (mode 0600: the installed copy must be 0755 anyway).
func pluginFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "multinic")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkInstalled fails unless dest holds content with mode 0755 and no temp file is left beside it.
func checkInstalled(t *testing.T, dest, content string) {
	t.Helper()
	b, err := os.ReadFile(dest)
	if err != nil || string(b) != content {
		t.Fatalf("%s holds %q (%v), want %q", dest, b, err, content)
	}
	if fi, _ := os.Stat(dest); fi.Mode() != 0o755 {
		t.Errorf("%s mode %v, want 0755", dest, fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), "*"+statefile.TempMarker+"*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestInstallPlugin: a fresh install, the same plugin again (nothing written: same inode), a new plugin
// (replaced by rename: new inode), and a plugin whose mode was changed (rewritten 0755).
func TestInstallPlugin(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, netconf.Type)
	v1 := pluginFile(t, "plugin v1")
	if changed, err := installPlugin(v1, dest); err != nil || !changed {
		t.Fatalf("fresh install: changed %t, %v", changed, err)
	}
	checkInstalled(t, dest, "plugin v1")

	ino := inode(t, dest)
	if changed, err := installPlugin(v1, dest); err != nil || changed {
		t.Fatalf("same plugin again: changed %t, %v", changed, err)
	}
	if inode(t, dest) != ino {
		t.Error("the same plugin was written again")
	}

	if changed, err := installPlugin(pluginFile(t, "plugin v2, longer"), dest); err != nil || !changed {
		t.Fatalf("new plugin: changed %t, %v", changed, err)
	}
	checkInstalled(t, dest, "plugin v2, longer")
	if inode(t, dest) == ino {
		t.Error("the new plugin was written in place, not renamed over the old one")
	}

	if err := os.Chmod(dest, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := installPlugin(pluginFile(t, "plugin v2, longer"), dest); err != nil || !changed {
		t.Fatalf("same content, mode 0644: changed %t, %v", changed, err)
	}
	checkInstalled(t, dest, "plugin v2, longer")
}

// TestInstallPluginErrors: a missing destination directory, a file in its place, and a missing source fail
// naming the path, and create nothing.
func TestInstallPluginErrors(t *testing.T) {
	dir := t.TempDir()
	src := pluginFile(t, "plugin")
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, source, dest, want string
		is                       error
	}{
		{"missing dir", src, filepath.Join(dir, "missing", "multinic"), filepath.Join(dir, "missing"), fs.ErrNotExist},
		{"dir is a file", src, filepath.Join(notDir, "multinic"), notDir + ": not a directory", nil},
		{"missing source", filepath.Join(dir, "nope"), filepath.Join(dir, "multinic"), filepath.Join(dir, "nope"), fs.ErrNotExist},
	} {
		changed, err := installPlugin(c.source, c.dest)
		if err == nil || changed || !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("%s: changed %t, error %v; want one naming %s", c.name, changed, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%s holds %v, want only %s", dir, entries, notDir)
	}
}

// readOnlyDir makes dir read-only: a read-only bind mount of itself as root (root writes through mode
// bits), mode 0555 otherwise. The mount is gone after the test.
func readOnlyDir(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		return
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount %s as root: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o644); err == nil {
		t.Fatalf("%s is still writable", dir)
	}
}

// TestInstallPluginReadOnlyDir: into a read-only directory a new plugin fails naming the directory and
// the old plugin stays; the plugin already there is no error (nothing to write).
func TestInstallPluginReadOnlyDir(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, netconf.Type)
	if _, err := installPlugin(pluginFile(t, "old"), dest); err != nil {
		t.Fatal(err)
	}
	readOnlyDir(t, dir)

	changed, err := installPlugin(pluginFile(t, "new"), dest)
	if err == nil || changed || !strings.Contains(err.Error(), dir) {
		t.Fatalf("into read-only %s: changed %t, error %v; want one naming the directory", dir, changed, err)
	}
	if os.Geteuid() == 0 && !errors.Is(err, syscall.EROFS) {
		t.Errorf("error %v, want EROFS", err)
	}
	t.Logf("read-only: %v", err)
	checkInstalled(t, dest, "old")

	if changed, err := installPlugin(pluginFile(t, "old"), dest); err != nil || changed {
		t.Errorf("the installed plugin again, read-only: changed %t, %v", changed, err)
	}
}

// TestInstallCNICommand: the subcommand's flags and output, and its refusals.
func TestInstallCNICommand(t *testing.T) {
	dir := t.TempDir()
	src := pluginFile(t, "plugin")
	var out, errOut bytes.Buffer
	if err := installCNI([]string{"--source", src, "--dest-dir", dir}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	checkInstalled(t, filepath.Join(dir, netconf.Type), "plugin")
	if !strings.Contains(out.String(), "installed "+src+" as "+filepath.Join(dir, netconf.Type)) {
		t.Errorf("output %q", out.String())
	}
	out.Reset()
	if err := installCNI([]string{"--source", src, "--dest-dir", dir}, &out, &errOut); err != nil || !strings.Contains(out.String(), "unchanged") {
		t.Errorf("again: %v, output %q", err, out.String())
	}
	if err := installCNI([]string{"--source", src, "--dest-dir", dir, "extra"}, &out, &errOut); err == nil {
		t.Error("an extra argument was accepted")
	}
	if err := installCNI([]string{"--no-such-flag"}, &out, &errOut); err == nil {
		t.Error("an unknown flag was accepted")
	}
}

// TestInstallCNIBinary: the built agent binary as the init container runs it: the plugin beside it by
// default, the host's bin dir given; a missing dir exits non-zero naming it.
func TestInstallCNIBinary(t *testing.T) {
	imageBin := t.TempDir() // as /usr/local/bin in the image
	agent := filepath.Join(imageBin, "multinic-agent")
	if err := os.Link(testbin.Path(t, testbin.Agent), agent); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(imageBin, netconf.Type), []byte("the plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostBin := t.TempDir()
	out, err := exec.Command(agent, InstallCNICommand, "--dest-dir", hostBin).CombinedOutput()
	if err != nil {
		t.Fatalf("install-cni: %v\n%s", err, out)
	}
	checkInstalled(t, filepath.Join(hostBin, netconf.Type), "the plugin")

	missing := filepath.Join(hostBin, "missing")
	out, err = exec.Command(agent, InstallCNICommand, "--dest-dir", missing).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), missing) {
		t.Errorf("into a missing dir: %v, output %q; want exit 1 naming %s", err, out, missing)
	}
}

// TestDaemonSetInstallCNI: the shipped init container runs this binary's install-cni with flags it
// accepts, into the directory where the host's /opt/cni/bin is mounted, and its default source (the plugin
// beside the agent) is where the image has the plugin.
func TestDaemonSetInstallCNI(t *testing.T) {
	objs, err := manifests.Objects()
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	for _, u := range objs {
		if u.GetKind() == "DaemonSet" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	ps := ds.Spec.Template.Spec
	if len(ps.InitContainers) != 1 {
		t.Fatalf("init containers %d, want 1", len(ps.InitContainers))
	}
	ic := ps.InitContainers[0]
	if len(ic.Command) != 2 || ic.Command[0] != imagebuild.AgentPath || ic.Command[1] != InstallCNICommand {
		t.Fatalf("init container command %v, want [%s %s]", ic.Command, imagebuild.AgentPath, InstallCNICommand)
	}
	o, err := parseInstallFlags(ic.Args, io.Discard)
	if err != nil {
		t.Fatalf("init container args %v: %v", ic.Args, err)
	}
	hostPaths := map[string]string{}
	for _, v := range ps.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounted := false
	for _, m := range ic.VolumeMounts {
		mounted = mounted || (m.MountPath == o.destDir && hostPaths[m.Name] == "/opt/cni/bin" && !m.ReadOnly)
	}
	if !mounted {
		t.Errorf("--dest-dir %s is not the host's /opt/cni/bin mounted writable (mounts %+v)", o.destDir, ic.VolumeMounts)
	}
	if src := filepath.Join(filepath.Dir(ic.Command[0]), netconf.Type); src != imagebuild.PluginPath || o.source != defaultPluginSource() {
		t.Errorf("default source in the image %s, the image's plugin is %s", src, imagebuild.PluginPath)
	}
}
