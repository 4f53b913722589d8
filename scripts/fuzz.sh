#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets: policy, config, requests, aws_request) for a
# bounded time, seeded from the conformance corpus, the configs under deploy/ and
# hand-written requests. A crash, timeout or
# out-of-memory input is kept in fuzz/regressions/<target>/, which tests/fuzz_regressions.rs
# replays in the normal suite. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Installs cargo-fuzz (pinned) into .tools/cargo; libFuzzer's coverage instrumentation needs
# no nightly toolchain with `--sanitizer none`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("${@:-policy config requests aws_request}")
read -r -a TARGETS <<< "${TARGETS[*]}"
CARGO_FUZZ_VERSION=0.13.2
TOOLS=$PWD/.tools/cargo

if [ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  cargo install --locked --root "$TOOLS" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
export PATH=$TOOLS/bin:$PATH

python3 scripts/fuzz_seeds.py fuzz/corpus
status=0
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/regressions/$target"
  echo "== $target: ${SECONDS_EACH}s"
  if ! cargo fuzz run --sanitizer none -O "$target" "fuzz/corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    status=1
  fi
  for found in fuzz/artifacts/"$target"/{crash,timeout,oom}-*; do
    [ -e "$found" ] && cp "$found" "fuzz/regressions/$target/" && echo "kept $found"
  done
done
exit $status
