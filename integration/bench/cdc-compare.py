#!/usr/bin/env python3
"""cdc-compare.py OLD_TOP NEW_TOP [AVG_KIB…]: what content-defined chunking would send for an update.

A one-off comparison for NAR deltas (RESULTS.md, "Updates"): every NAR of NEW_TOP's closure that
OLD_TOP's closure lacks is cut by FastCDC (pyfastcdc, normalised chunking, average AVG_KIB, default
16 and 64) and the chunks OLD_TOP's NARs do not hold are compressed one by one with zstd -3, as a
chunk store would keep them; printed beside the zstd -3 size of the new NARs whole. Needs
`pip install pyfastcdc zstandard` (a virtualenv will do) and the two closures in the store.
"""
import hashlib, subprocess, sys

import pyfastcdc
import zstandard


def closure(top):
    out = subprocess.run(["nix-store", "-qR", top], check=True, capture_output=True, text=True)
    return out.stdout.split()


def nar(path):
    return subprocess.run(["nix-store", "--dump", path], check=True, capture_output=True).stdout


def chunks(data, avg):
    cdc = pyfastcdc.FastCDC(avg_size=avg * 1024)
    for c in cdc.cut_buf(data):
        yield data[c.offset:c.offset + c.length]


def main():
    old_top, new_top = sys.argv[1], sys.argv[2]
    avgs = [int(a) for a in sys.argv[3:]] or [16, 64]
    old, new = closure(old_top), closure(new_top)
    added = [p for p in new if p not in set(old)]
    z = zstandard.ZstdCompressor(level=3)
    whole = 0
    for avg in avgs:
        have = set()
        for p in old:
            for c in chunks(nar(p), avg):
                have.add(hashlib.sha256(c).digest())
        sent, count = 0, 0
        for p in added:
            data = nar(p)
            if avg == avgs[0]:
                whole += len(z.compress(data))
            for c in chunks(data, avg):
                h = hashlib.sha256(c).digest()
                if h not in have:
                    have.add(h)
                    sent += len(z.compress(c))
                    count += 1
        print(f"fastcdc avg {avg} KiB: {count} new chunks, {sent} bytes compressed")
    print(f"{len(added)} new paths, {whole} bytes as whole NARs (zstd -3)")


main()
