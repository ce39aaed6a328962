#!/usr/bin/env python3
"""How `nixcast serve --accept-reports` answers GETs under a flood of bogus PUTs.

Starts `nixcast serve` on a scratch cache that takes reports for one host,
then measures `GET /nix-cache-info` round trips: first alone, then while
FLOODERS threads PUT report envelopes that carry SIGS signatures each (well
formed: a real ed25519 signature over another message, so that every one
runs a full verification before it fails). Prints the latency percentiles
of both phases and how many PUTs were answered, with which statuses.

    python3 integration/bench/report_flood.py [NIXCAST] [SECONDS] [FLOODERS] [SIGS]

NIXCAST defaults to target/debug/nixcast. No timing is asserted: the
numbers are for a person to read (issue #29 item 4).
"""

import base64
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NIXCAST = sys.argv[1] if len(sys.argv) > 1 else "target/debug/nixcast"
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
FLOODERS = int(sys.argv[3]) if len(sys.argv) > 3 else 16
SIGS = int(sys.argv[4]) if len(sys.argv) > 4 else 600


def envelope(sigs):
    payload = base64.b64encode(b'{"host":"web"}').decode()
    # Canonical S and a valid R point: the verifier cannot reject it early.
    sig = base64.b64encode(Ed25519PrivateKey.generate().sign(b"another message")).decode()
    return json.dumps(
        {
            "payloadType": "application/vnd.nixcast.report.v1+json",
            "payload": payload,
            "signatures": [{"keyid": "web", "sig": sig}] * sigs,
        }
    ).encode()


def main():
    work = tempfile.mkdtemp()
    cache = os.path.join(work, "cache")
    os.makedirs(cache)
    with open(os.path.join(cache, "nix-cache-info"), "w") as f:
        f.write("StoreDir: /nix/store\n")
    key = os.path.join(work, "web")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    with open(key + ".pub") as f:
        pub = " ".join(f.read().split()[:2])
    fleet = os.path.join(work, "fleet")
    with open(fleet, "w") as f:
        f.write(f"web {pub}\n")
    server = subprocess.Popen(
        [NIXCAST, "serve", cache, "--listen", "127.0.0.1:0", "--accept-reports",
         "--recipients-file", fleet],
        stderr=subprocess.PIPE, text=True,
    )
    line = server.stderr.readline()
    addr = re.search(r"http://([0-9.:]+)", line).group(1)
    threading.Thread(target=lambda: server.stderr.read(), daemon=True).start()
    host, port = addr.split(":")
    body = envelope(SIGS)

    def get_once():
        t = time.monotonic()
        c = http.client.HTTPConnection(host, int(port), timeout=120)
        c.request("GET", "/nix-cache-info")
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == 200, r.status
        return time.monotonic() - t

    def measure(seconds):
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            out.append(get_once())
            time.sleep(0.05)
        return out

    stop = threading.Event()
    statuses = {}
    lock = threading.Lock()

    def flood():
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=120)
                c.request("PUT", "/reports/web.json", body=body,
                          headers={"Content-Type": "application/json"})
                s = c.getresponse().status
                c.close()
            except Exception as e:  # the server may close under load
                s = type(e).__name__
            with lock:
                statuses[s] = statuses.get(s, 0) + 1

    def show(name, xs):
        xs = sorted(xs)
        q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))] * 1000
        print(f"{name}: {len(xs)} GETs, median {statistics.median(xs)*1000:.1f} ms, "
              f"p90 {q(0.9):.1f} ms, p99 {q(0.99):.1f} ms, max {xs[-1]*1000:.1f} ms")

    try:
        quiet = measure(SECONDS / 2)
        threads = [threading.Thread(target=flood, daemon=True) for _ in range(FLOODERS)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        loud = measure(SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=150)
        print(f"{NIXCAST}: envelope of {len(body)} bytes with {SIGS} signatures, "
              f"{FLOODERS} flooding clients")
        show("without PUTs", quiet)
        show("under the flood", loud)
        print("PUT answers:", dict(sorted(statuses.items(), key=str)))
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
