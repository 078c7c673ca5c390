#!/usr/bin/env bash
# bench/convert.sh: conversion throughput and output size of `nibble convert`
# between OCI layouts, side by side with plain single-threaded `gzip -6` of
# the same tar, on a Debian bookworm root filesystem with python3.
#
# usage: bash bench/convert.sh [--prepare-only] [--runs N]
#
# The first run builds the input (debootstrap, a few minutes; needs root and
# the Debian mirror) and caches it under $NIBBLE_BENCH_CACHE
# (default /var/tmp/nibble-bench); later runs reuse it. Results and how to
# read them: docs/benchmarks.md.
#
# Environment:
#   NIBBLE_BENCH_CACHE   cache directory (default /var/tmp/nibble-bench)
#   NIBBLE_BENCH_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${NIBBLE_BENCH_CACHE:-/var/tmp/nibble-bench}
mirror=${NIBBLE_BENCH_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
rootfs_tar=$cache/$suite-python3.tar
src=$cache/$suite-python3.oci
runs=3
prepare_only=false

while (($#)); do
	case $1 in
	--prepare-only) prepare_only=true ;;
	--runs)
		runs=${2:?--runs needs a number}
		shift
		;;
	-h | --help)
		sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "convert.sh: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift
done

log() { printf '==> %s\n' "$*" >&2; }

# prepare_tar builds the root filesystem tar once: debootstrap, then a tar
# with entries in name order, numeric owners and no atime/ctime, so the same
# tree always gives the same bytes.
prepare_tar() {
	[[ -s $rootfs_tar ]] && return
	mkdir -p "$cache"
	if ! command -v debootstrap >/dev/null; then
		log "installing debootstrap"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	fi
	local dir=$cache/rootfs.tmp
	rm -rf "$dir"
	log "debootstrap --variant=minbase --include=python3 $suite (a few minutes)"
	debootstrap --variant=minbase --include=python3 "$suite" "$dir" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
		tail -20 "$cache/debootstrap.log" >&2
		return 1
	}
	# As Debian's official images do: no package lists or apt caches.
	rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
	log "writing $rootfs_tar"
	(cd "$dir" && find . -mindepth 1 -maxdepth 1 -printf '%P\0' | LC_ALL=C sort -z |
		tar --null -T - --sort=name --numeric-owner --format=pax \
			--pax-option=delete=atime,delete=ctime --xattrs -cf "$rootfs_tar.tmp")
	mv "$rootfs_tar.tmp" "$rootfs_tar"
	rm -rf "$dir"
}

# prepare_src turns the tar into a one-layer OCI layout (gzip -6 layer), the
# input of `nibble convert`.
prepare_src() {
	[[ -s $src/index.json ]] && return
	log "writing $src"
	rm -rf "$src.tmp"
	(cd "$root" && go run ./bench/mkoci -tar "$rootfs_tar" -out "$src.tmp" -tag latest >/dev/null)
	mv "$src.tmp" "$src"
}

prepare_tar
prepare_src
if $prepare_only; then
	log "input ready: $src"
	exit 0
fi

work=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "building nibble and helpers"
(cd "$root" && go build -o "$work/nibble" ./cmd/nibble && go build -o "$work/ociinfo" ./bench/ociinfo &&
	go build -o "$work/buildlayer" ./bench/buildlayer)

# timeone NAME CMD...: runs CMD once and appends "WALL USER SYS" (seconds)
# to $work/times.NAME.
timeone() {
	local name=$1 TIMEFORMAT='%R %U %S'
	shift
	{ time "$@" 2>&3; } 3>&2 2>>"$work/times.$name"
}

# median NAME: prints "WALL CPU" (CPU: user + system) of NAME's run with
# the median wall time.
median() {
	awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }' "$work/times.$1" | sort -n |
		awk '{ t[NR] = $0 } END { print t[int((NR + 1) / 2)] }'
}

layer_size() { "$work/ociinfo" "$1" | awk '$1 == "layer" { s += $3 } END { print s }'; }
manifest_digest() { "$work/ociinfo" "$1" | awk '$1 == "manifest" { print $2 }'; }

