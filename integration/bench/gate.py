"""The lists the pull floor (floor-pull.sh) works from, for a cache's closure.

    python3 gate.py CACHE_DIR OUT_DIR [CLOSURE]

The gate is every path in the closure of every path that has references (in
the stand-in system, base-lib): Nix can import no path but a leaf before the
whole gate is imported, so no agent that verifies a NAR before Nix imports it
can start Nix's import of the rest before the gate's NARs are verified.
Only the paths CLOSURE lists (`nix-store -qR`), if given, count (a cache
holds the next generation's paths too). Writes OUT_DIR/gate and OUT_DIR/rest (NAR files) and OUT_DIR/leaves (store
paths outside the gate with no references, which Nix may import before it).
"""
import glob
import os
import sys

src, out = sys.argv[1:3]
wanted = {os.path.basename(l.strip()) for l in open(sys.argv[3])} if len(sys.argv) > 3 else None
info = {}
for f in glob.glob(f"{src}/*.narinfo"):
    kv = dict(l.split(": ", 1) for l in open(f).read().splitlines() if ": " in l)
    name = os.path.basename(kv["StorePath"])
    if wanted is not None and name not in wanted:
        continue
    info[name] = (kv["URL"], [r for r in kv.get("References", "").split() if r != name])
closure = {}


def close(p):
    if p not in closure:
        closure[p] = {p}.union(*(close(r) for r in info[p][1]))
    return closure[p]


if wanted is not None and set(info) != wanted:
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
print(f"pull floor of {src}: gate {sorted(gate)}", file=sys.stderr)
