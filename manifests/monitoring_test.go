package manifests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
	"github.com/multinic/multinic/ipam/backend"
	"github.com/multinic/multinic/ipam/enipool"
	"github.com/multinic/multinic/ipam/store"
)

// Prometheus adds these to every series it scrapes (the target's labels), and histograms have le.
var scrapeLabels = []string{"instance", "job"}

// onePools is the ENI manager's part for an agent with one managed card (1) and its ENI.
type onePools struct{}

func (onePools) Ready() bool                                { return true }
func (onePools) Managed(card int) bool                      { return card == 1 }
func (onePools) Family(int) string                          { return "ipv4" }
func (onePools) Kick(int)                                   {}
func (onePools) LastError(int) error                        { return nil }
func (onePools) EnsureExclusive(context.Context, int) error { return nil }
func (onePools) ENI(id string) (enipool.ENIInfo, bool) {
	return enipool.ENIInfo{ID: id, Card: 1, LinkName: "ens1", MAC: "02:00:00:00:00:01", MTU: 9001,
		SubnetCIDR: netip.MustParsePrefix("10.1.0.0/20"), Gateway: netip.MustParseAddr("10.1.0.1")}, true
}

// exportedMetrics runs a real agent until every metric it has has a series (an allocation, a refused
// one, a release, a reclaim release, EC2 counters) and gathers its registry: metric name -> label names.
func exportedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	st, err := store.NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Lock(time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Unlock() })
	al, err := allocator.New(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := al.AddAddresses(1, "eni-1", netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("10.1.0.11")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	netnsDir := t.TempDir()
	a, err := backend.New(backend.Config{Allocator: al, Pools: onePools{}, ReclaimGrace: time.Second, NetnsDirs: []string{netnsDir},
		Cards: func() []int { return []int{1} },
		EC2Stats: func() backend.EC2Stats {
			return backend.EC2Stats{Calls: map[string]map[string]int{"AssignPrivateIpAddresses": {"ok": 1}}, Throttles: 1}
		},
		Now: func() time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(time.Minute); return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	netns := filepath.Join(netnsDir, "pod")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.AllocateRequest{
		{Card: 1, ContainerID: "c1", IfName: "net1", PodRef: api.PodRef{PodNamespace: "ns", PodName: "p1"}, Netns: netns},
		{Card: 1, ContainerID: "c2", IfName: "net1", PodRef: api.PodRef{PodNamespace: "ns", PodName: "p2"}},
	} {
		if _, err := a.Allocate(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Allocate(ctx, api.AllocateRequest{Card: 7, ContainerID: "c3", IfName: "net1"}); err == nil {
		t.Fatal("card 7 allocated")
	}
	if _, err := a.Release(ctx, api.ReleaseRequest{ContainerID: "c2", IfName: "net1"}); err != nil {
		t.Fatal(err)
	}
	os.Remove(netns)
	released := 0
	for range 3 {
		n, err := a.ReclaimGonePods(ctx)
		if err != nil {
			t.Fatal(err)
		}
		released += n
	}
	if released != 1 {
		t.Fatalf("reclaim released %d, want the allocation whose netns is gone", released)
	}
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, mf := range mfs {
		var labels []string
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(labels, lp.GetName()) {
					labels = append(labels, lp.GetName())
				}
			}
		}
		labels = append(labels, scrapeLabels...)
		name := mf.GetName()
		if mf.GetType().String() == "HISTOGRAM" {
			out[name+"_bucket"] = append(slices.Clone(labels), "le")
			out[name+"_sum"], out[name+"_count"] = labels, labels
			continue
		}
		out[name] = labels
	}
	for _, want := range []string{"multinic_gc_releases_total", "multinic_allocation_duration_seconds_bucket", "multinic_ec2_calls_total", "multinic_card_warm"} {
		if _, ok := out[want]; !ok {
			t.Fatalf("the agent's registry has no %s: %v", want, out)
		}
	}
	return out
}

// PromQL words that are not metric names: functions, aggregations, keywords.
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`sum min max avg count stddev stdvar topk bottomk quantile count_values group
		rate irate increase delta idelta deriv histogram_quantile abs ceil floor round clamp clamp_min clamp_max
		label_replace label_join vector scalar time absent absent_over_time avg_over_time max_over_time
		min_over_time sum_over_time count_over_time last_over_time changes resets predict_linear sort sort_desc
		by without on ignoring group_left group_right offset bool and or unless inf nan`) {
		promqlWords[w] = true
	}
}

var promqlToken = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\[[^\]]*\]|[A-Za-z_:][A-Za-z0-9_:]*|[0-9.]+(?:e[+-]?[0-9]+)?|=~|!~|!=|==|>=|<=|[{}()=,<>+*/^%-]`)

// promqlProblems checks one expression: every metric it names is exported, every label in a matcher is
// one of that metric's, and every label in by/without/on/ignoring is one of a metric's in the expression.
func promqlProblems(expr string, exported map[string][]string) []string {
	var problems []string
	toks := promqlToken.FindAllString(expr, -1)
	if strings.Join(toks, "") != strings.Join(strings.Fields(expr), "") {
		problems = append(problems, fmt.Sprintf("%q: characters the checker does not understand", expr))
	}
	var metrics []string
	var grouping []string
	for i := 0; i < len(toks); i++ {
		tok := toks[i]
		next := ""
		if i+1 < len(toks) {
			next = toks[i+1]
		}
		switch {
		case tok == "by" || tok == "without" || tok == "on" || tok == "ignoring" || tok == "group_left" || tok == "group_right":
			if next != "(" {
				continue
			}
			for i += 2; i < len(toks) && toks[i] != ")"; i++ {
				if toks[i] != "," {
					grouping = append(grouping, toks[i])
				}
			}
		case tok == "{":
			metric := ""
			if i > 0 && !promqlWords[toks[i-1]] && regexp.MustCompile(`^[A-Za-z_:]`).MatchString(toks[i-1]) {
				metric = toks[i-1]
			}
			for i++; i < len(toks) && toks[i] != "}"; i++ {
				if i+1 < len(toks) && slices.Contains([]string{"=", "!=", "=~", "!~"}, toks[i+1]) {
					if metric != "" && !slices.Contains(exported[metric], toks[i]) {
						problems = append(problems, fmt.Sprintf("%q: %s has no label %q", expr, metric, toks[i]))
					}
					i += 2 // the operator and the value
				}
			}
		case promqlWords[tok] || strings.HasPrefix(tok, "\"") || strings.HasPrefix(tok, "[") || !regexp.MustCompile(`^[A-Za-z_:]`).MatchString(tok):
		case next == "(":
			problems = append(problems, fmt.Sprintf("%q: unknown function %s", expr, tok))
		default:
			metrics = append(metrics, tok)
			if _, ok := exported[tok]; !ok {
				problems = append(problems, fmt.Sprintf("%q: the agent exports no metric %s", expr, tok))
			}
		}
	}
	if len(metrics) == 0 {
		problems = append(problems, fmt.Sprintf("%q: names no metric", expr))
	}
	for _, l := range grouping {
		if !slices.ContainsFunc(metrics, func(m string) bool { return slices.Contains(exported[m], l) }) {
			problems = append(problems, fmt.Sprintf("%q: groups by %q, a label of none of its metrics", expr, l))
		}
	}
	return problems
}

// monitoringExprs returns every PromQL expression of the alert rules and the dashboard.
func monitoringExprs(t *testing.T) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	b, err := os.ReadFile("monitoring/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v: want alert, expr, a severity label and a summary", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("rule %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	b, err = os.ReadFile("monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			// Grafana's variables are not PromQL: $instance stands for a label value.
			exprs[fmt.Sprintf("panel %q query %d", p.Title, i)] = strings.ReplaceAll(tg.Expr, "$instance", "x")
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((\w+), *(\w+)\)$`)
	for _, v := range dash.Templating.List {
		if v.Name == "instance" {
			m := labelValues.FindStringSubmatch(v.Query)
			if m == nil {
				t.Fatalf("variable instance: query %q, want label_values(metric, label)", v.Query)
			}
			exprs["variable instance"] = fmt.Sprintf("sum by (%s) (%s)", m[2], m[1])
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("found %d expressions, want the alerts' and the dashboard's", len(exprs))
	}
	return exprs
}

