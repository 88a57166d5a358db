package cluster

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The version constants name build.sh's cache folders; they must match what the wrapper modules pin.
func TestVersionsMatchWrapperModules(t *testing.T) {
	for _, tc := range []struct {
		modDir, module, want string
	}{
		{"kubernetes", "k8s.io/kubernetes", KubernetesVersion},
		{"containerd", "github.com/containerd/containerd/v2", ContainerdVersion},
		{"runc", "github.com/opencontainers/runc", RuncVersion},
		{"cri-tools", "sigs.k8s.io/cri-tools", CrictlVersion},
		{"etcd", "go.etcd.io/etcd/server/v3", EtcdVersion},
		{"multus", "gopkg.in/k8snetworkplumbingwg/multus-cni.v4", MultusVersion},
		{"cni", "github.com/containernetworking/plugins", CNIPluginsVersion},
		{"cni", "github.com/containernetworking/cni", CNIToolVersion},
	} {
		data, err := os.ReadFile(filepath.Join("..", "tools", tc.modDir, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(tc.module) + `\s+(v\S+)`)
		m := re.FindSubmatch(data)
		if m == nil {
			t.Errorf("e2e/tools/%s/go.mod does not require %s", tc.modDir, tc.module)
			continue
		}
		if got := string(m[1]); got != tc.want {
			t.Errorf("e2e/tools/%s/go.mod pins %s %s, the cluster package expects %s", tc.modDir, tc.module, got, tc.want)
		}
	}
}

// The build script and FindTools must agree on the list of reference plugins.
func TestBuildScriptBuildsEveryPlugin(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "tools", "build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range CNIPlugins {
		if !regexp.MustCompile(`\b(main|ipam|meta)/` + regexp.QuoteMeta(p) + `\b`).Match(data) {
			t.Errorf("build.sh does not build the %s plugin", p)
		}
	}
}

func TestCachedToolsLayout(t *testing.T) {
	got := cachedTools("/c", "go1.26.8")
	want := &Tools{
		KubeAPIServer: "/c/kube-apiserver-" + KubernetesVersion + "-go1.26.8/kube-apiserver",
		Etcd:          "/c/etcd-" + EtcdVersion + "-go1.26.8/etcd",
		Multus:        "/c/multus-" + MultusVersion + "-go1.26.8/multus",
		CNITool:       "/c/cnitool-" + CNIToolVersion + "-go1.26.8/cnitool",
		CNIBinDir:     "/c/cni-plugins-" + CNIPluginsVersion + "-go1.26.8",
	}
	if *got != *want {
		t.Errorf("cachedTools = %+v, want %+v", got, want)
	}
}

func TestFindToolsInDirReportsMissing(t *testing.T) {
	dir := t.TempDir()
	// Everything but multus, and a non-executable etcd.
	for _, name := range append([]string{"kube-apiserver", "cnitool"}, CNIPlugins...) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etcd"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ToolsDirEnv, dir)
	_, err := FindTools()
	if !errors.Is(err, ErrToolsMissing) {
		t.Fatalf("FindTools = %v, want ErrToolsMissing", err)
	}
	for _, name := range []string{"multus", "etcd", ToolsDirEnv, "build.sh"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "etcd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "multus"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	tools, err := FindTools()
	if err != nil {
		t.Fatalf("FindTools with every binary: %v", err)
	}
	if tools.Multus != filepath.Join(dir, "multus") || tools.CNIBinDir != dir {
		t.Errorf("FindTools = %+v, want paths in %s", tools, dir)
	}
}

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p, err := newPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca := parseCert(t, p.CACert)
	srv := parseCert(t, p.ServerCert)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range []string{"127.0.0.1", "localhost", "kubernetes.default.svc"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
	if !srv.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("first SAN IP = %v, want 127.0.0.1", srv.IPAddresses[0])
	}
	key := parsePEM(t, p.SAKey, "PRIVATE KEY")
	k, err := x509.ParsePKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("service-account key is %T, want RSA", k)
	}
	pub, err := x509.ParsePKIXPublicKey(parsePEM(t, p.SAPub, "PUBLIC KEY"))
	if err != nil {
		t.Fatal(err)
	}
	if !rk.PublicKey.Equal(pub) {
		t.Error("sa.pub is not the public half of sa.key")
	}
	for _, f := range []string{p.ServerKey, p.SAKey} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
}

func parsePEM(t *testing.T, path, typ string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != typ {
		t.Fatalf("%s: no %s PEM block", path, typ)
	}
	return b.Bytes
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(parsePEM(t, path, "CERTIFICATE"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDecodeYAML(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    []string // kind/name
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "documents and blanks", in: "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\n" +
			"apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: b\n  namespace: kube-system\n",
			want: []string{"ConfigMap/a", "DaemonSet/b"}},
		{name: "json", in: `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}`, want: []string{"Namespace/x"}},
		{name: "list", in: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ServiceAccount\n  metadata: {name: s}\n",
			want: []string{"ServiceAccount/s"}},
		{name: "bad yaml", in: "apiVersion: v1\nkind: [\n", wantErr: "decode document 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := DecodeYAML([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("DecodeYAML error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range objs {
				got = append(got, o.GetKind()+"/"+o.GetName())
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("DecodeYAML = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWriteKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := writeKubeconfig(path, "https://127.0.0.1:6443", "/ca.crt", "tok"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"server": "https://127.0.0.1:6443"`, `"certificate-authority": "/ca.crt"`,
		`"token": "tok"`, `"current-context": "multinic-e2e"`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("kubeconfig lacks %s:\n%s", want, data)
		}
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0050":                         "0.0.0.0:80",
		"00000000000000000000000001000000:0016": "[::1]:22",
		"00000000000000000000000000000000:01BB": "[::]:443",
	} {
		a, err := parseProcAddr(in)
		if err != nil {
			t.Fatal(err)
		}
		if a.String() != want {
			t.Errorf("parseProcAddr(%s) = %s, want %s", in, a, want)
		}
	}
}
