#!/usr/bin/env bash
# A/B of agent builds: cold pulls of one cache of run.sh's work directory into fresh
# loop-mounted stores, the binaries alternating (the order turns each round), medians.
#
#   integration/bench/ab.sh CACHE REPS BIN… # CACHE: a directory of $WORK/srv (zstd, xz, paths300-xz)
#   CPUS=1 integration/bench/ab.sh …          # every process on core 0 (taskset -c 0)
#   INCR=1 integration/bench/ab.sh …          # the pull after one path changed: each agent pulls
#                                             # generation 1 first (not timed), then 2 (timed)
#   BENCH_PORT=18481 integration/bench/ab.sh … # through a proxy already listening there, e.g.
#                                             # `delayproxy.py 18481 18480 25` in front of nginx on 18480
#                                             # (started by hand): the +50 ms round trip
#   AGENT_ENV= integration/bench/ab.sh …      # the agents' extra environment; by default the
#                                             # module's (MALLOC_ARENA_MAX=1), as run.sh does
#   BIN may also be `nix-store` (Nix's `nix-store -r -j16` from the same cache),
#   `floor-subst` (the same from the uncompressed local cache run.sh's floors use),
#   `floor-http` (that cache served by nginx: what a loopback HTTP substituter would cost Nix),
#   `floor-daemon` (floor-daemon.py: that cache's NARs handed to `nix-daemon --stdio`, DAEMON_CONNS
#   connections, 2 by default: what importing verified NARs through Nix's daemon protocol costs Nix),
#   `floor-overlap` (floor-subst with the hashing, decoding and hashing of every NAR by the
#   agent's own decoders running alongside: `cargo build --release --example decode-floor`),
#   `floor-stage` (floor-overlap, the decoded NARs also written to and removed from files in
#   the fresh store's file system, as the agent's staging does), `floor-import` (`nix-store --import` of the closure from one `nix-store --export` stream:
#   what streaming verified NARs into Nix would cost it) or `floor-import-overlap` (that with
#   the decoding alongside), `floor-subst-compressed` (floor-subst from the cache as published:
#   Nix decoding the NARs itself, what staging compressed NARs would cost it) or `floor-pull`
#   (floor-pull.sh: every step a verify-first agent must take, in order, with nothing else),
#   for ratios against Nix in the same run.
#
# Needs a run of run.sh first (it publishes the caches and keeps them in $WORK); starts
# nginx on $BENCH_PORT if nothing listens there. Prints one line per pull and, per
# binary, the median wall seconds, CPU seconds (user + system, with Nix's children),
# %M (the largest resident set of any one process) and the agent's own peak.
set -euo pipefail
WORK=${BENCH_WORK:-/var/tmp/nixcast-bench}
PORT=${BENCH_PORT:-18480}
C=$1 REPS=$2; shift 2
BINS=("$@")
PIN=(env); [ "${CPUS:-}" = 1 ] && PIN=(taskset -c 0)
# The agent's decoders and SHA-256 alone (puller/examples/decode-floor.rs), for floor-overlap.
# run.sh keeps a copy of the build it measured with in $WORK/bin.
DECODE_FLOOR=${DECODE_FLOOR:-$WORK/bin/decode-floor}
if [[ " ${BINS[*]} " =~ \ floor-(overlap|stage|import-overlap|pull)\  ]] && [ ! -x "$DECODE_FLOOR" ]; then
  echo "no $DECODE_FLOOR: run run.sh first, or set DECODE_FLOOR (cargo build --release --example decode-floor)" >&2; exit 1
fi
if [ "${INCR:-}" = 1 ] && [[ " ${BINS[*]} " =~ \ (nix-store|floor-[a-z-]+)\  ]]; then
  echo "INCR=1 times agents only (Nix and the floors have no generation 1 to start from)" >&2; exit 1
fi
read -ra AGENT_ENV <<< "${AGENT_ENV-MALLOC_ARENA_MAX=1}"
export NIX_REMOTE=local
d=$WORK/vm/ab-$$
cleanup() { mountpoint -q "$d/nix" 2>/dev/null && umount "$d/nix"; rm -rf "$d" "$d.img"; [ -z "${NGINX_PID:-}" ] || kill "$NGINX_PID"; }
trap cleanup EXIT
if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$PORT|g" "$(dirname "$0")/nginx.conf.in" > "$WORK/nginx.conf"
  nginx -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" & NGINX_PID=$!
  sleep 0.5
