#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing
# (Nix from Debian's nix-bin, a Rust toolchain is assumed), then
# `cargo test --workspace`, whose end-to-end tests drive real Nix in fresh
# stores (mount namespaces: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nix-store >/dev/null || need_apt+=(nix-bin)
command -v unshare >/dev/null || need_apt+=(util-linux)
command -v xz >/dev/null || need_apt+=(xz-utils)
[ -x /usr/bin/time ] || need_apt+=(time)
# nginx with basic auth stands in for a private cache (tests/e2e/private.rs).
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# Headless Chromium renders the fleet page of `nixcast hosts --html` (tests/e2e/fleet.rs).
command -v chromium >/dev/null || need_apt+=(chromium)
# ssh-keygen makes the test hosts' SSH keys, which sign their reports.
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
# groff renders the man pages (tests/e2e/docs.rs); script gives hosts a terminal (tests/e2e/retire.rs).
command -v groff >/dev/null || need_apt+=(groff-base)
command -v script >/dev/null || need_apt+=(bsdutils)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# An S3-compatible server for the bucket tests (moto, from PyPI).
if ! command -v moto_server >/dev/null; then
  echo "installing moto[server]"
  python3 -m pip install -q 'moto[server]'
  hash -r
fi
# Debian's Nix has no daemon running here; root uses the store directly.
export NIX_REMOTE=local
# module.nix is evaluated with nixpkgs' lib, found as <nixpkgs/lib>; CI keeps
# a copy of it beside the clone. Without one the module tests say how to
# provide it.
if [ -z "${NIX_PATH:-}" ] && [ -d ../shared/nixpkgs-lib ]; then
  NIX_PATH=nixpkgs=$(realpath ../shared/nixpkgs-lib)
  export NIX_PATH
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
# Layering: no module cycle in either binary, nothing calls back into main.rs.
python3 integration/layers.py >/dev/null || { python3 integration/layers.py; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Each parser of untrusted input under libFuzzer for a few seconds
# (`fuzz/run.sh 600` is the long run).
bash fuzz/run.sh 5 || status=1
# One closing line for the whole run: cargo's last line is a crate's doc tests.
passed=$(grep -o '[0-9]* passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' "$log" | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
