"""What the pull floor (floor-pull.sh) works from, for a cache's closure.

    python3 gate.py CACHE_DIR CLOSURE POINTER OUT_DIR

The gate is every path in the closure of every path that has references (in
the stand-in system, base-lib): Nix can import no path but a leaf before the
whole gate is imported, so no agent that verifies a NAR before Nix imports it
can start Nix's import of the rest before the gate's NARs are verified.
Only the paths CLOSURE lists (`nix-store -qR`) count: a cache holds the next
generation's paths too. Writes, in OUT_DIR: gate and rest (NAR files),
leaves (store paths outside the gate with no references, which Nix may import
before it), and from the POINTER's payload, read here so that the timed
floor does not, manifest (its key in the cache) and top (the system path).
"""
import base64
import glob
import json
import os
import sys

src, closure_file, pointer, out = sys.argv[1:]
wanted = {os.path.basename(l.strip()) for l in open(closure_file)}
info = {}
for f in glob.glob(f"{src}/*.narinfo"):
    kv = dict(l.split(": ", 1) for l in open(f).read().splitlines() if ": " in l)
    name = os.path.basename(kv["StorePath"])
    if name not in wanted:
        continue
    info[name] = (kv["URL"], [r for r in kv.get("References", "").split() if r != name])
closure = {}


def close(p):
    if p not in closure:
        closure[p] = {p}.union(*(close(r) for r in info[p][1]))
    return closure[p]


if set(info) != wanted:
    sys.exit(f"{src} lacks narinfos for {len(wanted - set(info))} paths of the closure")
users = [p for p in info if info[p][1]]
gate = set.intersection(*(close(p) for p in users)) if users else set()
os.makedirs(out, exist_ok=True)
with open(f"{out}/gate", "w") as g, open(f"{out}/rest", "w") as r:
    for p, (url, _) in sorted(info.items()):
        print(f"{src}/{url}", file=g if p in gate else r)
with open(f"{out}/leaves", "w") as l:
    for p, (_, refs) in sorted(info.items()):
        if not refs and p not in gate:
            print(f"/nix/store/{p}", file=l)
payload = json.loads(base64.b64decode(json.load(open(pointer))["payload"]))
for name, value in (("manifest", payload["manifest"]["path"]), ("top", payload["storePath"])):
    with open(f"{out}/{name}", "w") as f:
        print(value, file=f)
print(f"pull floor of {src}: gate {sorted(gate)}", file=sys.stderr)
