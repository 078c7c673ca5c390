#!/usr/bin/env bash
# scripts/test.sh: nibble's whole test suite, as CI runs it (.ci/run).
#
# On a fresh Debian 12 machine it installs what the tests need (apt: needs
# root, or sudo), downloads the Go modules, checks gofmt, runs go vet, and
# runs every test with the race detector; fuzz targets run their seed
# corpus. Service-backed tests fail rather than skip (NIBBLE_REQUIRE_SERVICES=1).
#
# usage: bash scripts/test.sh [go test flags, e.g. -run TestX]
#
# Environment:
#   NIBBLE_TEST_TIMEOUT  go test -timeout, per package (default 20m)
#   NIBBLE_SKIP_APT=1    do not install apt packages
set -uo pipefail

# Debian packages the tests need: one per line.
apt_packages=(
	docker-registry # internal/registrytest: the real registry
	umoci           # internal/fidelity: the reference extractor mounts are compared with
)

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export PATH=$PATH:/usr/local/go/bin
# Go needs a home for its caches; a bare CI environment may not set HOME.
if [[ -z ${HOME:-} ]]; then
	HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
	export HOME=${HOME:-/root}
fi
export NIBBLE_REQUIRE_SERVICES=1
timeout=${NIBBLE_TEST_TIMEOUT:-20m}

steps=()   # "name|status|detail", for the summary
failed=0
started=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }
record() { # NAME STATUS [DETAIL]
	steps+=("$1|$2|${3:-}")
	if [[ $2 == FAILED ]]; then failed=1; fi
}

install_packages() {
	local missing=() p
	for p in "${apt_packages[@]}"; do
		if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
			missing+=("$p")
		fi
	done
	if ((${#missing[@]} == 0)); then
		echo "already installed: ${apt_packages[*]}"
		record "apt packages" pass "already installed"
		return
	fi
	if [[ ${NIBBLE_SKIP_APT:-} == 1 ]]; then
		echo "NIBBLE_SKIP_APT=1: not installing ${missing[*]}"
		record "apt packages" skipped "missing: ${missing[*]}"
		return
	fi
	local sudo=()
	if ((EUID != 0)); then
		if ! command -v sudo >/dev/null; then
			echo "need root (or sudo) to install: ${missing[*]}"
			record "apt packages" FAILED "not root; missing: ${missing[*]}"
			return
		fi
		sudo=(sudo)
	fi
	echo "installing: ${missing[*]}"
	if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null; then
		record "apt packages" pass "installed: ${missing[*]}"
	else
		record "apt packages" FAILED "apt-get install ${missing[*]}"
	fi
}

step "environment"
go version || {
	echo "go not found (expected in PATH or /usr/local/go/bin)"
	exit 1
}
echo "cpus: $(nproc)  CI=${CI:-}  NIBBLE_REQUIRE_SERVICES=$NIBBLE_REQUIRE_SERVICES"

step "apt packages: ${apt_packages[*]}"
install_packages

step "go mod download"
if go mod download; then record "go mod download" pass; else record "go mod download" FAILED; fi

step "gofmt -l"
unformatted=$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -print0 | xargs -0 gofmt -l)
if [[ -z $unformatted ]]; then
	record gofmt pass
else
	echo "$unformatted"
	record gofmt FAILED "$(wc -l <<<"$unformatted") files need gofmt"
fi

step "go vet ./..."
if go vet ./...; then record "go vet" pass; else record "go vet" FAILED; fi

# -count=1: never a cached result. Some tests build and run the nibble
# binary or talk to services, which go test's cache cannot see.
step "go test -race -count=1 -timeout $timeout ./... $*"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -race -count=1 -timeout "$timeout" "$@" ./... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
npass=$(grep -cE '^ok[[:space:]]' "$log")
nfail=$(grep -cE '^FAIL[[:space:]]' "$log")
if ((rc == 0)); then
	record "go test" pass "$npass packages ok"
else
	record "go test" FAILED "exit $rc; $npass packages ok, $nfail failed: $(grep -E '^FAIL[[:space:]]' "$log" | awk '{ print $2 }' | tr '\n' ' ')"
fi

step "summary ($(($(date +%s) - started))s)"
for s in "${steps[@]}"; do
	IFS='|' read -r name status detail <<<"$s"
	printf '    %-16s %-7s %s\n' "$name" "$status" "$detail"
done
if ((failed)); then
	echo "==> scripts/test.sh: FAILED"
	exit 1
fi
echo "==> scripts/test.sh: all passed"
