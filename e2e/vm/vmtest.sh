#!/usr/bin/env bash
# vmtest.sh - run Go test packages as root inside a throwaway QEMU VM that has the
# link types this host kernel lacks (ipvlan, dummy, 802.1q).
#
# Usage: e2e/vm/vmtest.sh [PACKAGE...]
#        e2e/vm/vmtest.sh --run PACKAGE [--] [ARG...]
#   PACKAGE  go package patterns, resolved from the current directory like `go test`
#            does. Default: every package of the module whose tests import
#            internal/nettest (the tests that need root and, maybe, the VM).
#   --run    build the main package PACKAGE (CGO_ENABLED=0) and run it as root in the VM
#            with ARGs, from the package's folder (read-only; /tmp is writable), its
#            output streamed live to this terminal; the kernel is kept quiet on the
#            console. `make demo` uses it when the host kernel lacks ipvlan.
#
# Environment:
#   MULTINIC_VM_CACHE         cache root for kernels and initramfs
#                             (default ${XDG_CACHE_HOME:-$HOME/.cache}/multinic/vm;
#                             one sub-folder per kernel package version)
#   MULTINIC_VM_TEST_TIMEOUT  -test.timeout of each test binary (default 5m)
#   MULTINIC_VM_TIMEOUT       wall-clock limit of the VM in seconds
#                             (default 120 + 300 per test binary)
#   MULTINIC_VM_TESTFLAGS     extra flags for every test binary, e.g. "-test.run TestX"
#   MULTINIC_VM_ACCEL         QEMU accelerator (default tcg: /dev/kvm is not usable here)
#   MULTINIC_VM_NET           none (default): the guest has no network interface; user: one virtio NIC
#                             on QEMU's user-mode network, configured as eth0 10.0.2.15/24 (no default
#                             route), through which the guest reaches the host's 127.0.0.1 at 10.0.2.2
#                             (e.g. an API server the host runs for the guest)
#   MULTINIC_VM_ENV           names (space-separated) of host environment variables to set in the guest,
#                             with their host values (the guest's repository copy is read-only: pass
#                             paths under the git-ignored .vmtest/, which the guest sees below /mnt/host)
#
# Inside the VM, tests see MULTINIC_IN_VM=1 and MULTINIC_BIN_DIR, a folder with the project's
# binaries (fake-ec2, multinic, multinic-agent) built here with CGO_ENABLED=0 (the guest has no Go).
#
# Exit status:
#   0  the VM ran and every test binary passed (--run: the program exited 0)
#   1  a test binary failed (or could not start) inside the VM (--run: the program
#      exited non-zero)
#   2  setup failed on the host: kernel lookup/download, initramfs, go test -c, usage
#   3  the VM crashed or failed: kernel panic, qemu error, guest setup (modprobe,
#      9p mount) failed, or no result reported
#   4  the VM timed out
#   130, 143  interrupted (SIGINT, SIGTERM)
#
# Host needs (Debian): qemu-system-x86 busybox-static cpio xz-utils, and root for
# `apt-get update` when the package lists are missing.
set -euo pipefail

# Modules the guest loads, in this order; their dependencies come from modules.dep.
# ifb sch_tbf sch_ingress act_mirred cls_u32: the fabric's per-card rate limit (internal/testing/fabric/tc.go).
# virtio_net: the NIC of MULTINIC_VM_NET=user.
readonly MODS="virtio_pci 9pnet_virtio 9p virtio_net ipvlan dummy 8021q macvlan veth bridge ifb sch_tbf sch_ingress act_mirred cls_u32"

