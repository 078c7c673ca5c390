#!/usr/bin/env bash
# bench/mount.sh: the mount benchmarks of issue 4, side by side in one run.
#
#  1. Cold `ls -lR` and `find` over a layer of 100,000 files (page cache,
#     dentries and inodes dropped before each run) on the nibble mount
#     (overlayfs over the layer's FUSE filesystem, as nibble mount composes
#     it; and the layer's FUSE filesystem alone) against the same tree
#     extracted to local disk, with overlayfs over it (one lower layer and
#     an empty one, as nibble composes a one-layer image) and without.
#  2. Memory of the serving process per mounted entry: its RSS growth after
#     mounting the layer and walking it once (`ls -lR`), after runtime.GC
#     and debug.FreeOSMemory, divided by the layer's entries; with the Go
#     runtime's memory classes and the top of a heap profile; then the same
#     in N more fresh processes, whose median is the figure checked.
#  3. Mount time and time to first byte of a small file on a fresh mount
#     (empty cache, caches dropped), and the bytes fetched for each, counted
#     by the layer and on the wire (linkproxy, no delay by default).
#
#  4. (--read-only, alone) Reading every file of the layer (find -type f |
#     xargs cat) with a warm chunk cache and the page cache dropped, on the
#     nibble image mount with FUSE passthrough (nibble's default) and
#     without (layerfs.WithoutPassthrough), against the same tree on local
#     disk, bare and under overlayfs; with the CPU time of the reader and
#     of each serving process.
#
# usage: bash bench/mount.sh [--runs N] [--files N] [--rtt DUR] [--prepare-only]
#                            [--memory-only] [--read-only]
#
# Needs root (mounts, drop_caches). The first run writes the input (a tar of
# the generated tree, by `go run ./bench/mount gen`), extracts it under
# $NIBBLE_BENCH_CACHE (default /var/tmp/nibble-bench), and converts it with
# `nibble convert` into registry storage there; later runs reuse them. Each
# measurement runs N times (default 3), interleaved, and the median is
# reported. The serving processes are `go run ./bench/mount serve`, which
# mounts as nibble mount does (internal/mount) without background fetching
# for parts 1-2 (`nibble mount --no-background`; ls and find read no file
# contents) and with it for part 3 (nibble mount's default). Installs
# docker-registry with apt if missing. --memory-only measures part 2 alone
# (one image mount, one cold ls -lR: a minute, for work on the index);
# --read-only measures part 4 alone (a few minutes).
# Results and how to read them: docs/benchmarks.md, "Mounts".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${NIBBLE_BENCH_CACHE:-/var/tmp/nibble-bench}
runs=3
files=100000
rtt=0s
prepare_only=false
memory_only=false
read_only=false

while (($#)); do
	case $1 in
	--runs) runs=${2:?--runs needs a number} && shift ;;
	--files) files=${2:?--files needs a number} && shift ;;
	--rtt) rtt=${2:?--rtt needs a duration, e.g. 20ms} && shift ;;
	--prepare-only) prepare_only=true ;;
	--memory-only) memory_only=true ;;
	--read-only) read_only=true ;;
	-h | --help)
		sed -n '2,41p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "mount.sh: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift
done
if ((EUID != 0)); then
	echo "mount.sh: needs root (mounts, /proc/sys/vm/drop_caches)" >&2
	exit 1
fi

log() { printf '==> %s\n' "$*" >&2; }

repo=bench/files
input=$cache/mount-$files.tar
info=$cache/mount-$files.info
tree=$cache/mount-$files.tree
src=$cache/mount-$files.oci
storage=$cache/mount-$files.registry
mkdir -p "$cache"