// TestMonitoringNamesOnlyExportedMetrics: the alert rules and the dashboard name only metrics and labels
// the agent exports, as gathered from a real agent's registry, so that they cannot drift from the code.
func TestMonitoringNamesOnlyExportedMetrics(t *testing.T) {
	exported := exportedMetrics(t)
	for where, expr := range monitoringExprs(t) {
		for _, p := range promqlProblems(expr, exported) {
			t.Errorf("%s: %s", where, p)
		}
	}
}

// TestPromqlProblems: the checker finds what it is there to find.
func TestPromqlProblems(t *testing.T) {
	exported := map[string][]string{"m_total": {"result", "instance"}, "h_bucket": {"le", "instance"}}
	for _, c := range []struct {
		expr string
		bad  bool
	}{
		{`sum by (result) (rate(m_total{result!="ok"}[5m]))`, false},
		{`histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 1`, false},
		{`sum by (result) (rate(m_totl[5m]))`, true},
		{`sum by (action) (rate(m_total[5m]))`, true},
		{`rate(m_total{action="x"}[5m])`, true},
		{`m_total and on (card) h_bucket`, true},
		{`frobnicate(m_total)`, true},
		{`1 > 0`, true},
	} {
		if got := promqlProblems(c.expr, exported); (len(got) > 0) != c.bad {
			t.Errorf("promqlProblems(%q) = %q, want problems: %v", c.expr, got, c.bad)
		}
	}
}
