// Package layers writes down, once, which project packages each production package may import, so that every
// import points down: the plugin links the wire package and its own config, not the agent; nothing in ipam
// reaches up to the plugin, the NAD renderer or a command; no production package imports e2e/ or a test
// helper. `make lint` runs its test, which checks the module's real import graph (go/packages) against Rules,
// and everything the plugin binary links against PluginUnlinked.
//
// Only production code is checked: the imports of _test.go files (a test may start the real server, or the
// real plugin against rendered NADs) and of test infrastructure (e2e/, cmd/fake-ec2, tools/) are free.
package layers

import (
	"fmt"
	"slices"
	"strings"
)

// Module is the module path; Rules and TestInfra name packages relative to it.
const Module = "github.com/multinic/multinic"

// Rules gives, for each production package, the project packages it may import. A pattern ending in "/..."
// covers a directory and everything below it. A production package no rule covers is an error too: a new
// package gets its line here, in the layer it belongs to.
var Rules = []Rule{
	// Leaves: import nothing of the project.
	{"internal/...", nil},
	{"ipam/api", nil}, // the wire package: the plugin links it, so it links nothing of the agent
	{"ipam/enipool", nil},
	{"manifests", nil},

	// The network config, the state on disk, the allocator.
	{"netconf", []string{"ipam/api"}},
	{"ipam/store", []string{"ipam/api", "internal/..."}},
	{"ipam/journal", []string{"ipam/api", "internal/..."}},
	{"ipam/allocator", []string{"ipam/api", "ipam/store", "internal/..."}},

	// The agent's parts: the socket server, the ENI manager, the allocation backend.
	{"ipam/server", []string{"ipam/api", "internal/..."}},
	{"ipam/eni", []string{"ipam/eni/awsec2", "ipam/eni/plan", "ipam/allocator", "ipam/api", "ipam/enipool", "ipam/store", "internal/..."}},
	// The ENI manager's EC2 layer imports nothing of the project; its pure planner only the pool types.
	{"ipam/eni/awsec2", nil},
	{"ipam/eni/plan", []string{"ipam/allocator"}},
	{"ipam/backend", []string{"ipam/allocator", "ipam/api", "ipam/enipool", "ipam/server", "ipam/store", "internal/..."}},

	// The plugin and the NAD renderer: neither reaches into the agent's ipam packages.
	{"plugin", []string{"netconf", "ipam/api", "ipam/journal", "internal/..."}},
	{"nad", []string{"netconf", "ipam/api", "internal/..."}},
	// The DRA driver: devices and their publishing; like nad, it renders what the agent knows.
	{"dra", []string{"netconf", "ipam/api"}},
	// The NRI plugin: the plugin's netlink code for a claim's allocation, asked of the agent over its socket.
	{"nri", []string{"plugin", "netconf", "ipam/api"}},

	// The binaries.
	{"cmd/multinic", []string{"plugin", "netconf"}},
	{"cmd/multinic-nri", []string{"nri", "ipam/api"}},
	{"cmd/multinic-agent", []string{"ipam/...", "nad", "dra", "netconf", "manifests", "internal/..."}},
}

// TestInfra is what is not production code: suites, fakes, harnesses, test helpers and build tools. It may
// import anything; production code may import none of it, even where a rule's pattern covers it.
var TestInfra = []string{"e2e/...", "internal/testing/...", "cmd/fake-ec2", "tools/...", "internal/nettest"}

// PluginUnlinked are packages the plugin binary must link neither directly nor through another package: each
// costs megabytes of binary and RSS in every CNI call (issue 13: plugin RSS per call no more than the reference
// plugin's). net/http brings crypto/tls, x509 and http2 (ipam/api speaks HTTP/1.0 by hand instead);
// containernetworking/plugins' pkg/ip brings pkg/utils, go-iptables, nftables and ethtool.
var PluginUnlinked = []string{"net/http", "crypto/tls", "github.com/containernetworking/plugins/pkg/ip",
	"github.com/coreos/go-iptables/iptables"}

// Rule is one production package (or tree) and what it may import.
type Rule struct {
	Pkg   string
	Allow []string
}

// Check returns the problems of graph, which maps each package of the module (path relative to Module) to
// the packages it imports (any path; those outside the module, except "testing", are not looked at). It is
// pure, so that a test can give it a graph with a bad edge.
func Check(graph map[string][]string) []string {
	var probs []string
	pkgs := make([]string, 0, len(graph))
	for p := range graph {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, p := range pkgs {
		if matchAny(TestInfra, p) {
			continue
		}
		rule, ok := ruleFor(p)
		if !ok {
			probs = append(probs, fmt.Sprintf("%s: no rule says what it may import: add it to layers.Rules", p))
			continue
		}
		for _, imp := range graph[p] {
			if imp == "testing" {
				probs = append(probs, fmt.Sprintf("%s imports testing: production code is no test helper", p))
				continue
			}
			dep, inModule := strings.CutPrefix(imp, Module+"/")
			switch {
			case !inModule:
			case matchAny(TestInfra, dep):
				probs = append(probs, fmt.Sprintf("%s imports %s: production code imports no test infrastructure", p, dep))
			case !matchAny(rule.Allow, dep):
				probs = append(probs, fmt.Sprintf("%s imports %s: not allowed by its rule (%s may import %s)",
					p, dep, rule.Pkg, allowed(rule)))
			}
		}
	}
	return probs
}

// ruleFor is the rule of p: the one naming it exactly, else the longest pattern that covers it.
func ruleFor(p string) (Rule, bool) {
	var best Rule
	found := false
	for _, r := range Rules {
		if match(r.Pkg, p) && (!found || len(r.Pkg) > len(best.Pkg)) {
			best, found = r, true
		}
	}
	return best, found
}

func allowed(r Rule) string {
	if len(r.Allow) == 0 {
		return "nothing of the project"
	}
	return strings.Join(r.Allow, ", ")
}

func matchAny(patterns []string, p string) bool {
	return slices.ContainsFunc(patterns, func(pat string) bool { return match(pat, p) })
}

// match reports whether pattern covers p: equal, or pattern "dir/..." and p is dir or below it.
func match(pattern, p string) bool {
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == dir || strings.HasPrefix(p, dir+"/")
	}
	return p == pattern
}

// CheckUnlinked returns a problem for each package of unlinked that root reaches in graph (full import paths
// to their imports), naming the chain of imports that reaches it.
func CheckUnlinked(graph map[string][]string, root string, unlinked []string) []string {
	via := map[string]string{root: ""} // package -> the package that first imported it
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, imp := range graph[p] {
			if _, seen := via[imp]; !seen {
				via[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	var probs []string
	for _, u := range unlinked {
		if _, ok := via[u]; !ok {
			continue
		}
		chain := []string{u}
		for p := via[u]; p != ""; p = via[p] {
			chain = append(chain, p)
		}
		slices.Reverse(chain)
		probs = append(probs, fmt.Sprintf("%s links %s: %s", root, u, strings.Join(chain, " -> ")))
	}
	return probs
}
