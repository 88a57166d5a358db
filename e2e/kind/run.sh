#!/usr/bin/env bash
# run.sh - the real-node e2e (e2e/realnode, `make e2e-node`) on a kind cluster: the same image archive
# (bin/multinic-image.tar, loaded with kind load image-archive) and the same cases, because it runs the same
# Go test, TestRealNodes, pointed at the kind cluster (MULTINIC_E2E_KUBECONFIG and MULTINIC_E2E_KIND). Cases
# that need powers over a node kind does not give (crash a node, take the primary network's plugin away)
# skip there, saying why. Needs a Docker engine, kind, go, curl and root (ip netns attach).
#
# The kind nodes (a control plane, untainted, and a worker) are two trn1.32xlarge instances of fake-ec2:
# each node container's netns is named (ip netns attach) and fake-ec2 materializes the ENIs attached to
# that instance as links there and serves EC2 and that instance's IMDS on 127.0.0.1:8773 inside it, where
# the agent of the DaemonSet looks (e2e/realnode's overlay of manifests/, the same as on the real nodes).
#
# Usage: e2e/kind/run.sh            (KEEP=1 keeps the cluster and fake-ec2 for a look afterwards)
set -euo pipefail

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
	echo "skipped: no Docker engine (kind needs one); the same cases run on real kubelet + containerd nodes in \`make e2e-node\`"
	exit 0
fi
for tool in kind kubectl go curl ip; do
	command -v "$tool" >/dev/null 2>&1 || { echo "run.sh: $tool not found" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (ip netns attach, fake-ec2's links in the nodes' netns)" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=multinic-e2e
# e2e/realnode's EC2Addr: where the agent finds EC2 and IMDS in the node's netns.
EC2_ADDR=127.0.0.1:8773
WORK=$(mktemp -d /tmp/multinic-kind-XXXXXX)
FAKE_PID=
declare -a NETNS=()
log() { printf '\n== %s\n' "$*" >&2; }

cleanup() {
	local rc=$?
	if [[ ${KEEP:-} == 1 ]]; then
		echo "KEEP=1: cluster $CLUSTER, fake-ec2 (pid $FAKE_PID) and $WORK kept" >&2
		exit $rc
	fi
	[[ -n $FAKE_PID ]] && kill "$FAKE_PID" 2>/dev/null && wait "$FAKE_PID" 2>/dev/null || true
	for n in "${NETNS[@]}"; do ip netns delete "$n" 2>/dev/null || true; done
	kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
	rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "images and tools (the same as make e2e-node's)"
(cd "$ROOT" && make image)
MULTINIC_TOOLS_STATIC=1 bash "$ROOT/e2e/tools/build.sh" multus >/dev/null # the Multus images' binaries
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$WORK/bin/" ./cmd/fake-ec2)

log "kind cluster $CLUSTER"
kind create cluster --config "$ROOT/e2e/kind/kind-config.yaml" --name "$CLUSTER" --wait 120s
kind get kubeconfig --name "$CLUSTER" >"$WORK/kubeconfig"
export KUBECONFIG=$WORK/kubeconfig
mapfile -t NODES < <(kind get nodes --name "$CLUSTER" | sort)
[[ ${#NODES[@]} == 2 ]] || { echo "run.sh: want 2 nodes, got ${NODES[*]}" >&2; exit 1; }
kubectl taint nodes --all node-role.kubernetes.io/control-plane- # the cases schedule onto both nodes

log "fake-ec2 (trn1.32xlarge x2) in the nodes' netns"
for n in "${NODES[@]}"; do
	ip netns attach "mnkind-$n" "$(docker inspect -f '{{.State.Pid}}' "$n")"
	NETNS+=("mnkind-$n")
done
"$WORK/bin/fake-ec2" --instance-type trn1.32xlarge --nodes 2 --netns "$(IFS=,; echo "${NETNS[*]}")" \
	--listen "$EC2_ADDR" --fabric-prefix mnkindfab --ready-file "$WORK/fake-ec2.json" >"$WORK/fake-ec2.log" 2>&1 &
FAKE_PID=$!
for _ in $(seq 100); do [[ -s $WORK/fake-ec2.json ]] && break; sleep 0.1; done
[[ -s $WORK/fake-ec2.json ]] || { cat "$WORK/fake-ec2.log" >&2; echo "run.sh: fake-ec2 did not start" >&2; exit 1; }

log "kind load image-archive bin/multinic-image.tar"
kind load image-archive "$ROOT/bin/multinic-image.tar" --name "$CLUSTER" # the test loads its other images the same way

log "the real-node e2e's cases (TestRealNodes) on kind"
cd "$ROOT"
MULTINIC_E2E_NODE=1 MULTINIC_E2E_KUBECONFIG="$WORK/kubeconfig" MULTINIC_E2E_KIND="$CLUSTER" \
	go test -tags e2e -count=1 -v -timeout 30m -run '^TestRealNodes$' ./e2e/realnode/
log "PASS"
