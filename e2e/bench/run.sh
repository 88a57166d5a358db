#!/usr/bin/env bash
# run.sh - `make bench`: every benchmark of issue 6 at full size, then BENCHMARKS.md.
#
# Usage: e2e/bench/run.sh            (from anywhere; root: it makes netns and runs the test VM)
#        e2e/bench/run.sh refs       only build the reference plugins into e2e/bench/bin/ (what the
#                                    package's tests need inside the VM, e.g. for `make test-vm`)
#
# Steps, one after the other (they would disturb each other's clocks side by side):
#   refs  the reference plugins (ipvlan, host-local, host-device, static) at the module's version of
#         containernetworking/plugins, static, into e2e/bench/bin/ (the VM reads them over 9p)
#   host  figure 1 exclusive (latency, the clock-sensitive part): go test on the host
#   host-ec2  figure 3, figure 5 (agent), figure 6 (100-node scale-up), figure 7 (p5 node): go test on the
#         host; EC2's simulated limits set their pace, not the CPU
#   vm    figure 1 ipvlan, figure 4 (bandwidth over 1/2/4/7 cards; ipvlan against exclusive), figure 5
#         (plugin RSS vs ipvlan): tests in the test VM (e2e/vm/vmtest.sh), whose kernel has ipvlan
#   tools, multus-vm  figure 2: Multus ADD/DEL of a 7-card pod against 7 reference ipvlan + host-local
#         delegates, in the VM against a control plane on the host (e2e/multus TestMultusBenchVM)
#   realnode  figure 8: a 7-card pod from creation to Running, DRA + NRI vs DRA + Multus, on the real-node e2e
#         (two kubelet + containerd nodes; make image and the node tools first)
#   faults-host, faults-vm  the fault suite's long variants (e2e/faults, $MULTINIC_FAULTS_LONG=1): exclusive
#         mode on the host (with the e2e tag and the tools step's control plane, so that TestReclaimAPIView
#         runs too), the ipvlan cases in the VM; records into faults.jsonl
#   report  BENCHMARKS.md from e2e/bench/results/ (results.jsonl, faults.jsonl, steps.jsonl, the logs;
#         git-ignored)
#
# Environment:
#   MULTINIC_BENCH_N     latency iterations per plugin and verb (default 500)
#   MULTINIC_BENCH_OUT   report path (default BENCHMARKS.md at the top of the repository)
#   MULTINIC_BENCH_STEPS run only these steps (space-separated parts, e.g. "multus-vm realnode"), keep the
#                        other steps' records in e2e/bench/results/ and make the report from all of them:
#                        how one part is measured again, or parts run apart (say so in the notes)
# A step that fails is recorded as failed in the report, the others still run; the exit status is 1 then.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2
OUT=${MULTINIC_BENCH_OUT:-BENCHMARKS.md}
N=${MULTINIC_BENCH_N:-500}
RES=e2e/bench/results
REFBIN=e2e/bench/bin
failed=0
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# step PART COMMAND...: runs the command, its output to the terminal and $RES/PART.log, and records the step
# in $RES/PART.step (the report collects every step's records in the order of $PARTS).
step() {
	local part=$1 start rc ms
	shift
	case " $STEPS " in *" $part "*) ;; *) return 0 ;; esac
	echo "bench: [$part] $*" >&2
	start=$(date +%s%N)
	"$@" 2>&1 | tee "$RES/$part.log"
	rc=${PIPESTATUS[0]}
	ms=$((($(date +%s%N) - start) / 1000000))
	printf '{"part":"%s","command":"%s","seconds":%d.%03d,"status":%d}\n' "$part" \
		"$(printf '%s (at %s)' "$CMDLINE" "$REV" | sed 's/\\/\\\\/g; s/"/\\"/g')" $((ms / 1000)) $((ms % 1000)) "$rc" >"$RES/$part.step"
	if [ "$rc" != 0 ]; then
		echo "bench: [$part] FAILED (exit $rc)" >&2
		failed=1
	fi
}

# collect writes results.jsonl, faults.jsonl and steps.jsonl from every recorded step, in the order of $PARTS.
collect() {
	local part
	: >"$RES/results.jsonl"
	: >"$RES/faults.jsonl"
	: >"$RES/steps.jsonl"
	for part in $PARTS; do
		[ -f "$RES/$part.step" ] || continue
		# A result names the step that made it (its command is shown with it): a test only knows host or vm.
		grep -a '^BENCHRESULT ' "$RES/$part.log" | sed 's/^BENCHRESULT //; s/"part":"[^"]*"/"part":"'"$part"'"/' >>"$RES/results.jsonl"
		grep -a '^FAULTRECORD ' "$RES/$part.log" | sed 's/^FAULTRECORD //' >>"$RES/faults.jsonl"
		cat "$RES/$part.step" >>"$RES/steps.jsonl"
	done
}

ver=$(go list -m -f '{{.Version}}' github.com/containernetworking/plugins) || exit 2
refs=()
for p in main/ipvlan ipam/host-local main/host-device ipam/static; do
	refs+=("github.com/containernetworking/plugins/plugins/$p@$ver")
done
if [ "${1:-}" = refs ]; then
	mkdir -p "$REFBIN"
	GOBIN="$ROOT/$REFBIN" CGO_ENABLED=0 exec go install -trimpath "${refs[@]}"
fi
PARTS="refs host host-ec2 vm tools multus-vm realnode-tools realnode faults-host faults-vm"
STEPS=${MULTINIC_BENCH_STEPS:-$PARTS}
for part in $STEPS; do
	case " $PARTS " in *" $part "*) ;; *) echo "bench: unknown step $part (steps: $PARTS)" >&2; exit 2 ;; esac
