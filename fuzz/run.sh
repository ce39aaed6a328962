#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 5), starting from the
# committed seeds:
#   fuzz/run.sh          # the short run the test script does
#   fuzz/run.sh 600      # the long run: ten minutes per target
#   fuzz/run.sh nightly  # the nightly run: an hour per target
# Each target's line gives what the run did: executions, libFuzzer's edge
# coverage (cov) and feature count (ft) at the end, and the corpus size; a
# table of them closes the run (fuzz/artifacts/summary.tsv keeps it).
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets stable
# Rust accept them. Exits non-zero if a target fails to build or finds a
# crash, and prints the path of the saved crashing input.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-5}
if [ "$seconds" = nightly ]; then
  seconds=3600
fi
case $seconds in
  '' | *[!0-9]*)
    echo "usage: fuzz/run.sh [SECONDS | nightly]" >&2
    exit 2
    ;;
esac
targets=(nar narinfo pointer manifest sealed keylist report enroll nardelta)
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

# The last stats line of a libFuzzer log, as "EXECS COV FT CORPUS":
#   #123456  DONE   cov: 812 ft: 2311 corp: 301/45Kb lim: 4096 exec/s: 4115 rss: 61Mb
stats() {
  grep -E '^#[0-9]+' "$1" | tail -1 |
    sed -E 's/^#([0-9]+).*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 \2 \3 \4/'
}

summary=artifacts/summary.tsv
printf 'target\tseconds\texecs\tcov\tft\tcorpus\tresult\n' >"$summary"
status=0
for target in "${targets[@]}"; do
  # libFuzzer writes new inputs to the first directory only: the seeds stay
  # as committed, and corpus/ (ignored by git) grows from run to run.
  mkdir -p "corpus/$target" "artifacts/$target"
  log="artifacts/$target.log"
  # -timeout: an input that takes this long counts as a failure (a hang).
  if cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
  fi
  read -r execs cov ft corpus <<<"$(stats "$log")" || true
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$seconds" "${execs:-?}" "${cov:-?}" \
    "${ft:-?}" "${corpus:-?}" "$result" >>"$summary"
  if [ "$result" = ok ]; then
    echo "fuzz $target: ${execs:-?} executions in ${seconds}s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corpus:-?}"
  else
    echo "fuzz $target: FAILED (full log: fuzz/$log)"
    # The panic message is on the line after "panicked at".
    grep -E -A1 "panicked at|^ERROR|^error" "$log" || tail -20 "$log"
    grep -E "^SUMMARY|Test unit written to" "$log" || true
    status=1
  fi
done
column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
exit "$status"
