package plugin

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// TraceEnv names a file the plugin binary appends its step times to when it is set (the bench sets it;
// runtimes do not). A trace never fails a CNI call: what cannot be written is left out.
const TraceEnv = "MULTINIC_STEP_TRACE"

// StepStart is the first line of every trace: the plugin's main began (the Go runtime is up).
const StepStart Step = "start"

// StepTime is one line of a trace: a step and when it ended.
type StepTime struct {
	Step Step
	At   time.Time
}

// TraceTo returns a Trace that appends "<step> <unix nanoseconds>" lines to path, after a StepStart line
// written now. Each line is one write to a file opened with O_APPEND, so the trace of a killed plugin ends
// at its last step.
func TraceTo(path string) func(Step) {
	mark := func(s Step) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return
		}
		fmt.Fprintf(f, "%s %d\n", s, time.Now().UnixNano())
		f.Close()
	}
	mark(StepStart)
	return mark
}

// ReadTrace reads the steps TraceTo wrote to path, in order.
func ReadTrace(path string) ([]StepTime, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []StepTime
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, ns, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("trace %s: bad line %q", path, sc.Text())
		}
		out = append(out, StepTime{Step: Step(name), At: time.Unix(0, n)})
	}
	return out, sc.Err()
}