work=$(mktemp -d "$cache/mount-run.XXXXXX")
pids=()
declare -A sfd spid
cleanup() {
	local name pid m fd
	for name in "${!sfd[@]}"; do
		fd=${sfd[$name]}
		echo quit >&"$fd" 2>/dev/null || true
		exec {fd}>&- 2>/dev/null || true
	done
	for name in "${!spid[@]}"; do
		# EOF on stdin: the serving process unmounts and exits.
		timeout 20 tail --pid="${spid[$name]}" -f /dev/null 2>/dev/null || kill "${spid[$name]}" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	# Whatever is still mounted under the run directory, deepest first.
	for m in $(awk -v w="$work" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	# A server that was just killed may still be writing its cache.
	rm -rf "$work" 2>/dev/null || { sleep 2 && rm -rf "$work"; }
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building nibble, linkproxy, bench/mount and bench/mkoci"
(cd "$root" && go build -o "$work/nibble" ./cmd/nibble && go build -o "$work/linkproxy" ./cmd/linkproxy &&
	go build -o "$work/bm" ./bench/mount && go build -o "$work/mkoci" ./bench/mkoci)

bench=mount.sh
# shellcheck source=bench/registry.sh
. "$root/bench/registry.sh"
ensure_docker_registry

# start_proxy ARGS...: runs linkproxy in front of the registry and sets
# $proxy to its host:port; its output goes to $work/proxy.out.
start_proxy() {
	local pid
	"$work/linkproxy" -target "$reg" "$@" >"$work/proxy.out" 2>"$work/proxy.err" &
	pid=$!
	for _ in $(seq 100); do
		if [[ -s $work/proxy.out ]]; then
			pids+=("$pid")
			proxy=$(head -1 "$work/proxy.out")
			proxy_pid=$pid
			return
		fi
		sleep 0.05
	done
	cat "$work/proxy.err" >&2
	echo "mount.sh: linkproxy did not start" >&2
	exit 1
}

# wait_lines FILE N: waits until FILE has more than N lines and prints
# line N+1.
wait_lines() {
	local i
	for ((i = 0; i < 60000; i++)); do
		if (($(wc -l <"$1") > $2)); then
			sed -n "$(($2 + 1))p" "$1"
			return
		fi
		sleep 0.01
	done
	echo "mount.sh: no answer in $1" >&2
	exit 1
}

# proxy_stats: prints the proxy's counters and resets them (SIGUSR2).
proxy_stats() {
	local n
	n=$(wc -l <"$work/proxy.out")
	kill -USR2 "$proxy_pid"
	wait_lines "$work/proxy.out" "$n"
}

# stat_field LINE KEY: the value of KEY in a key=value line.
stat_field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

# start_serve NAME ARGS...: starts a serving process (bench/mount serve
# ARGS) that reads commands from a FIFO, waits for its "ready" line and
# sets $ready to it.
start_serve() {
	local name=$1 fd
	shift
	mkfifo "$work/$name.in"
	: >"$work/$name.out"
	"$work/bm" serve "$@" <"$work/$name.in" >"$work/$name.out" 2>"$work/$name.err" &
	spid[$name]=$!
	exec {fd}>"$work/$name.in"
	sfd[$name]=$fd
	for _ in $(seq 60000); do
		if [[ -s $work/$name.out ]]; then
			ready=$(head -1 "$work/$name.out")
			return
		fi
		if ! kill -0 "${spid[$name]}" 2>/dev/null; then
			cat "$work/$name.err" >&2
			echo "mount.sh: serving process $name exited" >&2
			exit 1
		fi
		sleep 0.01
	done
	echo "mount.sh: serving process $name did not mount" >&2
	exit 1
}

# ask NAME COMMAND: sends a command to a serving process and prints its
# answer.
ask() {
	local n
	n=$(wc -l <"$work/$1.out")
	echo "$2" >&"${sfd[$1]}"
	wait_lines "$work/$1.out" "$n"
}

# stop_serve NAME: unmounts and stops a serving process.
stop_serve() {
	local name=$1 fd=${sfd[$1]}
	ask "$name" quit >/dev/null
	exec {fd}>&-
	wait "${spid[$name]}" || true
	unset "sfd[$name]" "spid[$name]"
	rm -f "$work/$name.in"
}

prepare() {
	if [[ ! -s $info ]]; then
		log "writing $input ($files files)"
		"$work/bm" gen -files "$files" >"$input.tmp" 2>"$info.tmp"
		mv "$input.tmp" "$input"
		mv "$info.tmp" "$info"
	fi
	if [[ ! -e $tree.done ]]; then
		log "extracting $input to $tree"
		rm -rf "$tree"
		mkdir -p "$tree"
		tar -xf "$input" -C "$tree" --numeric-owner
		touch "$tree.done"
	fi
	make_layout "$input" "$src" 6
	fill_registry "$storage" "$src" "$repo"
}

reg=
prepare
if $prepare_only; then
	log "input ready: $storage, $tree"
	exit 0
fi
[[ -n $reg ]] || start_registry "$storage"
ref=$reg/$repo:latest
small=$(stat_field "$(cat "$info")" small)
small_size=$(stat_field "$(cat "$info")" small_size)
manifest=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/$repo/manifests/latest")
blob_bytes=$(jq -r '.layers[0].size' <<<"$manifest")
tar_bytes=$(stat -c %s "$input")

drop() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

# timed NAME CMD...: runs CMD once and appends "WALL CPU" (seconds; CPU is
# user + system of the command and its children) to $work/times.NAME;
# returns CMD's status.
timed() {
	local name=$1 TIMEFORMAT='%R %U %S' rc=0
	shift
	{ time "$@" 2>&3; } 3>&2 2>"$work/time.tmp" || rc=$?
	awk '{ printf "%.3f %.3f\n", $1, $2 + $3 }' "$work/time.tmp" >>"$work/times.$name"
	return $rc
}

# median NAME: "WALL CPU" of the run with the median wall time.
median() {
	sort -n "$work/times.$1" | awk '{ t[NR] = $0 } END { print t[int((NR + 1) / 2)] }'
}

# median_of FILE: the median of the numbers in FILE, one a line.
median_of() { sort -n "$1" | awk '{ t[NR] = $0 } END { print t[int((NR + 1) / 2)] }'; }

lsr() { ls -lR "$1" >/dev/null; }

# memory_run I: a fresh image-mode serving process mounts the image and
# walks it once (cold ls -lR); appends its RSS growth per entry, after a
# GC, to $work/mem_per_entry. The Go runtime now and then keeps 2 to 4 MiB
# of freed heap that debug.FreeOSMemory does not return (20 to 40 bytes
# per entry here), so the figure is taken in several processes.
memory_run() {
	local name=mem$1 r line
	mkdir -p "$work/$name.mnt"
	drop
	start_serve "$name" -ref "$ref" -dir "$work/$name.mnt" -root "$work/$name.root" -mode image
	r=$ready
	drop
	lsr "$work/$name.mnt"
	line=$(ask "$name" rss)
	stop_serve "$name"
	rm -rf "$work/$name.root"
	awk -v a="$(stat_field "$line" rss_kb)" -v b="$(stat_field "$r" rss0_kb)" -v n="$(stat_field "$r" entries)" \
		'BEGIN { printf "%.0f\n", (a - b) * 1024 / n }' >>"$work/mem_per_entry"
}
walk() { find "$1" >/dev/null; }

# heap_top: the top of the image-mode process's heap profile.
heap_top() {
	(cd "$root" && go tool pprof -top -inuse_space -nodecount=12 "$work/bm" "$work/heap.image.pprof" 2>/dev/null) |
		sed -n '/flat%/,$p' | sed 's/^/    /'
}

# --- Part 2 alone (--memory-only) -------------------------------------------

if $memory_only; then
	log "memory only: mounting the image, one cold ls -lR"
	mkdir -p "$work/image.mnt"
	drop
	start_serve image -ref "$ref" -dir "$work/image.mnt" -root "$work/image.root" -mode image
	entries=$(stat_field "$ready" entries)
	rss0=$(stat_field "$ready" rss0_kb)
	drop
	lsr "$work/image.mnt"
	line=$(ask image rss)
	ask image "heap $work/heap.image.pprof" >/dev/null
	echo "nibble mount memory ($(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$root" && git rev-parse --short HEAD)), $entries entries:"
	echo "  before mount $rss0 KiB (anon $(stat_field "$ready" anon0_kb) KiB); mounted $(stat_field "$ready" rss_mounted_gc_kb) KiB after GC, $(stat_field "$ready" rss_mounted_kb) KiB before"
	echo "  mount took $(stat_field "$ready" mount_us) us, $(stat_field "$ready" mount_cpu_us) us of CPU (one run; load $(cut -d' ' -f1-3 /proc/loadavg))"
	echo "  peak while mounting (VmHWM) $(stat_field "$ready" hwm_kb) KiB: $(awk -v a="$(stat_field "$ready" hwm_kb)" -v b="$rss0" -v n="$entries" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }') bytes/entry over the start"
	echo "  after one ls -lR: $(awk -v a="$(stat_field "$line" rss_kb)" -v b="$rss0" -v n="$entries" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }') bytes/entry"
	echo "         before the mount: anon_kb=$(stat_field "$ready" anon0_kb) heap_inuse=$(stat_field "$ready" heap_inuse0) gc_sys=$(stat_field "$ready" gc_sys0)"
	echo "         go runtime after the walk: ${line#rss }"
	heap_top
	stop_serve image
	exit 0
