#!/usr/bin/env bash
# Installs what is missing, builds vtestd and runs `vtestd serve` with the
# default (embedded) backend: EGL surfaceless, llvmpipe without a GPU.
# Extra arguments go to `vtestd serve` (e.g. --socket-path=/run/vtest.sock).
set -euo pipefail
cd "$(dirname "$0")/.."
VTESTD_SKIP_PACKAGING_TOOLS=1 ./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p vtestd
exec ./target/release/vtestd serve "$@"
