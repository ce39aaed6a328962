#!/bin/sh
# The pull floor: what any agent that verifies each NAR before Nix imports it must do, in
# order, and nothing else. Run in a fresh store, after `gate.py CACHE CLOSURE POINTER LISTS`:
#
#   floor-pull.sh DECODE_FLOOR LISTS FLOOR_CACHE PUBKEY CACHE_URL
#
# 1. GET the pointer and the manifest (nothing can be fetched before them);
# 2. verify the gate's NARs (decode-floor: FileHash, decoding, NarHash), on every core, while
#    Nix imports the leaves outside the gate (before their NARs are decoded: that can only
#    understate); Nix can import no other path before the gate;
# 3. Nix's parallel import of the whole closure from FLOOR_CACHE (uncompressed, on the local
#    disk: what a staging cache holds once every NAR is verified), while the rest decode;
# 4. the profile (`nix-env --set`) and the switch, as the agent does them.
# Left out, so that it stays a floor: downloading (the NARs are read from the local disk),
# signatures, the NAR parse, staging, and every wait for a NAR during Nix's import (one Nix
# process for everything, from a complete cache). What it may overstate, all within the
# noise of a run: the rest waits for the gate (for the stand-in, one 8 MB NAR decoded in
# 0.03 s), and the main import for the leaves' (none outside a gate in the bench's
# closures); decoding the rest 64 NARs per process ends unevenly (~0.1 s on the xz closure,
# ~0.02 s on zstd, as in the overlap floor); two curl processes and the shell (~10-20 ms).
set -e
df=$1 lists=$2 cache=$3 pub=$4 url=$5
read -r manifest < "$lists/manifest"
read -r top < "$lists/top"
subst() {
  nix-store -r --option substituters "file://$cache" --option trusted-public-keys "$pub" \
    --max-jobs 16 "$@" > /dev/null
}
curl -sf "$url/hosts/vm.json" > /dev/null
curl -sf "$url/$manifest" > /dev/null
if [ -s "$lists/gate" ]; then
  if [ -s "$lists/leaves" ]; then
    # shellcheck disable=SC2046 # store paths, one word each
    subst $(cat "$lists/leaves") &
    leaves=$!
  fi
  xargs -r -P "$(nproc)" -n 1 "$df" < "$lists/gate" > /dev/null
fi
xargs -r -P "$(nproc)" -n 64 "$df" < "$lists/rest" > /dev/null &
rest=$!
# One Nix process at a time: a second one would wait on the first's path locks (polled every 5 s).
[ -z "${leaves:-}" ] || wait "$leaves"
subst "$top"
wait "$rest"
mkdir -p /nix/var/nix/profiles
nix-env -p /nix/var/nix/profiles/system --set "$top"
"$top/bin/switch-to-configuration" switch
