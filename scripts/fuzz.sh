#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for SECONDS each (default 10), or the
# named targets only: ./scripts/fuzz.sh 600 coap_datagram
# The test suite runs it briefly; a longer run (10 minutes a target, say) is
# what to do after changing a parser. Crashes land in fuzz/artifacts/TARGET/.
# cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP lets the stable
# toolchain (the only one on the build machines) accept them.
#
# POLYHUB_FUZZ_BUILD=dev builds the targets unoptimized (what test.sh's short
# run uses: a clean build takes a fraction of the optimized one, which is a
# second full release build of every dependency with sanitizer flags); the
# default is optimized with debug assertions, for the long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true

if ! command -v cargo-fuzz >/dev/null; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >/dev/null
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
case ${POLYHUB_FUZZ_BUILD:-release} in
  dev) build=(--dev) ;;
  *) build=(-O --debug-assertions) ;;
esac
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  if ! cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "[fuzz] $t FAILED: the input that broke it is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  echo "[fuzz] $t: ${secs}s, $runs inputs, no crash" >&2
done
