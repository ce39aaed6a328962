#!/usr/bin/env python3
"""What `nixcast serve` pays for hosts that watch their pointers (`--watch`).

Starts `nixcast serve` on a scratch cache with HOSTS pointers, opens WATCHERS
connections that each hold a long poll (`HEAD /hosts/hN.json`, the pointer's
entity tag in If-None-Match, `Prefer: wait=120`), then measures:
- serve's resident memory (VmRSS) before and with the watchers waiting;
- `GET /nix-cache-info` round trips on a fresh connection while they wait
  (percentiles);
- how long after a pointer is replaced (an atomic rename, as publish does)
  its watcher gets its answer, for a few pointers in turn.

    python3 integration/bench/watchers.py [NIXCAST] [WATCHERS] [HOSTS]

NIXCAST defaults to target/release/nixcast; WATCHERS to 10000, HOSTS to 1000
(watchers share pointers round-robin). Raises its file-descriptor limit
and serve's (`--max-connections`). No timing is asserted: the numbers are
for a person to read (issue #31).
"""

import http.client
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

NIXCAST = sys.argv[1] if len(sys.argv) > 1 else "target/release/nixcast"
WATCHERS = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
HOSTS = int(sys.argv[3]) if len(sys.argv) > 3 else 1000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_pointer(cache, n, text):
    tmp = os.path.join(cache, "hosts", f".tmp-h{n}")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(cache, "hosts", f"h{n}.json"))


def etag(port, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("HEAD", f"/hosts/h{n}.json")
    r = c.getresponse()
    r.read()
    c.close()
    return r.getheader("etag")


def get_ms(port):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/nix-cache-info")
    c.getresponse().read()
    c.close()
    return (time.perf_counter() - t) * 1000


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def main():
    want = WATCHERS + 1000
    # serve counts a descriptor a connection, and up to --max-open-files (1024)
    # more for the files it sends; the watchers' own ends are ours.
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4 * want, 4 * want))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cache = tempfile.mkdtemp(prefix="nixcast-watchers-")
    os.makedirs(os.path.join(cache, "hosts"))
    with open(os.path.join(cache, "nix-cache-info"), "w") as f:
        f.write("StoreDir: /nix/store\n")
    for n in range(HOSTS):
        write_pointer(cache, n, f"pointer {n} v1\n")
    serve = subprocess.Popen(
        [NIXCAST, "serve", "--cache", cache, "--listen", "127.0.0.1:0",
         "--max-connections", str(want)],
        stderr=subprocess.PIPE, text=True)
    line = serve.stderr.readline()
    if os.environ.get("SERVE_LOG"):
        import threading
        threading.Thread(target=lambda: [print("serve:", l, end="", file=sys.stderr) for l in serve.stderr],
                         daemon=True).start()
    port = int(line.split("http://127.0.0.1:")[1].split()[0].strip("/"))
    try:
        tags = [etag(port, n) for n in range(HOSTS)]
        idle = [get_ms(port) for _ in range(200)]
        rss0 = rss_kib(serve.pid)
        sel = selectors.DefaultSelector()
        socks = []
        for i in range(WATCHERS):
            n = i % HOSTS
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall((f"HEAD /hosts/h{n}.json HTTP/1.1\r\nHost: x\r\n"
                       f"If-None-Match: {tags[n]}\r\nPrefer: wait=120\r\n\r\n").encode())
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, (i, n))
            socks.append(s)
        time.sleep(3)
        rss1 = rss_kib(serve.pid)
        busy = [get_ms(port) for _ in range(500)]
        # A pointer replaced: how soon its first watcher hears of it.
        wake = []
        for n in range(5):
            t = time.perf_counter()
            write_pointer(cache, n, f"pointer {n} v2\n")
            heard = False
            while not heard and time.perf_counter() - t < 10:
                for key, _ in sel.select(timeout=1):
                    if key.data[1] == n:
                        heard = True
                    key.fileobj.recv(4096)
                    sel.unregister(key.fileobj)
            wake.append((time.perf_counter() - t) * 1000)
        print(f"watchers: {WATCHERS} on {HOSTS} pointers")
        print(f"serve RSS: {rss0 / 1024:.1f} MiB idle, {rss1 / 1024:.1f} MiB with the watchers waiting")
        print(f"GET /nix-cache-info, ms: alone p50 {statistics.median(idle):.2f} p99 {pct(idle, 0.99):.2f}; "
              f"with the watchers p50 {statistics.median(busy):.2f} p99 {pct(busy, 0.99):.2f}")
        print(f"a replaced pointer reaches its watchers after, ms: "
              + ", ".join(f"{w:.0f}" for w in wake))
        for s in socks:
            s.close()
    finally:
        serve.kill()
        serve.wait()
        shutil.rmtree(cache)


if __name__ == "__main__":
    main()
