#!/usr/bin/env python3
"""Layering check (ARCHITECTURE.md, "Layers"). Fails on:

1. a crate that depends on one beside or above it: common <- cli <- cache <-
   {publisher, puller}, and the two binaries never on each other;
2. S3 or HTTP client code outside the cache layer (`object_store`,
   `reqwest::Client`), but in tests;
3. in each binary, a module cycle, or a module that uses an item of main.rs;
4. in each binary, a sideways or upward use of a command: a command module
   (`cmd/NAME.rs`) uses no other command, and nothing below the commands
   uses one.

Each top-level module (a `NAME.rs` beside main.rs, with its `NAME/`
submodules; `cmd/NAME.rs` counts as the module `cmd::NAME`) may use the
others through `crate::…`. Test code (`#[cfg(test)]` onwards, `tests.rs`,
`testing.rs`) is not counted. Prints the module graph; exits 1 naming
what broke.
Run: python3 integration/layers.py
"""
import pathlib, re, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
failed = False


def fail(msg):
    global failed
    print(msg)
    failed = True


# 1. Crates point down only.
BELOW = {
    "common": set(),
    "cli": {"common"},
    "cache": {"common", "cli"},
    "publisher": {"common", "cli", "cache"},
    "puller": {"common", "cli", "cache"},
}
NAMES = {"nixcast-common": "common", "nixcast-cli": "cli", "nixcast-cache": "cache",
         "nixcast": "publisher", "nixcast-pull": "puller"}
for crate, allowed in BELOW.items():
    deps_section = (ROOT / crate / "Cargo.toml").read_text().split("[dependencies]", 1)[1]
    deps_section = deps_section.split("\n[", 1)[0]
    for line in deps_section.splitlines():
        name = line.split("=", 1)[0].split(".", 1)[0].strip()
        if name in NAMES and NAMES[name] not in allowed:
            fail(f"{crate} depends on {NAMES[name]}: crates depend only on those below them")


def production_text(path):
    return path.read_text().split("#[cfg(test)]")[0]


# 2. Only the cache layer talks S3 and HTTP to caches.
for crate in ["common", "cli", "publisher", "puller"]:
    for f in sorted((ROOT / crate / "src").rglob("*.rs")):
        if f.name in ("tests.rs", "testing.rs"):
            continue
        text = production_text(f)
        for word in ["object_store", "reqwest::Client"]:
            if word in text:
                fail(f"{f.relative_to(ROOT)} uses {word}: only cache/ reaches a cache over S3 or HTTP")

# 3 and 4. Inside each binary.
for crate in ["publisher/src", "puller/src"]:
    src = ROOT / crate
    mods = sorted(p.stem for p in src.glob("*.rs") if p.stem != "main")
    cmds = sorted(f"cmd::{p.stem}" for p in (src / "cmd").glob("*.rs") if p.stem != "mod")
    if "cmd" in mods:
        mods.remove("cmd")
    files_of = {}
    for m in mods:
        files_of[m] = [src / f"{m}.rs"] + sorted(
            p for p in (src / m).rglob("*.rs") if p.name != "tests.rs")
    for c in cmds:
        name = c.split("::")[1]
        files_of[c] = [src / "cmd" / f"{name}.rs"] + sorted(
            p for p in (src / "cmd" / name).rglob("*.rs") if p.name != "tests.rs")
    if (src / "cmd" / "mod.rs").exists():
        files_of["cmd"] = [src / "cmd" / "mod.rs"]
    everything = set(files_of)
    uses = {}
    for m, files in files_of.items():
        text = "".join(production_text(f) for f in files if f.exists() and f.name != "testing.rs")
        names = set()
        for path in re.findall(r"crate::((?:\w+::)*\w+)", text):
            parts = path.split("::")
            names.add("::".join(parts[:2]) if parts[0] == "cmd" and len(parts) > 1 else parts[0])
        for group in re.findall(r"crate::(cmd::)?\{([^}]*)\}", text):
            prefix, items = group
            for n in items.split(","):
                n = n.strip().split("::")[0]
                if n and n != "self":
                    names.add(f"cmd::{n}" if prefix else n)
        names.discard(m)
        for n in sorted(n for n in names if n not in everything and not n.startswith("cmd")):
            fail(f"{crate}: {m} uses crate::{n}, which is main.rs's: a module may not call back into main")
        uses[m] = {n for n in names if n in everything}
    for m in sorted(uses):
        for n in sorted(uses[m]):
            if n.startswith("cmd::") and m.startswith("cmd::"):
                fail(f"{crate}: {m} uses {n}: commands do not use each other (put what both need below them)")
            elif n.startswith("cmd") and not m.startswith("cmd"):
                fail(f"{crate}: {m} uses {n}: nothing below the commands uses one")
    print(f"{crate}: " + "; ".join(f"{m} -> {', '.join(sorted(uses[m])) or '-'}" for m in sorted(uses)))
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            fail(f"{crate}: module cycle: {' -> '.join(path[path.index(m):] + [m])}")
            return
        state[m] = "open"
        for n in sorted(uses[m]):
            visit(n, path + [m])
        state[m] = "done"

    for m in sorted(uses):
        visit(m, [])
print("layers: " + ("FAILED" if failed else
                    "crates point down, S3 and HTTP only in cache/, no module cycle, "
                    "no call back into main.rs, no command uses another"))
sys.exit(1 if failed else 0)
