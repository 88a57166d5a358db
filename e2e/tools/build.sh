#!/usr/bin/env bash
# build.sh - build the real binaries the e2e runs (kube-apiserver, etcd, Multus, the reference CNI plugins
# and cnitool; for the real-node e2e also kubelet, kube-scheduler, kube-controller-manager, kubectl,
# containerd, runc and crictl) from the Go module proxy, once, into a cache outside the checkout, then link
# them into ./bin/tools (git-ignored).
#
# Usage: e2e/tools/build.sh [COMPONENT...]
#   COMPONENT  any of: kube-apiserver etcd multus cni-plugins cnitool  (default: these, what make e2e runs)
#              kube-node containerd runc crictl                        (the real-node e2e adds these)
#              node                                                    (all of the above)
#   runc builds with CGO and libseccomp (Debian: libseccomp-dev pkg-config); not with MULTINIC_TOOLS_STATIC.
#
# Each component is pinned by its wrapper module (e2e/tools/<module>/go.mod + go.sum) and lands in
#   $CACHE/<component>-<version>-<go version>/      e.g. kube-apiserver-v1.37.2-go1.26.8/kube-apiserver
# A folder is only ever created complete (built in a temp folder, then renamed), so an interrupted build
# leaves nothing behind; a folder holding every expected binary means "cached" and the component is
# skipped. Builds are serialized by a lock in the cache root.
#
# Environment:
#   MULTINIC_TOOLS_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/multinic/tools)
#   MULTINIC_TOOLS_DIR    where to link the binaries (default <repo>/bin/tools); the e2e reads the same
#   GO                    the go command (default go)
#   MULTINIC_TOOLS_STATIC set to 1: build with CGO_ENABLED=0 (static binaries, for the test VM's guest, which
#                         has no libc) into $CACHE/<component>-<version>-<go version>-static/, linked into
#                         MULTINIC_TOOLS_DIR (default <repo>/bin/tools-static). Unset: the usual binaries.
#
# Cold build (empty Go build cache) on 2 busy cores: ~8 min for everything, of which kube-apiserver
# ~6.5 min and ~2.4 GB RAM; the others mostly reuse its compiled dependencies (~40 s etcd, ~45 s multus,
# ~5 s plugins + cnitool after it). Warm (everything cached): about half a second.
# The real-node components on top, cold: see README "make e2e-node" for the measured times.
set -euo pipefail

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS_SRC=$ROOT/e2e/tools
GO=${GO:-go}
CACHE=${MULTINIC_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multinic/tools}
STATIC=${MULTINIC_TOOLS_STATIC:-}
SUFFIX=
if [[ $STATIC == 1 ]]; then
	export CGO_ENABLED=0
	SUFFIX=-static
	OUT=${MULTINIC_TOOLS_DIR:-$ROOT/bin/tools-static}
else
	OUT=${MULTINIC_TOOLS_DIR:-$ROOT/bin/tools}
fi
GOVERSION=$("$GO" env GOVERSION) || die "go not found (GO=$GO)"

# The reference plugins the e2e and later tests use (plugins/<kind>/<name> in containernetworking/plugins).
CNI_PLUGINS="main/bridge main/host-device main/ipvlan main/loopback main/macvlan main/ptp main/vlan
  ipam/host-local ipam/static meta/tuning"
ALL="kube-apiserver etcd multus cni-plugins cnitool"
NODE="$ALL kube-node containerd runc crictl"
# The binaries of components that build several (the others build one, named like the component).
KUBE_NODE_BINS="kubelet kube-scheduler kube-controller-manager kubectl"
CONTAINERD_BINS="containerd containerd-shim-runc-v2 ctr"
MULTUS_BINS="multus multus-daemon multus-shim thin_entrypoint install_multus passthru-cni"

