#!/usr/bin/env bash
# Installs the pinned package builders into ~/.cargo/bin when missing:
# cargo-deb (the .deb) and cargo-generate-rpm (the .rpm). Safe to run again.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

have() { # have TOOL VERSION: installed at exactly this version
  cargo install --list 2>/dev/null | grep -q "^$1 v$2:"
}
if ! have cargo-deb "$CARGO_DEB_VERSION"; then
  cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb
fi
if ! have cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"; then
  cargo install --locked --version "$CARGO_GENERATE_RPM_VERSION" cargo-generate-rpm
fi
