#!/usr/bin/env python3
"""Layering check for the two binaries: no module cycle, no call back into main.rs.

For publisher/src and puller/src, every top-level module (a `NAME.rs` beside
main.rs, with its `NAME/` submodules) may use sibling modules through
`crate::…`; the uses must form no cycle, and nothing but main.rs may use
an item of main.rs itself. Test code (`#[cfg(test)]` onwards, `tests.rs`) is
not counted. Prints the module graph; exits 1 naming a cycle or a callback.
Run: python3 integration/layers.py
"""
import pathlib, re, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
failed = False
for crate in ["publisher/src", "puller/src"]:
    src = ROOT / crate
    mods = sorted(p.stem for p in src.glob("*.rs") if p.stem != "main")
    uses = {}
    for m in mods:
        files = [src / f"{m}.rs"] + sorted(p for p in (src / m).rglob("*.rs") if p.name != "tests.rs")
        text = "".join(f.read_text().split("#[cfg(test)]")[0] for f in files if f.exists())
        names = set(re.findall(r"crate::(\w+)", text))
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            names |= {n.strip().split("::")[0] for n in group.split(",") if n.strip()}
        uses[m] = names - {m}
        for n in sorted(names - set(mods) - {m}):
            print(f"{crate}: {m} uses crate::{n}, which is main.rs's: a module may not call back into main")
            failed = True
        uses[m] &= set(mods)
    print(f"{crate}: " + "; ".join(f"{m} -> {', '.join(sorted(uses[m])) or '-'}" for m in mods))
    state = {}
    def visit(m, path):
        global failed
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            print(f"{crate}: module cycle: {' -> '.join(path[path.index(m):] + [m])}")
            failed = True
            return
        state[m] = "open"
        for n in sorted(uses[m]):
            visit(n, path + [m])
        state[m] = "done"
    for m in mods:
        visit(m, [])
print("layers: " + ("FAILED" if failed else "no module cycle, no call back into main.rs"))
sys.exit(1 if failed else 0)
