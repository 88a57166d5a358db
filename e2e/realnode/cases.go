package realnode

// multusCases are TestRealNodes' cases that run once per Multus mode, in order, on the local real nodes
// (make e2e-node) and on kind (e2e/kind/run.sh runs TestRealNodes): the one list of both. Each is run by
// its function in caseRuns (e2e_test.go). Before them TestRealNodes runs "image-import" and "DaemonSet".
var multusCases = []struct {
	name      string
	thinOnly  bool   // once is enough, or (runtime-status) the thick config gives containerd no STATUS
	localOnly string // why the case cannot run on kind; "" runs it there too
}{
	{name: "example-pod"},
	{name: "scheduling", thinOnly: true},
	{name: "cards-1-7"},
	{name: "selections"},
	{name: "lifecycle"},
	{name: "runtime-status", thinOnly: true,
		localOnly: "the case takes the bridge plugin from the local nodes' primary network; kind's is kindnet (ptp, cniVersion 0.3.1: no STATUS)"},
}

// draCases are the cases of TestRealNodes' subtest "dra", in order, run once after the Multus modes with the
// agents rolled out with manifests/dra (local nodes only: they read the nodes' fake sysfs). Each is run by
// its function in draRuns (dra_test.go).
var draCases = []string{"gpu-aligned", "not-claimed"}
