// Package faults is the fault suite of issue 6: each test drives a real CNI ADD through the real multinic
// plugin and agent against fake-ec2 (internal/testing/harness) while one fault is injected (EC2 5xx, throttling, 2 s
// latency, attach failure, subnet exhaustion, the agent SIGKILLed during an ADD, the pod netns deleted during
// an ADD, a full disk under the agent's state), records the CNI error the runtime sees, cleans up as a
// runtime would (DEL, pod removal, agent restart) and counts what leaked. The target is 0 leaks everywhere.
//
// The tests need root; they skip otherwise. They run in exclusive mode on any root host; the ipvlan
// variants skip unless the kernel has ipvlan (the test VM).
//
// Results: with $MULTINIC_FAULTS_OUT set to a file path, the test binary writes one Record per fault run as a
// JSON line when it ends (replacing the file); set to "-", it prints them on stdout after RecordPrefix.
// `go test -v` also prints them as a markdown table (Table), as BENCHMARKS.md lists them.
// $MULTINIC_FAULTS_LONG=1 selects the long variants (agent default timeouts, several rounds per fault).
package faults

import (
	"fmt"
	"strings"
	"time"
)

// Environment variables the suite reads.
const (
	// OutEnv names the JSON-lines results file (absolute path; `go test` runs in the package folder).
	OutEnv = "MULTINIC_FAULTS_OUT"
	// LongEnv set to "1" runs the long variants (for `make bench`).
	LongEnv = "MULTINIC_FAULTS_LONG"
)

// RecordPrefix starts every record line on stdout ($MULTINIC_FAULTS_OUT=-).
const RecordPrefix = "FAULTRECORD "

// RecordVersion is the version of Record's format; a reader should refuse versions it does not know.
const RecordVersion = 1

// Record is one fault run: one line of the results file.
type Record struct {
	Version int `json:"version"`
	// Suite is always "faults" (the bench report merges several suites' files).
	Suite string `json:"suite"`
	// Fault is a stable short name: ec2-5xx, throttle, latency-warm, latency-empty, attach-failure,
	// subnet-exhausted, agent-killed, netns-deleted, disk-full, and the fail-closed cases of issue 11:
	// cni-gc-other-network, journal-replay, allocation-cap, reclaim-api-view, recover-checkpoint,
	// exclusive-no-checkpoint, ec2-lag, orphan-sweep (an ipvlan variant ends in "-ipvlan").
	Fault string `json:"fault"`
	// Variant is "fast" (make test) or "long" (make bench, $MULTINIC_FAULTS_LONG=1).
	Variant string `json:"variant"`
	// Mode is the attachment's mode: "exclusive" or "ipvlan".
	Mode string `json:"mode"`
	// Injected describes the fault as configured, e.g. "CreateNetworkInterface: InternalError (500) at rate 1.0".
	Injected string `json:"injected"`
	// Outcome of the ADD under the fault: "error" or "success".
	Outcome string `json:"outcome"`
	// CNICode and CNIMsg are the CNI error the runtime saw (0 and "" on success).
	CNICode uint   `json:"cniCode"`
	CNIMsg  string `json:"cniMsg"`
	// AddMillis is how long the ADD under the fault took.
	AddMillis float64 `json:"addMillis"`
	// Recovered says whether an ADD after the fault cleared succeeded (nil when not tried);
	// RecoverMillis is its duration.
	Recovered     *bool   `json:"recovered,omitempty"`
	RecoverMillis float64 `json:"recoverMillis,omitempty"`
	// Leaks after cleanup; LeakTotal is their sum and LeakDetails names each one.
	Leaks       Leaks    `json:"leaks"`
	LeakTotal   int      `json:"leakTotal"`
	LeakDetails []string `json:"leakDetails,omitempty"`
	// Pass is the test's verdict for this run (code as expected and 0 leaks).
	Pass bool `json:"pass"`
	// Note says anything a reader of the table needs (which of error/success happened and why).
	Note string `json:"note,omitempty"`
	// Rounds is how many fault/recover cycles the run made (1 in the fast variant).
	Rounds int `json:"rounds"`
	// Test is the Go test that produced the record; Command reruns it.
	Test    string `json:"test"`
	Command string `json:"command"`
	// Machine: host name, kernel release, CPUs, Go version; Time is when the record was made.
	Host      string    `json:"host"`
	Kernel    string    `json:"kernel"`
	CPUs      int       `json:"cpus"`
	GoVersion string    `json:"goVersion"`
	Time      time.Time `json:"time"`
	// DurationMillis is the whole test (region start to teardown excluded).
	DurationMillis float64 `json:"durationMillis"`
}

