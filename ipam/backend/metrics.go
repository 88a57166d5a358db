package backend

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/multinic/multinic/ipam/allocator"
	"github.com/multinic/multinic/ipam/api"
)

const metricsNamespace = "multinic"

// Allocation results, the values of the result label of multinic_allocations_total.
const (
	resultOK             = "ok"
	resultTryAgain       = "try_again"
	resultCardTaken      = "card_taken"
	resultInterfaceTaken = "interface_taken"
	resultNotManaged     = "not_managed"
	resultInvalid        = "invalid"
	resultCanceled       = "canceled"
	resultLimit          = "limit"
	resultNotClaimed     = "not_claimed"
	resultError          = "error"
)

// metrics is the agent's own registry: per-card pool gauges read from the allocator at scrape time, EC2
// counters read from the manager at scrape time, and the agent's own counters and histogram.
type metrics struct {
	reg             *prometheus.Registry
	allocations     *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	releases        *prometheus.CounterVec
	reclaimReleases *prometheus.CounterVec
	reclaimRefusals *prometheus.CounterVec
}

func newMetrics(b *Backend) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "allocations_total",
			Help: "Allocate requests answered, by result (ok, try_again, card_taken, interface_taken, limit, not_claimed, not_managed, invalid, canceled, error).",
		}, []string{"result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "allocation_duration_seconds",
			Help:    "Time to answer an allocate request, waits for a refill included, by result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"result"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "releases_total",
			Help: "Release requests answered, by result (ok, unknown: nothing was allocated, error).",
		}, []string{"result"}),
		reclaimReleases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "gc_releases_total",
			Help: "Allocations released by garbage collection, by reason (pod-gone, netns-gone).",
		}, []string{"reason"}),
		reclaimRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "gc_refusals_total",
			Help: "GC passes that released nothing on purpose, by reason (all-allocations: the pass would have freed every allocation on the node; pod-view-not-synced: the node's pods were not listed yet).",
		}, []string{"reason"}),
	}
	m.reg.MustRegister(m.allocations, m.latency, m.releases, m.reclaimReleases, m.reclaimRefusals,
		&poolCollector{b: b}, &ec2Collector{stats: b.cfg.EC2Stats},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{resultOK, resultTryAgain} {
		m.allocations.WithLabelValues(r)
	}
	for _, r := range []string{refusalAllAllocations, refusalNotSynced} {
		m.reclaimRefusals.WithLabelValues(r)
	}
	return m
}

func (m *metrics) observeAllocate(d time.Duration, err error) {
	r := resultOf(err)
	m.allocations.WithLabelValues(r).Inc()
	m.latency.WithLabelValues(r).Observe(d.Seconds())
}

func resultOf(err error) string {
	switch {
	case err == nil:
		return resultOK
	case errors.Is(err, api.ErrNotManaged):
		return resultNotManaged
	case errors.Is(err, context.Canceled):
		return resultCanceled
	case errors.Is(err, api.ErrTryAgain): // allocator.ErrPoolEmpty too
		return resultTryAgain
	case errors.Is(err, api.ErrCardTaken):
		return resultCardTaken
	case errors.Is(err, api.ErrInterfaceTaken):
		return resultInterfaceTaken
	case errors.Is(err, api.ErrLimit):
		return resultLimit
	case errors.Is(err, api.ErrNotClaimed):
		return resultNotClaimed
	case errors.Is(err, api.ErrInvalid):
		return resultInvalid
	}
	return resultError
}

var (
	descCapacity = prometheus.NewDesc(metricsNamespace+"_card_capacity",
		"Addresses the agent holds on the card (allocated + warm + cooling), by pool (shared, exclusive).", []string{"card", "pool"}, nil)
	descAllocated = prometheus.NewDesc(metricsNamespace+"_card_allocated",
		"Addresses of the card given to pods, by pool.", []string{"card", "pool"}, nil)
	descWarm = prometheus.NewDesc(metricsNamespace+"_card_warm",
		"Free, rested addresses of the card, ready to allocate now, by pool.", []string{"card", "pool"}, nil)
	descCooling = prometheus.NewDesc(metricsNamespace+"_card_cooling",
		"Free addresses of the card still resting after a release, by pool.", []string{"card", "pool"}, nil)
	descIPv6Prefixes = prometheus.NewDesc(metricsNamespace+"_card_ipv6_prefixes",
		"IPv6 /80 prefixes the card's shared ENIs hold (cards of family ipv6 or dual).", []string{"card"}, nil)
	descIPv6Allocated = prometheus.NewDesc(metricsNamespace+"_card_ipv6_allocated",
		"IPv6 addresses of the card given to pods (cards of family ipv6 or dual).", []string{"card"}, nil)
	descManaged = prometheus.NewDesc(metricsNamespace+"_card_managed",
		"1 for every card this agent serves.", []string{"card"}, nil)
	descReady = prometheus.NewDesc(metricsNamespace+"_ready",
		"1 once every managed card has its ENI attached and its link up.", nil, nil)
)