done
if [ -z "${MULTINIC_BENCH_STEPS:-}" ]; then rm -rf "$RES"; fi
mkdir -p "$RES" "$REFBIN"

CMDLINE="GOBIN=$REFBIN CGO_ENABLED=0 go install -trimpath ${refs[*]}"
step refs env GOBIN="$ROOT/$REFBIN" CGO_ENABLED=0 go install -trimpath "${refs[@]}"

CMDLINE="go test -count=1 -v -timeout 20m -run '^(TestLatencyExclusive|TestLatencyDual)\$' ./e2e/bench/ -args -multinic.full -multinic.n=$N"
step host go test -count=1 -v -timeout 20m -run '^(TestLatencyExclusive|TestLatencyDual)$' ./e2e/bench/ -args -multinic.full -multinic.n="$N"
CMDLINE="go test -count=1 -v -timeout 40m -run '^(TestEC2Churn|TestEC2ChurnIPv6|TestEC2Burst|TestScaleUp|TestP5Node)\$' ./e2e/bench/ -args -multinic.full"
step host-ec2 go test -count=1 -v -timeout 40m -run '^(TestEC2Churn|TestEC2ChurnIPv6|TestEC2Burst|TestScaleUp|TestP5Node)$' ./e2e/bench/ -args -multinic.full

VMTESTS='^(TestLatencyIPVlan|TestBandwidthScaling|TestBandwidthIPVlanVsExclusive)$'
CMDLINE="MULTINIC_VM_TEST_TIMEOUT=40m MULTINIC_VM_TESTFLAGS='-test.run $VMTESTS -multinic.full -multinic.n=$N' e2e/vm/vmtest.sh ./e2e/bench/"
step vm env MULTINIC_VM_TEST_TIMEOUT=40m MULTINIC_VM_TIMEOUT=2700 \
	MULTINIC_VM_TESTFLAGS="-test.run $VMTESTS -multinic.full -multinic.n=$N" bash e2e/vm/vmtest.sh ./e2e/bench/

# Figure 2: a 7-card pod through Multus in the VM (ipvlan), the control plane on this host; the tools
# (kube-apiserver, etcd, Multus, the reference plugins) are built once into ~/.cache/multinic/tools.
CMDLINE="bash e2e/tools/build.sh"
step tools bash e2e/tools/build.sh
CMDLINE="MULTINIC_E2E=1 MULTINIC_BENCH_MULTUS=1 MULTINIC_BENCH=1 go test -tags e2e -count=1 -v -timeout 40m -run '^TestMultusBenchVM\$' ./e2e/multus/"
step multus-vm env MULTINIC_E2E=1 MULTINIC_BENCH_MULTUS=1 MULTINIC_BENCH=1 go test -tags e2e -count=1 -v -timeout 40m -run '^TestMultusBenchVM$' ./e2e/multus/

# Figure 8: the real nodes (kubelet, containerd with NRI, scheduler), the image as make image builds it.
CMDLINE="make image && bash e2e/tools/build.sh node && MULTINIC_TOOLS_STATIC=1 bash e2e/tools/build.sh multus"
step realnode-tools bash -c "$CMDLINE"
CMDLINE="MULTINIC_E2E_NODE=1 MULTINIC_BENCH_DRA=1 go test -tags e2e -count=1 -v -timeout 20m -run '^TestRealNodes\$/^(image-import|DaemonSet|bench-dra-nri)\$' ./e2e/realnode/"
step realnode env MULTINIC_E2E_NODE=1 MULTINIC_BENCH_DRA=1 go test -tags e2e -count=1 -v -timeout 20m -run '^TestRealNodes$/^(image-import|DaemonSet|bench-dra-nri)$' ./e2e/realnode/

# The fault suite's long variants: everything but the ipvlan cases on the host; those in the VM, where the
# plugin can finish an ipvlan ADD (on the host they only check the agent). Same pattern as the Makefile's.
FAULTS_IPVLAN='^(TestEC2ServerError|TestThrottle|TestRecoverCheckpoint)$/^ipvlan$'
CMDLINE="MULTINIC_E2E=1 MULTINIC_FAULTS_LONG=1 MULTINIC_FAULTS_OUT=- go test -tags e2e -count=1 -v -timeout 40m -skip '$FAULTS_IPVLAN' ./e2e/faults/"
step faults-host env MULTINIC_E2E=1 MULTINIC_FAULTS_LONG=1 MULTINIC_FAULTS_OUT=- go test -tags e2e -count=1 -v -timeout 40m -skip "$FAULTS_IPVLAN" ./e2e/faults/

CMDLINE="MULTINIC_FAULTS_LONG=1 MULTINIC_FAULTS_OUT=- MULTINIC_VM_ENV='MULTINIC_FAULTS_LONG MULTINIC_FAULTS_OUT' MULTINIC_VM_TESTFLAGS='-test.v -test.run $FAULTS_IPVLAN' e2e/vm/vmtest.sh ./e2e/faults/"
step faults-vm env MULTINIC_FAULTS_LONG=1 MULTINIC_FAULTS_OUT=- MULTINIC_VM_ENV='MULTINIC_FAULTS_LONG MULTINIC_FAULTS_OUT' \
	MULTINIC_VM_TEST_TIMEOUT=30m MULTINIC_VM_TIMEOUT=2100 MULTINIC_VM_TESTFLAGS="-test.v -test.run $FAULTS_IPVLAN" bash e2e/vm/vmtest.sh ./e2e/faults/

collect
go run ./e2e/bench/benchreport -results "$RES" -out "$OUT" || exit 2
echo "bench: wrote $OUT ($(wc -l <"$RES/results.jsonl") results)" >&2
exit "$failed"
