package layers

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/tools/go/packages"
)

// TestImportsPointDown loads the module's production packages (no test files) with go/packages and checks
// every import against Rules.
func TestImportsPointDown(t *testing.T) {
	pkgs, err := packages.Load(&packages.Config{Mode: packages.NeedName | packages.NeedImports, Dir: "../.."}, Module+"/...")
	if err != nil {
		t.Fatal(err)
	}
	graph := map[string][]string{}
	for _, p := range pkgs {
		for _, e := range p.Errors {
			t.Errorf("load %s: %v", p.PkgPath, e)
		}
		rel, ok := strings.CutPrefix(p.PkgPath, Module+"/")
		if !ok {
			continue // the module's root (tools.go, behind a build tag)
		}
		for imp := range p.Imports {
			graph[rel] = append(graph[rel], imp)
		}
		if _, ok := graph[rel]; !ok {
			graph[rel] = nil
		}
	}
	// The load saw the tree: the binaries and the layers between them.
	for _, want := range []string{"cmd/multinic", "cmd/multinic-agent", "plugin", "netconf", "ipam/api", "ipam/server", "ipam/eni"} {
		if _, ok := graph[want]; !ok {
			t.Fatalf("go/packages did not list %s (listed %d packages)", want, len(graph))
		}
	}
	for _, p := range Check(graph) {
		t.Error(p)
	}
}

// TestPluginLinksLittle loads the plugin's binary with every package it links and checks PluginUnlinked.
func TestPluginLinksLittle(t *testing.T) {
	pkgs, err := packages.Load(&packages.Config{Mode: packages.NeedName | packages.NeedImports | packages.NeedDeps, Dir: "../.."}, Module+"/cmd/multinic")
	if err != nil {
		t.Fatal(err)
	}
	graph := map[string][]string{}
	packages.Visit(pkgs, nil, func(p *packages.Package) {
		for _, e := range p.Errors {
			t.Errorf("load %s: %v", p.PkgPath, e)
		}
		for imp := range p.Imports {
			graph[p.PkgPath] = append(graph[p.PkgPath], imp)
		}
	})
	// The load saw what the plugin links: its own packages and netlink.
	for _, want := range []string{Module + "/plugin", Module + "/ipam/api", "github.com/vishvananda/netlink"} {
		if _, ok := graph[want]; !ok {
			t.Fatalf("go/packages did not list %s among the %d packages cmd/multinic links", want, len(graph))
		}
	}
	for _, p := range CheckUnlinked(graph, Module+"/cmd/multinic", PluginUnlinked) {
		t.Error(p)
	}
}

func TestCheckUnlinked(t *testing.T) {
	graph := map[string][]string{
		"cmd/x":    {"plugin", "fmt"},
		"plugin":   {"api", "fmt"},
		"api":      {"net/http", "fmt"},
		"net/http": {"crypto/tls"},
		"other":    {"crypto/tls"},
	}
	got := CheckUnlinked(graph, "cmd/x", []string{"crypto/tls", "os/exec", "net/http"})
	want := []string{"cmd/x links crypto/tls: cmd/x -> plugin -> api -> net/http -> crypto/tls",
		"cmd/x links net/http: cmd/x -> plugin -> api -> net/http"}
	if !slices.Equal(got, want) {
		t.Errorf("CheckUnlinked = %q, want %q", got, want)
	}
	if got := CheckUnlinked(graph, "plugin", []string{"os/exec"}); len(got) != 0 {
		t.Errorf("CheckUnlinked of what plugin does not link = %q", got)
	}
}

