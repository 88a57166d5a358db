package eni

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/fakeec2"
)

func TestParseCards(t *testing.T) {
	for _, tc := range []struct {
		in      string
		cards   []int
		all     bool
		wantErr bool
	}{
		{"", nil, false, false},
		{"all", nil, true, false},
		{"1,3", []int{1, 3}, false, false},
		{"5-7, 1 ,6", []int{1, 5, 6, 7}, false, false},
		{"x", nil, false, true},
		{"3-1", nil, false, true},
		{"-1", nil, false, true},
	} {
		cards, all, err := ParseCards(tc.in)
		if (err != nil) != tc.wantErr || all != tc.all || !slices.Equal(cards, tc.cards) {
			t.Errorf("ParseCards(%q) = %v, %v, %v", tc.in, cards, all, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no cluster", Config{}, "cluster"},
		{"bad subnet", Config{Cluster: "c", Cards: map[int]CardConfig{1: {SubnetID: "nope"}}}, `subnet "nope"`},
		{"bad mtu", Config{Cluster: "c", MTU: 10}, "mtu 10"},
		{"negative warm", Config{Cluster: "c", WarmTarget: ptr(-1)}, "warm target -1"},
		{"ok", Config{Cluster: "c"}, ""},
	} {
		err := tc.cfg.withDefaults().validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestP5DefaultsUnderThrottling: with the shipped defaults (limiter 4/s, the cold start's burst) and EC2's
// published throttling on, all 31 managed cards of a p5.48xlarge get their ENI and a warm pool; it is the
// largest instance type we support.
func TestP5DefaultsUnderThrottling(t *testing.T) {
	e := newEnv(t, envOpts{typ: "p5.48xlarge", faults: fakeec2.Faults{Throttle: true}})
	cfg := e.fastConfig(32)
	cfg.WarmTarget, cfg.MinFree = nil, nil
	cfg.EC2Rate, cfg.EC2Burst, cfg.BackoffBase, cfg.BackoffMax = 0, 0, 0, 0
	t0 := time.Now()
	m := e.start(cfg, e.alloc)
	waitReady(t, m, 2*time.Minute)
	ready := time.Since(t0)
	eventually(t, 2*time.Minute, "warm", func() bool {
		for k := 1; k < 32; k++ {
			if e.alloc.Stats(k).Warm < DefaultWarmTarget {
				return false
			}
		}
		return true
	})
	st := m.Stats().EC2
	t.Logf("p5.48xlarge defaults: 31 cards ready in %s, warm in %s; throttles %d; calls %v",
		ready.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), st.Throttles, st.Calls)
}

// TestColdStartBurst: with EC2Burst 0 the agent's buckets hold a p5.48xlarge's whole cold start (a create
// and a DeleteOnTermination per card, an attach per card), so its 31 cards are ready at a rate that gives
// nothing more; with the old fixed burst of 10 they are not.
func TestColdStartBurst(t *testing.T) {
	if got := ColdStartBurst(31); got != 62 {
		t.Errorf("ColdStartBurst(31) = %d, want 62", got)
	}
	if got := ColdStartBurst(2); got != DefaultEC2Burst {
		t.Errorf("ColdStartBurst(2) = %d, want the floor %d", got, DefaultEC2Burst)
	}
	for _, tc := range []struct {
		burst int
		ready bool
	}{{0, true}, {DefaultEC2Burst, false}} {
		e := newEnv(t, envOpts{typ: "p5.48xlarge"})
		cfg := e.fastConfig(32)
		cfg.EC2Rate, cfg.EC2Burst = 0.001, tc.burst // the bucket alone: no token comes back during the test
		m := e.start(cfg, e.alloc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := m.WaitReady(ctx)
		cancel()
		if (err == nil) != tc.ready {
			t.Errorf("burst %d: ready within 5 s: %v, want %v", tc.burst, err == nil, tc.ready)
		}
		m.Stop()
	}
}
