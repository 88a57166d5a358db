package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readBundle returns the archive's files by name.
func readBundle(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	out := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = string(b)
	}
}

// TestSupportBundleHasNoCredentials: credentials planted where the bundle looks (a Multus kubeconfig and
// a token in the CNI config dir, an AWS key in a CNI config and in the journal, the environment) are not in
// the archive, while the rest of those files is.
func TestSupportBundleHasNoCredentials(t *testing.T) {
	dir := t.TempDir()
	secrets := []string{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "eyJhbGciOiJSUzI1NiJ9.sa-token", "hunter2"}
	t.Setenv("AWS_ACCESS_KEY_ID", secrets[0])
	t.Setenv("AWS_SECRET_ACCESS_KEY", secrets[1])
	cni, journal, state, netnsDir := filepath.Join(dir, "net.d"), filepath.Join(dir, "journal"), filepath.Join(dir, "state"), filepath.Join(dir, "netns")
	files := map[string]string{
		filepath.Join(cni, "00-multus.conf"):    `{"cniVersion":"1.0.0","name":"multus-cni-network","type":"multus","kubeconfig":"/etc/cni/net.d/multus.d/multus.kubeconfig","token":"` + secrets[2] + `"}`,
		filepath.Join(cni, "multus.kubeconfig"): "apiVersion: v1\nkind: Config\nusers:\n- name: multus\n  user:\n    token: " + secrets[2] + "\n",
		filepath.Join(cni, "other.yaml"):        "apiVersion: v1\nkind: Config\nusers: []\n",
		filepath.Join(cni, "10-aws.conflist"):   `{"name":"aws","plugins":[{"type":"aws-cni","env":{"AWS_ACCESS_KEY_ID":"` + secrets[0] + `","aws_secret_access_key":"` + secrets[1] + `","password": "` + secrets[3] + `"}}]}`,
		filepath.Join(journal, "rel-1.json"):    `{"containerID":"c1","ifName":"net1","note":"Authorization: Bearer ` + secrets[2] + `"}`,
		filepath.Join(state, "checkpoint.json"): `{"version":1,"allocations":[]}`,
		filepath.Join(netnsDir, "cni-1234"):     "",
	}
	for p, c := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "bundle.tar.gz")
	var stderr bytes.Buffer
	err := runBundle(context.Background(), []string{"-o", out, "--socket", filepath.Join(dir, "no-agent.sock"),
		"--state-dir", state, "--cni-conf-dir", cni, "--journal-dir", journal, "--netns-dirs", netnsDir, "--timeout", time.Second.String()},
		io.Discard, &stderr)
	if err != nil {
		t.Fatalf("support-bundle: %v\n%s", err, stderr.String())
	}
	got := readBundle(t, out)
	for name, content := range got {
		for _, s := range secrets {
			if strings.Contains(content, s) {
				t.Errorf("%s holds the planted credential %q:\n%s", name, s, content)
			}
		}
	}
	for _, name := range []string{"README.txt", "status-error.txt", "checkpoint.json", "links.json", "netns.txt",
		"cni/00-multus.conf", "cni/10-aws.conflist", "journal/rel-1.json"} {
		if _, ok := got[name]; !ok {
			t.Errorf("no %s in the bundle: %v", name, keysOf(got))
		}
	}
	for _, name := range []string{"cni/multus.kubeconfig", "cni/other.yaml"} {
		if _, ok := got[name]; ok {
			t.Errorf("kubeconfig %s in the bundle", name)
		}
	}
	if !strings.Contains(got["status-error.txt"], "not running") || !strings.Contains(got["netns.txt"], "cni-1234") ||
		!strings.Contains(got["cni/00-multus.conf"], `"type":"multus"`) || !strings.Contains(got["cni/00-multus.conf"], "REDACTED") ||
		!strings.Contains(got["links.json"], `"Name": "lo"`) {
		t.Errorf("bundle contents not as collected: %v", got)
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
