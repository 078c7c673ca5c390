#!/usr/bin/env bash
# bench/cat.sh: cold sequential `nibble cat` of one large random-data file,
# side by side with `curl` of the same layer blob, from the Debian
# docker-registry: through the link-emulation proxy (20 ms round trip,
# 1 Gbit/s) and on loopback without it. Also counts what nibble puts on the
# wire (bytes, requests, request sizes) against the blob's size.
#
# usage: bash bench/cat.sh [--runs N] [--size SIZE] [--rtt DUR] [--rate RATE]
#                          [--root-dir DIR] [--prepare-only]
#
# The first run writes the input (a tar holding SIZE bytes of seeded random
# data, default 512MiB) and converts it with `nibble convert` into registry
# storage cached under $NIBBLE_BENCH_CACHE (default /var/tmp/nibble-bench);
# later runs reuse it. Each measurement runs N times (default 3), interleaved,
# and the median is reported. Every `nibble cat` is cold: a fresh, empty
# --root under --root-dir (default: the cache directory, on disk).
# Installs docker-registry with apt if missing. Results and how to read
# them: docs/benchmarks.md.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${NIBBLE_BENCH_CACHE:-/var/tmp/nibble-bench}
runs=3
size=512MiB
rtt=20ms
rate=1gbit
root_dir=
prepare_only=false

while (($#)); do
	case $1 in
	--runs) runs=${2:?--runs needs a number} && shift ;;
	--size) size=${2:?--size needs a size, e.g. 512MiB} && shift ;;
	--rtt) rtt=${2:?--rtt needs a duration, e.g. 20ms} && shift ;;
	--rate) rate=${2:?--rate needs a rate, e.g. 1gbit} && shift ;;
	--root-dir) root_dir=${2:?--root-dir needs a directory} && shift ;;
	--prepare-only) prepare_only=true ;;
	-h | --help)
		sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "cat.sh: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift
done

log() { printf '==> %s\n' "$*" >&2; }

repo=bench/random
file=data/random.bin
input=$cache/cat-$size.tar
src=$cache/cat-$size.oci
storage=$cache/cat-$size.registry
mkdir -p "$cache"
root_dir=${root_dir:-$cache}

work=$(mktemp -d "$cache/cat-run.XXXXXX")
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building nibble, linkproxy and the input generator"
(cd "$root" && go build -o "$work/nibble" ./cmd/nibble && go build -o "$work/linkproxy" ./cmd/linkproxy &&
	go build -o "$work/gen" ./bench/cat && go build -o "$work/mkoci" ./bench/mkoci)

bench=cat.sh
# shellcheck source=bench/registry.sh
. "$root/bench/registry.sh"
ensure_docker_registry

# start_proxy NAME ARGS...: runs linkproxy in front of the registry and
# sets $proxy to its host:port; its output goes to $work/NAME.out.
start_proxy() {
	local name=$1 pid
	shift
	"$work/linkproxy" -target "$reg" "$@" >"$work/$name.out" 2>"$work/$name.err" &
	pid=$!
	for _ in $(seq 100); do
		if [[ -s $work/$name.out ]]; then
			pids+=("$pid")
			proxy=$(head -1 "$work/$name.out")
			proxy_pid=$pid
			return
		fi
		sleep 0.05
	done
	cat "$work/$name.err" >&2
	echo "cat.sh: linkproxy did not start" >&2
	exit 1
}

# proxy_stats: prints the proxy's counters and resets them (SIGUSR2).
proxy_stats() {
	local before
	before=$(wc -l <"$work/proxy.out")
	kill -USR2 "$proxy_pid"
	for _ in $(seq 200); do
		if (($(wc -l <"$work/proxy.out") > before)); then
			tail -1 "$work/proxy.out"
			return
		fi
		sleep 0.01
	done
	echo "cat.sh: linkproxy printed no counters" >&2
	exit 1
}

# stat_field LINE KEY: the value of KEY in a key=value line.
stat_field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

prepare() {
	if [[ ! -s $input.sha256 ]]; then
		log "writing $input ($size of random data)"
		"$work/gen" -size "$size" -name "$file" >"$input.tmp" 2>"$input.sha256.tmp"
		mv "$input.tmp" "$input"
		mv "$input.sha256.tmp" "$input.sha256"
	fi
	make_layout "$input" "$src" 1
	fill_registry "$storage" "$src" "$repo"
}

reg=
prepare
if $prepare_only; then
	log "input ready: $storage"
	exit 0
fi
[[ -n $reg ]] || start_registry "$storage"

manifest=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
	"http://$reg/v2/$repo/manifests/latest")
layer=$(jq -r '.layers[0].digest' <<<"$manifest")
blob_bytes=$(jq -r '.layers[0].size' <<<"$manifest")
file_bytes=$(tar -tvf "$input" "$file" | awk '{ print $3 }')
want_sum=$(cat "$input.sha256")