# modversion MODULE_DIR MODULE_PATH: the version of MODULE_PATH that the wrapper module pins.
modversion() {
	local v
	v=$(cd "$TOOLS_SRC/$1" && "$GO" list -mod=readonly -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$2") ||
		die "read the version of $2 from e2e/tools/$1/go.mod"
	[[ -n $v ]] || die "e2e/tools/$1/go.mod does not pin $2"
	printf '%s' "$v"
}

# gobuild MODULE_DIR OUTDIR LDFLAGS PKG...: build PKGs from the wrapper module into OUTDIR.
gobuild() {
	local mod=$1 out=$2 ldflags=$3
	shift 3
	(cd "$TOOLS_SRC/$mod" && "$GO" build -mod=readonly -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/" "$@")
}

# build_<component> DIR: build that component's binaries into DIR, using $VERSION.
# kubebuild DIR CMD...: build k8s.io/kubernetes/cmd/CMD... with the version stamped as the release does.
kubebuild() {
	local out=$1 v=k8s.io/component-base/version major minor c pkgs=()
	shift
	IFS=. read -r major minor _ <<<"${VERSION#v}"
	for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	gobuild kubernetes "$out" "-s -w -X $v.gitVersion=$VERSION -X $v.gitMajor=$major -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
		"${pkgs[@]}"
}
build_kube-apiserver() { kubebuild "$1" kube-apiserver; }
# One go build for the four, so their shared dependencies compile once and link in parallel.
build_kube-node() { kubebuild "$1" $KUBE_NODE_BINS; }
build_etcd() { gobuild etcd "$1" "-s -w" .; } # the wrapper module's main package, named etcd
build_multus() {
	local c pkgs=()
	for c in $MULTUS_BINS; do pkgs+=("gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/$c"); done
	gobuild multus "$1" "-s -w -X gopkg.in/k8snetworkplumbingwg/multus-cni.v4/pkg/multus.version=$VERSION" "${pkgs[@]}"
}
build_containerd() {
	local c pkgs=()
	for c in $CONTAINERD_BINS; do pkgs+=("github.com/containerd/containerd/v2/cmd/$c"); done
	gobuild containerd "$1" "-s -w -X github.com/containerd/containerd/v2/version.Version=$VERSION" "${pkgs[@]}"
}
# runc needs libseccomp (cgo) for the default seccomp profile containerd gives every container.
build_runc() {
	[[ $STATIC != 1 ]] || die "runc: no static build (it links libseccomp); build it without MULTINIC_TOOLS_STATIC"
	pkg-config --exists libseccomp || die "runc: libseccomp not found (Debian: apt-get install libseccomp-dev pkg-config)"
	(cd "$TOOLS_SRC/runc" && CGO_ENABLED=1 "$GO" build -mod=readonly -trimpath -buildvcs=false -tags seccomp \
		-ldflags "-s -w" -o "$1/runc" github.com/opencontainers/runc)
}
build_crictl() {
	gobuild cri-tools "$1" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$VERSION" sigs.k8s.io/cri-tools/cmd/crictl
}
build_cni-plugins() {
	local p pkgs=()
	for p in $CNI_PLUGINS; do pkgs+=("github.com/containernetworking/plugins/plugins/$p"); done
	gobuild cni "$1" "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$VERSION" "${pkgs[@]}"
}
build_cnitool() { gobuild cni "$1" "-s -w" github.com/containernetworking/cni/cnitool; }

# bins NAME: the binaries a component's cache folder must hold; a folder missing one is rebuilt
# (e.g. after a plugin was added to CNI_PLUGINS).
bins() {
	case $1 in
	cni-plugins) for p in $CNI_PLUGINS; do printf '%s\n' "${p#*/}"; done ;;
	kube-node) printf '%s\n' $KUBE_NODE_BINS ;;
	containerd) printf '%s\n' $CONTAINERD_BINS ;;
	multus) printf '%s\n' $MULTUS_BINS ;;
	*) printf '%s\n' "$1" ;;
	esac
}

# is_complete DIR NAME: DIR holds every binary of component NAME.
is_complete() {
	local b
	[[ -d $1 ]] || return 1
	for b in $(bins "$2"); do [[ -x $1/$b ]] || return 1; done
}

# describe NAME: set VERSION for a component from its wrapper module.
describe() {
	case $1 in
	kube-apiserver | kube-node) VERSION=$(modversion kubernetes k8s.io/kubernetes) ;;
	etcd) VERSION=$(modversion etcd go.etcd.io/etcd/server/v3) ;;
	multus) VERSION=$(modversion multus gopkg.in/k8snetworkplumbingwg/multus-cni.v4) ;;
	cni-plugins) VERSION=$(modversion cni github.com/containernetworking/plugins) ;;
	cnitool) VERSION=$(modversion cni github.com/containernetworking/cni) ;;
	containerd) VERSION=$(modversion containerd github.com/containerd/containerd/v2) ;;
	runc) VERSION=$(modversion runc github.com/opencontainers/runc) ;;
	crictl) VERSION=$(modversion cri-tools sigs.k8s.io/cri-tools) ;;
	*) die "unknown component $1 (want one of: $NODE, or node)" ;;
	esac
}

mkdir -p "$CACHE" "$OUT" || die "create $CACHE and $OUT"
# One build at a time per cache: a second run waits, then finds everything cached.
exec 9>"$CACHE/.lock"
flock -w 3600 9 || die "lock $CACHE/.lock: another build.sh held it for an hour"

tmp=
trap '[[ -z $tmp ]] || rm -rf "$tmp"' EXIT # an interrupted build leaves no half folder behind
trap 'exit 130' INT TERM
total_start=$SECONDS
components=()
for name in ${*:-$ALL}; do
	if [[ $name == node ]]; then components+=($NODE); else components+=("$name"); fi
done
for name in "${components[@]}"; do
	describe "$name"
	dir=$CACHE/$name-$VERSION-$GOVERSION$SUFFIX
	if is_complete "$dir" "$name"; then
		log "$name $VERSION ($GOVERSION): cached in $dir"
	else
		[[ ! -e $dir ]] || log "$name $VERSION: $dir lacks a binary, rebuilding"
		log "$name $VERSION ($GOVERSION): building into $dir ..."
		start=$SECONDS
		tmp=$(mktemp -d "$CACHE/.$name.XXXXXX")
		"build_$name" "$tmp" || die "$name $VERSION: build failed"
		chmod 0755 "$tmp"
		rm -rf "$dir"
		mv -T "$tmp" "$dir"
		tmp=
		log "$name $VERSION: built in $((SECONDS - start))s ($(du -sh "$dir" | cut -f1))"
	fi
	for bin in "$dir"/*; do
		ln -sfn "$bin" "$OUT/$(basename "$bin")"
	done
done
find "$OUT" -maxdepth 1 -xtype l -delete # links into cache folders of other versions that are gone
log "all tools in $OUT ($((SECONDS - total_start))s)"
printf '%s\n' "$OUT"
