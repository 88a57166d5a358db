package plugin

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestTraceSteps: a traced ADD and DEL write every step once, in order, each no earlier than the one
// before, after the start line (what the bench's per-step breakdown reads).
func TestTraceSteps(t *testing.T) {
	for _, m := range modeCases[:2] { // exclusive on the host, ipvlan L2 in the VM
		t.Run(m.name, func(t *testing.T) {
			m.require(t)
			e := newEnv(t, m.exclusive)
			args := e.args(e.conf(m.mode, ""))
			for _, tc := range []struct {
				verb string
				want []Step
			}{
				{"ADD", []Step{StepStart, StepNetns, StepAllocate, StepLink, StepAddress, StepRoutes, StepRule, StepSysctl, StepResult}},
				{"DEL", []Step{StepStart, StepNetns, StepRule, StepLink, StepRelease}},
			} {
				verb, want := tc.verb, tc.want
				path := filepath.Join(t.TempDir(), "trace")
				e.p.Trace = TraceTo(path)
				var err error
				if verb == "ADD" {
					_, err = e.add(args)
				} else {
					err = e.del(args)
				}
				if err != nil {
					t.Fatalf("%s: %v", verb, err)
				}
				got, err := ReadTrace(path)
				if err != nil {
					t.Fatal(err)
				}
				var steps []Step
				for i, s := range got {
					steps = append(steps, s.Step)
					if i > 0 && s.At.Before(got[i-1].At) {
						t.Errorf("%s: step %s at %v, before %s at %v", verb, s.Step, s.At, got[i-1].Step, got[i-1].At)
					}
				}
				if !slices.Equal(steps, want) {
					t.Errorf("%s traced %v, want %v", verb, steps, want)
				}
			}
		})
	}
}

// TestReadTrace reads what TraceTo wrote and refuses a line it did not.
func TestReadTrace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace")
	before := time.Now()
	mark := TraceTo(path)
	mark(StepNetns)
	got, err := ReadTrace(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Step != StepStart || got[1].Step != StepNetns || got[0].At.Before(before.Truncate(time.Nanosecond)) || got[1].At.Before(got[0].At) {
		t.Errorf("ReadTrace = %+v, want start then netns, from %v on", got, before)
	}
	if err := os.WriteFile(path, []byte("start 12\nnetns x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadTrace(path); err == nil {
		t.Error("ReadTrace accepted a line without a time")
	}
}
