#!/usr/bin/env bash
# The README's test command. Installs and starts whatever the test suite
# needs when it is missing (idempotent: a second run changes nothing), then
# runs the whole suite.
#
# Each protocol's setup lives in scripts/setup/NN-name.sh and is sourced in
# order; each must be idempotent and fast when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[test.sh]\033[0m %s\n' "$*"; }
export -f log

# What the build needs before anything else: cargo, and a C compiler for the
# crates that build C code (aws-lc-sys, ring). Said plainly here rather than
# deep inside a build script's output.
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) or newer (https://rustup.rs, or Debian's cargo package), then run ./scripts/test.sh again." >&2
  exit 1
fi
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1 && ! command -v clang >/dev/null 2>&1; then
  echo "error: no C compiler (cc, gcc or clang) found; the build needs one for aws-lc-sys and ring. On Debian: apt-get install build-essential" >&2
  exit 1
fi

# apt-get update at most once per run, only when a package is missing.
APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  if [[ $APT_UPDATED -eq 0 ]]; then
    $sudo apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Wait until a TCP port accepts connections (host port seconds).
wait_port() {
  local host=$1 port=$2 secs=${3:-30}
  for _ in $(seq 1 $((secs * 10))); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

for setup in scripts/setup/*.sh; do
  [[ -e $setup ]] || continue
  log "setup: ${setup##*/}"
  # shellcheck source=/dev/null
  source "$setup"
done

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test --workspace"
status=0
cargo test --workspace --locked --no-fail-fast "$@" || status=$?

# Hostile input: a short bounded run of every libFuzzer target, built
# unoptimized to keep the suite's time down (a longer, optimized run is
# ./scripts/fuzz.sh 600). POLYHUB_FUZZ_SECS=0 skips it.
fuzz_secs=${POLYHUB_FUZZ_SECS:-10}
if ((fuzz_secs > 0)); then
  log "fuzz: every target for ${fuzz_secs}s"
  POLYHUB_FUZZ_BUILD=${POLYHUB_FUZZ_BUILD:-dev} ./scripts/fuzz.sh "$fuzz_secs" || status=$?
fi
exit "$status"
