#!/usr/bin/env bash
# Installs what vtestd needs to build and test on Debian 12: the system
# virglrenderer and EGL/GBM headers, libclang for bindgen, the reference
# server and real Mesa clients for the end-to-end tests, and the Rust
# toolchain components used by the checks. Safe to run again.
set -euo pipefail

packages=(
  # build
  build-essential pkg-config libclang-dev libvirglrenderer-dev libepoxy-dev libgbm-dev libegl-dev
  # runtime: Mesa's EGL/llvmpipe
  libegl-mesa0 libgl1-mesa-dri
  # tests and benchmark: reference server, real clients, X server, tools
  virgl-server mesa-utils xvfb glmark2-x11 piglit util-linux python3 procps
  # packaging tests: Debian 12 roots, package builds and linters, systemd
  # tools (systemd-analyze, systemd-socket-activate, systemd-nspawn)
  debootstrap dpkg-dev binutils lintian rpm rpmlint man-db systemd systemd-container python3-yaml
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The package builders (pinned cargo-deb and cargo-generate-rpm), for the
# tests; `scripts/serve.sh` does not need them.
if [ "${VTESTD_SKIP_PACKAGING_TOOLS:-0}" != 1 ]; then
  "$(dirname "$0")/../packaging/install-tools.sh"
fi
