package backend

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// gaugeValue reads one sample (gauge or counter) from the agent's registry; -1 when absent.
func gaugeValue(t *testing.T, a *Backend, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			return value(m)
		}
	}
	return -1
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return -1
}

func TestMetricsAndHealth(t *testing.T) {
	fp := newFakePools(1, 2)
	fp.lastErr[2] = errors.New("InsufficientFreeAddressesInSubnet: no")
	ta := newTestBackend(t, fp, map[int]int{1: 5}, func(c *Config) {
		c.WaitTimeout = 50 * time.Millisecond
		c.Cards = func() []int { return []int{1, 2} }
		c.EC2Stats = func() EC2Stats {
			return EC2Stats{Calls: map[string]map[string]int{"AssignPrivateIpAddresses": {"ok": 3, "RequestLimitExceeded": 2}}, Throttles: 2, Retries: 2}
		}
	})
	ctx := context.Background()
	for _, r := range []struct {
		card int
		c    string
	}{{1, "a"}, {1, "b"}, {2, "c"}} {
		ta.Allocate(ctx, req(r.card, r.c, "net1", r.c))
	}
	srv := httptest.NewServer(ta.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`multinic_card_capacity{card="1",pool="shared"} 5`,
		`multinic_card_allocated{card="1",pool="shared"} 2`,
		`multinic_card_warm{card="1",pool="shared"} 3`,
		`multinic_card_cooling{card="1",pool="shared"} 0`,
		`multinic_card_capacity{card="2",pool="shared"} 0`,
		`multinic_card_managed{card="2"} 1`,
		`multinic_allocations_total{result="ok"} 2`,
		`multinic_allocations_total{result="try_again"} 1`,
		`multinic_allocation_duration_seconds_count{result="ok"} 2`,
		`multinic_ec2_calls_total{action="AssignPrivateIpAddresses",result="RequestLimitExceeded"} 2`,
		`multinic_ec2_throttles_total 2`,
		`multinic_ready 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	fp.mu.Lock()
	fp.ready = false
	fp.mu.Unlock()
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz when not ready: %d, want 503", code)
	}
}
