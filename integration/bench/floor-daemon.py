#!/usr/bin/env python3
"""Floor of an import through Nix's daemon protocol: what handing Nix verified
NARs over `nix-daemon --stdio` (wopAddToStoreNar, framed) costs Nix, with no
staging cache, no narinfo files and no substituter.

    floor-daemon.py CACHE CONNECTIONS TRUSTED-KEY  # CACHE: an uncompressed binary cache

Opens CONNECTIONS `nix-daemon --stdio` processes and sends each path of the
cache once its references are valid, from the cache's NAR files, with its
signatures (Nix checks them and the NarHash itself). For ab.sh's
`floor-daemon` (issue #31, item 1).
"""
import os
import struct
import subprocess
import sys
import threading

MAGIC1, MAGIC2 = 0x6E697863, 0x6478696F
LAST, ERROR, NEXT = 0x616C7473, 0x63787470, 0x6F6C6D67
START, STOP, RESULT = 0x53545254, 0x53544F50, 0x52534C54
VERSION = 1 << 8 | 34


def u64(n):
    return struct.pack("<Q", n)


def string(b):
    if isinstance(b, str):
        b = b.encode()
    return u64(len(b)) + b + b"\0" * (-len(b) % 8)


class Conn:
    def __init__(self, keys):
        self.p = subprocess.Popen(
            ["nix-daemon", "--stdio", "--option", "trusted-public-keys", keys,
             "--option", "require-sigs", "true"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.w, self.r = self.p.stdin, self.p.stdout
        self.w.write(u64(MAGIC1))
        assert self.int() == MAGIC2
        daemon = self.int()
        self.w.write(u64(VERSION) + u64(0) + u64(0))
        if daemon & 0xFF >= 33:
            self.str()
        self.stderr()

    def read(self, n):
        b = b""
        while len(b) < n:
            c = self.r.read(n - len(b))
            if not c:
                raise EOFError("daemon closed")
            b += c
        return b

    def int(self):
        return struct.unpack("<Q", self.read(8))[0]

    def str(self):
        n = self.int()
        b = self.read(n + (-n % 8))
        return b[:n]

    def fields(self):
        for _ in range(self.int()):
            if self.int() == 0:
                self.int()
            else:
                self.str()

    def stderr(self):
        while True:
            m = self.int()
            if m == LAST:
                return
            if m == NEXT:
                sys.stderr.write(self.str().decode(errors="replace"))
            elif m == START:
                self.int(); self.int(); self.int(); self.str(); self.fields(); self.int()
            elif m == STOP:
                self.int()
            elif m == RESULT:
                self.int(); self.int(); self.fields()
            elif m == ERROR:
                self.str(); self.int(); self.str()
                raise RuntimeError(self.str().decode(errors="replace"))
            else:
                raise RuntimeError(f"unknown message {m:x}")

    def add(self, info, nar_path):
        refs = info["References"].split()
        head = (u64(39) + string(info["StorePath"]) + string("/nix/store/" + info["Deriver"] if info.get("Deriver") else "")
                + string(nix32_to_hex(info["NarHash"].split(":")[1]))
                + u64(len(refs)) + b"".join(string("/nix/store/" + r) for r in sorted(refs))
                + u64(0) + u64(int(info["NarSize"])) + u64(0)
                + u64(len(info["Sig"])) + b"".join(string(s) for s in info["Sig"])
                + string("") + u64(0) + u64(0))
        self.w.write(head)
        with open(nar_path, "rb") as f:
            while True:
                c = f.read(1 << 16)
                if not c:
                    break
                self.w.write(u64(len(c)) + c)
        self.w.write(u64(0))
        self.stderr()


B32 = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32_to_hex(s):
    n = len(s) * 5 // 8
    out = bytearray(n)
    for i, ch in enumerate(reversed(s)):
        d = B32.index(ch)
        b = i * 5
        j, k = b // 8, b % 8
        out[j] |= (d << k) & 0xFF
        if j + 1 < n:
            out[j + 1] |= d >> (8 - k)
    return bytes(out).hex()


def main():
    cache, conns, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    infos = {}
    for name in os.listdir(cache):
        if not name.endswith(".narinfo"):
            continue
        info = {"Sig": []}
        for line in open(os.path.join(cache, name)):
            k, v = line.rstrip("\n").split(": ", 1)
            if k == "Sig":
                info["Sig"].append(v)
            else:
                info[k] = v
        info.setdefault("References", "")
        infos[os.path.basename(info["StorePath"])] = info
    done, taken = set(), set()
    cv = threading.Condition()
    failed = []

    def ready():
        for base, info in infos.items():
            if base in taken:
                continue
            if all(r == base or r in done or r not in infos for r in info["References"].split()):
                return base
        return None

    def work(c):
        try:
            while True:
                with cv:
                    while True:
                        if failed or len(taken) == len(infos):
                            return
                        b = ready()
                        if b:
                            taken.add(b)
                            break
                        cv.wait()
                c.add(infos[b], os.path.join(cache, infos[b]["URL"]))
                with cv:
                    done.add(b)
                    cv.notify_all()
        except Exception as e:  # noqa: BLE001
            with cv:
                failed.append(e)
                cv.notify_all()

    # One after another: the first to open a fresh store creates its database.
    cs = [Conn(keys) for _ in range(conns)]
    ts = [threading.Thread(target=work, args=(c,)) for c in cs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    # Waited for, so that the caller's CPU time counts the daemons'.
    for c in cs:
        c.w.close()
        c.p.wait()
    if failed:
        sys.exit(f"floor-daemon: {failed[0]}")


if __name__ == "__main__":
    main()