// poolCollector reads the allocator's per-card counts at scrape time.
type poolCollector struct{ b *Backend }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCapacity, descAllocated, descWarm, descCooling, descIPv6Prefixes, descIPv6Allocated,
		descManaged, descReady} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	cards := c.b.alloc.Cards()
	if c.b.cfg.Cards != nil {
		cards = append(cards, c.b.cfg.Cards()...)
	}
	slices.Sort(cards)
	cards = slices.Compact(cards)
	for _, n := range cards {
		card := strconv.Itoa(n)
		st := c.b.alloc.Stats(n)
		for _, p := range []struct {
			pool string
			c    allocator.Counts
		}{{"shared", st.Counts}, {"exclusive", st.Exclusive}} {
			ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(p.c.Capacity), card, p.pool)
			ch <- prometheus.MustNewConstMetric(descAllocated, prometheus.GaugeValue, float64(p.c.Allocated), card, p.pool)
			ch <- prometheus.MustNewConstMetric(descWarm, prometheus.GaugeValue, float64(p.c.Warm), card, p.pool)
			ch <- prometheus.MustNewConstMetric(descCooling, prometheus.GaugeValue, float64(p.c.Cooling), card, p.pool)
		}
		if st.IPv6.Prefixes > 0 || (c.b.pools.Managed(n) && api.WantsIPv6(c.b.pools.Family(n))) {
			ch <- prometheus.MustNewConstMetric(descIPv6Prefixes, prometheus.GaugeValue, float64(st.IPv6.Prefixes), card)
			ch <- prometheus.MustNewConstMetric(descIPv6Allocated, prometheus.GaugeValue, float64(st.IPv6.Allocated), card)
		}
		if c.b.pools.Managed(n) {
			ch <- prometheus.MustNewConstMetric(descManaged, prometheus.GaugeValue, 1, card)
		}
	}
	ready := 0.0
	if c.b.pools.Ready() {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready)
}

var (
	descEC2Calls = prometheus.NewDesc(metricsNamespace+"_ec2_calls_total",
		"EC2 API attempts by action and result (ok or EC2's error code).", []string{"action", "result"}, nil)
	descEC2Throttles = prometheus.NewDesc(metricsNamespace+"_ec2_throttles_total",
		"EC2 attempts answered with a throttling error (RequestLimitExceeded and the like).", nil, nil)
	descEC2Retries = prometheus.NewDesc(metricsNamespace+"_ec2_retries_total",
		"EC2 attempts that were retries of a failed attempt.", nil, nil)
)

// ec2Collector reads the manager's EC2 counters at scrape time.
type ec2Collector struct{ stats func() EC2Stats }

func (c *ec2Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descEC2Calls
	ch <- descEC2Throttles
	ch <- descEC2Retries
}

func (c *ec2Collector) Collect(ch chan<- prometheus.Metric) {
	if c.stats == nil {
		return
	}
	st := c.stats()
	for action, m := range st.Calls {
		for result, n := range m {
			ch <- prometheus.MustNewConstMetric(descEC2Calls, prometheus.CounterValue, float64(n), action, result)
		}
	}
	ch <- prometheus.MustNewConstMetric(descEC2Throttles, prometheus.CounterValue, float64(st.Throttles))
	ch <- prometheus.MustNewConstMetric(descEC2Retries, prometheus.CounterValue, float64(st.Retries))
}

// Registry is the agent's metrics registry, for tests and for adding collectors.
func (b *Backend) Registry() *prometheus.Registry { return b.metrics.reg }

// Handler serves /metrics, /healthz (the process is up and its state restored: true once a Backend exists)
// and /readyz (every managed card has its ENI: Pools.Ready, and the last reclaim pass did not refuse to free
// every allocation of the node; the body says which is wrong).
func (b *Backend) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(b.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !b.pools.Ready() {
			http.Error(w, "not ready: ENIs of the managed cards are still being set up", http.StatusServiceUnavailable)
			return
		}
		if why := b.reclaimRefusal(); why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}