# Warm the page cache so the first timed run does not pay for the disk.
cat "$rootfs_tar" "$src"/blobs/sha256/* >/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
tar_bytes=$(stat -c %s "$rootfs_tar")
tar_entries=$(tar -tf "$rootfs_tar" | wc -l)
src_bytes=$(layer_size "$src")

gzip_run() { gzip -6 -c "$rootfs_tar" >"$work/plain.tar.gz"; }
build_run() { "$work/buildlayer" -tar "$rootfs_tar" >"$work/build.out"; }
convert_to() { # DIR [FLAGS...]
	local dir=$1
	shift
	rm -rf "$dir"
	"$work/nibble" convert "$@" "oci:$src" "oci:$dir" </dev/null >/dev/null
}
gz_run() { convert_to "$work/gz"; }
gz1_run() { GOMAXPROCS=1 convert_to "$work/gz1"; }
zstd_run() { convert_to "$work/zstd" --zstd; }

# Rounds interleave the commands, so that each sees the same share of
# whatever else the machine is doing.
for ((round = 1; round <= runs; round++)); do
	log "round $round of $runs: gzip -6, format.Build, nibble convert (default, GOMAXPROCS=1, --zstd)"
	timeone gzip gzip_run
	timeone build build_run
	timeone gz gz_run
	timeone gz1 gz1_run
	timeone zstd zstd_run
done
read -r gzip_time gzip_cpu <<<"$(median gzip)"
read -r build_time build_cpu <<<"$(median build)"
read -r gz_time gz_cpu <<<"$(median gz)"
read -r gz1_time gz1_cpu <<<"$(median gz1)"
read -r zstd_time zstd_cpu <<<"$(median zstd)"
gzip_bytes=$(stat -c %s "$work/plain.tar.gz")
build_bytes=$(awk '{ print $2 }' "$work/build.out")
gz_bytes=$(layer_size "$work/gz")
gz_digest=$(manifest_digest "$work/gz")
gz1_digest=$(manifest_digest "$work/gz1")
zstd_bytes=$(layer_size "$work/zstd")
zstd_digest=$(manifest_digest "$work/zstd")

log "digests with GOMAXPROCS=2 (gzip) and GOMAXPROCS=1 (zstd)"
GOMAXPROCS=2 convert_to "$work/gz2"
gz2_digest=$(manifest_digest "$work/gz2")
GOMAXPROCS=1 convert_to "$work/zstd1" --zstd
zstd1_digest=$(manifest_digest "$work/zstd1")

# The converted layer must still be an ordinary tar.gz holding every entry.
gz_layer=$("$work/ociinfo" "$work/gz" | awk '$1 == "layer" { sub("sha256:", "", $2); print $2 }')
gz_entries=$(tar -tzf "$work/gz/blobs/sha256/$gz_layer" | wc -l)

mbps() { awk -v b="$tar_bytes" -v t="$1" 'BEGIN { printf "%.1f", b / t / 1e6 }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "nibble convert benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo), $(go version | awk '{ print $3 }'), $(uname -r)"
echo "input:   Debian $suite minbase + python3: tar $(mb "$tar_bytes") MB, $tar_entries entries; source layer (gzip -6) $(mb "$src_bytes") MB"
echo "load:    $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after (1, 5, 15-minute load averages)"
echo "times:   median of $runs interleaved runs, wall clock; MB/s = uncompressed tar MB (1e6 bytes) per second"
echo
printf '%-34s %7s %7s %7s %10s %7s %7s\n' "" "wall s" "cpu s" "MB/s" "output MB" "speed" "size"
row() { # LABEL WALL CPU BYTES
	printf '%-34s %7.2f %7.2f %7s %10s %6sx %7s\n' "$1" "$2" "$3" "$(mbps "$2")" "$(mb "$4")" \
		"$(ratio "$gzip_time" "$2")" "$(ratio "$4" "$gzip_bytes")"
}
row "gzip -6 (single thread)" "$gzip_time" "$gzip_cpu" "$gzip_bytes"
row "format.Build alone (gzip)" "$build_time" "$build_cpu" "$build_bytes"
row "nibble convert (gzip)" "$gz_time" "$gz_cpu" "$gz_bytes"
row "nibble convert (gzip) GOMAXPROCS=1" "$gz1_time" "$gz1_cpu" "$gz_bytes"
row "nibble convert --zstd" "$zstd_time" "$zstd_cpu" "$zstd_bytes"
echo "(MB/s and speed from wall time; speed: gzip -6 wall / wall; size: output / gzip -6 output; format.Build alone:"
echo " the layer encoder in-process on the tar, without reading the source layer or writing a layout)"
echo

status=0
check() { # NAME OK DETAIL
	if [[ $2 == 1 ]]; then
		echo "PASS  $1: $3"
	else
		echo "MISS  $1: $3"
	fi
}
speedup=$(ratio "$gzip_time" "$gz_time")
growth=$(awk -v a="$gz_bytes" -v b="$gzip_bytes" 'BEGIN { printf "%+.2f", (a / b - 1) * 100 }')
check "throughput >= 2x gzip -6" "$(awk -v s="$speedup" 'BEGIN { print (s >= 2) }')" "${speedup}x"
check "output <= gzip -6 + 3%" "$(awk -v g="$growth" 'BEGIN { print (g <= 3) }')" "${growth}%"
check "valid tar.gz with every entry" "$(((gz_entries >= tar_entries) ? 1 : 0))" \
	"tar -tz lists $gz_entries entries (input $tar_entries, plus TOC and landmark)"
if [[ $gz1_digest == "$gz_digest" && $gz2_digest == "$gz_digest" ]]; then
	echo "PASS  reproducible gzip: GOMAXPROCS=1, 2 and default give $gz_digest"
else
	echo "FAIL  reproducible gzip: GOMAXPROCS=1 $gz1_digest, 2 $gz2_digest, default $gz_digest"
	status=1
fi
if [[ $zstd1_digest == "$zstd_digest" ]]; then
	echo "PASS  reproducible zstd: GOMAXPROCS=1 and default give $zstd_digest"
else
	echo "FAIL  reproducible zstd: GOMAXPROCS=1 $zstd1_digest, default $zstd_digest"
	status=1
fi
exit $status