log() { printf 'vmtest: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUNPKG=''
if [ "${1:-}" = --run ]; then
	[ $# -ge 2 ] || die "usage: $0 --run PACKAGE [--] [ARG...]"
	RUNPKG=$2
	shift 2
	if [ "${1:-}" = -- ]; then shift; fi
fi
CACHE_BASE=${MULTINIC_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multinic/vm}
TEST_TIMEOUT=${MULTINIC_VM_TEST_TIMEOUT:-5m}
ACCEL=${MULTINIC_VM_ACCEL:-tcg}
NET=${MULTINIC_VM_NET:-none}
case $NET in none | user) ;; *) die "MULTINIC_VM_NET=$NET: want none or user" ;; esac
GUEST_ENV=''
for v in ${MULTINIC_VM_ENV:-}; do
	[[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "MULTINIC_VM_ENV: $v is not a variable name"
	[ -n "${!v+x}" ] || die "MULTINIC_VM_ENV names $v, which is not set"
	GUEST_ENV+="export $v=$(printf %q "${!v}")"$'\n'
done

for tool in qemu-system-x86_64 busybox cpio xz dpkg-deb apt-get apt-cache go; do
	command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y --no-install-recommends qemu-system-x86 busybox-static cpio xz-utils)"
done

# Everything this run creates lives in TMP (host side) or RUN (binaries, shared with
# the guest over 9p); both go away on exit, and so does a qemu still running.
WORK=''
TMP=$(mktemp -d "${TMPDIR:-/tmp}/multinic-vmtest.XXXXXX")
mkdir -p "$ROOT/.vmtest"
RUN=$(mktemp -d "$ROOT/.vmtest/run.XXXXXX")
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local job
	for job in $(jobs -p); do kill "$job" 2>/dev/null || true; done
	wait || true
	rm -rf "$TMP" "$RUN" ${WORK:+"$WORK"}
	rmdir "$ROOT/.vmtest" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- kernel + base initramfs, cached per kernel package version -------------------

apt_updated=0
apt_update_once() { # at most one `apt-get update` per run
	[ "$apt_updated" = 0 ] || return 1
	apt_updated=1
	log "running apt-get update"
	apt-get update -qq >&2 || return 1
}

PKG='' VER=''
lookup_kernel() { # sets PKG and VER from the current archive lists
	PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
	[ -n "$PKG" ] || return 1
	VER=$(apt-cache show --no-all-versions "$PKG" 2>/dev/null | awk '$1 == "Version:" {print $2; exit}')
	[ -n "$VER" ]
}

cache_ok() { [ -s "$1/stamp" ] && [ "$(cat "$1/stamp")" = "$MODS" ]; }

# prepare DIR: extract the kernel and the modules from the .deb in $WORK, make the
# base initramfs, then move $WORK to DIR. Runs under set -e: never call it in a condition.
prepare() {
	local dir=$1 kver off m f dep M R
	log "preparing $PKG $VER in $dir"
	mkdir "$WORK/k" "$WORK/r"
	dpkg-deb --fsys-tarfile "$WORK"/*.deb | tar -x -C "$WORK/k" --wildcards \
		'./boot/vmlinuz-*' './lib/modules/*/kernel/net/*' './lib/modules/*/kernel/drivers/net/*' \
		'./lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/fs/*' './lib/modules/*/modules.*'
	rm -f "$WORK"/*.deb
	kver=$(ls "$WORK/k/lib/modules")
	find "$WORK/k/lib/modules" -name '*.ko.xz' -exec xz -d {} +
	busybox depmod -b "$WORK/k" "$kver"

	# An uncompressed ELF vmlinux boots directly (PVH): no firmware, no decompression.
	off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$WORK/k/boot/vmlinuz-$kver" | head -1 | cut -d: -f1 || true)
	if [ -n "$off" ]; then
		tail -c +$((off + 1)) "$WORK/k/boot/vmlinuz-$kver" | xz -dc >"$WORK/vmlinux" 2>/dev/null || true
	fi
	if [ "$(head -c 4 "$WORK/vmlinux" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; then
		mv "$WORK/vmlinux" "$WORK/kernel"
	else
		log "no ELF payload in vmlinuz-$kver: booting the bzImage"
		rm -f "$WORK/vmlinux"
		cp "$WORK/k/boot/vmlinuz-$kver" "$WORK/kernel"
	fi

	# Base initramfs: busybox and the modules with their dependencies. /init is
	# added per run, so the cache does not go stale when this script changes it.
	M="$WORK/k/lib/modules/$kver" R="$WORK/r/lib/modules/$kver"
	mkdir -p "$WORK/r/bin" "$R"
	cp "$(command -v busybox)" "$WORK/r/bin/busybox"
	cp "$M/modules.dep" "$R/"
	for m in $MODS; do
		dep=$(grep -E "(^|/)${m}\.ko:" "$M/modules.dep") || die "module $m is not in $PKG"
		for f in ${dep/:/}; do
			[ -f "$M/$f" ] || die "module $f (needed by $m) was not extracted"
			mkdir -p "$R/$(dirname "$f")"
			cp "$M/$f" "$R/$f"
		done
	done
	(cd "$WORK/r" && find . | cpio -o -H newc --quiet) | gzip -1 >"$WORK/base.cpio.gz"
	rm -rf "$WORK/k" "$WORK/r"
	printf '%s\n' "$kver" >"$WORK/kver"
	printf '%s\n' "$MODS" >"$WORK/stamp" # written last: marks the folder complete
	rm -rf "$dir"
	mv "$WORK" "$dir"
	WORK=''
}

mkdir -p "$CACHE_BASE"
exec 9>"$CACHE_BASE/.lock" # one preparation at a time per cache
flock -w 900 9 || die "cannot lock $CACHE_BASE/.lock"
if ! lookup_kernel && apt_update_once; then lookup_kernel || true; fi
if [ -n "$PKG" ]; then
	KDIR="$CACHE_BASE/${PKG#linux-image-}_$VER"
	if ! cache_ok "$KDIR"; then
		WORK=$(mktemp -d "$CACHE_BASE/.build.XXXXXX")
		if ! (cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root "$PKG" >&2); then
			# Stale lists name a package the archive no longer has: refresh once, retry.
			if ! { apt_update_once && lookup_kernel; }; then die "cannot download $PKG"; fi
			KDIR="$CACHE_BASE/${PKG#linux-image-}_$VER"
			cache_ok "$KDIR" || (cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root "$PKG" >&2) || die "cannot download $PKG"
		fi
		if ! cache_ok "$KDIR"; then prepare "$KDIR"; fi
	fi
else
	# shellcheck disable=SC2012 # our own folder names
	KDIR=$(ls -dt "$CACHE_BASE"/*/ 2>/dev/null | while read -r d; do
		if cache_ok "${d%/}"; then echo "${d%/}"; break; fi
	done || true)
	[ -n "$KDIR" ] || die "cannot look up linux-image-amd64 (apt-cache depends) and nothing is cached in $CACHE_BASE"
	log "kernel lookup failed: using cached $(basename "$KDIR")"
fi
flock -u 9
exec 9>&-

# --- test binaries ------------------------------------------------------------------

if [ -z "$RUNPKG" ] && [ $# -eq 0 ]; then
	mapfile -t pkgs < <(cd "$ROOT" && go list -e -f '{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}}' ./... |
		awk '/ github.com\/multinic\/multinic\/internal\/nettest( |$)/ {print $1}')
	[ ${#pkgs[@]} -gt 0 ] || die "no package tests import internal/nettest: name the packages"
	set -- "${pkgs[@]}"
fi

# The project's binaries, for tests that run them (internal/testing/harness): static, in RUN/bin, which the guest sees
# as $MULTINIC_BIN_DIR (the VM has no Go toolchain to build them).
mkdir "$RUN/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$RUN/bin/" ./cmd/fake-ec2 ./cmd/multinic ./cmd/multinic-agent) >&2 ||
	die "go build of the binaries failed"

n=0
if [ -n "$RUNPKG" ]; then
	# go list from the caller's directory, so a relative pattern means what it means to go build.
	read -r pkg dir name < <(go list -f '{{.ImportPath}} {{.Dir}} {{.Name}}' "$RUNPKG") || die "go list $RUNPKG"
	[ "$name" = main ] || die "$pkg is not a main package"
	case $dir/ in "$ROOT"/*) ;; *) die "$pkg is outside $ROOT" ;; esac
	rel=${dir#"$ROOT"} rel=${rel#/}
	CGO_ENABLED=0 go build -trimpath -o "$RUN/prog" "$pkg" >&2 || die "go build $pkg failed"
	n=1
	{
		printf 'cd %q || exit 1\n' "/mnt/host/$rel"
		printf 'exec %q' "/mnt/host/${RUN#"$ROOT"/}/prog"
		if [ $# -gt 0 ]; then printf ' %q' "$@"; fi
		printf '\n'
	} >"$TMP/tests.sh"
else
	# go list from the caller's directory, so relative patterns mean what they mean to go test.
	listing=$(go list -f '{{.ImportPath}} {{.Dir}} {{len .TestGoFiles}} {{len .XTestGoFiles}}' "$@") || die "go list $*"
	{
		echo 'rc=0'
		while read -r pkg dir nt nx; do
			if [ "$((nt + nx))" = 0 ]; then log "$pkg has no tests: skipped"; continue; fi
			case $dir/ in "$ROOT"/*) ;; *) die "$pkg is outside $ROOT" ;; esac
			rel=${dir#"$ROOT"} rel=${rel#/}
			bin=$(printf '%s' "${rel:-root}" | tr / _).test
			CGO_ENABLED=0 go test -c -o "$RUN/$bin" "$pkg" >&2 || die "go test -c $pkg failed"
			n=$((n + 1))
			printf 'runtest %q %q %q\n' "$pkg" "/mnt/host/$rel" "/mnt/host/${RUN#"$ROOT"/}/$bin"
		done <<<"$listing"
		# shellcheck disable=SC2016 # expanded by the guest
		echo 'exit $rc'
	} >"$TMP/tests.sh"
	[ "$n" -gt 0 ] || die "no test binaries to run"
fi

# --- per-run initramfs: the base plus /init and the test list ----------------------

NONCE=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$TMP/r"
cp "$TMP/tests.sh" "$TMP/r/tests.sh"
cat >"$TMP/r/vmtest.env" <<EOF
NONCE=$NONCE
MODS="$MODS"
TEST_TIMEOUT=$TEST_TIMEOUT
TESTFLAGS=$(printf %q "${MULTINIC_VM_TESTFLAGS:-}")
MULTINIC_BIN_DIR=$(printf %q "/mnt/host/${RUN#"$ROOT"/}/bin")
RUNPROG=${RUNPKG:+1}
NET=$NET
EOF
printf '%s' "$GUEST_ENV" >"$TMP/r/guest.env"
cat >"$TMP/r/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/tmp TMPDIR=/tmp MULTINIC_IN_VM=1
. /vmtest.env
export MULTINIC_BIN_DIR
. /guest.env
mkdir -p /proc /sys /dev /tmp /run /var /mnt/host
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -s /run /var/run
ln -s /proc/self/fd /dev/fd
exec </dev/null >/dev/console 2>&1
# --run: only the program's output on the console (kernel messages stay in dmesg).
if [ -n "$RUNPROG" ]; then echo 1 >/proc/sys/kernel/printk; fi

result() { # result 0|1|2: isa-debug-exit makes qemu exit with 2*N+1 (1, 3, 5)
	echo "VMTEST-RESULT-$NONCE rc=$1"
	printf "\\00$1" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
	poweroff -f
}
setup_failed() { echo "vmtest: guest setup failed: $*"; result 2; }

for m in $MODS; do modprobe "$m" || setup_failed "modprobe $m"; done
ip link del dummy0 2>/dev/null
ip link set lo up
if [ "$NET" = user ]; then
	{ ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0; } || setup_failed "configure eth0 (MULTINIC_VM_NET=user)"
fi
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro host0 /mnt/host || setup_failed "mount 9p"

runtest() { # runtest PKG DIR BINARY
	echo "=== vmtest: $1"
	(cd "$2" && "$3" -test.v -test.timeout="$TEST_TIMEOUT" $TESTFLAGS)
	r=$?
	if [ "$r" = 0 ]; then echo "--- vmtest: ok $1"; else echo "--- vmtest: FAIL $1 (exit $r)"; rc=1; fi
}
(. /tests.sh) # ends with `exit $rc` (--run: execs the program): a subshell, so /init goes on to report it
r=$?
if [ -n "$RUNPROG" ] && [ "$r" != 0 ]; then echo "vmtest: the program exited $r"; fi
if [ "$r" = 0 ]; then result 0; else result 1; fi
EOF
chmod 755 "$TMP/r/init"
(cd "$TMP/r" && find . | cpio -o -H newc --quiet) >"$TMP/run.cpio"
# The kernel reads an uncompressed archive only at a 4-byte boundary; zeros are skipped.
base_size=$(stat -c %s "$KDIR/base.cpio.gz")
{ cat "$KDIR/base.cpio.gz"; head -c $(((4 - base_size % 4) % 4)) /dev/zero; cat "$TMP/run.cpio"; } >"$TMP/initrd"

# --- boot -------------------------------------------------------------------------

WALL=${MULTINIC_VM_TIMEOUT:-$((120 + 300 * n))}
if [ -n "$RUNPKG" ]; then
	what="$pkg" failed="$pkg failed" hide='/^VMTEST-RESULT-/d'
else
	what="$n test binaries" failed="tests failed" hide=''
fi
NIC=none
if [ "$NET" = user ]; then NIC=user,model=virtio-net-pci; fi
log "booting $(basename "$KDIR") for $what (limit ${WALL}s, network $NET)"
# A job, so that cleanup can stop it: TERM to timeout is passed on to qemu.
timeout --foreground -k 5 "$WALL" qemu-system-x86_64 -accel "$ACCEL" -smp 1 -m 1024 \
	-nodefaults -display none -serial stdio -no-reboot -nic "$NIC" \
	-kernel "$KDIR/kernel" -initrd "$TMP/initrd" \
	-append 'console=ttyS0 quiet panic=-1 oops=panic' \
	-device isa-debug-exit,iobase=0xf4,iosize=0x04 \
	-virtfs "local,path=$ROOT,mount_tag=host0,security_model=none,readonly=on" </dev/null 2>&1 |
	sed -u 's/\r//g' | tee "$TMP/console.log" | sed -u "$hide" &
rc=0
wait $! || rc=$? # pipefail: the status of timeout, i.e. of qemu
guest=$(sed -n "s/^VMTEST-RESULT-$NONCE rc=//p" "$TMP/console.log" | tail -1)

if [ "$rc" = 1 ] && [ "$guest" = 0 ]; then
	log "PASS ($what)"
	exit 0
elif [ "$rc" = 3 ] && [ -n "$guest" ]; then
	log "FAIL: $failed inside the VM"
	exit 1
elif [ "$rc" = 5 ] && [ -n "$guest" ]; then
	log "VM FAILED: guest setup failed (modules or 9p mount, see above)"
	exit 3
elif grep -q '^qemu-system-x86_64: terminating on signal' "$TMP/console.log"; then
	log "VM STOPPED: qemu was interrupted (qemu exit $rc)"
	exit 130
elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
	log "VM TIMED OUT after ${WALL}s (MULTINIC_VM_TIMEOUT)"
	exit 4
elif grep -q 'Kernel panic' "$TMP/console.log"; then
	log "VM CRASHED: kernel panic (qemu exit $rc)"
	exit 3
else
	log "VM CRASHED: no result from the guest (qemu exit $rc)"
	exit 3
fi
