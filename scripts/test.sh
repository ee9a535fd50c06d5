#!/usr/bin/env bash
# Installs what is missing and runs the full test suite: formatting, clippy,
# unit and property tests, integration tests against real `vtestd serve`
# processes, and end-to-end tests with real Mesa clients (glxinfo, glmark2,
# piglit) beside the reference `virgl_test_server`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo build --locked --workspace --all-targets
# One test at a time inside each binary: the end-to-end tests start servers,
# Xvfb and Mesa clients, and the machine may have only two cores.
cargo test --locked --workspace -- --test-threads=1
./fuzz/run-ci.sh
