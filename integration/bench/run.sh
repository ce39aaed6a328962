#!/usr/bin/env bash
# The benchmark: nixcast against Nix on the same closure and the same server,
# in one run, alternating the tools, medians of $REPS (default 3).
#
#   integration/bench/run.sh            # everything; writes integration/bench/RESULTS.md
#   REPS=1 ONLY=pull-zstd run.sh        # one stage, for development (writes $WORK/RESULTS.partial.md)
#     stages: publish-zstd publish-xz publish-xz-full pull-zstd pull-xz pull-small pull-delay pull-link pull-sealed floor
#             pull-update (comma-separated)
#   RESULTS=$PWD/integration/bench/RESULTS.md ONLY=… run.sh  # some stages, written to RESULTS.md all the same
#   CPUS="2 1" run.sh                   # the cold pulls also on one core (taskset -c 0 for every process of
#                                       # every tool; the server is not pinned); default: all cores only
#
# Needs root (fresh stores are private mount namespaces with their own /nix, as in
# integration/demo.sh) and loop devices for their file systems (else plain directories),
# a Rust toolchain, and ~6 GB in $WORK (default /var/tmp/nixcast-bench: corpus, closures'
# GC roots, caches, logs, results.tsv). Installs Nix (nix-bin), nginx, GNU time, xz and
# zstd from Debian if missing. Takes ~9 minutes on an idle 2-core machine (546 s measured),
# up to ~14 when other builds compete for the cores; plus the release build and, the first
# time, ~1 minute to build the closures. Not part of CI.
# RESULTS.md: the tables are rewritten each run; hand-written notes after the
# "<!-- notes -->" line are kept.
#
# What it measures (see RESULTS.md for the table):
#   publish cold, zstd, the 1000-path closure:      nixcast publish  vs  nix copy --to file://…?compression=zstd
#   publish cold, xz, a smaller closure ($XZ_N paths at $XZ_SCALE % size; xz at Nix's speed
#     takes 327 s for the full closure), and once the full closure with nixcast only;
#   publish after one path changed (--arg bumpNode m --argstr bump v2: `etc` and the top change);
#   pull cold, xz and zstd, into a fresh store from nginx:
#     nixcast-pull run  vs  nix copy --from http://…  and  nix-store -r --option substituters http://… --max-jobs 16;
#   pull cold, xz, the many-small-paths closure (integration/fixtures/fixture.nix, n=$SMALL_N,
#     big=$SMALL_BIG: 300 small paths and one 8 MB file), the common shape of a real system;
#   floors next to each cold pull, same store, same rounds: Nix importing the verified bytes itself, from an
#     uncompressed local file:// cache of the closure (what the agent's staging cache is), once sequentially
#     (`nix copy --no-recursive`) and once in parallel (`nix-store -r -j16` with that cache as the only substituter);
#     and per cache, once, the verify floor's first half: one core hashing, decoding and hashing again
#     all its NARs with the agent's own decoders (decode-floor; the report adds the import floor's CPU);
#     and the overlap floor: that parallel import while every NAR is decoded and hashed alongside (two
#     decode-floor processes at a time), measured on the row's cores: a tool that verifies each NAR before
#     Nix imports it, with perfect overlap and no other work, takes at least that long;
#     and the pull floor (floor-pull.sh, lists from gate.py): that, with every step an agent must
#     take before and after it in order (pointer, manifest, the NARs every path needs before Nix
#     can import anything else, then the profile and the switch);
#   the agent runs with the environment module.nix gives its unit (MALLOC_ARENA_MAX=1);
#   pull cold, zstd, +50 ms round trip (delayproxy.py, 25 ms each way), also nixcast-pull --jobs 64;
#   pull cold, the small-paths, zstd and xz caches (those present), through one emulated link shared by
#     every connection (20 ms round trip, 100 Mbit/s), one core (pull-link);
#     `nix copy` there only with DELAY_NIXCOPY_REPS=1 (it is sequential: ~2000 round trips, ~110 s a run);
#   pull after one path changed, and a no-op poll: seconds, requests and bytes (from nginx's access log);
#   pull cold, zstd, sealed (publish --recipient, the agent opens with an SSH host key) vs the same
#     closure unsealed, nixcast only, alternating: what sealing costs;
#   the update (pull-update): the 1000-path closure, then the same with its root library changed
#     (--arg bumpNode 0 --argstr bump v2: nearly every path gets a new hash, its contents change only in
#     the references it embeds), pulled into a store holding the first: nixcast-pull with NAR deltas,
#     nixcast-pull from a cache published --no-deltas, nix copy and nix-store -r -j16; on loopback and
#     through delayproxy.py at 20 ms round trip and 100 Mbit/s (UPDATE_DELAY=0 skips that row); with the
#     update bundle (bundle --base 1) against the full bundle of the second closure (update-bundles.txt);
#   peak memory: /usr/bin/time %M, the largest resident set of the command or of any descendant it waited for;
#   floors: single-core `xz -d` / `zstd -d` of the largest NAR and of all NARs.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${BENCH_WORK:-/var/tmp/nixcast-bench}
REPS=${REPS:-3}
N=${N:-1000}
XZ_N=${XZ_N:-200}
XZ_SCALE=${XZ_SCALE:-30}
DELAY_NIXCOPY_REPS=${DELAY_NIXCOPY_REPS:-0}
SMALL_N=${SMALL_N:-300}
SMALL_BIG=${SMALL_BIG:-8000000}
CPUS=${CPUS:-$(nproc)}
PORT=${BENCH_PORT:-18480}
PPORT=$((PORT + 1))
ONLY=${ONLY:-}