fi

# --- Part 4 alone (--read-only): reading every file, passthrough or not ------

# catall DIR: reads every regular file under DIR.
catall() { (cd "$1" && find . -type f -print0 | xargs -0 -n 2000 cat >/dev/null); }

if $read_only; then
	log "read: filling a chunk cache (background fetch), then mounting with and without passthrough"
	mkdir -p "$work/empty" "$work/local.mnt" "$work/pt.mnt" "$work/nopt.mnt"
	mount -t overlay overlay -o "ro,lowerdir=$tree:$work/empty" "$work/local.mnt"
	start_serve pt -ref "$ref" -dir "$work/pt.mnt" -root "$work/pt.root" -cache "$work/cache" -mode image -background
	for ((t = 0; t < 600; t++)); do
		line=$(ask pt missing)
		[[ $(stat_field "$line" members) != 0 ]] || break
		sleep 1
	done
	if [[ $(stat_field "$line" members) != 0 ]]; then
		echo "mount.sh: the cache is still missing members after 10 minutes: $line" >&2
		exit 1
	fi
	# Started on the full cache, so that its index knows every object.
	start_serve nopt -ref "$ref" -dir "$work/nopt.mnt" -root "$work/nopt.root" -cache "$work/cache" -mode image -no-passthrough
	log "read: checking every file's bytes on both mounts against the tree (also verifies the cache's objects in each process)"
	sums() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
	sum_local=$(sums "$tree")
	for d in "$work/pt.mnt" "$work/nopt.mnt"; do
		if [[ $(sums "$d") != "$sum_local" ]]; then
			echo "FAIL  $d does not hold the bytes $tree does" >&2
			exit 1
		fi
	done
	stats_file=.nibble-layer-stats.json
	pt_opens0=$(jq .passthroughOpens "$work/pt.root/m/0/$stats_file")
	rvariants=(local_bare local_overlay nibble_pt nibble_nopt)
	declare -A rdir=([local_bare]=$tree [local_overlay]=$work/local.mnt [nibble_pt]=$work/pt.mnt [nibble_nopt]=$work/nopt.mnt)
	declare -A rserve=([nibble_pt]=pt [nibble_nopt]=nopt)
	load_before=$(cut -d' ' -f1-3 /proc/loadavg)
	for ((i = 1; i <= runs; i++)); do
		# The order alternates, so that a drift of the machine's load
		# does not favour one side.
		order=("${rvariants[@]}")
		((i % 2)) || order=(nibble_nopt nibble_pt local_overlay local_bare)
		log "run $i of $runs: cold read of every file on ${order[*]}"
		for v in "${order[@]}"; do
			drop
			[[ -z ${rserve[$v]:-} ]] || c0=$(stat_field "$(ask "${rserve[$v]}" cpu)" cpu_us)
			timed "cat_$v" catall "${rdir[$v]}"
			[[ -z ${rserve[$v]:-} ]] || echo $(($(stat_field "$(ask "${rserve[$v]}" cpu)" cpu_us) - c0)) >>"$work/servecpu.$v"
		done
	done
	load_after=$(cut -d' ' -f1-3 /proc/loadavg)
	pt_opens=$(($(jq .passthroughOpens "$work/pt.root/m/0/$stats_file") - pt_opens0))
	nopt_opens=$(jq .passthroughOpens "$work/nopt.root/m/0/$stats_file")
	nfiles=$(stat_field "$(cat "$info")" files)
	stop_serve pt
	stop_serve nopt
	umount "$work/local.mnt"
	rm -rf "$cache/mount-$files.read.last"
	mkdir -p "$cache/mount-$files.read.last"
	cp "$work"/times.cat_* "$work"/servecpu.* "$cache/mount-$files.read.last/"

	cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	echo
	echo "nibble read benchmark: every file, warm chunk cache, page cache dropped ($(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$root" && git rev-parse --short HEAD))"
	echo "machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo), $(go version | awk '{ print $3 }'), $(uname -r)"
	echo "input:   $(cat "$info") (tar $tar_bytes bytes); eStargz layer $blob_bytes bytes"
	echo "disk:    $tree and the chunk cache on $(df -T "$tree" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
	echo "load:    $load_before before, $load_after after (1, 5, 15-minute load averages)"
	echo "times:   median of $runs runs, wall clock; find DIR -type f | xargs cat >/dev/null after sync; echo 3 >/proc/sys/vm/drop_caches"
	echo "passthrough opens during the runs: $pt_opens with passthrough ($nfiles files x $runs runs), $nopt_opens without"
	echo
	printf '%-46s %8s %10s %12s %8s  %s\n' "" "wall s" "reader cpu" "server cpu s" "vs disk" "each run: wall s"
	read -r base _ <<<"$(median cat_local_bare)"
	declare -A rlabel=(
		[local_bare]="local disk (ext4), no overlay"
		[local_overlay]="local disk + overlayfs"
		[nibble_pt]="nibble image, FUSE passthrough (default)"
		[nibble_nopt]="nibble image, without passthrough"
	)
	for v in "${rvariants[@]}"; do
		read -r t c <<<"$(median "cat_$v")"
		sc=-
		[[ ! -s $work/servecpu.$v ]] || sc=$(awk '{ printf "%.2f", $1 / 1e6 }' <<<"$(median_of "$work/servecpu.$v")")
		printf '%-46s %8.2f %10.2f %12s %7sx  %s\n' "${rlabel[$v]}" "$t" "$c" "$sc" "$(awk -v a="$t" -v b="$base" 'BEGIN { printf "%.2f", a / b }')" \
			"$(cut -d' ' -f1 "$work/times.cat_$v" | paste -sd' ')"
	done
	exit 0
