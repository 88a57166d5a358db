package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/multinic/multinic/internal/testing/harness"
	mnplugin "github.com/multinic/multinic/plugin"
)

// stepSamples are the step durations of traced multinic calls by name ("ADD: link"), in the order the
// steps came (issue 13: where ADD and DEL spend their time).
type stepSamples struct {
	dir   string // where the traces are written
	order []string
	dur   map[string][]time.Duration
}

func (s *stepSamples) add(name string, d time.Duration) {
	if s.dur == nil {
		s.dur = map[string][]time.Duration{}
	}
	if _, ok := s.dur[name]; !ok {
		s.order = append(s.order, name)
	}
	s.dur[name] = append(s.dur[name], d)
}

// traceSteps runs one more ADD and DEL of p (multinic, not timed in the figure) with the plugin's step
// trace on (plugin.TraceEnv), and adds how long each step took: "process start" from just before fork+exec
// to the plugin's main, each step from the end of the one before, and "exit" from the last step to wait's
// return (result printed, process gone). The plugin and the test read the same wall clock.
func traceSteps(t *testing.T, node *harness.Node, pod *harness.Pod, p plugin, s *stepSamples) {
	t.Helper()
	if s.dir == "" {
		s.dir = t.TempDir()
	}
	cid := newContainerID()
	for _, verb := range []string{"ADD", "DEL"} {
		path := filepath.Join(s.dir, verb)
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		c, err := execCNI(node.NetNS(), p, verb, cid, pod.NetNSPath, "net1", pod.Name, mnplugin.TraceEnv+"="+path)
		if err != nil {
			t.Fatal(err)
		}
		marks, err := mnplugin.ReadTrace(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(marks) < 2 || marks[0].Step != mnplugin.StepStart {
			t.Fatalf("%s trace %+v: want the start and at least one step", verb, marks)
		}
		prev := c.start
		for _, m := range marks {
			name := string(m.Step)
			if m.Step == mnplugin.StepStart {
				name = "process start"
			}
			s.add(verb+": "+name, m.At.Sub(prev))
			prev = m.At
		}
		s.add(verb+": exit", c.start.Add(c.dur).Sub(prev))
	}
}

// stepsResult is figure 1's per-step table of multinic's ADD and DEL in one mode.
func stepsResult(key, title string, s *stepSamples) Result {
	var rows []Row
	for _, name := range s.order {
		rows = append(rows, Row{Metric: name, Unit: "ms", Ours: Summarize(Millis(s.dur[name]))})
	}
	return Result{Figure: 1, Key: key + "-steps", Title: title, Iterations: len(s.dur[s.order[0]]), Ours: "multinic", Rows: rows,
		Notes: []string{
			fmt.Sprintf("One extra ADD and DEL of multinic every %d iterations of the run above (not timed there), with %s set: the plugin appends each step's end time (one write per step) to a file. Each row is the time from the end of the step before (process start: from just before fork+exec to the plugin's main, Go runtime init included; exit: from the last step to wait's return, the result printed and the process gone).", sampleEvery, mnplugin.TraceEnv),
			"ADD: netns = config and CNI_ARGS parsed, pod netns opened, the interface name checked free; allocate = journal replay, the agent's round trip; link = ipvlan child made / ENI moved into the pod and renamed; address = MTU, address, up; routes = extra routes and the per-card table; rule = the source rule; sysctl = rp_filter; result = the result read back from the pod netns. DEL: teardown = config, journal replay, pod netns opened, rules and the link removed (an ENI moved home); release = the agent's round trip.",
		}}
}
