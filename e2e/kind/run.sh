#!/usr/bin/env bash
# run.sh - the multinic-through-Multus e2e against a kind cluster (needs a Docker engine, kind, kubectl,
# go, curl and jq on the host; root for `ip netns`). The same cases as e2e/multus (which runs them on a
# real kube-apiserver with the tests playing the runtime, in `make e2e`), here with the real kubelet and
# containerd of kind's nodes:
#
#   1. a pod asking for cards 1 to 7 (exclusive NADs: a whole ENI per card)
#   2. a pod asking for cards 2 and 5
#   3. a pod naming card 3 twice: sandbox creation fails with the plugin's "one address per pod per card",
#      nothing is held for it
#   4. one pod per worker on cards 1 and 2, reaching each other over both cards (TCP)
#   and after every pod is gone, both workers' ENIs are as before the pods (fake-ec2's /fake/state).
#
# fake-ec2 runs on the host with --netns: each worker container's netns is named (ip netns attach) and
# fake-ec2 materializes the attached ENIs as links there and serves EC2 + that instance's IMDS on
# 127.0.0.1:1338 inside it, so the host-network agent finds both on its loopback, as on an instance.
#
# Usage: e2e/kind/run.sh            (KEEP=1 keeps the cluster and fake-ec2 for a look afterwards)
set -euo pipefail

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
	echo "skipped: no Docker engine (kind needs one); the same image runs on real kubelet + containerd nodes in \`make e2e-node\`"
	exit 0