fi

# --- Parts 1 and 2: ls -lR and find, memory -------------------------------

log "mounting: local overlay, nibble image (overlay over FUSE), nibble layer (FUSE)"
mkdir -p "$work/empty" "$work/local.mnt" "$work/image.mnt" "$work/layer.mnt"
mount -t overlay overlay -o "ro,lowerdir=$tree:$work/empty" "$work/local.mnt"
drop
start_serve image -ref "$ref" -dir "$work/image.mnt" -root "$work/image.root" -mode image
ready_image=$ready
start_serve layer -ref "$ref" -dir "$work/layer.mnt" -root "$work/layer.root" -mode layer
ready_layer=$ready
entries=$(stat_field "$ready_image" entries)

# Correctness first (untimed, warm): every mount lists the same names, and
# the same type, mode, size, mtime and link target of every non-directory.
log "checking that the four trees list the same entries"
listing() { (cd "$1" && find . ! -type d -printf '%p %y %m %s %T@ %l\n' | LC_ALL=C sort | sha256sum | cut -c1-16); }
sum_local=$(listing "$tree")
for d in "$work/local.mnt" "$work/image.mnt" "$work/layer.mnt"; do
	if [[ $(listing "$d") != "$sum_local" ]]; then
		echo "FAIL  $d does not list what $tree does" >&2
		exit 1
	fi
