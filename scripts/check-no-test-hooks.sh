#!/usr/bin/env bash
# The binary users build (`cargo build`, without the dev-dependencies that turn on the
# `test-hooks` feature for the tests) refuses the test-only settings, from the config file
# and from the environment, in `config check` and in `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The release build the image holds (scripts/build-image.sh made it already when the
# tests ran, so this builds nothing then).
cargo build --release --locked --quiet --bin inspector-keyd
binary=target/release/inspector-keyd
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0
expect_refused() { # what, expected text, command...
  local what=$1 expected=$2
  shift 2
  local output
  if output=$("$@" 2>&1); then
    echo "FAILED: $what was accepted" >&2
    failures=$((failures + 1))
  elif [[ $output != *"$expected"* ]]; then
    echo "FAILED: $what: the error does not name $expected: $output" >&2
    failures=$((failures + 1))
  fi
}
for key in write_latency fault_file; do
  value='"1s"'
  [ "$key" = fault_file ] && value='"faults.toml"'
  printf 'state_dir = "%s/state"\n[local]\n%s = %s\n' "$dir" "$key" "$value" > "$dir/$key.toml"
  expect_refused "config check with local.$key" "local.$key" \
    "$binary" config check "$dir/$key.toml"
  expect_refused "serve with local.$key" "local.$key" \
    timeout 10 "$binary" serve --config "$dir/$key.toml"
  upper=$(echo "$key" | tr '[:lower:]' '[:upper:]')
  printf 'state_dir = "%s/state"\n' "$dir" > "$dir/plain.toml"
  expect_refused "serve with INSPECTOR_KEYD_LOCAL__$upper" "local.$key" \
    env "INSPECTOR_KEYD_LOCAL__$upper=x" timeout 10 "$binary" serve --config "$dir/plain.toml"
done
if [ "$failures" -ne 0 ]; then
  echo "check-no-test-hooks: $failures failed" >&2
  exit 1
fi
echo "check-no-test-hooks: 6 passed, 0 failed"
