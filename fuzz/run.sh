#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 5) from the committed seeds.
#   fuzz/run.sh          # the short run the test script does
#   fuzz/run.sh 600      # a longer run: ten minutes per target
# cargo-fuzz needs nightly-only compiler flags; this machine has stable Rust,
# so RUSTC_BOOTSTRAP=1 lets stable accept them. Exits non-zero on any crash
# and prints where the crashing input was saved.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-5}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install -q cargo-fuzz --locked
fi
status=0
for target in nar narinfo pointer manifest; do
  mkdir -p "corpus/$target"
  cp -n seeds/$target/* "corpus/$target/" 2>/dev/null || true
  echo "fuzzing $target for ${seconds}s"
  if ! cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=1024 2> "corpus/$target.log"; then
    echo "fuzz target $target failed:"
    grep -E "panicked|ERROR|Test unit written to" "corpus/$target.log" || tail -20 "corpus/$target.log"
    status=1
  else
    grep -E "^Done|stat::number_of_executed_units" "corpus/$target.log" | tail -1 || true
  fi
done
exit $status
