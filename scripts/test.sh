#!/usr/bin/env bash
# Runs all the tests: installs the test tools (idempotent), lints the protos, checks
# formatting and lints, and runs the Rust test suite, which drives the real binary with a
# tonic client, grpcurl and a Python grpcio client.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-tools.sh
.tools/node/node_modules/.bin/buf lint
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The build users run, without the dev-dependencies (so without the test hooks).
cargo clippy --locked -- -D warnings
# A test whose tool is missing fails (naming scripts/install-test-tools.sh); none skips.
cargo test --locked
scripts/check-no-test-hooks.sh