// TestCheckRefusesUpwardEdges: a graph like the module's, with one bad edge at a time, fails the check with a
// message naming the edge; the graph without it passes.
func TestCheckRefusesUpwardEdges(t *testing.T) {
	m := func(p string) string { return Module + "/" + p }
	good := map[string][]string{
		"internal/statefile": {"os"},
		"internal/nettest":   {"testing", m("internal/namedns")},
		"internal/namedns":   nil,
		"ipam/api":           {"net/http", "github.com/containernetworking/cni/pkg/types"},
		"ipam/store":         {m("ipam/api"), m("internal/statefile")},
		"ipam/allocator":     {m("ipam/api"), m("ipam/store")},
		"ipam/server":        {m("ipam/api"), m("internal/statefile")},
		"ipam/backend":       {m("ipam/allocator"), m("ipam/server"), m("ipam/enipool")},
		"ipam/enipool":       {"context"},
		"ipam/eni":           {m("ipam/allocator"), m("ipam/enipool")},
		"netconf":            {m("ipam/api")},
		"plugin":             {m("netconf"), m("ipam/api")},
		"nad":                {m("netconf"), m("ipam/api")},
		"cmd/multinic":       {m("plugin"), m("netconf")},
		"cmd/multinic-agent": {m("ipam/backend"), m("ipam/server"), m("nad")},
		"e2e/harness":        {m("plugin"), m("ipam/backend"), "testing"},
		"cmd/fake-ec2":       {m("e2e/fakeec2")},
		"internal/testing/x": {"testing", m("internal/gobuild")},
		"internal/gobuild":   {"os/exec"},
	}
	if probs := Check(good); len(probs) != 0 {
		t.Fatalf("the good graph fails: %q", probs)
	}
	for _, tt := range []struct {
		pkg, imp string
		want     string
	}{
		{"nad", "plugin", "nad imports plugin: not allowed"},
		{"plugin", "ipam/allocator", "plugin imports ipam/allocator: not allowed"},
		{"ipam/api", "ipam/allocator", "ipam/api imports ipam/allocator: not allowed by its rule (ipam/api may import nothing of the project)"},
		{"ipam/eni", "ipam/backend", "ipam/eni imports ipam/backend: not allowed"},
		{"ipam/allocator", "cmd/multinic-agent", "ipam/allocator imports cmd/multinic-agent: not allowed"},
		{"ipam/store", "nad", "ipam/store imports nad: not allowed"},
		{"cmd/multinic-agent", "plugin", "cmd/multinic-agent imports plugin: not allowed"},
		{"internal/statefile", "ipam/api", "internal/statefile imports ipam/api: not allowed"},
		{"ipam/eni", "e2e/fakeec2", "ipam/eni imports e2e/fakeec2: production code imports no test infrastructure"},
		{"plugin", "internal/nettest", "plugin imports internal/nettest: production code imports no test infrastructure"},
		{"nad", "internal/testing/x", "nad imports internal/testing/x: production code imports no test infrastructure"},
		{"ipam/backend", "testing", "ipam/backend imports testing: production code is no test helper"},
		{"ipam/newpart", "ipam/api", "ipam/newpart: no rule says what it may import"},
	} {
		bad := map[string][]string{}
		for p, imps := range good {
			bad[p] = slices.Clone(imps)
		}
		imp := tt.imp
		if imp != "testing" {
			imp = m(imp)
		}
		bad[tt.pkg] = append(bad[tt.pkg], imp)
		probs := Check(bad)
		if len(probs) != 1 || !strings.Contains(probs[0], tt.want) {
			t.Errorf("%s -> %s: problems %q, want one with %q", tt.pkg, tt.imp, probs, tt.want)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tt := range []struct {
		pattern, p string
		want       bool
	}{
		{"ipam/...", "ipam", true},
		{"ipam/...", "ipam/eni", true},
		{"ipam/...", "ipam/eni/x", true},
		{"ipam/...", "ipamx", false},
		{"ipam/api", "ipam/api", true},
		{"ipam/api", "ipam/api/x", false},
	} {
		if got := match(tt.pattern, tt.p); got != tt.want {
			t.Errorf("match(%q, %q) = %t", tt.pattern, tt.p, got)
		}
	}
}
