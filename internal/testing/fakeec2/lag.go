package fakeec2

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/multinic/multinic/internal/ctxtime"
)

// LagEnv, when set (e.g. "2s"), is the visibility lag of every fake whose faults set none: so that a whole
// test suite runs against an eventually consistent EC2 (MULTINIC_FAKE_EC2_LAG=2s go test ./...).
const LagEnv = "MULTINIC_FAKE_EC2_LAG"

// Visibility lag (Faults.Lag). EC2 is eventually consistent: an ENI just created, attached or detached, an
// address just assigned or unassigned may be missing from, or still present in, DescribeNetworkInterfaces,
// DescribeInstances and IMDS for seconds. With a lag those show the ENIs as they were Lag ago, while
// mutating actions act on the true state at once (as EC2's do).

// envLag is LagEnv's duration; an unparsable value is an error, not silently no lag.
func envLag() (time.Duration, error) {
	v := os.Getenv(LagEnv)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q invalid: want a duration like 2s", LagEnv, v)
	}
	return d, nil
}

// withEnvLag gives f the LagEnv lag when it sets none.
func withEnvLag(f Faults) (Faults, error) {
	if f.Lag != 0 {
		return f, nil
	}
	d, err := envLag()
	f.Lag = Duration(d)
	return f, err
}

// lagged is the ENIs as they were until a mutating action at at changed them.
type lagged struct {
	at   time.Time
	enis map[string]*eni
}

func (f *faults) lag() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return time.Duration(f.cfg.Lag)
}

// recordLocked keeps the ENIs as they are before a mutating action changes them, and forgets what no
// lagged view needs any more; s.mu is held.
func (s *Server) recordLocked(now time.Time) {
	lag := s.faults.lag()
	if lag <= 0 {
		s.history = nil
		return
	}
	cut := now.Add(-lag)
	i := 0
	for i < len(s.history) && !s.history[i].at.After(cut) {
		i++
	}
	s.history = append(s.history[i:], lagged{at: now, enis: cloneENIs(s.enis)})
}

// visibleENIs is what Describe* and IMDS show: the ENIs as they were Lag ago; s.mu is held. The earliest
// change within the lag is the first not yet visible: the state before it is the view.
func (s *Server) visibleENIs() map[string]*eni {
	if lag := s.faults.lag(); lag > 0 {
		cut := time.Now().Add(-lag)
		for _, h := range s.history {
			if h.at.After(cut) {
				return h.enis
			}
		}
	}
	return s.enis
}

// describedAtLocked is when the visible ENIs will be the current ones (zero: they are); s.mu is held.
func (s *Server) describedAtLocked() time.Time {
	lag := s.faults.lag()
	if lag <= 0 || len(s.history) == 0 {
		return time.Time{}
	}
	if at := s.history[len(s.history)-1].at.Add(lag); at.After(time.Now()) {
		return at
	}
	return time.Time{}
}

// WaitDescribed returns once Describe* and IMDS show the ENIs as they are (at once without a lag): for a
// test that needs EC2's view of a change made a moment ago, as an agent restarted without memory does.
func (s *Server) WaitDescribed(ctx context.Context) error {
	for {
		at := s.State().DescribedAt
		if at.IsZero() {
			return nil
		}
		if err := ctxtime.Sleep(ctx, time.Until(at)); err != nil {
			return fmt.Errorf("wait for Describe to show the ENIs as they are: %w", err)
		}
	}
}

func cloneENIs(in map[string]*eni) map[string]*eni {
	out := make(map[string]*eni, len(in))
	for id, e := range in {
		c := *e
		c.secondary = slices.Clone(e.secondary)
		c.prefixes = slices.Clone(e.prefixes)
		c.ipv6 = slices.Clone(e.ipv6)
		c.ipv6Prefixes = slices.Clone(e.ipv6Prefixes)
		c.groups = slices.Clone(e.groups)
		c.tags = maps.Clone(e.tags)
		if e.att != nil {
			a := *e.att
			c.att = &a
		}
		out[id] = &c
	}
	return out
}

// mutating reports whether an action changes state (and so is recorded for the lag).
func mutating(action string) bool {
	switch action {
	case "DescribeInstances", "DescribeInstanceTypes", "DescribeSubnets", "DescribeNetworkInterfaces":
		return false
	}
	return true
}