fi
PUB=$(cat "$WORK/keys/bench.pub")
# What Nix is asked to realise: cache C's whole closure, as run.sh's floors list it.
[ -s "$WORK/pub/none-$C.closure" ] || { echo "no $WORK/pub/none-$C: run run.sh's pull stage for $C first" >&2; exit 1; }
mapfile -t TOP < "$WORK/pub/none-$C.closure"
ln -sfn "$WORK/pub/none-$C" "$WORK/srv/none-$C"
if [[ " ${BINS[*]} " == *" floor-import"* ]] && ! [ "$WORK/pub/none-$C.export" -nt "$WORK/pub/none-$C.closure" ]; then
  nix-store --export "${TOP[@]}" > "$WORK/pub/none-$C.export" # dependencies first, as -qR lists them
fi
[[ " ${BINS[*]} " == *" floor-pull "* ]] &&
  python3 "$(dirname "$0")/gate.py" "$WORK/srv/$C" "$WORK/pub/none-$C.closure" "$WORK/ptr/$C-v1.json" "$WORK/pub/floor-pull-$C"
out=$WORK/ab.tsv; : > "$out"
for r in $(seq "$REPS"); do
  for i in $(seq 0 $((${#BINS[@]} - 1))); do
    b=${BINS[$(((i + r - 1) % ${#BINS[@]}))]}
    mkdir -p "$d"/{nix,home,xdg}
    truncate -s 8G "$d.img"; mkfs.ext4 -q -F "$d.img"; mount -o loop "$d.img" "$d/nix"; sync
    cp "$WORK/ptr/$C-v1.json" "$WORK/srv/$C/hosts/.vm.json.tmp"
    mv -f "$WORK/srv/$C/hosts/.vm.json.tmp" "$WORK/srv/$C/hosts/vm.json"
    if [ "${INCR:-}" = 1 ]; then
      unshare -m --propagation private sh -c 'mount --bind "$0" /nix && exec "$@"' "$d/nix" \
        env HOME="$d/home" XDG_CACHE_HOME="$d/xdg" NIX_REMOTE=local "$b" run \
        --cache "http://127.0.0.1:$PORT/$C" --allow-insecure-http --host vm --trusted-key "$PUB" \
        --state-dir /nix/var/nixcast > "$WORK/ab.log" 2>&1 || { tail "$WORK/ab.log"; exit 1; }
      cp "$WORK/ptr/$C-v2.json" "$WORK/srv/$C/hosts/.vm.json.tmp"
      mv -f "$WORK/srv/$C/hosts/.vm.json.tmp" "$WORK/srv/$C/hosts/vm.json"
    fi
    case $b in
      nix-store) cmd=(nix-store -r "${TOP[@]}" --option substituters "http://127.0.0.1:$PORT/$C"
                      --option trusted-public-keys "$PUB" --max-jobs 16) ;;
      floor-subst) cmd=(nix-store -r "${TOP[@]}" --option substituters "file://$WORK/pub/none-$C"
                        --option trusted-public-keys "$PUB" --max-jobs 16) ;;
      floor-subst-compressed) # Nix's import from the cache as published, on the local disk: Nix decoding it
        cmd=(nix-store -r "${TOP[@]}" --option substituters "file://$WORK/srv/$C"
             --option trusted-public-keys "$PUB" --max-jobs 16) ;;
      floor-pull) # integration/bench/floor-pull.sh: what any verify-first agent must do, in order
        cmd=(sh "$(cd "$(dirname "$0")" && pwd)/floor-pull.sh" "$DECODE_FLOOR" "$WORK/pub/floor-pull-$C"
             "$WORK/pub/none-$C" "$PUB" "http://127.0.0.1:$PORT/$C") ;;
      floor-daemon) # Nix importing the closure from the uncompressed cache's NAR files through its daemon
                    # protocol (`nix-daemon --stdio`, two connections): no staging cache, no substituter
        cmd=(python3 "$(cd "$(dirname "$0")" && pwd)/floor-daemon.py" "$WORK/pub/none-$C" "${DAEMON_CONNS:-2}" "$PUB") ;;
      floor-http) cmd=(nix-store -r "${TOP[@]}" --option substituters "http://127.0.0.1:$PORT/none-$C"
                       --option trusted-public-keys "$PUB" --max-jobs 16) ;;
      floor-overlap) # floor-subst while every NAR of C is decoded and hashed alongside, two at a time,
                     # by the agent's own decoders (decode-floor): a verify-then-import tool with
                     # perfect overlap and nothing else to do
        cmd=(sh -c "find '$WORK/srv/$C/nar' -type f | xargs -P 2 -n 64 '$DECODE_FLOOR' & d=\$!; \"\$@\"; s=\$?; wait \$d && exit \$s" sh
             nix-store -r "${TOP[@]}" --option substituters "file://$WORK/pub/none-$C"
             --option trusted-public-keys "$PUB" --max-jobs 16) ;;
      floor-stage) # floor-overlap, the decoded NARs also written to files in the fresh store's file
                   # system and removed, as the agent stages them for Nix: what this design costs
        cmd=(sh -c "mkdir -p /nix/var/floor-stage && find '$WORK/srv/$C/nar' -type f |
                    xargs -P 2 -n 64 '$DECODE_FLOOR' --stage /nix/var/floor-stage & d=\$!; \"\$@\"; s=\$?; wait \$d && exit \$s" sh
             nix-store -r "${TOP[@]}" --option substituters "file://$WORK/pub/none-$C"
             --option trusted-public-keys "$PUB" --max-jobs 16) ;;
      floor-import) # Nix importing the whole closure from one stream of `nix-store --export`
                    # (no signatures checked, no substituter: a lower bound for a stream into Nix)
        cmd=(sh -c 'nix-store --import < "$0" > /dev/null' "$WORK/pub/none-$C.export") ;;
      floor-import-overlap) # that while every NAR of C is decoded and hashed alongside
        cmd=(sh -c "find '$WORK/srv/$C/nar' -type f | xargs -P 2 -n 64 '$DECODE_FLOOR' & d=\$!; nix-store --import < '$WORK/pub/none-$C.export' > /dev/null; s=\$?; wait \$d && exit \$s") ;;
      *) cmd=(env "${AGENT_ENV[@]}" "$b" run --cache "http://127.0.0.1:$PORT/$C" --allow-insecure-http
              --host vm --trusted-key "$PUB" --state-dir /nix/var/nixcast) ;;
    esac
    "${PIN[@]}" /usr/bin/time -o "$WORK/ab.time" -f '%e %M %U %S' unshare -m --propagation private \
      sh -c 'mount --bind "$0" /nix && exec "$@"' "$d/nix" env HOME="$d/home" XDG_CACHE_HOME="$d/xdg" \
      NIX_REMOTE=local NIXCAST_LOG=${NIXCAST_LOG:-info,nixcast_pull::pipeline=debug} \
      "${cmd[@]}" > "$WORK/ab.log" 2>&1 || { tail "$WORK/ab.log"; exit 1; }
    read -r secs rss user sys < "$WORK/ab.time"
    own=$(grep -o 'peak_rss_kib=[0-9]*' "$WORK/ab.log" | tr -dc 0-9 || true); own=${own:-0}
    printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$secs" "$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')" "$rss" "$own" >> "$out"
    printf '%-40s #%s %6.2f s  cpu %5.2f s  %%M %6d KiB  agent %6d KiB  load %s\n' "$b" "$r" "$secs" \
      "$(awk -v u="$user" -v s="$sys" 'BEGIN{print u+s}')" "$rss" "$own" "$(cut -d' ' -f1 /proc/loadavg)"
    umount "$d/nix"; rm -rf "$d" "$d.img"; sync # the next pull meets no writeback of this one
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for l in open(sys.argv[1]):
    b, *v = l.split("\t"); rows[b].append([float(x) for x in v])
first = None
for b, v in rows.items():
    m = [statistics.median(c) for c in zip(*v)]
    first = first or m
    print(f"{b:40s} wall {m[0]:6.2f} s ({m[0] / first[0]:.2f})  cpu {m[1]:5.2f} s ({m[1] / first[1]:.2f})  %M {m[2] / 1024:4.0f} MiB  agent {m[3] / 1024:4.0f} MiB  n={len(v)}")
PY
