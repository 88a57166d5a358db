package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/multinic/multinic/internal/statefile"
	"github.com/multinic/multinic/netconf"
)

// InstallCNICommand is the subcommand the DaemonSet's init container runs: the image has no shell.
const InstallCNICommand = "install-cni"

// DefaultCNIBinDir is where the init container mounts the host's /opt/cni/bin.
const DefaultCNIBinDir = "/host/opt/cni/bin"

// pluginMode is the installed plugin's mode: the container runtime execs it as root.
const pluginMode fs.FileMode = 0o755

// installOptions are install-cni's flags.
type installOptions struct {
	source  string // the plugin binary
	destDir string // the host's CNI bin dir, as mounted
}

// installCNI runs `multinic-agent install-cni`: it copies the plugin binary into the host's CNI bin
// directory under the name NADs give as "type" (netconf.Type).
func installCNI(args []string, stdout, stderr io.Writer) error {
	o, err := parseInstallFlags(args, stderr)
	if err != nil {
		return err
	}
	dest := filepath.Join(o.destDir, netconf.Type)
	changed, err := installPlugin(o.source, dest)
	if err != nil {
		return err
	}
	if changed {
		fmt.Fprintf(stdout, "installed %s as %s\n", o.source, dest)
	} else {
		fmt.Fprintf(stdout, "%s is already %s: unchanged\n", dest, o.source)
	}
	return nil
}

// parseInstallFlags parses install-cni's command line.
func parseInstallFlags(args []string, stderr io.Writer) (installOptions, error) {
	var o installOptions
	fl := flag.NewFlagSet("multinic-agent "+InstallCNICommand, flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar(&o.source, "source", defaultPluginSource(), "the plugin binary to install")
	fl.StringVar(&o.destDir, "dest-dir", DefaultCNIBinDir, "the host's CNI bin directory (mounted from /opt/cni/bin); it must exist")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "Usage: multinic-agent %s [flags]\n\n"+
			"Installs the multinic CNI plugin as <dest-dir>/%s: written to a temp file in that directory, synced, made\n"+
			"mode 0755 and renamed over the old one, so the container runtime never runs a half-written plugin.\n"+
			"Nothing is written when the installed plugin is already the same.\n\nFlags:\n", InstallCNICommand, netconf.Type)
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return o, err
	}
	if fl.NArg() > 0 {
		fl.Usage()
		return o, fmt.Errorf("%s: unexpected arguments %q", InstallCNICommand, fl.Args())
	}
	return o, nil
}

// defaultPluginSource is the plugin beside this binary (/usr/local/bin/multinic in the image).
func defaultPluginSource() string {
	exe, err := os.Executable()
	if err != nil {
		return filepath.Join("/usr/local/bin", netconf.Type)
	}
	return filepath.Join(filepath.Dir(exe), netconf.Type)
}

// installPlugin replaces dest with a copy of source, mode 0755, atomically; it reports false, writing
// nothing, when dest already is such a copy. dest's directory must exist and be writable.
func installPlugin(source, dest string) (bool, error) {
	data, err := os.ReadFile(source)
	if err != nil {
		return false, fmt.Errorf("install CNI plugin: read %s: %w", source, err)
	}
	dir := filepath.Dir(dest)
	fi, err := os.Stat(dir)
	if err != nil {
		return false, fmt.Errorf("install CNI plugin into %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("install CNI plugin into %s: not a directory", dir)
	}
	if same, err := sameFile(dest, data); err != nil {
		return false, fmt.Errorf("install CNI plugin: %w", err)
	} else if same {
		return false, nil
	}
	if err := statefile.WriteFile(dest, data, pluginMode); err != nil {
		return false, fmt.Errorf("install CNI plugin as %s: %w", dest, err)
	}
	return true, nil
}

// sameFile reports whether path is a regular file holding data with the plugin's mode.
func sameFile(path string, data []byte) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != pluginMode || fi.Size() != int64(len(data)) {
		return false, nil
	}
	have, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return bytes.Equal(have, data), nil
}
