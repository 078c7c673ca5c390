# Shared by the benchmark scripts (sourced): the Debian docker-registry,
# run on loopback with a config of its own. Callers set $work (a scratch
# directory) and the array $pids (processes to stop on exit), and name
# themselves in $bench for messages.

# ensure_docker_registry installs the docker-registry package if missing.
ensure_docker_registry() {
	command -v docker-registry >/dev/null && return
	echo "installing docker-registry" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
	# The package's own service listens on all interfaces with htpasswd
	# auth; the benchmarks run their own instance.
	systemctl disable --now docker-registry >/dev/null 2>&1 || true
}

# start_registry STORAGE: runs docker-registry on a free loopback port with
# its own config (filesystem storage in STORAGE, no auth) and sets $reg to
# its host:port once /v2/ answers, and $reg_pid to its process.
start_registry() {
	local storage=$1 try port cfg pid
	for try in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 12000))
		cfg=$work/registry-$port.yml
		cat >"$cfg" <<-EOF
			version: 0.1
			log:
			  level: warn
			  accesslog:
			    disabled: true
			storage:
			  filesystem:
			    rootdirectory: "$storage"
			  maintenance:
			    uploadpurging:
			      enabled: false
			http:
			  addr: "127.0.0.1:$port"
			  secret: nibble-bench
		EOF
		docker-registry serve "$cfg" >"$work/registry.log" 2>&1 &
		pid=$!
		for _ in $(seq 100); do
			if curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
				pids+=("$pid")
				reg=127.0.0.1:$port
				reg_pid=$pid
				return
			fi
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	cat "$work/registry.log" >&2
	echo "$bench: docker-registry did not start" >&2
	exit 1
}

# make_layout TAR SRC LEVEL: once, an OCI layout SRC (tag latest) of one
# layer, TAR compressed with gzip -LEVEL, by $work/mkoci.
make_layout() {
	local tar=$1 src=$2 level=$3
	[[ -s $src/index.json ]] && return
	echo "==> writing $src (gzip -$level layer)" >&2
	rm -rf "$src.tmp"
	"$work/mkoci" -tar "$tar" -out "$src.tmp" -tag latest -level "$level" -cmd true >/dev/null
	mv "$src.tmp" "$src"
}

# fill_registry STORAGE SRC REPO: once (STORAGE.done records it), converts
# the OCI layout SRC (tag latest) with $work/nibble into a registry whose
# storage is STORAGE, as REPO:latest; the registry is left running ($reg).
fill_registry() {
	local storage=$1 src=$2 repo=$3
	[[ -s $storage.done ]] && return
	echo "==> nibble convert oci:$src into the registry (storage $storage)" >&2
	rm -rf "$storage"
	start_registry "$storage"
	"$work/nibble" convert "oci:$src:latest" "$reg/$repo:latest" >"$storage.done.tmp" </dev/null
	mv "$storage.done.tmp" "$storage.done"
}