fi
for tool in kind kubectl go curl jq ip; do
	command -v "$tool" >/dev/null 2>&1 || { echo "run.sh: $tool not found" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (ip netns attach, fake-ec2's links in the nodes' netns)" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=multinic-e2e
MULTUS_VERSION=v4.3.0
IMAGE=multinic:e2e
NS=kube-system
WORK=$(mktemp -d /tmp/multinic-kind-XXXXXX)
FAKE_PID=
declare -a NETNS=()
log() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

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

log "kind cluster $CLUSTER"
kind create cluster --config "$ROOT/e2e/kind/kind-config.yaml" --name "$CLUSTER" --wait 120s
WORKERS=($(kubectl get nodes -l multinic.io/e2e-node -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort))
[[ ${#WORKERS[@]} == 2 ]] || fail "want 2 workers, got ${WORKERS[*]}"

log "fake-ec2 (trn1.32xlarge x2) in the workers' netns"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$WORK/bin/" ./cmd/fake-ec2 ./cmd/multinic ./cmd/multinic-agent)
for w in "${WORKERS[@]}"; do
	pid=$(docker inspect -f '{{.State.Pid}}' "$w")
	ip netns attach "mnkind-$w" "$pid"
	NETNS+=("mnkind-$w")
done
"$WORK/bin/fake-ec2" --instance-type trn1.32xlarge --nodes 2 --netns "$(IFS=,; echo "${NETNS[*]}")" \
	--listen 127.0.0.1:1338 --fabric-prefix mnkindfab --ready-file "$WORK/fake-ec2.json" >"$WORK/fake-ec2.log" 2>&1 &
FAKE_PID=$!
for _ in $(seq 100); do [[ -s $WORK/fake-ec2.json ]] && break; sleep 0.1; done
[[ -s $WORK/fake-ec2.json ]] || { cat "$WORK/fake-ec2.log" >&2; fail "fake-ec2 did not start"; }
state() { ip netns exec "${NETNS[0]}" curl -fsS http://127.0.0.1:1338/fake/state; }
subnets=$(state | jq -r '[.subnets[] | select(.id | test("^subnet-0c")) ] | to_entries | map("\(.key)=\(.value.id)") | .[1:] | join(",")')

log "Multus $MULTUS_VERSION (thin)"
kubectl apply -f "https://raw.githubusercontent.com/k8snetworkplumbingwg/multus-cni/$MULTUS_VERSION/deployments/multus-daemonset.yml"
kubectl -n kube-system rollout status ds/kube-multus-ds --timeout=180s

log "multinic image and manifests"
(cd "$ROOT" && make image IMAGE="$IMAGE")
kind load image-archive "$ROOT/bin/multinic-image.tar" --name "$CLUSTER"
mkdir -p "$WORK/overlay"
cp -r "$ROOT/manifests" "$WORK/overlay/base"
cat >"$WORK/overlay/kustomization.yaml" <<KUST
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [base]
images:
- name: ghcr.io/multinic/multinic
  newName: ${IMAGE%:*}
  newTag: ${IMAGE##*:}
patches:
- target: {kind: ConfigMap, name: multinic-agent}
  patch: |-
    - {op: replace, path: /data/cluster-name, value: multinic-e2e}
- target: {kind: DaemonSet, name: multinic-agent}
  patch: |-
    - {op: add, path: /spec/template/spec/nodeSelector/multinic.io~1e2e-node-present, value: "true"}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: --ec2-endpoint=http://127.0.0.1:1338}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: --imds-endpoint=http://127.0.0.1:1338}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--managed-cards=1-7"}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--subnet-per-card=$subnets"}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: --surplus-delay=1s}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: AWS_ACCESS_KEY_ID, value: AKIDKIND}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: AWS_SECRET_ACCESS_KEY, value: kind}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: AWS_REGION, value: us-east-1}}
KUST
for w in "${WORKERS[@]}"; do kubectl label node "$w" multinic.io/e2e-node-present=true --overwrite; done
kubectl apply --server-side -k "$WORK/overlay"
kubectl -n kube-system rollout status ds/multinic-agent --timeout=180s

log "NADs and node resources"
for _ in $(seq 60); do
	[[ $(kubectl -n $NS get network-attachment-definitions -l app.kubernetes.io/managed-by=multinic-agent -o name | wc -l) == 14 ]] && break
	sleep 1
done
[[ $(kubectl -n $NS get network-attachment-definitions -l app.kubernetes.io/managed-by=multinic-agent -o name | wc -l) == 14 ]] ||
	fail "want 14 NADs (multinic-card-1..7 and -exclusive)"
for w in "${WORKERS[@]}"; do
	for c in 1 2 3 4 5 6 7; do
		v=$(kubectl get node "$w" -o jsonpath="{.status.capacity.multinic\.io/card-$c}")
		[[ -n $v && $v -gt 0 ]] || fail "node $w capacity multinic.io/card-$c = '$v', want > 0"
	done
done
enis() { state | jq -c --arg i "$1" '[.enis[] | select(.instanceId == $i) | {id, card, device, n: (.secondaryIps | length)}] | sort_by(.id)'; }
INSTANCES=($(jq -r '.instances[].id' "$WORK/fake-ec2.json"))
BASE=()
for i in "${INSTANCES[@]}"; do BASE+=("$(enis "$i")"); done

# pod NAME NODE CARD...: a pod on NODE asking for the exclusive NAD of each CARD (busybox, to run nc).
pod() {
	local name=$1 node=$2; shift 2
	local nets
	nets=$(printf "$NS/multinic-card-%s-exclusive," "$@"); nets=${nets%,}
	kubectl apply -f - <<POD
apiVersion: v1
kind: Pod
metadata:
  name: $name
  namespace: default
  annotations: {k8s.v1.cni.cncf.io/networks: "$nets"}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: busybox:1.36, command: [sleep, "3600"]}
POD
}
# check NAME CARD...: netN of the pod has one address, in card N's subnet, registered on an ENI of that
# card in fake-ec2, and network-status lists it with the ENI's MAC.
check() {
	local name=$1; shift
	kubectl wait --for=condition=Ready "pod/$name" --timeout=120s
	local status st i=1
	status=$(kubectl get pod "$name" -o jsonpath='{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}')
	st=$(state)
	for c in "$@"; do
		local ifn=net$i ip mac cidr
		ip=$(jq -r --arg n "$ifn" '.[] | select(.interface == $n) | .ips[0]' <<<"$status")
		mac=$(jq -r --arg n "$ifn" '.[] | select(.interface == $n) | .mac' <<<"$status")
		[[ $(kubectl exec "$name" -- ip -4 -o addr show dev "$ifn" | wc -l) == 1 ]] || fail "$name $ifn: want one address"
		kubectl exec "$name" -- ip -4 -o addr show dev "$ifn" | grep -q " $ip/" || fail "$name $ifn lacks $ip"
		jq -e --arg ip "$ip" --arg mac "$mac" --argjson c "$c" \
			'[.enis[] | select(.card == $c and .primaryIp == $ip and (.mac | ascii_downcase) == ($mac | ascii_downcase))] | length == 1' \
			<<<"$st" >/dev/null || fail "$name $ifn: $ip ($mac) is not an ENI's on card $c in fake-ec2"
		cidr=$(jq -r --arg s "$(jq -r --argjson c "$c" '.subnets[$c].id' <<<"$st")" '.subnets[] | select(.id == $s) | .cidr' <<<"$st")
		echo "$name $ifn = $ip ($mac) card $c subnet $cidr"
		i=$((i + 1))
	done
}
settle() {
	for _ in $(seq 90); do
		local same=1 k=0
		for i in "${INSTANCES[@]}"; do [[ $(enis "$i") == "${BASE[$k]}" ]] || same=0; k=$((k + 1)); done
		[[ $same == 1 ]] && { echo "settled: ENIs as before the pods"; return; }
		sleep 1
	done
	fail "ENIs not back to the state before the pods"
}
del() { kubectl delete pod "$@" --wait=true --timeout=120s; }

log "case 1: cards 1 to 7"
pod all-cards "${WORKERS[0]}" 1 2 3 4 5 6 7 && check all-cards 1 2 3 4 5 6 7 && del all-cards && settle
log "case 2: cards 2 and 5"
pod subset "${WORKERS[1]}" 2 5 && check subset 2 5 && del subset && settle
log "case 3: card 3 twice"
pod same-card "${WORKERS[0]}" 3 3
for _ in $(seq 60); do
	kubectl get events --field-selector involvedObject.name=same-card -o jsonpath='{.items[*].message}' |
		grep -q "one address per pod per card" && break
	sleep 1
done
kubectl get events --field-selector involvedObject.name=same-card -o jsonpath='{.items[*].message}' |
	grep -q "one address per pod per card" || fail "same-card: no sandbox error saying one address per pod per card"
del same-card && settle
log "case 4: pods on both workers over cards 1 and 2"
pod peer-a "${WORKERS[0]}" 1 2 && pod peer-b "${WORKERS[1]}" 1 2
check peer-a 1 2 && check peer-b 1 2
for ifn in net1 net2; do
	a=$(kubectl exec peer-a -- ip -4 -o addr show dev $ifn | awk '{print $4}' | cut -d/ -f1)
	b=$(kubectl exec peer-b -- ip -4 -o addr show dev $ifn | awk '{print $4}' | cut -d/ -f1)
	kubectl exec peer-b -- sh -c "nc -l -p 7001 -s $b -e cat >/dev/null 2>&1 &"
	sleep 1
	got=$(kubectl exec peer-a -- sh -c "echo hello-$ifn | nc -w 5 -s $a $b 7001")
	[[ $got == hello-$ifn ]] || fail "tcp $a -> $b over $ifn: got '$got'"
	echo "tcp peer-a $ifn $a -> peer-b $ifn $b: echoed"
done
del peer-a peer-b && settle
log "PASS"