// Leaks counts what is held anywhere but the agent's pool or EC2 after cleanup, by kind.
type Leaks struct {
	// Allocations the agent still holds for the test's pods.
	Allocations int `json:"allocations"`
	// EC2NotInPool: addresses EC2 has on the agent's ENIs (secondaries of shared ENIs, primaries of exclusive
	// ones) that the agent's pool does not know: lost to every pod until a reconcile.
	EC2NotInPool int `json:"ec2NotInPool"`
	// PoolNotInEC2: addresses in the agent's pool that EC2 does not have on that ENI: could be handed out
	// while EC2 gives them to someone else.
	PoolNotInEC2 int `json:"poolNotInEC2"`
	// OrphanENIs: ENIs with this node's tags that are detached ("available").
	OrphanENIs int `json:"orphanENIs"`
	// ENILinksMissing: ENIs attached to the node, held by no pod, whose link is not in the node netns.
	ENILinksMissing int `json:"eniLinksMissing"`
	// PodLinks, PodRules, PodRoutes: what the plugin left in the pod netns after DEL (beyond lo and eth0, the
	// three default rules, and eth0's routes).
	PodLinks  int `json:"podLinks"`
	PodRules  int `json:"podRules"`
	PodRoutes int `json:"podRoutes"`
	// NodeLinks, NodeRules, NodeRoutes: what is in the node netns that was not there before the test and is
	// not an attached ENI's link.
	NodeLinks  int `json:"nodeLinks"`
	NodeRules  int `json:"nodeRules"`
	NodeRoutes int `json:"nodeRoutes"`
	// Journal: pending-release records of the test's pods the plugin left behind (agent never told).
	Journal int `json:"journal"`
}

// Total is the sum of every count.
func (l Leaks) Total() int {
	return l.Allocations + l.EC2NotInPool + l.PoolNotInEC2 + l.OrphanENIs + l.ENILinksMissing +
		l.PodLinks + l.PodRules + l.PodRoutes + l.NodeLinks + l.NodeRules + l.NodeRoutes + l.Journal
}

// Table renders records as a markdown table: what the runtime saw under each fault and what leaked.
func Table(recs []Record) string {
	if len(recs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n| fault | mode | variant | rounds | injected | ADD outcome | CNI code | CNI message | ADD ms | recovered | leaks | pass |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range recs {
		rec := "-"
		if r.Recovered != nil {
			rec = fmt.Sprintf("%t (%.0f ms)", *r.Recovered, r.RecoverMillis)
		}
		code := "-"
		if r.CNICode != 0 {
			code = fmt.Sprint(r.CNICode)
		}
		msg := r.CNIMsg
		if len(msg) > 160 { // the end says why (EC2's code); the start names the container
			msg = "..." + msg[len(msg)-157:]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s | %s | %s | %.0f | %s | %d | %t |\n", r.Fault, r.Mode, r.Variant, r.Rounds,
			cell(r.Injected), r.Outcome, code, cell(msg), r.AddMillis, rec, r.LeakTotal, r.Pass)
	}
	return b.String()
}

func cell(s string) string { return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s) }
