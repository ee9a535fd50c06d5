#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for a bounded time, starting from
# the checked-in corpus (which also replays every regression seed). Exits
# non-zero on any crash, panic, fd leak, timeout or out-of-memory.
#
#   FUZZ_SECONDS=20        seconds per target (libFuzzer -max_total_time)
#   FUZZ_SANITIZER=none    or address (about 4x slower; the crates under test
#                          forbid unsafe code, so panics are what we look for)
#   FUZZ_TARGETS="..."     a subset of: protocol_decode session control_decode
#
# Runs on stable Rust. With the default sanitizer (none) every flag cargo-fuzz
# passes (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, --cfg
# fuzzing) is a stable codegen flag; only FUZZ_SANITIZER=address needs
# -Zsanitizer, which a stable rustc accepts with RUSTC_BOOTSTRAP=1. New inputs
# go to fuzz/work/ (ignored by git), crashes to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_FUZZ_VERSION=0.13.1
seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
read -r -a targets <<<"${FUZZ_TARGETS:-protocol_decode session control_decode}"
if [ "$sanitizer" != none ]; then export RUSTC_BOOTSTRAP=1; fi

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# cargo fuzz has no --locked: check the lock file first.
cargo fetch --locked --quiet
# Every target, with overflow checks and debug assertions.
cargo fuzz build --sanitizer "$sanitizer" --debug-assertions
host="$(rustc -vV | sed -n 's/^host: //p')"
bin="target/$host/release"

failed=()
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz: $bin/$t was not built" >&2; exit 1; }
  scratch="work/ci/$t"
  artifacts="artifacts/$t"
  rm -rf "$scratch"
  mkdir -p "$scratch" "$artifacts"
  log="work/ci/$t.log"
  echo "fuzz: $t for ${seconds}s"
  if "$bin/$t" "$scratch" "corpus/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^#[0-9]+\s+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec)' "$log" |
      sed "s/^/  $t: /"
  else
    failed+=("$t")
    echo "fuzz: $t FAILED; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    ls -l "$artifacts" >&2
  fi
done

passed=$((${#targets[@]} - ${#failed[@]}))
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  echo "fuzz: $passed passed, ${#failed[@]} failed"
  exit 1
fi
echo "fuzz: ${seconds}s per target, no crash"
echo "fuzz: $passed passed, 0 failed"
