#!/usr/bin/env bash
# Installs what is missing and runs the full test suite: formatting, clippy,
# unit and property tests, integration tests against real `vtestd serve`
# processes, and end-to-end tests with real Mesa clients (glxinfo, glmark2,
# piglit) beside the reference `virgl_test_server`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

t=$SECONDS
lap() { echo "=== $1: $((SECONDS - t)) s" >&2; t=$SECONDS; }

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo clippy --locked --workspace --all-targets --features vtestd/test-hooks -- -D warnings
cargo build --locked --workspace --all-targets --features vtestd/test-hooks
lap "fmt, clippy, build"
# The Debian 13 root (cached in target/debian13/): its Mesa 25 clients are
# also the newer guests of this host's tests below, which must find it.
./scripts/debian13.sh root
export VTESTD_REQUIRE_DEBIAN13=1
lap "Debian 13 root"
# One test at a time inside each binary: the end-to-end tests start servers,
# Xvfb and Mesa clients, and the machine may have only two cores.
cargo test --locked --no-fail-fast --workspace --features vtestd/test-hooks -- --test-threads=1
lap "cargo test --workspace"
# Every backend under the production sandbox: the Mesa suite on GLES too
# (render nodes where the machine has one: VTESTD_TEST_BACKEND=render-node).
VTESTD_TEST_BACKEND=gles cargo test --locked --features vtestd/test-hooks --test mesa -- --test-threads=1
lap "Mesa suite, GLES backend"
for node in /dev/dri/renderD*; do
  [ -e "$node" ] || continue
  VTESTD_TEST_BACKEND=render-node VTESTD_TEST_RENDER_NODE="$node" \
    cargo test --locked --features vtestd/test-hooks --test mesa --test sandbox -- --test-threads=1
  lap "Mesa and sandbox suites, render node $node"
  break
done
# Tests pass wherever the checkout lives: the Mesa suite again from a copy of
# the tree under /tmp (where a client's private /tmp would hide the outputs).
./scripts/test-from-tmp.sh
lap "Mesa suite from a checkout under /tmp"
./fuzz/run-ci.sh
lap "fuzz"
# The same on Debian 13 (virglrenderer 1.1, Mesa 25), built there.
./scripts/debian13.sh test
lap "Debian 13 stage"