done
# The checks above warmed the serving processes' caches; take them down and
# mount afresh, so that the memory figure is of one mount and one walk.
stop_serve image
stop_serve layer
rm -rf "$work/image.root" "$work/layer.root"
drop
start_serve image -ref "$ref" -dir "$work/image.mnt" -root "$work/image.root" -mode image
ready_image=$ready
start_serve layer -ref "$ref" -dir "$work/layer.mnt" -root "$work/layer.root" -mode layer
ready_layer=$ready

variants=(local_bare local_overlay nibble_image nibble_layer)
declare -A vdir=([local_bare]=$tree [local_overlay]=$work/local.mnt [nibble_image]=$work/image.mnt [nibble_layer]=$work/layer.mnt)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for ((i = 1; i <= runs; i++)); do
	log "run $i of $runs: cold ls -lR and find on ${variants[*]}"
	for v in "${variants[@]}"; do
		drop
		timed "ls_$v" lsr "${vdir[$v]}"
		if ((i == 1)) && [[ $v == nibble_* ]]; then
			# Memory after mounting and walking once.
			name=${v#nibble_}
			ask "$name" rssnow >"$work/rssnow.$name"
			ask "$name" rss >"$work/rss.$name"
			ask "$name" "heap $work/heap.$name.pprof" >/dev/null
		fi
		timed "lswarm_$v" lsr "${vdir[$v]}"
		drop
		timed "find_$v" walk "${vdir[$v]}"
	done
done
stop_serve image
stop_serve layer
for ((i = 1; i <= runs; i++)); do
	log "run $i of $runs: memory of a fresh serving process after mounting and one cold ls -lR"
	memory_run "$i"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
umount "$work/local.mnt"

# --- Part 3: mount time and time to first byte ------------------------------

start_proxy -rtt "$rtt"
pref=$proxy/$repo:latest
log "fresh mounts through linkproxy (rtt $rtt): mount time, first byte of $small"
for ((i = 1; i <= runs; i++)); do
	for bg in off on; do
		mkdir -p "$work/fresh.mnt"
		rm -rf "$work/fresh.root"
		drop
		proxy_stats >/dev/null
		flags=()
		[[ $bg == off ]] || flags=(-background)
		start_serve fresh -ref "$pref" -dir "$work/fresh.mnt" -root "$work/fresh.root" -mode image "${flags[@]}"
		wire_mount=$(proxy_stats)
		tt=$(ask fresh "ttfb $small")
		wire_ttfb=$(proxy_stats)
		stop_serve fresh
		echo "$(stat_field "$ready" mount_us)" >>"$work/mount_us.$bg"
		echo "$(stat_field "$ready" fetched)" >>"$work/mount_fetched.$bg"
		echo "$(stat_field "$wire_mount" bytes_down) $(stat_field "$wire_mount" requests)" >>"$work/mount_wire.$bg"
		echo "$(stat_field "$tt" first_us)" >>"$work/ttfb_us.$bg"
		echo "$(stat_field "$tt" all_us)" >>"$work/ttfb_all_us.$bg"
		echo "$(stat_field "$tt" fetched)" >>"$work/ttfb_fetched.$bg"
		echo "$(stat_field "$wire_ttfb" bytes_down) $(stat_field "$wire_ttfb" requests)" >>"$work/ttfb_wire.$bg"
	done
done

# nibble mount itself (CLI, background server started on demand), if it
# works in this tree: wall time of the command, with a fresh root.
# cli_run I: one fresh nibble mount, timed, then nibble umount and the
# server's exit (killed if it lingers).
cli_run() {
	local croot=$work/cli.$1 addr=$work/cli.$1.sock pid
	mkdir -p "$work/cli.mnt"
	drop
	if ! timed cli "$work/nibble" mount --root "$croot" --address "$addr" "$pref" "$work/cli.mnt" 2>"$work/cli.err"; then
		sed -i '$d' "$work/times.cli"
		return 1
	fi
	pid=$("$work/nibble" status --json --address "$addr" 2>/dev/null | jq -r '.pid // empty')
	# The server's resident set as the mount returns (no forced GC; the
	# TOC's decoding is still in it) and 5 s later.
	[[ -z $pid ]] || awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" >>"$work/cli_rss"
	sleep 5
	[[ -z $pid ]] || awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" >>"$work/cli_rss5"
	if ! "$work/nibble" umount --address "$addr" "$work/cli.mnt" >/dev/null 2>>"$work/cli.err"; then
		umount -l "$work/cli.mnt" 2>/dev/null
	fi
	for _ in $(seq 100); do
		"$work/nibble" status --address "$addr" >/dev/null 2>&1 || return 0
		sleep 0.1
	done
	echo "the server did not exit after nibble umount" >>"$work/cli.err"
	[[ -z $pid ]] || kill "$pid" 2>/dev/null
	return 1
}
cli_mount=
if "$work/nibble" mount --help >/dev/null 2>&1; then
	log "nibble mount (the command) through linkproxy"
	for ((i = 1; i <= runs; i++)); do
		if ! cli_run "$i"; then
			log "nibble mount: $(tail -1 "$work/cli.err")"
			break
		fi
	done
	[[ ! -s $work/times.cli ]] || cli_mount=$(median cli | cut -d' ' -f1)
fi

# The raw measurements, kept for a look after the run.
rm -rf "$cache/mount-$files.last"
mkdir -p "$cache/mount-$files.last"
cp "$work"/times.* "$work"/mount_* "$work"/ttfb_* "$work"/rss* "$work"/cli_rss* "$work"/heap.*.pprof "$work/bm" "$cache/mount-$files.last/" 2>/dev/null || true

# --- Report ------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "nibble mount benchmark ($(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$root" && git rev-parse --short HEAD))"
echo "machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo), $(go version | awk '{ print $3 }'), $(uname -r)"
echo "input:   $(cat "$info") (tar $tar_bytes bytes); eStargz layer $blob_bytes bytes"
echo "disk:    $tree on $(df -T "$tree" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
echo "load:    $load_before before, $load_after after parts 1-2 (1, 5, 15-minute load averages)"
echo "times:   median of $runs runs, wall clock; cold = sync; echo 3 >/proc/sys/vm/drop_caches before the run"
echo
printf '%-44s %8s %8s %8s %8s %8s %8s\n' "" "ls -lR s" "cpu s" "vs ovl" "find s" "cpu s" "vs ovl"
read -r base_ls _ <<<"$(median ls_local_overlay)"
read -r base_find _ <<<"$(median find_local_overlay)"
declare -A label=(
	[local_bare]="local disk (ext4), no overlay"
	[local_overlay]="local disk + overlayfs (baseline)"
	[nibble_image]="nibble: overlayfs over layer FUSE"
	[nibble_layer]="nibble: layer FUSE alone"
)
for v in "${variants[@]}"; do
	read -r ls_t ls_cpu <<<"$(median "ls_$v")"
	read -r find_t find_cpu <<<"$(median "find_$v")"
	printf '%-44s %8.2f %8.2f %7sx %8.2f %8.2f %7sx\n' "${label[$v]}" "$ls_t" "$ls_cpu" "$(ratio "$ls_t" "$base_ls")" \
		"$find_t" "$find_cpu" "$(ratio "$find_t" "$base_find")"
done
echo "warm ls -lR (right after the cold one, caches kept):"
for v in "${variants[@]}"; do
	read -r w _ <<<"$(median "lswarm_$v")"
	printf '  %-42s %8.2f s\n' "${label[$v]}" "$w"
done
echo

per_entry() { # RSS_KB RSS0_KB
	awk -v a="$1" -v b="$2" -v n="$entries" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }'
}
echo "serving process memory ($entries entries; RSS after runtime.GC + debug.FreeOSMemory):"
for name in image layer; do
	r=ready_$name
	rss0=$(stat_field "${!r}" rss0_kb)
	rssm=$(stat_field "${!r}" rss_mounted_kb)
	rssmgc=$(stat_field "${!r}" rss_mounted_gc_kb)
	line=$(cat "$work/rss.$name")
	rssw=$(stat_field "$line" rss_kb)
	printf '  %-6s before mount %6d KiB; mounted %6d KiB (%6d before GC); after one ls -lR %6d KiB (%6d before GC): %s bytes/entry\n' \
		"$name" "$rss0" "$rssmgc" "$rssm" "$rssw" "$(stat_field "$(cat "$work/rssnow.$name")" rss_kb)" "$(per_entry "$rssw" "$rss0")"
	echo "         peak while mounting (VmHWM): $(stat_field "${!r}" hwm_kb) KiB, $(per_entry "$(stat_field "${!r}" hwm_kb)" "$rss0") bytes/entry over the start"
	echo "         before the mount: anon_kb=$(stat_field "${!r}" anon0_kb) heap_inuse=$(stat_field "${!r}" heap_inuse0) gc_sys=$(stat_field "${!r}" gc_sys0)"
	echo "         go runtime after the walk: ${line#rss }"
