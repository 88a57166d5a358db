package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/multinic/multinic/internal/netnsdir"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/journal"
	"github.com/multinic/multinic/ipam/store"
	"github.com/multinic/multinic/netconf"
)

// bundleReadme says what a support bundle holds and what it leaves out on purpose.
const bundleReadme = `multinic support bundle, made by multinic-agent support-bundle.

status.json       the agent's view (GET /v1/node and /v1/allocations on its socket), or status-error.txt
agent-log.jsonl   the agent's last log lines, kept in its memory (GET /v1/logs)
checkpoint.json   the agent's checkpoint from --state-dir
links.json        the links and addresses of the node's netns as netlink shows them (the ENIs' links)
netns.txt         the pod netns in --netns-dirs
cni/              the CNI config dir, without kubeconfig files
journal/          the plugin's journal of releases made while the agent was down

Left out on purpose: the environment, kubeconfig files, and the values of keys that look like credentials
(token, password, secret, AWS access keys) in what is collected: they are replaced by REDACTED.
`

// secretPatterns match credentials in collected text; the first group is kept, the value replaced.
var secretPatterns = []*regexp.Regexp{
	regexp.MustCompile(`(?i)("?[a-z_-]*(?:token|password|passwd|secret|access[_-]?key[_-]?id|client-key-data|client-certificate-data|credential)[a-z_-]*"?\s*[:=]\s*)("(?:[^"\\]|\\.)*"|[^\s,}]+)`),
	regexp.MustCompile(`(?i)(bearer\s+)([a-z0-9._~+/=-]+)`),
	regexp.MustCompile(`()\b(?:AKIA|ASIA)[A-Z0-9]{16}\b`),
}

// redact replaces what looks like a credential's value.
func redact(b []byte) []byte {
	for _, re := range secretPatterns {
		b = re.ReplaceAll(b, []byte(`${1}REDACTED`))
	}
	return b
}

// isKubeconfig tells a kubeconfig (Multus keeps its own in the CNI config dir) by name or content.
func isKubeconfig(name string, b []byte) bool {
	return strings.Contains(strings.ToLower(name), "kubeconfig") ||
		regexp.MustCompile(`(?m)^kind:\s*Config\s*$`).Match(b)
}

type bundleOptions struct {
	out, socket, stateDir, cniConfDir, journalDir string
	netnsDirs                                     []string
	timeout                                       time.Duration
}

// runBundle writes one node's support bundle: see bundleReadme.
func runBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("multinic-agent support-bundle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bundleOptions
	fs.StringVar(&o.out, "o", "", `the archive to write (.tar.gz); "-" for stdout (kubectl exec ... > bundle.tar.gz)`)
	fs.StringVar(&o.socket, "socket", api.DefaultSocketPath, "the agent's socket (root only)")
	fs.StringVar(&o.stateDir, "state-dir", DefaultStateDir, "the agent's --state-dir")
	fs.StringVar(&o.cniConfDir, "cni-conf-dir", netconf.DefaultCNIConfDir, "the CNI config dir")
	fs.StringVar(&o.journalDir, "journal-dir", journal.DefaultDir, "the plugin's journal")
	netnsDirs := fs.String("netns-dirs", strings.Join(netnsdir.Default, ","), "where the runtime creates pod netns")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long to wait for the agent")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.out == "" {
		return errors.New("support-bundle: -o FILE.tar.gz is required")
	}
	o.netnsDirs = splitList(*netnsDirs)
	w := stdout
	if o.out != "-" {
		f, err := os.OpenFile(o.out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("support-bundle: %w", err)
		}
		defer f.Close()
		w = f
	}
	if err := writeBundle(ctx, w, o); err != nil {
		return fmt.Errorf("support-bundle: %w", err)
	}
	if o.out != "-" {
		fmt.Fprintf(stderr, "wrote %s\n", o.out)
	}
	return nil
}

func writeBundle(ctx context.Context, w io.Writer, o bundleOptions) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	now := time.Now()
	add := func(name string, b []byte) error {
		b = redact(b)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), ModTime: now}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	asJSON := func(v any) []byte {
		b, _ := json.MarshalIndent(v, "", "  ")
		return append(b, '\n')
	}
	files := map[string][]byte{"README.txt": []byte(bundleReadme)}
	if rep, err := fetchStatus(ctx, o.socket, o.timeout, true); err != nil {
		files["status-error.txt"] = []byte(err.Error() + "\n")
	} else {
		files["status.json"] = asJSON(rep)
		c := api.NewClient(o.socket, o.timeout)
		if lines, err := c.Logs(ctx); err != nil {
			files["agent-log-error.txt"] = []byte(err.Error() + "\n")
		} else {
			files["agent-log.jsonl"] = []byte(strings.Join(lines, "\n") + "\n")
		}
		c.Close()
	}
	if b, err := os.ReadFile(filepath.Join(o.stateDir, store.CheckpointFile)); err != nil {
		files["checkpoint-error.txt"] = []byte(err.Error() + "\n")
	} else {
		files["checkpoint.json"] = b
	}
	files["links.json"] = asJSON(nodeLinks())
	var netns []string
	for _, d := range o.netnsDirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			netns = append(netns, fmt.Sprintf("%s: %v", d, err))
			continue
		}
		for _, e := range entries {
			netns = append(netns, filepath.Join(d, e.Name()))
		}
	}
	files["netns.txt"] = []byte(strings.Join(netns, "\n") + "\n")
	for prefix, dir := range map[string]string{"cni/": o.cniConfDir, "journal/": o.journalDir} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			files[strings.TrimSuffix(prefix, "/")+"-error.txt"] = []byte(err.Error() + "\n")
			continue
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil || isKubeconfig(e.Name(), b) {
				continue
			}
			files[prefix+e.Name()] = b
		}
	}
	for _, name := range sortedKeys(files) {
		if err := add(name, files[name]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// bundleLink is one link of the node netns in links.json.
type bundleLink struct {
	Name, Type, MAC, State string
	Index, MTU, Master     int
	Addresses              []string
}

// nodeLinks dumps the links and addresses of the netns the command runs in (the node's: the agent runs in
// the host network).
func nodeLinks() any {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	out := make([]bundleLink, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		bl := bundleLink{Name: a.Name, Type: l.Type(), MAC: a.HardwareAddr.String(), State: a.OperState.String(),
			Index: a.Index, MTU: a.MTU, Master: a.MasterIndex}
		if addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL); err == nil {
			for _, ad := range addrs {
				bl.Addresses = append(bl.Addresses, ad.IPNet.String())
			}
		}
		out = append(out, bl)
	}
	return out
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
