#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 5), starting from the
# committed seeds:
#   fuzz/run.sh          # the short run the test script does
#   fuzz/run.sh 600      # the long run: ten minutes per target
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets stable
# Rust accept them. Exits non-zero if a target fails to build or finds a
# crash, and prints the path of the saved crashing input.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-5}
targets=(nar narinfo pointer manifest sealed)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install -q cargo-fuzz --locked
fi
mkdir -p artifacts
# One build for all targets, so that each run below starts at once.
if ! cargo fuzz build >artifacts/build.log 2>&1; then
  tail -40 artifacts/build.log
  echo "fuzz: the targets do not build (full log: fuzz/artifacts/build.log)"
  exit 1
fi

status=0
for target in "${targets[@]}"; do
  # libFuzzer writes new inputs to the first directory only: the seeds stay
  # as committed, and corpus/ (ignored by git) grows from run to run.
  mkdir -p "corpus/$target" "artifacts/$target"
  log="artifacts/$target.log"
  # -timeout: an input that takes this long counts as a failure (a hang).
  if cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzz $target: $(grep -o '^Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1)"
  else
    echo "fuzz $target: FAILED (full log: fuzz/$log)"
    # The panic message is on the line after "panicked at".
    grep -E -A1 "panicked at|^ERROR|^error" "$log" || tail -20 "$log"
    grep -E "^SUMMARY|Test unit written to" "$log" || true
    status=1
  fi
done
exit "$status"
