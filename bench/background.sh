#!/usr/bin/env bash
# bench/background.sh: background fetching after `nibble mount`, on the two
# benchmark images: the 100,000-file layer of bench/mount.sh (98k chunks of
# small files) and the 512 MiB random file of bench/cat.sh (large chunks).
#
# For each image and run: a fresh root, `nibble mount` (the command, its
# serving process started on demand) against the Debian docker-registry on
# loopback, nothing read; then `nibble status --json` every 0.2 s until
# the mount is "complete" (every chunk in the cache). Reports the time from the mount's return to the
# whole image in the cache (the quiet period of 3 s included), the rate
# over the bytes fetched, the serving process's CPU time, and its peak
# resident set (VmHWM) against its resident set as the mount returned.
#
# usage: bash bench/background.sh [--runs N]
#
# Needs root (mounts). Reuses the registry storage that bench/mount.sh and
# bench/cat.sh write under $NIBBLE_BENCH_CACHE (default
# /var/tmp/nibble-bench); run those once first (their --prepare-only is
# enough for mount.sh). Results: docs/benchmarks.md, "Background fetching".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${NIBBLE_BENCH_CACHE:-/var/tmp/nibble-bench}
runs=3
while (($#)); do
	case $1 in
	--runs) runs=${2:?--runs needs a number} && shift ;;
	-h | --help)
		sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "background.sh: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift
done
if ((EUID != 0)); then
	echo "background.sh: needs root (mounts)" >&2
	exit 1
fi
bench=background.sh
log() { printf '==> %s\n' "$*" >&2; }

work=$(mktemp -d "$cache/background-run.XXXXXX")
pids=()
addr=$work/nibble.sock
cleanup() {
	umount -l "$work/mnt" 2>/dev/null || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/registry.sh
source "$root/bench/registry.sh"
ensure_docker_registry
(cd "$root" && go build -o "$work/nibble" ./cmd/nibble)
mkdir -p "$work/mnt"

# one NAME REPO: one fresh mount of REPO from STORAGE, measured;
# prints "seconds bytes cpu_seconds rss_kib hwm_kib".
one() {
	local repo=$2 pid st start end fetched cpu rss hwm
	rm -rf "$work/root"
	"$work/nibble" mount --root "$work/root" --address "$addr" "$reg/$repo" "$work/mnt"
	start=$(date +%s.%N)
	pid=$("$work/nibble" status --json --address "$addr" | jq -r '.pid')
	rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
	while :; do
		st=$("$work/nibble" status --json --address "$addr")
		fetched=$(jq '.mounts[0].fetchedBytes' <<<"$st")
		[[ $(jq '.mounts[0].complete' <<<"$st") != true ]] || break
		if (($(date +%s) - ${start%.*} > 600)); then
			echo "$bench: $1: not complete after 600 s: $st" >&2
			exit 1
		fi
		sleep 0.2
	done
	end=$(date +%s.%N)
	hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
	cpu=$(awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$pid/stat")
	"$work/nibble" umount --address "$addr" "$work/mnt" >/dev/null
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	awk -v s="$start" -v e="$end" -v b="$fetched" -v c="$cpu" -v r="$rss" -v h="$hwm" \
		'BEGIN { printf "%.2f %d %s %d %d\n", e - s, b, c, r, h }'
}

median() { sort -n -k1,1 "$1" | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }

results=()
for img in mount-100000:bench/files:latest cat-512MiB:bench/random:latest; do
	name=${img%%:*} repo=${img#*:}
	storage=$cache/$name.registry
	if [[ ! -e $storage.done ]]; then
		echo "$bench: no $storage; run bench/mount.sh --prepare-only and bench/cat.sh first" >&2
		exit 1
	fi
	start_registry "$storage"
	log "$name: $runs fresh mounts, background fetch to the end"
	: >"$work/$name.runs"
	for ((i = 1; i <= runs; i++)); do
		one "$name" "$repo" | tee -a "$work/$name.runs" >&2
	done
	results+=("$name $(median "$work/$name.runs")")
	kill "$reg_pid" 2>/dev/null || true
done

echo
echo "nibble background fetch benchmark ($(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$root" && git rev-parse --short HEAD))"
echo "machine: $(nproc) CPUs, $(go version | awk '{ print $3 }'), $(uname -r); docker-registry on loopback, no proxy"
echo "median of $runs runs (by time); time from nibble mount's return (3 s quiet period included)"
echo
printf '%-14s %8s %10s %8s %8s %12s %12s\n' image "time s" "MB" "MB/s" "cpu s" "RSS at mount" "peak RSS"
for r in "${results[@]}"; do
	read -r name secs bytes cpu rss hwm <<<"$r"
	awk -v n="$name" -v s="$secs" -v b="$bytes" -v c="$cpu" -v r="$rss" -v h="$hwm" 'BEGIN {
		printf "%-14s %8.2f %10.1f %8.1f %8.2f %9.1f MB %9.1f MB\n", n, s, b / 1e6, b / 1e6 / (s > 3 ? s - 3 : s), c, r / 1024, h / 1024 }'
done
echo "(MB/s counts from the end of the quiet period)"