[ "$(id -u)" = 0 ] || { echo "run.sh needs root (unshare, mount)" >&2; exit 1; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
say() { printf '\n== %s  [%s, load %s]\n' "$*" "$(date +%T)" "$(cut -d' ' -f1-3 /proc/loadavg)"; }
T_START=$(date +%s)

# ---------------------------------------------------------------- tools
need=()
command -v nix-store >/dev/null || need+=(nix-bin)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/bin/time ] || need+=(time)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
export NIX_REMOTE=local

say "building nixcast (release)"
(cd "$REPO" && cargo build --release -q --bin nixcast --bin nixcast-pull --example decode-floor)
# Our own copies: another build in the same target directory cannot change them mid-run.
mkdir -p "$WORK"/{bin,gcroots,keys,ptr,logs,pub,vm,srv,nginx-tmp}
BIN=$WORK/bin
cp "$REPO/target/release/nixcast" "$REPO/target/release/nixcast-pull" "$REPO/target/release/examples/decode-floor" "$BIN/"

RES=$WORK/results.tsv
[ -n "$ONLY" ] && RES=$WORK/results.partial.tsv
: > "$RES"
rm -rf "$WORK"/logs/* "$WORK"/pub/* "$WORK"/vm/*

# ---------------------------------------------------------------- closures
say "building the closures (synth-closure.nix; cached in the store between runs)"
"$HERE/mkcorpus.sh" "$WORK/corpus" >/dev/null
build() { # NAME ARGS…
  local name=$1; shift
  nix-build "$HERE/synth-closure.nix" --arg corpusDir "$WORK/corpus" "$@" \
    -o "$WORK/gcroots/$name" --max-jobs 4 --option sandbox false --option substituters '' >/dev/null 2>"$WORK/logs/build-$name.log" \
    || { cat "$WORK/logs/build-$name.log"; exit 1; }
  readlink -f "$WORK/gcroots/$name"
}
TOP=$(build full --arg n "$N")
TOP2=$(build full-v2 --arg n "$N" --arg bumpNode $((N - 3)) --argstr bump v2)
XTOP=$(build small --arg n "$XZ_N" --arg scale "$XZ_SCALE")
XTOP2=$(build small-v2 --arg n "$XZ_N" --arg scale "$XZ_SCALE" --arg bumpNode $((XZ_N - 3)) --argstr bump v2)
# The many-small-paths closure: the test fixture, built the same way.
build_fixture() { # NAME VERSION
  local name=$1 v=$2
  nix-build "$REPO/integration/fixtures/fixture.nix" --arg n "$SMALL_N" --arg big "$SMALL_BIG" --argstr host vm \
    --argstr version "$v" -o "$WORK/gcroots/$name" --max-jobs 4 --option sandbox false --option substituters '' \
    >/dev/null 2>"$WORK/logs/build-$name.log" || { cat "$WORK/logs/build-$name.log"; exit 1; }
  readlink -f "$WORK/gcroots/$name"
}
STOP=$(build_fixture paths$SMALL_N 1)
STOP2=$(build_fixture paths$SMALL_N-v2 2)
STATS_PATHS=$(python3 "$HERE/closure-stats.py" "$STOP" | sed -n 1p)
STATS_FULL=$(python3 "$HERE/closure-stats.py" "$TOP" | sed -n 1p)
STATS_SMALL=$(python3 "$HERE/closure-stats.py" "$XTOP" | sed -n 1p)
echo "full:  $TOP"; echo "       $STATS_FULL"
echo "small: $XTOP"; echo "       $STATS_SMALL"
echo "paths$SMALL_N: $STOP"; echo "       $STATS_PATHS"
echo "changed paths: $(comm -13 <(nix-store -qR "$TOP" | sort) <(nix-store -qR "$TOP2" | sort) | wc -l) (full), $(comm -13 <(nix-store -qR "$XTOP" | sort) <(nix-store -qR "$XTOP2" | sort) | wc -l) (small)"

# ---------------------------------------------------------------- key, server, proxy
SEC=$WORK/keys/bench.sec
if [ ! -s "$SEC" ]; then
  "$BIN/nixcast" keygen --force --name nixcast-bench-1 --secret-key-file "$SEC" --public-key-file "$WORK/keys/bench.pub"
fi
PUB=$(cat "$WORK/keys/bench.pub")

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  for m in "$WORK"/vm/*/nix; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  rm -rf "$WORK"/vm/*
}
trap cleanup EXIT

for port in "$PORT" "$PPORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (another run?); set BENCH_PORT" >&2; exit 1
  fi
done
ACCESS=$WORK/access.log
: > "$ACCESS"
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$PORT|g" "$HERE/nginx.conf.in" > "$WORK/nginx.conf"
"$NGINX" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" &
pids+=($!)
python3 "$HERE/delayproxy.py" "$PPORT" "$PORT" 25 &
pids+=($!)
for port in "$PORT" "$PPORT"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
URL=http://127.0.0.1:$PORT
DURL=http://127.0.0.1:$PPORT
echo "nginx at $URL, +50 ms round trip at $DURL"

# CPU accounting: machine busy time vs our own, to tell whether other work ran meanwhile.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
ours() { awk '{print $14+$15+$16+$17}' "/proc/$$/stat"; }
UPTIME_BEFORE=$(uptime)
BUSY0=$(busy); OURS0=$(ours); T_MEASURE=$(date +%s)
TOPPROCS_BEFORE=$(ps -eo pcpu,etime,comm --sort=-pcpu | sed -n 1,6p)

# ---------------------------------------------------------------- measuring
# measure WORK TOOL REP CMD… : one timed run; appends a row to results.tsv.
measure() {
  local work=$1 tool=$2 rep=$3; shift 3
  local log=$WORK/logs/$work.$tool.$rep.log
  local l0 t0 secs rss user sys reqs bytes
  l0=$(wc -l < "$ACCESS")
  t0=$(date +%s.%N)
  if ! "${PIN[@]}" /usr/bin/time -o "$WORK/time.out" -f '%e %M %U %S' "$@" > "$log" 2>&1; then
    echo "FAILED: $work $tool #$rep: $*" >&2; tail -20 "$log" >&2; exit 1
  fi
  read -r secs rss user sys < <(tail -1 "$WORK/time.out")
  sleep 0.1 # nginx logs a request when it has sent the response
  read -r reqs bytes < <(tail -n +$((l0 + 1)) "$ACCESS" | awk '{n++; b+=$5} END {print n+0, b+0}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$work" "$tool" "$rep" "$secs" "$rss" "$reqs" "$bytes" \
    "$(cut -d' ' -f1 /proc/loadavg)" "$t0" "$log" "$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')" >> "$RES"
  printf '  %-22s %-10s #%s %8.2f s %7d KiB %5d req %11d B\n' "$work" "$tool" "$rep" "$secs" "$rss" "$reqs" "$bytes"
}
# CPUS=1: every process of the measured command (and of its children) on core 0.
PIN=(env)
pin() { if [ "$1" -ge "$(nproc)" ]; then PIN=(env); else PIN=(taskset -c "0-$(($1 - 1))"); fi; }
# The work name's suffix for a pinned run.
cpus_tag() { [ "$1" -ge "$(nproc)" ] || echo "-cpu$1"; }
# The order of the tools turns by one each repetition.
order() { local r=$1; shift; local a=("$@") n=$#; for i in $(seq 0 $((n - 1))); do echo "${a[$(((i + r - 1) % n))]}"; done; }
# A command in a fresh "VM": a private mount namespace whose /nix is DIR/nix.
VM=(unshare -m --propagation private sh -c 'mount --bind "$0" /nix && exec "$@"')
# NIXCAST_LOG: the agent logs its own peak resident set (the memory table's "agent alone").
vmcmd() { VMCMD=("${VM[@]}" "$1/nix" env HOME="$1/home" XDG_CACHE_HOME="$1/xdg" NIX_REMOTE=local
                 NIXCAST_LOG=info,nixcast_pull::pipeline=debug); }
# Each VM's /nix is a fresh ext4 file system on a loop device, as a new VM's disk
# would be: in a directory of the host's file system, creating files right after
# the previous VM's were deleted costs ext4 extra time (recently_deleted() in its
# inode allocator), which would tax whichever tool runs next.
LOOP=1
mkvm() {
  rmvm "$1"
  mkdir -p "$1"/{nix,home,xdg}
  if [ "$LOOP" = 1 ]; then
    truncate -s 8G "$1.img"
    if ! { mkfs.ext4 -q -F "$1.img" && mount -o loop "$1.img" "$1/nix"; } 2>/dev/null; then
      echo "   (no loop devices: VMs are plain directories)"; LOOP=0; rm -f "$1.img"
    fi
  fi
  sync
}
rmvm() {
  if mountpoint -q "$1/nix" 2>/dev/null; then umount "$1/nix"; fi
  rm -rf "$1" "$1.img"
}
set_pointer() { # COMPRESSION v1|v2
  cp "$WORK/ptr/$1-$2.json" "$WORK/srv/$1/hosts/.vm.json.tmp"
  mv -f "$WORK/srv/$1/hosts/.vm.json.tmp" "$WORK/srv/$1/hosts/vm.json"
}

publish_stage() { # COMPRESSION TOP TOP2 LABEL [keep-for-serving]
  local c=$1 top=$2 top2=$3 label=$4 keep=${5:-}
  say "publish $label, $c: cold, then after one path changed ($REPS× each tool)"
  for r in $(seq "$REPS"); do
    for tool in $(order "$r" nixcast nix-copy); do
      local d=$WORK/pub/$c-$label-$tool-$r
      rm -rf "$d" "$d.xdg"
      mkdir -p "$d.xdg"
      if [ "$tool" = nixcast ]; then
        measure "publish-cold-$c-$label" nixcast "$r" \
          "$BIN/nixcast" publish --host vm --path "$top" --cache "$d" --secret-key-file "$SEC" --compression "$c"
        [ -n "$keep" ] && cp "$d/hosts/vm.json" "$WORK/ptr/$c-v1.json"
        measure "publish-incr-$c-$label" nixcast "$r" \
          "$BIN/nixcast" publish --host vm --path "$top2" --cache "$d" --secret-key-file "$SEC" --compression "$c"
        [ -n "$keep" ] && cp "$d/hosts/vm.json" "$WORK/ptr/$c-v2.json"
      else
        measure "publish-cold-$c-$label" nix-copy "$r" env XDG_CACHE_HOME="$d.xdg" \
          nix --extra-experimental-features nix-command copy --to "file://$d?compression=$c&secret-key=$SEC" "$top"
        measure "publish-incr-$c-$label" nix-copy "$r" env XDG_CACHE_HOME="$d.xdg" \
          nix --extra-experimental-features nix-command copy --to "file://$d?compression=$c&secret-key=$SEC" "$top2"
      fi
      if [ -n "$keep" ] && [ "$tool" = nixcast ] && [ "$r" = "$REPS" ]; then
        rm -rf "$WORK/srv/$c"; mv "$d" "$WORK/srv/$c"
      fi
      rm -rf "$d" "$d.xdg"
    done
  done
}

# The closure a cache holds (for Nix, which is told the top path): the 1000-path one unless set here.
declare -A CTOP CTOP2
ctop() { echo "${CTOP[$1]:-$TOP}"; }
ctop2() { echo "${CTOP2[$1]:-$TOP2}"; }
# The floor caches: the closure of cache C as an uncompressed, signed file:// cache on the local disk,
# what the agent's staging cache holds once every NAR is verified.
floor_cache() { # C
  local d=$WORK/pub/none-$1
  if [ ! -f "$d/nix-cache-info" ]; then
    rm -rf "$d"
    "$BIN/nixcast" publish --host vm --path "$(ctop "$1")" --cache "$d" --secret-key-file "$SEC" --compression none >/dev/null 2>&1
    nix-store -qR "$(ctop "$1")" > "$d.closure"
  fi
  python3 "$REPO/integration/bench/gate.py" "$WORK/srv/$1" "$d.closure" "$WORK/ptr/$1-v1.json" "$d.pull-floor" \
    2>> "$WORK/logs/gate.log"
}

pull_one() { # COMPRESSION TOOL REP URL WORKPREFIX [cold-only [AGENT-ARGS…]]
  local c=$1 tool=$2 r=$3 url=$4 w=$5 coldonly=${6:-}
  shift 6 2>/dev/null || shift $#
  local d=$WORK/vm/$w-$tool-$r
  mkvm "$d"
  vmcmd "$d"
  # The agent's environment as module.nix sets it for the unit (glibc arenas: two).
  local agent=(env MALLOC_ARENA_MAX=1 "$BIN/nixcast-pull" run --cache "$url/$c" --allow-insecure-http --host vm
               --trusted-key "$PUB" --state-dir /nix/var/nixcast "$@")
  local steps=(cold incr noop)
  [ -n "$coldonly" ] && steps=(cold)
  [[ $tool == floor-* ]] && steps=(cold)
  for step in "${steps[@]}"; do
    local top; top=$(ctop "$c"); [ "$step" != cold ] && top=$(ctop2 "$c")
    case $tool in
      nixcast)
        # cold: generation 1; incr: the publisher's generation 2; noop: untouched
        case $step in cold) set_pointer "$c" v1 ;; incr) set_pointer "$c" v2 ;; esac
        measure "$w-$step" nixcast "$r" "${VMCMD[@]}" "${agent[@]}" ;;
      nix-copy)
        measure "$w-$step" nix-copy "$r" "${VMCMD[@]}" nix --extra-experimental-features nix-command \
          copy --from "$url/$c" --option trusted-public-keys "$PUB" "$top" ;;
      nix-store)
        measure "$w-$step" nix-store "$r" "${VMCMD[@]}" nix-store -r "$top" \
          --option substituters "$url/$c" --option trusted-public-keys "$PUB" --max-jobs 16 ;;
      floor-copy)
        measure "$w-$step" floor-copy "$r" "${VMCMD[@]}" xargs -s 1000000 -a "$WORK/pub/none-$c.closure" \
          nix --extra-experimental-features nix-command copy --no-recursive --from "file://$WORK/pub/none-$c" \
          --option trusted-public-keys "$PUB" ;;
      floor-subst)
        measure "$w-$step" floor-subst "$r" "${VMCMD[@]}" nix-store -r "$top" \
          --option substituters "file://$WORK/pub/none-$c" --option trusted-public-keys "$PUB" --max-jobs 16 ;;
      floor-pull)
        set_pointer "$c" v1
        measure "$w-$step" floor-pull "$r" "${VMCMD[@]}" sh "$REPO/integration/bench/floor-pull.sh" "$BIN/decode-floor" \
          "$WORK/pub/none-$c.pull-floor" "$WORK/pub/none-$c" "$PUB" "$url/$c" ;;
      floor-overlap)
        measure "$w-$step" floor-overlap "$r" "${VMCMD[@]}" sh -c "find '$WORK/srv/$c/nar' -type f |
            xargs -P 2 -n 64 '$BIN/decode-floor' & d=\$!; \"\$@\"; s=\$?; wait \$d && exit \$s" sh \
          nix-store -r "$top" --option substituters "file://$WORK/pub/none-$c" --option trusted-public-keys "$PUB" \
          --max-jobs 16 ;;
    esac
  done
  rmvm "$d"
}

# The verification floor's first half: one core hashing every NAR of cache C, decompressing
# it and hashing the result (what any tool that checks FileHash before decoding and NarHash
# before Nix imports must do), with the agent's own decoders and SHA-256
# (puller/examples/decode-floor.rs: Debian's xz 5.4 decodes ~1.7x slower than the liblzma
# the agent links, so `xz -dc | openssl dgst` overstated the xz floors before round 5).
verify_floor() { # C
  measure "verify-$1" verify 1 taskset -c 0 "$BIN/decode-floor" "$WORK/srv/$1"/nar/*
}

pull_stage() { # COMPRESSION [cold-only]
  local c=$1 coldonly=${2:-} n tag
  floor_cache "$c"
  verify_floor "$c"
  for n in $CPUS; do
    pin "$n"; tag=$(cpus_tag "$n")
    say "pull $c into fresh stores on $n core(s): cold${coldonly:+ only}${coldonly:+}$([ -n "$coldonly" ] || echo ', after one path changed, no-op'), with the floors ($REPS× each tool)"
    for r in $(seq "$REPS"); do
      for tool in $(order "$r" nixcast nix-copy nix-store floor-copy floor-subst floor-overlap floor-pull); do
        pull_one "$c" "$tool" "$r" "$URL" "pull-$c$tag" $coldonly
      done
    done
  done
  pin "$(nproc)"
}

if want publish-zstd || want pull-zstd || want pull-delay || want pull-sealed || want pull-link; then
  if want publish-zstd || [ ! -f "$WORK/srv/zstd/hosts/vm.json" ]; then
    publish_stage zstd "$TOP" "$TOP2" "n$N" keep
  fi
fi
if want publish-xz; then
  publish_stage xz "$XTOP" "$XTOP2" "n${XZ_N}s$XZ_SCALE"
fi
if want publish-xz-full || want pull-xz; then
  if want publish-xz-full || [ ! -f "$WORK/srv/xz/hosts/vm.json" ]; then
    say "publish n$N, xz, nixcast only, once (the cache the xz pulls read)"
    d=$WORK/pub/xz-full
    rm -rf "$d"
    measure "publish-cold-xz-n$N" nixcast 1 \
      "$BIN/nixcast" publish --host vm --path "$TOP" --cache "$d" --secret-key-file "$SEC" --compression xz
    cp "$d/hosts/vm.json" "$WORK/ptr/xz-v1.json"
    measure "publish-incr-xz-n$N" nixcast 1 \
      "$BIN/nixcast" publish --host vm --path "$TOP2" --cache "$d" --secret-key-file "$SEC" --compression xz
    cp "$d/hosts/vm.json" "$WORK/ptr/xz-v2.json"
    rm -rf "$WORK/srv/xz"; mv "$d" "$WORK/srv/xz"
  fi
fi
if want pull-small || want pull-link; then
  c=paths$SMALL_N-xz
  CTOP[$c]=$STOP; CTOP2[$c]=$STOP2
  if [ ! -f "$WORK/srv/$c/hosts/vm.json" ] || [ "$(cat "$WORK/srv/$c.top" 2>/dev/null)" != "$STOP" ]; then
    say "publish the $SMALL_N-path fixture, xz, nixcast only (the cache the small-path pulls read)"
    d=$WORK/pub/$c
    rm -rf "$d" "$WORK/pub/none-$c"
    "$BIN/nixcast" publish --host vm --path "$STOP" --cache "$d" --secret-key-file "$SEC" --compression xz >/dev/null
    cp "$d/hosts/vm.json" "$WORK/ptr/$c-v1.json"
    "$BIN/nixcast" publish --host vm --path "$STOP2" --cache "$d" --secret-key-file "$SEC" --compression xz >/dev/null
    cp "$d/hosts/vm.json" "$WORK/ptr/$c-v2.json"
    rm -rf "$WORK/srv/$c"; mv "$d" "$WORK/srv/$c"; echo "$STOP" > "$WORK/srv/$c.top"
  fi
fi
sync
want pull-small && pull_stage "paths$SMALL_N-xz" cold-only
want pull-zstd && pull_stage zstd
want pull-xz && pull_stage xz
if want pull-delay; then
  say "pull zstd cold, +50 ms round trip ($REPS× nixcast, nixcast --jobs 64 and nix-store -r, ${DELAY_NIXCOPY_REPS}× nix copy)"
  for r in $(seq "$REPS"); do
    for tool in $(order "$r" nixcast nixcast-j64 nix-copy nix-store); do
      [ "$tool" = nix-copy ] && [ "$r" -gt "$DELAY_NIXCOPY_REPS" ] && continue
      if [ "$tool" = nixcast-j64 ]; then
        pull_one zstd nixcast "$r" "$DURL" pull-zstd-rtt50-j64 cold-only --jobs 64
      else
        pull_one zstd "$tool" "$r" "$DURL" pull-zstd-rtt50 cold-only
      fi
    done
  done
fi
if want pull-link; then
  # One emulated uplink for every connection (delayproxy.py's rate cap is per direction, shared):
  # 10 ms each way, 100 Mbit/s, every process on one core, as a small VM pulls. nix copy only with
  # DELAY_NIXCOPY_REPS (it is sequential and latency-bound).
  # Also the same 20 ms with no rate cap: what latency alone costs.
  LPORT=$((PORT + 3)) NPORT=$((PORT + 4))
  python3 "$HERE/delayproxy.py" "$LPORT" "$PORT" 10 100 &
  pids+=($!)
  python3 "$HERE/delayproxy.py" "$NPORT" "$PORT" 10 &
  pids+=($!)
  for p in "$LPORT" "$NPORT"; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  done
  pin 1
  for c in "paths$SMALL_N-xz" zstd xz; do
    if [ ! -f "$WORK/srv/$c/hosts/vm.json" ]; then
      say "pull-link: no $c cache here (its publish stage makes it): skipped"
      continue
    fi
    for link in "$LPORT link20-100mbit" "$NPORT rtt20"; do
      set -- $link
      say "pull $c cold, $2, one core ($REPS× nixcast and nix-store -r, ${DELAY_NIXCOPY_REPS}× nix copy)"
      for r in $(seq "$REPS"); do
        for tool in $(order "$r" nixcast nix-copy nix-store); do
          [ "$tool" = nix-copy ] && [ "$r" -gt "$DELAY_NIXCOPY_REPS" ] && continue
          pull_one "$c" "$tool" "$r" "http://127.0.0.1:$1" "pull-$c-$2-cpu1" cold-only
        done
      done
    done
  done
  pin "$(nproc)"
fi
if want pull-sealed; then
  say "pull zstd cold, sealed vs unsealed (nixcast only, $REPS× each)"
  HOSTKEY=$WORK/keys/host-ed25519
  [ -s "$HOSTKEY" ] || ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$HOSTKEY"
  d=$WORK/pub/zstd-sealed
  rm -rf "$d"
  measure "publish-cold-zstd-sealed-n$N" nixcast 1 \
    "$BIN/nixcast" publish --host vm --path "$TOP" --cache "$d" --secret-key-file "$SEC" --compression zstd \
    --recipient "$(cat "$HOSTKEY.pub")"
  cp "$d/hosts/vm.json" "$WORK/ptr/zstd-sealed-v1.json"
  rm -rf "$WORK/srv/zstd-sealed"; mv "$d" "$WORK/srv/zstd-sealed"
  for r in $(seq "$REPS"); do
    for tool in $(order "$r" sealed plain); do
      if [ "$tool" = sealed ]; then
        pull_one zstd-sealed nixcast "$r" "$URL" pull-zstd-sealed cold-only --identity "$HOSTKEY"
      else
        pull_one zstd nixcast "$r" "$URL" pull-zstd-unsealed cold-only
      fi
    done
  done
fi
if want pull-update; then
  TOPU=$(build full-u2 --arg n "$N" --arg bumpNode 0 --argstr bump v2)
  echo "update: $(comm -13 <(nix-store -qR "$TOP" | sort) <(nix-store -qR "$TOPU" | sort) | wc -l) of $N paths new"
  # Two caches of the same two generations: with NAR deltas, and --no-deltas (the agent's own full pull).
  for kind in delta full; do
    c=update-$kind
    CTOP[$c]=$TOP; CTOP2[$c]=$TOPU
    if [ "$(cat "$WORK/srv/$c.top2" 2>/dev/null)" != "$TOPU" ]; then
      say "publish the update, zstd, $kind"
      d=$WORK/pub/$c
      rm -rf "$d"
      "$BIN/nixcast" publish --host vm --path "$TOP" --cache "$d" --secret-key-file "$SEC" --compression zstd >/dev/null
      cp "$d/hosts/vm.json" "$WORK/ptr/$c-v1.json"
      extra=(); [ "$kind" = full ] && extra=(--no-deltas)
      measure "publish-update-zstd-$kind" nixcast 1 \
        "$BIN/nixcast" publish --host vm --path "$TOPU" --cache "$d" --secret-key-file "$SEC" --compression zstd "${extra[@]}"
      cp "$d/hosts/vm.json" "$WORK/ptr/$c-v2.json"
      rm -rf "$WORK/srv/$c"; mv "$d" "$WORK/srv/$c"; echo "$TOPU" > "$WORK/srv/$c.top2"
    fi
  done
  set_pointer update-delta v2
  "$BIN/nixcast" bundle --host vm --cache "$WORK/srv/update-delta" --output "$WORK/pub/update.bundle" --base 1
  "$BIN/nixcast" bundle --host vm --cache "$WORK/srv/update-delta" --output "$WORK/pub/full2.bundle"
  echo "update bundle $(stat -c %s "$WORK/pub/update.bundle") full bundle $(stat -c %s "$WORK/pub/full2.bundle")" \
    | tee "$WORK/update-bundles.txt"
  rm -f "$WORK/pub/update.bundle" "$WORK/pub/full2.bundle"
  UPORT=$((PORT + 2))
  if [ "${UPDATE_DELAY:-1}" = 1 ]; then
    python3 "$HERE/delayproxy.py" "$UPORT" "$PORT" 10 100 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$UPORT") 2>/dev/null && break; sleep 0.1; done
  fi
  # update_one TOOL REP URL WORK: a fresh store that the agent brought to the first closure (not
  # measured), then the second closure pulled by TOOL.
  update_one() {
    local tool=$1 r=$2 url=$3 w=$4 c=update-delta
    [ "$tool" = nixcast-full ] && c=update-full
    local d=$WORK/vm/$w-$tool-$r
    mkvm "$d"
    vmcmd "$d"
    local agent=(env MALLOC_ARENA_MAX=1 "$BIN/nixcast-pull" run --cache "$url/$c" --allow-insecure-http --host vm
                 --trusted-key "$PUB" --state-dir /nix/var/nixcast)
    set_pointer "$c" v1
    "${VMCMD[@]}" "${agent[@]}" > "$WORK/logs/$w.$tool.$r.setup.log" 2>&1
    set_pointer "$c" v2
    case $tool in
      nixcast*) measure "$w" "$tool" "$r" "${VMCMD[@]}" "${agent[@]}" ;;
      nix-copy) measure "$w" nix-copy "$r" "${VMCMD[@]}" nix --extra-experimental-features nix-command \
          copy --from "$url/$c" --option trusted-public-keys "$PUB" "$TOPU" ;;
      nix-store) measure "$w" nix-store "$r" "${VMCMD[@]}" nix-store -r "$TOPU" \
          --option substituters "$url/$c" --option trusted-public-keys "$PUB" --max-jobs 16 ;;
    esac
    rmvm "$d"
  }
  for n in $CPUS; do
    pin "$n"; tag=$(cpus_tag "$n")
    say "pull the update into a store holding the first closure, on $n core(s) ($REPS× each tool)"
    for r in $(seq "$REPS"); do
      for tool in $(order "$r" nixcast nixcast-full nix-copy nix-store); do
        update_one "$tool" "$r" "$URL" "pull-update-zstd$tag"
        # nix copy is sequential: ~2000 round trips, over a minute a run through the proxy.
        if [ "${UPDATE_DELAY:-1}" = 1 ] && { [ "$tool" != nix-copy ] || [ "$r" = 1 ]; }; then
          update_one "$tool" "$r" "http://127.0.0.1:$UPORT" "pull-update-zstd-rtt20-100mbit$tag"
        fi
      done
    done
  done
  pin "$(nproc)"
fi
if want floor; then
  say "floors: single-core decompression"
  for c in xz zstd; do
    [ -d "$WORK/srv/$c/nar" ] || continue
    big=$(ls -S "$WORK/srv/$c/nar" | sed -n 1p)
    dec="$c -dc"; [ "$c" = xz ] && dec="xz -dc -T1"
    measure "decode-largest-$c" "$c" 1 sh -c "$dec '$WORK/srv/$c/nar/$big' > /dev/null"
    measure "decode-all-$c" "$c" 1 sh -c "cat '$WORK/srv/$c'/nar/*.nar.* | $dec > /dev/null"
  done
  # Nix's own import of the whole closure from uncompressed NARs on the local disk,
  # as the agent's staging cache is: what any import through Nix costs.
  say "floors: nix copy --no-recursive of the closure from a local uncompressed cache"
  d=$WORK/pub/none
  rm -rf "$d"
  "$BIN/nixcast" publish --host vm --path "$TOP" --cache "$d" --secret-key-file "$SEC" --compression none >/dev/null 2>&1
  nix-store -qR "$TOP" > "$WORK/closure.txt"
  for r in $(seq "$REPS"); do
    v=$WORK/vm/import-$r
    mkvm "$v"
    vmcmd "$v"
    measure import-all nix "$r" "${VMCMD[@]}" xargs -s 1000000 -a "$WORK/closure.txt" nix --extra-experimental-features nix-command \
      copy --no-recursive --from "file://$d" --option trusted-public-keys "$PUB"
    rmvm "$v"
  done
  rm -rf "$d"
fi

# ---------------------------------------------------------------- report
BUSY1=$(busy); T_END=$(date +%s)
cleanup; trap - EXIT
OURS1=$(ours)
UPTIME_AFTER=$(uptime)
TOPPROCS_AFTER=$(ps -eo pcpu,etime,comm --sort=-pcpu | sed -n 1,6p)
HZ=$(getconf CLK_TCK)
{
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem=$(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel=$(uname -r)"
  echo "nix=$(nix --version)"
  echo "nginx=$("$NGINX" -v 2>&1 | sed 's/.*: //')"
  echo "xz=$(xz --version | sed -n 1p)"
  echo "zstd=$(zstd --version)"
  echo "commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "reps=$REPS"
  echo "n=$N"
  echo "xz_n=$XZ_N"
  echo "xz_scale=$XZ_SCALE"
  echo "delay_nixcopy_reps=$DELAY_NIXCOPY_REPS"
  echo "stats_full=$STATS_FULL"
  echo "stats_small=$STATS_SMALL"
  echo "stats_paths=$STATS_PATHS"
  echo "small_n=$SMALL_N"
  echo "small_big=$SMALL_BIG"
  echo "cpus=$CPUS"
  echo "uptime_before=$UPTIME_BEFORE"
  echo "uptime_after=$UPTIME_AFTER"
  echo "measure_seconds=$((T_END - T_MEASURE))"
  echo "total_seconds=$((T_END - T_START))"
  echo "busy_cpu_seconds=$(( (BUSY1 - BUSY0) / HZ ))"
  echo "our_cpu_seconds=$(( (OURS1 - OURS0) / HZ ))"
  echo "top_before=$(echo "$TOPPROCS_BEFORE" | tail -n +2 | awk '{printf "%s%s %s%% (%s)", (NR>1?"; ":""), $3, $1, $2}')"
  echo "top_after=$(echo "$TOPPROCS_AFTER" | tail -n +2 | awk '{printf "%s%s %s%% (%s)", (NR>1?"; ":""), $3, $1, $2}')"
} > "$WORK/machine.txt"
out=$HERE/RESULTS.md
[ -n "$ONLY" ] && out=$WORK/RESULTS.partial.md
out=${RESULTS:-$out} # RESULTS=integration/bench/RESULTS.md: a run of some stages rewrites it all the same
python3 -B "$HERE/report.py" "$RES" "$WORK/machine.txt" "$out"
echo
echo "written: $out ($(( $(date +%s) - T_START )) s in all)"
