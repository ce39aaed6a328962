#!/usr/bin/env bash
# Interop: nixcast with the Nix and the systemd users run, beside test.sh's
# Nix 2.8 (Debian bookworm's nix-bin, the host's).
#
# A Debian trixie root (debootstrap, cached in $NIXCAST_INTEROP_CACHE per
# day) brings current Nix (trixie's nix-bin) and systemd. In it:
#  - the core cycle, crossed: publisher on one Nix, agent on the other
#    (publish → pull → switch → publish a change → delta pull → failing
#    switch → rollback), each in a fresh store;
#  - an agent built from an earlier commit (before this round's format
#    changes) updating from a cache this publisher writes;
#  - current Nix's `nix copy --from` and `nix-store -r` on our cache, and
#    `publish` onto a cache current Nix wrote;
#  - the root booted with `systemd-nspawn -b`, the module's units rendered
#    by the real module system and installed beside a socket-activated
#    nix-daemon: the service applies a generation through the daemon, a
#    failing switch fails the unit and rolls back, the timer fires, and
#    `systemd-analyze security` scores the unit no worse than before.
#
# Run as root (chroot, mount namespaces, nspawn). Installs debootstrap and
# systemd-container if missing; needs Debian's archive. Ends with one
# `interop: N passed, N failed` line; exits 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# The exposure `systemd-analyze security` gave the unit under systemd 257
# when this test was written; a higher one fails (lower: lower this).
max_exposure=3.8
cache_dir=${NIXCAST_INTEROP_CACHE:-/var/cache/nixcast-interop}
mirror=${NIXCAST_INTEROP_MIRROR:-http://deb.debian.org/debian}

die() { echo "interop: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nix-store >/dev/null || need+=(nix-bin)
command -v python3 >/dev/null || need+=(python3)
command -v pgrep >/dev/null || need+=(procps)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi
export NIX_REMOTE=local
if [ -z "${NIX_PATH:-}" ] && [ -d ../shared/nixpkgs-lib ]; then
  NIX_PATH=nixpkgs=$(realpath ../shared/nixpkgs-lib)
  export NIX_PATH
fi

echo "== building nixcast"
cargo build -q -p nixcast -p nixcast-pull || die "cargo build failed"
bin=$repo/target/debug

# --- The trixie root, built once a day ---------------------------------------
base=$cache_dir/trixie-$(date -u +%Y%m%d)
mkdir -p "$cache_dir"
# One build at a time, and no root removed while another run copies it: a
# run started meanwhile waits and reuses the build.
exec 9>"$cache_dir/.lock"
flock 9
if [ ! -x "$base/usr/bin/nix-store" ]; then
  echo "== building a Debian trixie root in $base (debootstrap)"
  rm -rf "$cache_dir"/trixie-* "$cache_dir"/.build-*
  tmp=$cache_dir/.build-$$
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
    trixie "$tmp" "$mirror" >"$cache_dir/debootstrap.log" 2>&1 ||
    { tail -20 "$cache_dir/debootstrap.log"; die "debootstrap failed"; }
  # A minbase root can stop on libdbd-sqlite3-perl wanting perl-dbdabi-94;
  # `apt-get -f install` completes it.
  chroot "$tmp" sh -c 'export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nix-bin || { apt-get -f install -y -qq && apt-get install -y -qq nix-bin; }
    apt-get clean' >>"$cache_dir/debootstrap.log" 2>&1 ||
    { tail -20 "$cache_dir/debootstrap.log"; die "installing nix-bin in the trixie root failed"; }
  mv "$tmp" "$base"
fi
flock -s 9

work=$(mktemp -d /var/tmp/nixcast-interop.XXXXXX)
root=$work/root

# The agent as it was before this round changed what the cache holds (a key
# list beside the pointers; reports ordered): built from this repository's
# own history, its target directory kept with the trixie root.
old_agent_rev=293cab7b40ab844ee11962971129ba62147df2e9
echo "== building the agent of ${old_agent_rev:0:7}"
mkdir -p "$work/old-agent-src"
git -C "$repo" archive "$old_agent_rev" | tar -x -C "$work/old-agent-src" ||
  die "commit $old_agent_rev is not in this clone's history (a shallow clone?): fetch it"
cargo build -q -p nixcast-pull --manifest-path "$work/old-agent-src/Cargo.toml" \
  --target-dir "$cache_dir/old-agent-target" || die "building the agent of $old_agent_rev failed"
old_agent=$cache_dir/old-agent-target/debug/nixcast-pull
# Tests run in subshells: what outlives one is written down here.
: >"$work/servers"
: >"$work/boot.env"
cleanup() {
  local p box_pid= box_leader=
  . "$work/boot.env"
  if [ -n "$box_pid" ]; then
    # A clean shutdown, bounded; then nspawn's own (SIGTERM halts the box).
    [ -n "$box_leader" ] && timeout 60 nsenter -t "$box_leader" -a systemctl poweroff 2>/dev/null
    for _ in $(seq 300); do kill -0 "$box_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$box_pid" 2>/dev/null
    for _ in $(seq 300); do kill -0 "$box_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  for p in $(cat "$work/servers"); do kill "$p" 2>/dev/null; done
  # For debugging only: NIXCAST_INTEROP_KEEP=1 keeps the roots, stores and caches.
  if [ -n "${NIXCAST_INTEROP_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
cp -a "$base" "$root"
exec 9>&-
cp "$bin/nixcast" "$bin/nixcast-pull" "$root/usr/local/bin/"
mkdir -p "$root/work" "$root/nix" "$work/stores"
# No nixbld users in the root, and the stand-in system builds with /bin.
cat >"$root/etc/nix/nix.conf" <<'EOF'
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command
EOF
cp integration/fixtures/fixture.nix "$work/fixture.nix"

# --- Helpers -------------------------------------------------------------------
store() { mkdir -p "$work/stores/$1" && echo "$work/stores/$1"; }
# new STORE CMD…: CMD in the trixie root (current Nix) with STORE as its /nix.
new() {
  local s=$1; shift
  unshare -m --propagation private env ROOT="$root" S="$s" W="$work" sh -c '
    set -e
    mount --bind "$S" "$ROOT/nix"
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    mount --bind "$W" "$ROOT/work"
    exec chroot "$ROOT" env -i PATH=/usr/local/bin:/usr/bin:/usr/sbin HOME=/root NIX_REMOTE=local "$@"' new "$@"
}
# old STORE CMD…: CMD on the host (Nix 2.8) with STORE as its /nix.
old() {
  local s=$1; shift
  unshare -m --propagation private sh -c 'mount --bind "$0" /nix && exec "$@"' "$s" "$@"
}
# Builds the stand-in system with the given side's Nix: SIDE STORE VERSION [SWITCHEXIT].
build() {
  local f=$work/fixture.nix
  [ "$1" = new ] && f=/work/fixture.nix
  # Without build users: Nix kills every process of a build user before a
  # build, which would hit builds of other stores on this machine.
  "$1" "$2" nix-build "$f" --no-out-link --option substituters '' --option build-users-group '' \
    --argstr host foobar \
    --argstr version "$3" --arg n 6 --arg switchExit "${4:-0}"
}
# serve DIR: serves DIR over HTTP on the loopback, sets $url.
serve() {
  "$bin/nixcast" serve --cache "$1" --listen 127.0.0.1:0 2>"$1.serve.log" &
  echo $! >>"$work/servers"
  local i
  for i in $(seq 100); do grep -q 'http://' "$1.serve.log" && break; sleep 0.1; done
  url=$(grep -o 'http://[0-9.:]*' "$1.serve.log" | head -1)
  [ -n "$url" ] || { cat "$1.serve.log"; return 1; }
}
# The profile's generation link and the system it points at, in STORE.
profile() { echo "$(readlink "$1/var/nix/profiles/system") $(readlink "$1/var/nix/profiles/$(readlink "$1/var/nix/profiles/system")")"; }
expect() { # WHAT GOT WANT
  [ "$2" = "$3" ] || { echo "$1: got '$2', want '$3'"; return 1; }
  echo "$1: $2"
}

new_nix=$(new "$(store version)" nix-store --version | awk '{print $NF}')
old_nix=$(nix-store --version | awk '{print $NF}')
echo "== host Nix $old_nix, trixie Nix $new_nix"

"$bin/nixcast" keygen --name interop-1 --secret-key-file "$work/secret.key" \
  --public-key-file "$work/public.key" >/dev/null || die "keygen failed"
pub=$(cat "$work/public.key")

pass=0
fail=0
failed=()
# t NAME FUNCTION: runs FUNCTION (stopping at its first failing command),
# prints its output if it failed.
t() {
  local name=$1 fn=$2 log=$work/test-$((pass + fail + 1)).log rc start=$SECONDS
  # For debugging only: NIXCAST_INTEROP_ONLY=REGEX runs the matching tests.
  [[ $name =~ ${NIXCAST_INTEROP_ONLY:-.} ]] || return 0
  (set -e; . "$work/boot.env"; "$fn") >"$log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then
    pass=$((pass + 1))
    echo "ok   $name ($((SECONDS - start))s)"
    grep '^NOTE' "$log" | sed 's/^/     /'
  else
    fail=$((fail + 1))
    failed+=("$name")
    echo "FAIL $name ($((SECONDS - start))s)"
    tail -40 "$log" | sed 's/^/     /'
  fi
}

# --- The core cycle, crossed ---------------------------------------------------
# cycle PUBLISHER AGENT: the publisher's side (old/new) builds and publishes
# three generations, the agent's side pulls each into a fresh store.
cycle() {
  local p=$1 a=$2 ps as cache gen1 gen2 gen3 out want
  ps=$(store "pub-$p-$a") as=$(store "agent-$p-$a") cache=$work/cache-$p-$a
  mkdir -p "$cache"
  # The binaries are in /usr/local/bin in the root and in $bin on the host;
  # a publisher in the root sees $work as /work.
  local nb=$bin/nixcast nbp=$bin/nixcast-pull c=$cache k=$work/secret.key
  [ "$a" = new ] && nbp=/usr/local/bin/nixcast-pull
  [ "$p" = new ] && nb=/usr/local/bin/nixcast c=/work/${cache#"$work"/} k=/work/secret.key
  serve "$cache"
  pull() {
    "$a" "$as" "$nbp" run --cache "$url" --host foobar --trusted-key "$pub" \
      --state-dir /nix/var/nixcast --allow-insecure-http
  }

  echo "-- generation 1 (xz), published with $p Nix"
  gen1=$(build "$p" "$ps" "$p-$a-1")
  "$p" "$ps" "$nb" publish --host foobar --path "$gen1" --cache "$c" --secret-key-file "$k"
  pull
  expect "profile" "$(profile "$as")" "system-1-link $gen1"
  expect "switch log" "$(tail -1 "$as/var/nixcast-test-switch.log")" "switch $gen1"

  echo "-- generation 2 (zstd): only what changed is fetched"
  gen2=$(build "$p" "$ps" "$p-$a-2")
  "$p" "$ps" "$nb" publish --host foobar --path "$gen2" --cache "$c" --secret-key-file "$k" --compression zstd
  want=$("$p" "$ps" sh -c "nix-store -qR $gen2 | sort >/tmp/a; nix-store -qR $gen1 | sort >/tmp/b; comm -23 /tmp/a /tmp/b | wc -l")
  out=$(pull 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  expect "paths fetched" "$(echo "$out" | grep -o 'missing=[0-9]*' | tail -1)" "missing=$want"
  expect "profile" "$(profile "$as")" "system-2-link $gen2"

  echo "-- generation 3 fails its switch: rolled back to generation 2"
  gen3=$(build "$p" "$ps" "$p-$a-3" 4)
  "$p" "$ps" "$nb" publish --host foobar --path "$gen3" --cache "$c" --secret-key-file "$k"
  local rc=0
  pull || rc=$?
  expect "exit code" "$rc" 5
  expect "profile" "$(profile "$as")" "system-2-link $gen2"
  expect "last switches" "$(tail -2 "$as/var/nixcast-test-switch.log" | tr '\n' ' ')" "switch $gen3 switch $gen2 "
  "$a" "$as" "$nbp" status --state-dir /nix/var/nixcast
}
# An agent built before this round keeps updating from a cache this
# publisher writes, key list, padded sealed objects and all, the trusted
# side reads its (unordered, plain) reports, and a tombstone stops it.
old_agent_updates() {
  local ps as cache gen1 gen2 out
  ps=$(store old-agent-pub) as=$(store old-agent) cache=$work/cache-old-agent
  mkdir -p "$cache"
  ssh-keygen -q -t ed25519 -N '' -C foobar -f "$work/old-agent-host"
  echo "foobar $(cat "$work/old-agent-host.pub")" >"$work/old-agent.recipients"
  "$bin/nixcast" keygen --name root-1 --secret-key-file "$work/root-1.sec" \
    --public-key-file "$work/root-1.pub" >/dev/null
  serve "$cache"
  pull() {
    old "$as" "$old_agent" run --cache "$url" --host foobar --trusted-key "$pub" \
      --state-dir /nix/var/nixcast --allow-insecure-http \
      --report-to "$cache" --identity "$work/old-agent-host"
  }
  gen1=$(build old "$ps" old-agent-1)
  old "$ps" "$bin/nixcast" publish --host foobar --path "$gen1" --cache "$cache" --secret-key-file "$work/secret.key"
  "$bin/nixcast" keys sign --cache "$cache" --root-secret-key-file "$work/root-1.sec" \
    --signing-key-file "$work/public.key"
  pull
  expect "profile" "$(profile "$as")" "system-1-link $gen1"
  gen2=$(build old "$ps" old-agent-2)
  old "$ps" "$bin/nixcast" publish --host foobar --path "$gen2" --cache "$cache" --secret-key-file "$work/secret.key"
  pull
  expect "profile" "$(profile "$as")" "system-2-link $gen2"
  out=$("$bin/nixcast" hosts --cache "$cache" --trusted-key-file "$work/public.key" \
    --recipients-file "$work/old-agent.recipients")
  echo "$out"
  expect "its report" "$(echo "$out" | grep -o 'applied 2 (ok)')" "applied 2 (ok)"
  # Sealed, and so padded (empty blocks inside the xz streams, newlines
  # after the manifests' JSON): the old agent reads it unchanged, and
  # fetches a manifest whole where it cannot rebuild the padded one.
  for g in 3 4; do
    gen=$(build old "$ps" "old-agent-$g")
    old "$ps" "$bin/nixcast" publish --host foobar --path "$gen" --cache "$cache" \
      --secret-key-file "$work/secret.key" --recipients-file "$work/old-agent.recipients"
    pull
    expect "profile" "$(profile "$as")" "system-$g-link $gen"
  done
  # Retired: the old agent does not know the tombstone's payload type; it
  # refuses it (exit 3) and stays on its system.
  "$bin/nixcast" retire --cache "$cache" --host foobar --secret-key-file "$work/secret.key"
  local rc=0
  pull || rc=$?
  expect "exit code" "$rc" 3
  expect "profile" "$(profile "$as")" "system-4-link $gen"
}
cycle_old_new() { cycle old new; }
cycle_new_old() { cycle new old; }

# --- Current Nix's own clients on our cache -----------------------------------
nix_clients() {
  local ps as cache gen
  ps=$(store clients-pub) cache=$work/cache-clients
  gen=$(build old "$ps" clients-1)
  old "$ps" "$bin/nixcast" publish --host foobar --path "$gen" --cache "$cache" \
    --secret-key-file "$work/secret.key" --compression zstd
  serve "$cache"
  echo "-- nix copy --from (Nix $new_nix)"
  as=$(store clients-copy)
  new "$as" nix copy --from "$url" --option trusted-public-keys "$pub" "$gen"
  new "$as" nix-store --verify-path "$gen"
  new "$as" nix-store --check-validity $(old "$ps" nix-store -qR "$gen")
  echo "-- nix-store -r with our cache as the substituter (Nix $new_nix)"
  as=$(store clients-realise)
  new "$as" nix-store -r "$gen" --option substituters "$url" --option trusted-public-keys "$pub"
  new "$as" nix-store --verify-path "$gen"
  echo "-- a cache signed by another key is refused"
  as=$(store clients-refused)
  ! new "$as" nix copy --from "$url" --option trusted-public-keys "other:$(cut -d: -f2 "$work/public.key")" "$gen"
}

# publish (Nix 2.8) onto a cache current Nix wrote (`nix copy --to`, zstd,
# its own signatures); both agents pull it.
publish_onto_new_cache() {
  local ps os cache gen files
  ps=$(store onto-pub) cache=$work/cache-onto
  gen=$(build new "$ps" onto-1)
  new "$ps" nix copy --to "file:///work/cache-onto?compression=zstd&secret-key=/work/secret.key" "$gen"
  ls "$cache/nar" | grep -q '\.nar\.zst$'
  files=$(find "$cache" -type f | sort | xargs sha256sum)
  # The same closure in the host's Nix (2.8), from that cache.
  os=$(store onto-old)
  old "$os" nix-store -r "$gen" --option substituters "file://$cache" --option trusted-public-keys "$pub"
  old "$os" "$bin/nixcast" publish --host foobar --path "$gen" --cache "$cache" --secret-key-file "$work/secret.key"
  # Nix's narinfos and NARs were reused, not rewritten.
  diff <(echo "$files") <(find "$cache" -type f -not -path "$cache/hosts/*" -not -path "$cache/manifests/*" | sort | xargs sha256sum)
  serve "$cache"
  local as side nbp
  for side in new old; do
    as=$(store "onto-agent-$side")
    if [ $side = new ]; then nbp=/usr/local/bin/nixcast-pull; else nbp=$bin/nixcast-pull; fi
    "$side" "$as" "$nbp" run --cache "$url" --host foobar --trusted-key "$pub" \
      --state-dir /nix/var/nixcast --allow-insecure-http
    expect "profile ($side Nix)" "$(profile "$as")" "system-1-link $gen"
  done
}

# --- A booted trixie: the module's units under a real systemd ------------------
boot_store=$work/stores/boot
box() { nsenter -t "$box_leader" -a env -i PATH=/usr/local/bin:/usr/bin:/usr/sbin "$@"; }
# Publishes generation VERSION [SWITCHEXIT] for the booted root (host Nix).
boot_publish() {
  local gen
  gen=$(build old "$(store boot-pub)" "$1" "${2:-0}")
  old "$(store boot-pub)" "$bin/nixcast" publish --host foobar --path "$gen" \
    --cache "$work/cache-boot" --secret-key-file "$work/secret.key" >&2
  echo "$gen"
}
boot_units() { # SETTINGS-JSON
  nix-instantiate --eval --strict --json integration/fixtures/render-units.nix \
    --argstr settingsJson "$1" --argstr nixPackage /usr --argstr systemdPackage /usr \
    --argstr bashPackage /usr |
    python3 -c 'import json, sys
for name, text in json.load(sys.stdin).items():
    open(sys.argv[1] + "/" + name, "w").write(text)' "$root/etc/systemd/system"
}
boot_start() {
  mkdir -p "$work/cache-boot"
  serve "$work/cache-boot"
  boot_url=$url
  store boot >/dev/null
  # What NixOS has before the first switch; the daemon's socket unit wants
  # its directory.
  mkdir -p "$boot_store/var/nix/profiles" "$boot_store/var/nix/daemon-socket"
  mkdir -p "$root/opt/nixcast/bin"
  cp "$bin/nixcast-pull" "$root/opt/nixcast/bin/"
  boot_units "$(boot_settings '*:0/5')"
  # The daemon starts on its socket's first connection, as on NixOS.
  rm -f "$root/etc/systemd/system/multi-user.target.wants/nix-daemon.service"
  mkdir -p "$root/etc/systemd/system/sockets.target.wants"
  ln -sf /usr/lib/systemd/system/nix-daemon.socket "$root/etc/systemd/system/sockets.target.wants/"
  systemd-nspawn -D "$root" --register=no --keep-unit -b -q --console=pipe \
    --bind="$boot_store:/nix" </dev/null >"$work/boot.log" 2>&1 &
  local box_pid=$! box_leader= i
  echo "box_pid=$box_pid" >>"$work/boot.env"
  # The container's PID 1 is nspawn's child once it has exec'd systemd.
  for i in $(seq 300); do
    box_leader=$(pgrep -P "$box_pid" | head -1) || true
    [ -n "$box_leader" ] && [ "$(cat "/proc/$box_leader/comm" 2>/dev/null)" = systemd ] && break
    box_leader=
    sleep 0.1
  done
  echo "box_leader=$box_leader boot_url=$boot_url" >>"$work/boot.env"
  [ -n "$box_leader" ] || { cat "$work/boot.log"; return 1; }
  # Bounded waits for the boot (not timing assertions): for PID 1's socket,
  # then for the boot to finish.
  for i in $(seq 600); do box test -S /run/systemd/private && break; sleep 0.1; done
  state=$(box timeout 120 systemctl is-system-running --wait) || true
  box systemctl --failed --no-pager
  expect "system state" "$state" running
  box systemctl --version | head -1
  box systemctl is-active nix-daemon.socket
}
# The unit's settings. The second health check runs inside the unit and
# fails the run (and so the test) unless systemd applied the sandbox:
# NoNewPrivileges, a seccomp filter and a read-only store.
boot_settings() { # INTERVAL
  local sandboxed="grep -q '^NoNewPrivs:[[:space:]]*1\$' /proc/self/status && grep -q '^Seccomp:[[:space:]]*2\$' /proc/self/status && ! touch /nix/store/.nixcast-write-test"
  printf '{"enable":true,"package":"/opt/nixcast","cache":"%s","trustedKeys":["%s"],"allowInsecureHttp":true,"interval":"%s","randomizedDelaySec":"0","healthChecks":["test -L /nix/var/nix/profiles/system","%s"]}' \
    "$boot_url" "$pub" "$1" "$sandboxed"
}
boot_service_applies() {
  boot_gen1=$(boot_publish boot-1)
  echo "boot_gen1=$boot_gen1" >>"$work/boot.env"
  expect "nix-daemon before" "$(box systemctl is-active nix-daemon.service)" inactive
  box systemctl start nixcast-pull.service ||
    { box journalctl -q -b --no-pager -u nixcast-pull.service | tail -30; return 1; }
  expect "profile" "$(profile "$boot_store")" "system-1-link $boot_gen1"
  # The switch ran in a transient unit, outside the service's sandbox.
  expect "switch log" "$(tail -1 "$boot_store/var/nixcast-test-switch.log")" "switch $boot_gen1"
  box journalctl -q -b --no-pager -u nixcast-pull.service | tail -20
  expect "nix-daemon after (socket-activated)" "$(box systemctl is-active nix-daemon.service)" active
  box nix-store --check-validity "$boot_gen1"
  # The sandbox applied (a read-only /nix/store for the agent).
  box systemctl show -p ProtectSystem -p NoNewPrivileges -p ReadWritePaths nixcast-pull.service
}
boot_failing_switch_rolls_back() {
  local gen rc=0
  gen=$(boot_publish boot-2 4)
  box systemctl start nixcast-pull.service || rc=$?
  [ $rc != 0 ] || { echo "the unit succeeded with a failing switch"; return 1; }
  expect "unit" "$(box systemctl is-failed nixcast-pull.service)" failed
  expect "profile" "$(profile "$boot_store")" "system-1-link $boot_gen1"
  expect "last switches" "$(tail -2 "$boot_store/var/nixcast-test-switch.log" | tr '\n' ' ')" "switch $gen switch $boot_gen1 "
  box systemctl reset-failed nixcast-pull.service
}
boot_timer_fires() {
  local gen i
  gen=$(boot_publish boot-3)
  boot_units "$(boot_settings '*:*:0/5')"
  box systemctl daemon-reload
  box systemctl start nixcast-pull.timer
  box systemctl list-timers --no-pager nixcast-pull.timer
  # Bounded wait for the timer's run (not a timing assertion).
  for i in $(seq 120); do
    [ "$(profile "$boot_store" | cut -d' ' -f2)" = "$gen" ] &&
      [ "$(box systemctl is-active nixcast-pull.service)" != activating ] && break
    sleep 1
  done
  box systemctl stop nixcast-pull.timer
  expect "system" "$(profile "$boot_store" | cut -d' ' -f2)" "$gen"
  expect "switch log" "$(tail -1 "$boot_store/var/nixcast-test-switch.log")" "switch $gen"
  box journalctl -q -b --no-pager -u nixcast-pull.timer | tail -5
}
boot_security() {
  local score
  box systemd-analyze security --no-pager nixcast-pull.service | tee "$work/security.txt"
  score=$(grep -o 'Overall exposure level for nixcast-pull.service: [0-9.]*' "$work/security.txt" | awk '{print $NF}')
  [ -n "$score" ]
  echo "NOTE systemd-analyze security: exposure $score (at most $max_exposure)"
  awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'
  # IPAddressDeny= needs cgroup v2's BPF firewall: try whether a unit that
  # denies the loopback still reaches the cache there, and say so.
  local port=${boot_url##*:}
  if box systemd-run --wait --quiet --pipe -p IPAddressDeny=127.0.0.0/8 \
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" </dev/null; then
    echo "NOTE IPAddressDeny= is NOT enforced on this machine (a unit denying 127.0.0.0/8 connected to it): the module's metadata-service block is untested here"
    box journalctl -b --no-pager | grep -i -m1 'firewall' | sed 's/^/NOTE   systemd: /' || true
  else
    echo "NOTE IPAddressDeny= is enforced (a unit denying 127.0.0.0/8 could not connect to it)"
  fi
}

echo "== tests"
t "cycle: publisher Nix $old_nix, agent Nix $new_nix" cycle_old_new
t "cycle: publisher Nix $new_nix, agent Nix $old_nix" cycle_new_old
t "an agent of ${old_agent_rev:0:7} updates from this cache, key list and all" old_agent_updates
t "Nix $new_nix's nix copy --from and nix-store -r on our cache" nix_clients
t "publish onto a cache Nix $new_nix wrote" publish_onto_new_cache
# The boot tests share one booted root, in order.
t "booted: trixie boots in systemd-nspawn with a socket-activated nix-daemon" boot_start
t "booted: systemctl start nixcast-pull.service applies through the daemon" boot_service_applies
t "booted: a failing switch fails the unit and rolls back" boot_failing_switch_rolls_back
t "booted: the timer fires" boot_timer_fires
t "booted: systemd-analyze security" boot_security

echo "interop: $pass passed, $fail failed"
[ $fail = 0 ]