done
mem=$(median_of "$work/mem_per_entry")
echo "  image mode, $runs more fresh processes, each after one mount and one cold ls -lR: $(sort -n "$work/mem_per_entry" | paste -sd' ') bytes/entry (median $mem)"
echo "  heap profile (inuse_space) of the image-mode process after the walk, top 12:"
heap_top
echo

us_ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }
# median_pair FILE: the line of FILE ("BYTES REQUESTS") with the median
# bytes.
median_pair() { sort -n "$1" | awk '{ t[NR] = $0 } END { print t[int((NR + 1) / 2)] }'; }
echo "fresh mount of the image (empty cache, caches dropped; registry through linkproxy -rtt $rtt):"
echo "  wire bytes include HTTP headers and, for the mount, the manifest and config; layer bytes are what the"
echo "  layer fetched from its blob (footer and TOC, then file contents)"
for bg in off on; do
	read -r mw_b mw_r <<<"$(median_pair "$work/mount_wire.$bg")"
	read -r tw_b tw_r <<<"$(median_pair "$work/ttfb_wire.$bg")"
	if [[ $bg == off ]]; then
		echo "  without background fetch (nibble mount --no-background):"
	else
		echo "  with background fetch (nibble mount's default; it starts at once and competes with the read):"
	fi
	printf '    mount (remote.Open to overlay ready, in-process) %8s ms; layer bytes %s; wire %s bytes, %s requests\n' \
		"$(us_ms "$(median_of "$work/mount_us.$bg")")" "$(median_of "$work/mount_fetched.$bg")" "$mw_b" "$mw_r"
	printf '    first byte of %s (%s bytes) %8s ms (whole file %s ms); layer bytes %s; wire %s bytes, %s requests\n' \
		"$small" "$small_size" "$(us_ms "$(median_of "$work/ttfb_us.$bg")")" "$(us_ms "$(median_of "$work/ttfb_all_us.$bg")")" \
		"$(median_of "$work/ttfb_fetched.$bg")" "$tw_b" "$tw_r"