start_proxy proxy -rtt "$rtt" -rate "$rate" -records

# Warm the registry's page cache: both clients then read the blob from memory.
curl -fsS -o /dev/null "http://$reg/v2/$repo/blobs/$layer"

# Correctness first (untimed): nibble cat through the proxy writes the file.
log "checking nibble cat's output (sha256)"
got_sum=$("$work/nibble" cat --root "$work/check" "$proxy/$repo:latest" "$file" | sha256sum | awk '{ print $1 }')
rm -rf "$work/check"
if [[ $got_sum != "$want_sum" ]]; then
	echo "FAIL  nibble cat wrote sha256 $got_sum, want $want_sum" >&2
	exit 1
fi
proxy_stats >/dev/null

# reg_cpu: the registry's CPU time so far (user + system, seconds).
reg_cpu() {
	awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$reg_pid/stat"
}

# timed NAME CMD...: runs CMD once and appends "WALL CPU REGCPU" (seconds;
# CPU is user + system of the command and its children, REGCPU the
# registry's during the run) to $work/times.NAME.
timed() {
	local name=$1 TIMEFORMAT='%R %U %S' r0 r1
	shift
	r0=$(reg_cpu)
	{ time "$@" 2>&3; } 3>&2 2>"$work/time.tmp"
	r1=$(reg_cpu)
	awk -v r="$(awk -v a="$r0" -v b="$r1" 'BEGIN { print b - a }')" \
		'{ printf "%.3f %.3f %.3f\n", $1, $2 + $3, r }' "$work/time.tmp" >>"$work/times.$name"
}

# median NAME: "WALL CPU REGCPU" of the run with the median wall time.
median() {
	sort -n "$work/times.$1" | awk '{ t[NR] = $0 } END { print t[int((NR + 1) / 2)] }'
}

curl_blob() { # HOST
	curl -fsS -o /dev/null "http://$1/v2/$repo/blobs/$layer"
}
nibble_cat() { # ROOT HOST
	"$work/nibble" cat --root "$1" "$2/$repo:latest" "$file" >/dev/null
}
# cold_cat NAME HOST: times nibble cat with a fresh, empty root.
cold_cat() {
	cat_root=$(mktemp -d "$root_dir/cat-root.XXXXXX")
	timed "$1" nibble_cat "$cat_root" "$2"
	rm -rf "$cat_root"
	cat_root=
}
cat_root=
trap 'cleanup; [[ -z $cat_root ]] || rm -rf "$cat_root"' EXIT
mkdir -p "$root_dir"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 1; i <= runs; i++)); do
	log "run $i of $runs: curl and nibble cat, through the proxy and on loopback"
	timed curl_proxy curl_blob "$proxy"
	proxy_stats >>"$work/stats.curl_proxy"
	cold_cat nibble_proxy "$proxy"
	if ((i < runs)); then
		proxy_stats >>"$work/stats.nibble_proxy"
	else
		# The last run's request records are printed when the proxy stops.
		kill -TERM "$proxy_pid"
		wait "$proxy_pid" || true
		awk 'NR > 1 && /^bytes_up=/ { s = $0 } END { print s }' "$work/proxy.out" >>"$work/stats.nibble_proxy"
	fi
	timed curl_loop curl_blob "$reg"
	cold_cat nibble_loop "$reg"
done
log "nibble cat with a warm cache, on loopback"
warm_root=$work/warm
nibble_cat "$warm_root" "$reg"
for ((i = 1; i <= runs; i++)); do
	timed nibble_warm nibble_cat "$warm_root" "$reg"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

read -r curl_proxy_t curl_proxy_cpu curl_proxy_reg <<<"$(median curl_proxy)"
read -r nibble_proxy_t nibble_proxy_cpu nibble_proxy_reg <<<"$(median nibble_proxy)"
read -r curl_loop_t curl_loop_cpu curl_loop_reg <<<"$(median curl_loop)"
read -r nibble_loop_t nibble_loop_cpu nibble_loop_reg <<<"$(median nibble_loop)"
read -r nibble_warm_t nibble_warm_cpu nibble_warm_reg <<<"$(median nibble_warm)"

# Wire counters: the median run's (by bytes down) of each client.
wire() { # NAME: "BYTES_DOWN REQUESTS CONNS" of the median run
	while read -r line; do
		echo "$(stat_field "$line" bytes_down) $(stat_field "$line" requests) $(stat_field "$line" conns)"
	done <"$work/stats.$1" | sort -n | awk '{ t[NR] = $0 } END { print t[int((NR + 1) / 2)] }'
}
read -r curl_down curl_reqs curl_conns <<<"$(wire curl_proxy)"
read -r nibble_down nibble_reqs nibble_conns <<<"$(wire nibble_proxy)"

