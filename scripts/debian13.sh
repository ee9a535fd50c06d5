#!/usr/bin/env bash
# The Debian 13 ("trixie") platform of the test suite: a root made with
# debootstrap (virglrenderer 1.1, Mesa 25, trixie's own virgl_test_server),
# cached under target/debian13/ and rebuilt when its package list changes;
# vtestd built and tested inside it with this machine's Rust toolchain bound
# in.
#
#   scripts/debian13.sh root          make (or reuse) the root
#   scripts/debian13.sh enter CMD...  run CMD inside it (see `enter` below)
#   scripts/debian13.sh test          build vtestd there and run the stage
#
# The root is entered properly, not with chroot (where the kernel refuses
# user namespaces and `/` is not a mount point): a private mount and PID
# namespace, the root bound on itself, pivot_root into it, fresh /proc, /dev
# and /sys from the host, a fresh tmpfs /tmp, the X socket directory, the
# checkout at /src and the toolchain at /root/.cargo and /root/.rustup.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="$here/target/debian13"
root="$cache/root"
suite=trixie

# What the root holds: build dependencies, the runtime, the reference server
# and real Mesa 25 clients (GL and Venus), and the packaging tools.
packages=(
  build-essential pkg-config libclang-dev libvirglrenderer-dev libepoxy-dev libgbm-dev libegl-dev
  libegl-mesa0 libgl1-mesa-dri libgles2
  virgl-server mesa-utils xvfb xauth glmark2-x11 glmark2-es2-x11 piglit util-linux python3 procps strace
  mesa-vulkan-drivers vulkan-tools libvulkan-dev
  ca-certificates debootstrap dpkg-dev binutils lintian man-db systemd systemd-container
  rpm rpmlint python3-yaml
)

