#!/usr/bin/env bash
# Runs the Mesa suite from a copy of this checkout under /tmp, so that the
# tests keep passing wherever a checkout lives (the clients' private /tmp hides
# whatever the tests keep there). The build directory is copied along, so only
# the workspace's own crates are rebuilt; the copy is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

copy=$(mktemp -d /tmp/vtestd-checkout.XXXXXX)
trap 'rm -rf "$copy"' EXIT
# The working tree as it is (committed or not), without build outputs.
tar --exclude=./target --exclude=./fuzz/target -cf - . | tar -C "$copy" -xf -
mkdir -p "$copy/target"
if [ -d target/debug ]; then
  cp -a target/debug "$copy/target/"
fi
cd "$copy"
echo "checkout copy: $copy" >&2
# The Debian 13 guests stay in the main run (their root is not copied).
env -u VTESTD_REQUIRE_DEBIAN13 \
  cargo test --locked --features vtestd/test-hooks --test mesa -- --test-threads=1 "$@"
