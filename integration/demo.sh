#!/usr/bin/env bash
# The demo: build a stand-in NixOS system, publish it into a local cache,
# serve the cache over HTTP, and pull it into a fresh, sandboxed Nix store
# (a private mount namespace with its own /nix), as a VM would.
# Needs root (unshare, mount). Installs Nix (Debian's nix-bin) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nix-store >/dev/null; then
  echo "== installing Nix (nix-bin)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin >/dev/null
fi
export NIX_REMOTE=local
step() { printf '\n== %s\n' "$*"; }

step "building nixcast"
cargo build --release -q
bin=$PWD/target/release
work=$(mktemp -d /tmp/nixcast-demo.XXXXXX)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; true' EXIT

step "making a signing key (nixcast keygen)"
"$bin/nixcast" keygen --name demo-fleet-1 --secret-key-file "$work/secret.key" --public-key-file "$work/public.key"

step "building the stand-in system for host foobar (integration/fixtures/fixture.nix)"
top=$(nix-build integration/fixtures/fixture.nix --no-out-link --option sandbox false \
  --argstr host foobar --argstr version "demo-$(date +%s)" --arg n 10)
echo "$top ($(nix-store -qR "$top" | wc -l) paths)"

step "publishing it (nixcast publish)"
"$bin/nixcast" publish --host foobar --path "$top" --cache "$work/cache" --secret-key-file "$work/secret.key"
echo "cache contents:"; (cd "$work/cache" && find . -maxdepth 2 -not -path './nar/*' | sort | sed 's/^/  /')

step "serving the cache (nixcast serve)"
"$bin/nixcast" serve --cache "$work/cache" --listen 127.0.0.1:0 2> "$work/serve.log" &
server=$!
for _ in $(seq 50); do grep -q 'http://' "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
echo "serving at $url"

step "pulling into a fresh VM store (nixcast-pull run, in a private mount namespace)"
mkdir -p "$work/vm/nix"
vm() { unshare -m --propagation private sh -c 'mount --bind "$0" /nix && exec "$@"' "$work/vm/nix" "$@"; }
vm "$bin/nixcast-pull" run --cache "$url" --host foobar --trusted-key "$(cat "$work/public.key")" \
  --state-dir /nix/var/nixcast --allow-insecure-http
echo "profile: $(readlink "$work/vm/nix/var/nix/profiles/system") -> $(readlink "$work/vm/nix/var/nix/profiles/system-1-link")"
echo "the stand-in's switch-to-configuration ran: $(cat "$work/vm/nix/var/nixcast-test-switch.log")"

step "pulling again: nothing changed, one request"
vm "$bin/nixcast-pull" run --cache "$url" --host foobar --trusted-key "$(cat "$work/public.key")" \
  --state-dir /nix/var/nixcast --allow-insecure-http
vm "$bin/nixcast-pull" status --state-dir /nix/var/nixcast

step "done; everything is in $work"