# Request records of the last nibble run through the proxy: blob range
# requests, their sizes, and how many ran at once on average.
grep -E '^GET .*/blobs/' "$work/proxy.out" >"$work/records" || true
read -r blob_reqs req_min req_med req_max req_sum took_sum <<<"$(
	sed -E 's/.* bytes=([0-9]+) .* took=([^ ]+)$/\1 \2/' "$work/records" | sort -n | awk '
		function secs(d) {
			if (sub(/ms$/, "", d)) return d / 1e3
			if (sub(/(µs|us)$/, "", d)) return d / 1e6
			if (sub(/ns$/, "", d)) return d / 1e9
			m = 0
			if (match(d, /^[0-9]+m/)) { m = substr(d, 1, RLENGTH - 1); d = substr(d, RLENGTH + 1) }
			sub(/s$/, "", d)
			return m * 60 + d
		}
		{ b[NR] = $1; s += $1; t += secs($2) }
		END {
			n = NR
			printf "%d %d %d %d %d %.3f\n", n, b[1], b[int((n + 1) / 2)], b[n], s, t
		}')"

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
mbps() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / t / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "nibble cat benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo), $(go version | awk '{ print $3 }'), $(uname -r)"
echo "input:   one file of $size random data ($file_bytes bytes); eStargz layer $blob_bytes bytes, $layer"
echo "link:    linkproxy -rtt $rtt -rate $rate; loopback: the registry directly"
echo "root:    a fresh --root under $root_dir ($(df -T "$root_dir" | awk 'NR == 2 { print $2 }')) for every cold run"
echo "load:    $load_before before, $load_after after (1, 5, 15-minute load averages)"
echo "times:   median of $runs runs, wall clock; MB/s = bytes delivered (file for nibble, blob for curl) / wall, MB = 1e6 bytes"
echo "         cpu s: the client's user + system time; reg cpu s: the registry's during the same run (both share the CPUs)"
echo
printf '%-36s %8s %8s %10s %8s %7s\n' "" "wall s" "cpu s" "reg cpu s" "MB/s" "vs curl"
row() { # LABEL WALL CPU REGCPU BYTES CURL_WALL
	printf '%-36s %8.2f %8.2f %10.2f %8s %7s\n' "$1" "$2" "$3" "$4" "$(mbps "$5" "$2")" \
		"${6:+$(ratio "$(mbps "$5" "$2")" "$(mbps "$blob_bytes" "$6")")x}"
}
row "curl, proxy $rtt $rate" "$curl_proxy_t" "$curl_proxy_cpu" "$curl_proxy_reg" "$blob_bytes" ""
row "nibble cat cold, proxy $rtt $rate" "$nibble_proxy_t" "$nibble_proxy_cpu" "$nibble_proxy_reg" "$file_bytes" "$curl_proxy_t"
row "curl, loopback" "$curl_loop_t" "$curl_loop_cpu" "$curl_loop_reg" "$blob_bytes" ""
row "nibble cat cold, loopback" "$nibble_loop_t" "$nibble_loop_cpu" "$nibble_loop_reg" "$file_bytes" "$curl_loop_t"
row "nibble cat warm cache, loopback" "$nibble_warm_t" "$nibble_warm_cpu" "$nibble_warm_reg" "$file_bytes" "$curl_loop_t"
echo
echo "on the wire through the proxy (median run; bytes down include HTTP headers):"
printf '  %-10s %12s bytes down (%sx the blob), %s requests, %s connections\n' \
	curl "$curl_down" "$(ratio "$curl_down" "$blob_bytes")" "$curl_reqs" "$curl_conns"
printf '  %-10s %12s bytes down (%sx the blob), %s requests, %s connections\n' \
	nibble "$nibble_down" "$(ratio "$nibble_down" "$blob_bytes")" "$nibble_reqs" "$nibble_conns"
echo "  nibble's blob GETs (last run): $blob_reqs, body bytes min $req_min, median $req_med, max $req_max, total $req_sum;"
echo "  mean requests in flight: $(awk -v t="$took_sum" -v w="$nibble_proxy_t" 'BEGIN { printf "%.1f", t / w }') (sum of request times / wall)"
echo

check() { # NAME OK DETAIL
	if [[ $2 == 1 ]]; then
		echo "PASS  $1: $3"
	else
		echo "MISS  $1: $3"
	fi
}
r=$(ratio "$(mbps "$file_bytes" "$nibble_proxy_t")" "$(mbps "$blob_bytes" "$curl_proxy_t")")
check "through the proxy, nibble cat >= 0.9x curl" "$(awk -v r="$r" 'BEGIN { print (r >= 0.9) }')" "${r}x"
s=$(mbps "$file_bytes" "$nibble_loop_t")
check "on loopback, nibble cat >= 400 MB/s" "$(awk -v s="$s" 'BEGIN { print (s >= 400) }')" "$s MB/s"
echo "PASS  nibble cat wrote the file's bytes (sha256 $want_sum)"