done
if [[ -n $cli_mount ]]; then
	printf '  nibble mount, the command (fresh root, starts its server): %.1f ms wall\n' "$(awk -v s="$cli_mount" 'BEGIN { print s * 1000 }')"
	if [[ -s $work/cli_rss ]]; then
		printf '  nibble serve RSS (no forced GC): %s KiB as nibble mount returns, %s KiB 5 s later (background fetch on)\n' \
			"$(median_of "$work/cli_rss")" "$(median_of "$work/cli_rss5")"
	fi
else
	echo "  nibble mount, the command: not measured (the command failed or is missing)"
fi
echo "  (layer blob $blob_bytes bytes)"
echo

check() { # NAME OK DETAIL
	if [[ $2 == 1 ]]; then
		echo "PASS  $1: $3"
	else
		echo "MISS  $1: $3"
	fi
}
r=$(ratio "$(median ls_nibble_image | cut -d' ' -f1)" "$base_ls")
check "cold ls -lR, nibble mount <= 1.5x local overlay [peer 5.5x]" "$(awk -v r="$r" 'BEGIN { print (r <= 1.5) }')" "${r}x"
r=$(ratio "$(median find_nibble_image | cut -d' ' -f1)" "$base_find")
check "cold find, nibble mount <= 2x local overlay [peer 6.5x]" "$(awk -v r="$r" 'BEGIN { print (r <= 2) }')" "${r}x"
check "serving process memory <= 150 bytes/entry [peer ~1,200]" "$(awk -v b="$mem" 'BEGIN { print (b <= 150) }')" "$mem bytes/entry (median of $runs processes)"
echo "PASS  the four trees list the same entries (names, types, modes, sizes, mtimes, link targets)"
