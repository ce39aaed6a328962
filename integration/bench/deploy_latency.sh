#!/usr/bin/env bash
# Publish → applied with `nixcast-pull run --watch` against `nixcast serve`:
# N releases of the stand-in system (integration/fixtures/fixture.nix, 10
# paths, each release changing its top and `etc`) published one after
# another; for each, the seconds from the start of `nixcast publish` to the
# host's status.json saying it applied that generation (publish, the long
# poll's answer, the run: pointer, manifest, NARs, import, switch).
# Against it, a five-minute timer's average wait: 150 s.
#
#   integration/bench/deploy_latency.sh [N]      # default 20; needs root (a fresh store
#                                                # in a private mount namespace)
# No timing is asserted; prints each latency, the median, p99 and max.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20}
export NIX_REMOTE=local
cargo build --release -q -p nixcast -p nixcast-pull
bin=$PWD/target/release
work=$(mktemp -d /tmp/nixcast-deploy.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
gen() {
  nix-build integration/fixtures/fixture.nix --no-out-link --option sandbox false \
    --argstr host foobar --argstr version "deploy-$1-$$" --arg n 10 2>/dev/null
}
echo "building $N releases" >&2
tops=()
for i in $(seq "$N"); do tops+=("$(gen "$i")"); done
"$bin/nixcast" keygen --name bench-1 --secret-key-file "$work/secret.key" \
  --public-key-file "$work/public.key" >/dev/null
publish() { "$bin/nixcast" publish --host foobar --path "$1" --cache "$work/cache" \
  --secret-key-file "$work/secret.key" >/dev/null 2>&1; }
publish "${tops[0]}"
"$bin/nixcast" serve --cache "$work/cache" --listen 127.0.0.1:0 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 50); do grep -q 'http://' "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
mkdir -p "$work/vm"
unshare -m --propagation private sh -c 'mount --bind "$0" /nix && exec "$@"' "$work/vm" \
  "$bin/nixcast-pull" run --cache "$url" --host foobar --trusted-key "$(cat "$work/public.key")" \
  --state-dir /nix/var/nixcast --allow-insecure-http --watch --min-interval 1s --poll-interval 1h \
  2>"$work/agent.log" &
pids+=($!)
applied() { python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get("appliedGeneration") or 0)
except Exception: print(0)' "$work/vm/var/nixcast/status.json"; }
until [ "$(applied)" = 1 ]; do sleep 0.05; done
lat=()
for i in $(seq 2 "$N"); do
  t0=$(date +%s.%N)
  publish "${tops[$((i - 1))]}"
  until [ "$(applied)" = "$i" ]; do sleep 0.02; done
  t1=$(date +%s.%N)
  lat+=("$(python3 -c "print(f'{$t1 - $t0:.2f}')")")
  echo "generation $i: ${lat[-1]} s"
done
printf '%s\n' "${lat[@]}" | python3 -c 'import sys,statistics
v=sorted(float(l) for l in sys.stdin)
print(f"publish → applied, {len(v)} releases: median {statistics.median(v):.2f} s, "
      f"p99 {v[min(len(v)-1, int(len(v)*0.99))]:.2f} s, max {v[-1]:.2f} s (a 5-minute timer: 150 s on average)")'
