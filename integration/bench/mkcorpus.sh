#!/bin/sh
# Builds the three content corpora the synthetic closure slices from.
#   corpus/elf.bin  : real ELF shared objects/executables from the host (binary-like, xz ratio ~0.3)
#   corpus/text.bin : real text (perl/python sources, docs) (xz ratio ~0.2)
#   corpus/rand.bin : deterministic pseudo-random bytes (incompressible; firmware/already-compressed data)
# Deterministic for a given host image (files are taken in sorted order).
# Usage: mkcorpus.sh [DIR]   (default: ./corpus next to this script)
set -eu
D=${1:-$(dirname "$0")/corpus}
mkdir -p "$D"
ELF_MB=${ELF_MB:-48}; TEXT_MB=${TEXT_MB:-16}; RAND_MB=${RAND_MB:-64}
if [ ! -s "$D/elf.bin" ]; then
  find /usr/lib/x86_64-linux-gnu /usr/bin -maxdepth 1 -type f -size +16k 2>/dev/null | LC_ALL=C sort \
    | xargs cat 2>/dev/null | head -c $((ELF_MB*1024*1024)) > "$D/elf.bin"
fi
if [ ! -s "$D/text.bin" ]; then
  find /usr/share/perl /usr/lib/python3.11 /usr/share/doc -type f \( -name '*.pm' -o -name '*.py' -o -name '*.txt' -o -name 'copyright' \) 2>/dev/null \
    | LC_ALL=C sort | xargs cat 2>/dev/null | head -c $((TEXT_MB*1024*1024)) > "$D/text.bin"
fi
if [ ! -s "$D/rand.bin" ]; then
  openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:nix-synth-closure < /dev/zero 2>/dev/null \
    | head -c $((RAND_MB*1024*1024)) > "$D/rand.bin"
fi
ls -l "$D"