mirror() {
  # The host's Debian mirror (apt's deb822 sources or the one-line form).
  local m
  m="$(grep -hoE '^URIs: *https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | sed 's/^URIs: *//')" || true
  if [ -z "$m" ]; then
    m="$(grep -hoE '^deb +https?://[^ ]+/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 | awk '{print $2}')" || true
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

key() { printf '%s\n' "$suite" "${packages[@]}" | sha256sum | cut -c1-16; }

# Under a lock (another test process may be making it), and only the
# lock's own subshell holds it: clients entered later do not inherit it.
make_root() {
  mkdir -p "$cache"
  ( flock 9; build_root ) 9>"$cache/.lock"
}

build_root() {
  if [ -f "$root/.vtestd-root" ] && [ "$(cat "$root/.vtestd-root")" = "$(key)" ]; then
    return 0
  fi
  local tmp="$cache/root.tmp" start=$SECONDS
  rm -rf --one-file-system "$tmp"
  echo "debootstrap $suite into $root (package list $(key); takes a few minutes, once)" >&2
  # debootstrap's own resolver cannot install virtual dependencies (perl's
  # openssl ABI, systemd-container's): a minbase root first, then apt.
  debootstrap --variant=minbase "$suite" "$tmp" "$(mirror)" >"$cache/debootstrap.log" 2>&1 || {
    tail -40 "$cache/debootstrap.log" >&2
    echo "debootstrap failed (log: $cache/debootstrap.log)" >&2
    exit 1
  }
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"; chmod +x "$tmp/usr/sbin/policy-rc.d"
  unshare --mount --propagation private env T="$tmp" P="${packages[*]}" bash -euo pipefail -c '
    mount -t proc proc "$T/proc"; mount --rbind /dev "$T/dev"
    cp -L /etc/resolv.conf "$T/etc/resolv.conf" 2>/dev/null || true
    chroot "$T" apt-get update -q
    chroot "$T" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $P
  ' >>"$cache/debootstrap.log" 2>&1 || {
    tail -40 "$cache/debootstrap.log" >&2
    echo "apt-get install in the Debian 13 root failed (log: $cache/debootstrap.log)" >&2
    exit 1
  }
  rm -f "$tmp/usr/sbin/policy-rc.d"
  rm -f "$tmp"/var/cache/apt/archives/*.deb
  key >"$tmp/.vtestd-root"
  rm -rf --one-file-system "$root"
  mv "$tmp" "$root"
  echo "root ready in $((SECONDS - start)) s" >&2
}

# enter CMD...: runs CMD (through bash -lc) as root inside the root, in
# /src, with the toolchain on PATH. Extra binds: VTESTD_BIND="HOST:INNER ...".
enter() {
  [ -f "$root/.vtestd-root" ] || { echo "no Debian 13 root: run '$0 root'" >&2; exit 1; }
  local cmd="$*"
  unshare --mount --pid --fork --propagation private env \
    R="$root" SRC="$here" CMD="$cmd" EXTRA="${VTESTD_BIND:-}" HOMEDIR="$HOME" bash -euo pipefail -c '
      mount --bind "$R" "$R"
      mount -t proc proc "$R/proc"
      mount --rbind /dev "$R/dev"
      mount --rbind /sys "$R/sys"
      mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
      mkdir -p "$R/tmp/.X11-unix" "$R/src" "$R/root/.cargo" "$R/root/.rustup"
      chmod 1777 "$R/tmp/.X11-unix"
      mount --bind "$SRC" "$R/src"
      # Its own build directory: target/ inside is target/debian13/target/
      # outside, so that relative target/ paths (packaging) stay apart.
      mkdir -p "$SRC/target/debian13/target"
      mount --bind "$SRC/target/debian13/target" "$R/src/target"
      mount --bind "$HOMEDIR/.cargo" "$R/root/.cargo"
      mount --bind "$HOMEDIR/.rustup" "$R/root/.rustup"
      for b in $EXTRA; do mkdir -p "$R/${b#*:}"; mount --bind "${b%%:*}" "$R/${b#*:}"; done
      cp -L /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
      cd "$R"; mkdir -p .oldroot
      pivot_root . .oldroot
      umount -l /.oldroot; rmdir /.oldroot
      cd /src
      exec env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        VTESTD_PLATFORM=debian13 \
        ${VTESTD_ENV:-} bash -c "$CMD"
    '
}

# The stage: what the README's test command runs on Debian 13. The whole
# workspace suite (unit, protocol, hostile, limits, faults, sandbox proofs,
# Mesa 25 clients, packaging into a fresh Debian 13 root booted under
# systemd-nspawn), the protocol suite against trixie's virgl_test_server
# 1.1.0 as well, and the Mesa suite on the GLES backend.
stage() {
  local t0=$SECONDS
  make_root
  echo "=== debian13 root: $((SECONDS - t0)) s" >&2
  enter 'set -e
    t=$SECONDS
    lap() { echo "=== debian13 $1: $((SECONDS - t)) s" >&2; t=$SECONDS; }
    cat /etc/debian_version; pkg-config --modversion virglrenderer
    cargo build --locked --workspace --all-targets --features vtestd/test-hooks
    lap build
    cargo test --locked --no-fail-fast --workspace --features vtestd/test-hooks -- --test-threads=1
    lap "cargo test --workspace"
    VTESTD_TEST_SERVER=reference cargo test --locked --features vtestd/test-hooks --test protocol -- --test-threads=1
    lap "protocol suite against virgl_test_server 1.1.0"
    VTESTD_TEST_BACKEND=gles cargo test --locked --features vtestd/test-hooks --test mesa -- --test-threads=1
    lap "Mesa suite, GLES backend"'
  echo "=== debian13 stage: $((SECONDS - t0)) s in all" >&2
}

case "${1:-}" in
  root) make_root ;;
  enter) shift; make_root; enter "$@" ;;
  test) stage ;;
  *) echo "usage: $0 root | enter CMD... | test" >&2; exit 2 ;;
esac
