#!/usr/bin/env python3
"""report.py RESULTS.tsv MACHINE.txt OUT.md : medians, ratios and the machine, as Markdown.

RESULTS.tsv rows (from run.sh): work tool rep seconds maxrss_kib requests bytes load1 start_epoch log cpu_seconds
Prints the Markdown to stdout and writes it to OUT.md.
"""
import collections, datetime, re, statistics, sys

res_path, machine_path, out_path = sys.argv[1:4]
M = dict(l.rstrip("\n").split("=", 1) for l in open(machine_path) if "=" in l)
rows = collections.defaultdict(list)  # (work, tool) -> [dict]
for line in open(res_path):
    f = line.rstrip("\n").split("\t")
    if len(f) < 10:
        continue
    rows[(f[0], f[1])].append(dict(secs=float(f[3]), rss=int(f[4]), reqs=int(f[5]), bytes=int(f[6]),
                                   load=float(f[7]), t0=float(f[8]), log=f[9], rep=int(f[2]),
                                   cpu=float(f[10]) if len(f) > 10 else None))

def med(work, tool, key="secs"):
    r = rows.get((work, tool))
    return statistics.median(x[key] for x in r) if r else None

def cell(work, tool):
    r = rows.get((work, tool))
    if not r:
        return "—"
    v = sorted(x["secs"] for x in r)
    m = statistics.median(v)
    s = f"{m:.2f} s"
    if len(v) > 1:
        s += f" ({v[0]:.2f}–{v[-1]:.2f}, n={len(v)})"
    else:
        s += " (n=1)"
    return s

def mib(b):
    return f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 1024:.1f} KiB" if b >= 1024 else f"{b:.0f} B"

N, XN, XS = M["n"], M["xz_n"], M["xz_scale"]
SN, SB = M.get("small_n", "300"), M.get("small_big", "8000000")
small = f"n{XN}s{XS}"
out = []
p = out.append
p("# nixcast vs Nix: benchmark results\n")
p(f"Made by `integration/bench/run.sh` on {M['date']} (commit {M['commit']}); medians of {M['reps']} runs "
  "unless n says otherwise; tools alternate within each repetition (the order turns by one each time); "
  "the same closure, the same cache files and the same nginx serve both tools. Fresh stores are private "
  "mount namespaces with an empty `/nix` (`NIX_REMOTE=local`), as a new VM would have. Page cache warm.\n")
p("## Machine\n")
p(f"- {M['nproc']} CPUs, {M['cpu']}, {M['mem']} RAM, Linux {M['kernel']}")
p(f"- {M['nix']}; nginx {M['nginx']}; {M['xz']}; {M['zstd'].strip('* ')}")
p(f"- closure (`synth-closure.nix --arg n {N}`): {M['stats_full']}")
p(f"- smaller closure for xz publish (`--arg n {XN} --arg scale {XS}`): {M['stats_small']}")
if M.get("stats_paths"):
    p(f"- many small paths (`integration/fixtures/fixture.nix --arg n {SN} --arg big {SB}`): {M['stats_paths']}")
if M.get("cpus"):
    p(f"- cold pulls measured on: {', '.join(c + ' core' + ('s' if c != '1' else '') for c in M['cpus'].split())} "
      "(fewer cores than the machine has: `taskset` on every process of every tool, the server not pinned)")
p(f"- load before: `{M['uptime_before'].strip()}`; after: `{M['uptime_after'].strip()}`")
busy, ours, secs = int(M["busy_cpu_seconds"]), int(M["our_cpu_seconds"]), int(M["measure_seconds"])
other = max(0, busy - ours)
share = other / max(1, secs * int(M["nproc"]))
p(f"- measuring took {secs} s ({M['total_seconds']} s with build and setup); the machine was busy for {busy} CPU-s, "
  f"of which this benchmark used {ours} CPU-s: other work used ~{other} CPU-s ({share:.0%} of the machine)")
if share > 0.05:
    p(f"- **shared machine: other work was running** (busiest processes before: {M['top_before']}; "
      f"after: {M['top_after']}); read the numbers with that in mind")
else:
    p("- no other work of note ran during the measurements (the load average before includes "
      "whatever ran in the minutes before)")
p("")

# Issue #31's targets: the pull rows against the pull floor (nixcast / pull floor), the link rows
# against the better Nix through the same link (`link_rows` below).
targets = {
    f"pull-paths{SN}-xz-cold": "≤ 1.15", f"pull-paths{SN}-xz-cpu1-cold": "≤ 1.15",
    "pull-zstd-cold": "≤ 1.15", "pull-zstd-cpu1-cold": "≤ 1.15",
    "pull-xz-cold": "≤ 1.10", "pull-xz-cpu1-cold": "≤ 1.10",
}
labels = [
    (f"publish-cold-zstd-n{N}", f"publish cold, zstd, {N} paths"),
    (f"publish-cold-xz-{small}", f"publish cold, xz, {XN} paths at {XS} % size"),
    (f"publish-cold-xz-n{N}", f"publish cold, xz, {N} paths (nixcast once; Nix 2.8 took 327 s in shared/bench)"),
    (f"publish-incr-zstd-n{N}", f"publish after one path changed, zstd, {N} paths"),
    (f"publish-incr-xz-{small}", f"publish after one path changed, xz, {XN} paths at {XS} %"),
    (f"publish-incr-xz-n{N}", f"publish after one path changed, xz, {N} paths (nixcast once)"),
    (f"pull-paths{SN}-xz-cold", f"pull cold, xz, {SN} small paths + one {int(SB) / 1e6:g} MB file"),
    ("pull-zstd-cold", f"pull cold, zstd, {N} paths"),
    ("pull-xz-cold", f"pull cold, xz, {N} paths"),
    ("pull-zstd-rtt50-cold", "pull cold, zstd, +50 ms round trip"),
    ("pull-zstd-rtt50-j64-cold", "the same, `nixcast-pull --jobs 64` (default 32)"),
    ("pull-zstd-incr", "pull after one path changed, zstd"),
    ("pull-xz-incr", "pull after one path changed, xz"),
    ("pull-zstd-noop", "no-op poll, zstd"),
    ("pull-xz-noop", "no-op poll, xz"),
]
# The same pulls pinned to fewer cores (CPUS=1): "pull-xz-cpu1-cold" after "pull-xz-cold".
for work, label in list(labels):
    if work.startswith("pull") and work.endswith("-cold"):
        for n in sorted({w.split("-cpu")[1].split("-")[0] for (w, _) in rows if w.startswith(work[:-5] + "-cpu")}):
            labels.insert(labels.index((work, label)) + 1, (f"{work[:-5]}-cpu{n}-cold", f"the same on {n} core" + ("s" if n != "1" else "")))
tools = ["nixcast", "nix-copy", "nix-store"]
nixref = {"pull-zstd-rtt50-j64-cold": "pull-zstd-rtt50-cold"}  # compared with the Nix runs of that row
p("## Time (median seconds, min–max)\n")
p("Ratio: nixcast / the better of `nix copy` and `nix-store -r` (same run). Pulls include, for nixcast only, "
  "setting the profile and running `switch-to-configuration` (the stand-in's only echoes).\n")
p("Floor: Nix importing the verified bytes itself, into a fresh store in the same round, from an uncompressed "
  "signed `file://` cache of the closure on the local disk (what the agent's staging cache holds once every NAR "
  "is verified): the better of `nix copy --no-recursive --from file://DIR` (sequential) and `nix-store -r "
  "--option substituters file://DIR -j16` (parallel); `floor / Nix` is the ratio no agent that imports through "
  "Nix can go below. CPU seconds: user + system of the command and every process it waited for.\n")
p("Verify floor: the least CPU a tool that verifies every NAR before Nix imports it must spend: one core "
  "hashing all the cache's NARs (FileHash), decompressing them and hashing the result (NarHash), with the "
  "agent's own liblzma, zstd and SHA-256 (`decode-floor nar/*`, built from `puller/examples/decode-floor.rs`; "
  "n=1 per cache) plus the CPU of the cheaper Nix import floor of the same row; spread over the row's cores, "
  "as a ratio to the better Nix pull. No agent that verifies and imports through Nix can go below it (the "
  "agent also receives the bytes, parses each NAR strictly, spools the large ones, writes the NAR to "
  "staging and starts Nix).\n")
p("Overlap floor: measured, in the same rounds and on the row's cores: the parallel Nix import floor "
  "(`nix-store -r -j16` from the uncompressed local cache) while every NAR of the row's cache is decoded and "
  "hashed alongside (`find nar -type f | xargs -P 2 -n 64 decode-floor`). "
  "It is what a tool that verifies each NAR before Nix imports it would take with perfect overlap and no other "
  "work (no download, pointer, manifest, staging, profile or switch), as a ratio to the better Nix pull. "
  "For the +50 ms rows it is the zstd row's (measured without the delay, which can only add to it).\n")
p("Pull floor: measured the same way, the overlap floor with every step an agent must take before and after it, "
  "in order (`integration/bench/floor-pull.sh`): GET the pointer and the manifest; verify the NARs of the "
  "closure's gate (the paths every path with references needs, found by `gate.py`: in the 300-path stand-in, "
  "base-lib; none in the 1000-path closure), since Nix can import nothing else before them; then the overlap "
  "floor; then `nix-env --set` of the profile and the switch. Still no download, staging, NAR parse or "
  "waiting for a NAR during the import. The targets compare nixcast's whole pull, profile and switch included, "
  "so this is the least any verify-first agent's ratio can be.\n")
p("Target: issue #31's, on `nixcast / pull floor` (the agent's own overhead over the least any verify-first "
  "agent must do).\n")
p("| work | nixcast | `nix copy` | `nix-store -r -j16` | ratio | CPU s (nixcast / copy / store) | floor: copy, subst | floor / Nix | verify floor: hash, decode, hash + import CPU s → / Nix | overlap floor → / Nix | pull floor → / Nix | **nixcast / pull floor** | target |")
p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
ratios = {}
def cpu(work, tool):
    r = rows.get((work, tool))
    return f"{med(work, tool, 'cpu'):.2f}" if r and r[0]["cpu"] is not None else "—"
def verify_floor(work, nix):
    """FileHash + decode + NarHash CPU of the row's cache (decode-floor) + the cheaper Nix import floor's CPU, over the row's cores."""
    m = re.fullmatch(r"pull-(.+?)(-rtt50(-j64)?)?(-cpu(\d+))?-cold", work)
    if not m or not nix:
        return ""
    c, cores = m.group(1), int(m.group(5) or M["nproc"])
    dec = med(f"verify-{c}", "verify", "cpu")
    imp_work = f"pull-{c}" + (f"-cpu{m.group(5)}" if m.group(5) else "") + "-cold"
    imp = [v for v in (med(imp_work, "floor-copy", "cpu"), med(imp_work, "floor-subst", "cpu")) if v is not None]
    if dec is None or not imp:
        return ""
    total = dec + min(imp)
    return f"{dec:.2f} + {min(imp):.2f} = {total:.2f} → {total / cores / min(nix):.2f}"
def measured_floor(work, tool, nix):
    """A floor measured in the row's rounds (the +50 ms rows take the zstd row's), in seconds and / Nix."""
    v = med(work, tool)
    if v is None and "-rtt50" in work:
        v = med(re.sub(r"-rtt50(-j64)?", "", work), tool)
    return f"{v:.2f} s → {v / min(nix):.2f}" if v is not None and nix else ""
for work, label in labels:
    if not any((work, t) in rows for t in tools):
        continue
    nc = med(work, "nixcast")
    ref = nixref.get(work, work)
    nix = [v for v in (med(ref, "nix-copy"), med(ref, "nix-store")) if v is not None]
    ratio = f"{nc / min(nix):.2f}" if nc is not None and nix and min(nix) > 0 else "—"
    ratios[work] = ratio
    fl = [v for v in (med(work, "floor-copy"), med(work, "floor-subst")) if v is not None]
    floor = " / ".join(f"{v:.2f}" if v is not None else "—" for v in (med(work, "floor-copy"), med(work, "floor-subst"))) if fl else ""
    fratio = f"{min(fl) / min(nix):.2f}" if fl and nix else ""
    cpus = " / ".join(cpu(work, t) for t in tools) if "cold" in work else ""
    overlap, pull_floor = (measured_floor(work, t, nix) for t in ("floor-overlap", "floor-pull"))
    pf = med(work, "floor-pull")
    over = f"**{nc / pf:.2f}**" if nc is not None and pf else ""
    p(f"| {label} | {cell(work, 'nixcast')} | {cell(work, 'nix-copy')} | {cell(work, 'nix-store')} | {ratio} | {cpus} | {floor} | {fratio} | {verify_floor(work, nix)} | {overlap} | {pull_floor} | {over} | {targets.get(work, '')} |")
p("")

# Cold pulls through delayproxy.py on one core (run.sh's pull-link stage): one emulated uplink shared by
# every connection, 20 ms round trip and 100 Mbit/s each way, and the same 20 ms with no rate cap.
link_rows = []
for c, what in ((f"paths{SN}-xz", f"{SN} small paths, xz"), ("zstd", f"{N} paths, zstd"), ("xz", f"{N} paths, xz")):
    for link, how, target in (("link20-100mbit", "20 ms, 100 Mbit/s", "≤ 1.0"), ("rtt20", "20 ms, no cap", "≤ 0.7")):
        work = f"pull-{c}-{link}-cpu1-cold"
        if any((work, t) in rows for t in tools):
            link_rows.append((work, f"{what}, {how}", target, link))
if link_rows:
    p("## Through a link, one core (issue #31)\n")
    p("Every process of every tool on one core, through `delayproxy.py`: one emulated uplink shared by all "
      "connections (a VM's), 20 ms round trip and 100 Mbit/s each way; and the same 20 ms with no rate cap "
      "(latency alone). Ratio: nixcast / the better Nix. The link alone: the bytes nixcast moved at 100 Mbit/s, "
      "the least any tool needs; target for the small paths: within 0.3 s of it. `nix copy` ran once "
      "(`DELAY_NIXCOPY_REPS`).\n")
    p("| work | nixcast | `nix copy` | `nix-store -r -j16` | ratio | target | the link alone | nixcast − link | `nix-store -r` − link | requests, bytes (nixcast / copy / store) |")
    p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for work, label, target, link in link_rows:
        nc = med(work, "nixcast")
        nix = [v for v in (med(work, "nix-copy"), med(work, "nix-store")) if v is not None]
        ratio = f"**{nc / min(nix):.2f}**" if nc is not None and nix else "—"
        alone = med(work, "nixcast", "bytes") * 8 / 100e6 if link == "link20-100mbit" and nc is not None else None
        ns = med(work, "nix-store")
        past = lambda v: f"{v - alone:.2f} s" if v is not None and alone is not None else ""
        reqs = " / ".join(f"{med(work, t, 'reqs'):.0f} req, {mib(med(work, t, 'bytes'))}" if (work, t) in rows else "—" for t in tools)
        p(f"| {label} | {cell(work, 'nixcast')} | {cell(work, 'nix-copy')} | {cell(work, 'nix-store')} | {ratio} | {target} "
          f"| {f'{alone:.2f} s' if alone is not None else ''} | {past(nc)} | {past(ns)} | {reqs} |")
    p("")

p("## Requests and bytes (from nginx's access log, medians)\n")
p("Target for nixcast: after one path changed, pointer + manifest + the changed NARs (2 paths changed: "
  "`etc` and the top), nothing else; a no-op poll is 1 request.\n")
p("| work | nixcast | `nix copy` | `nix-store -r -j16` |")
p("| --- | --- | --- | --- |")
for work, label in labels:
    if not work.startswith("pull") or not any((work, t) in rows for t in tools):
        continue
    cells = []
    for t in tools:
        if (work, t) in rows:
            cells.append(f"{med(work, t, 'reqs'):.0f} req, {mib(med(work, t, 'bytes'))}")
        else:
            cells.append("—")
    p(f"| {label} | " + " | ".join(cells) + " |")
p("")

p("## Peak memory (median of `/usr/bin/time -f %M`)\n")
p("%M is the largest resident set of the command or of any one descendant it waited for (the agent's "
  "import, `nix-env`, the switch), not their sum. Targets on the 1000-path pull (it includes a 40 MiB path): "
  "agent alone ≤ 48 MiB, largest process ≤ 128 MiB; publisher ≤ 512 MiB.\n")
def own_rss(r):  # the agent's own peak, from its log ("peak_rss_kib=N"), in KiB
    for line in open(r["log"], errors="replace"):
        m = re.search(r"peak_rss_kib=(\d+)", line)
        if m:
            return int(m.group(1))
    return None
p("Agent alone: its own peak resident set (VmHWM), which it logs at the end of the fetch and import.\n")
p("| work | nixcast (largest process) | nixcast agent alone | `nix copy` | `nix-store -r -j16` |")
p("| --- | --- | --- | --- | --- |")
for work, label in labels:
    if "cold" not in work or not any((work, t) in rows for t in tools):
        continue
    cells = [f"{med(work, t, 'rss') / 1024:.0f} MiB" if (work, t) in rows else "—" for t in tools]
    own = [x for x in (own_rss(r) for r in rows.get((work, "nixcast"), [])) if x]
    cells.insert(1, f"{statistics.median(own) / 1024:.0f} MiB" if own else "—")
    p(f"| {label} | " + " | ".join(cells) + " |")
p("")

p("## CPU time (median user + system seconds, the command and the processes it waited for)\n")
p("On 2 cores a run cannot take less than half its CPU time: when nixcast needs more CPU than Nix "
  "does, that bounds the ratio from below.\n")
p("| work | nixcast | `nix copy` | `nix-store -r -j16` | nixcast CPU / 2 cores vs the better Nix's time |")
p("| --- | --- | --- | --- | --- |")
for work, label in labels:
    if "cold" not in work or not any((work, t) in rows and rows[(work, t)][0]["cpu"] is not None for t in tools):
        continue
    cells = [f"{med(work, t, 'cpu'):.2f}" if (work, t) in rows else "—" for t in tools]
    ref = nixref.get(work, work)
    nix = [v for v in (med(ref, "nix-copy"), med(ref, "nix-store")) if v is not None]
    nc = med(work, "nixcast", "cpu") if (work, "nixcast") in rows else None
    bound = f"{nc / int(M['nproc']) / min(nix):.2f}" if nc is not None and nix else "—"
    p(f"| {label} | " + " | ".join(cells) + f" | {bound} |")
p("")

# nixcast's phases, from the agent's log lines (one per phase, with timestamps)
PH = ["pointer verified", "closure checked", "fetched, verified and imported", "applied"]
ts_re = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+INFO\s+\S+: (.*)$")
def phases(r):
    got = {}
    for line in open(r["log"], errors="replace"):
        m = ts_re.match(line.strip())
        if not m:
            continue
        for ph in PH:
            if m.group(2).startswith(ph) and ph not in got:
                got[ph] = datetime.datetime.fromisoformat(m.group(1)).replace(
                    tzinfo=datetime.timezone.utc).timestamp()
    if len(got) < len(PH):
        return None
    marks = [r["t0"]] + [got[ph] for ph in PH] + [r["t0"] + r["secs"]]
    return [max(0.0, b - a) for a, b in zip(marks, marks[1:])]
ph_rows = []
for work, label in labels:
    if not work.endswith("cold") or (work, "nixcast") not in rows:
        continue
    per = [x for x in (phases(r) for r in rows[(work, "nixcast")]) if x]
    if per:
        ph_rows.append((label, [statistics.median(col) for col in zip(*per)], med(work, "nixcast")))
if ph_rows:
    p("## Where nixcast's cold pull spends its time (median seconds, from the agent's log)\n")
    p("| work | start → pointer verified | → closure checked | → fetched, verified and imported (overlapped) | → applied (profile, switch) | → exit | total |")
    p("| --- | --- | --- | --- | --- | --- | --- |")
    for label, cols, tot in ph_rows:
        p(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cols) + f" | {tot:.2f} |")
    p("")

if ("pull-zstd-sealed-cold", "nixcast") in rows and ("pull-zstd-unsealed-cold", "nixcast") in rows:
    se, un = med("pull-zstd-sealed-cold", "nixcast"), med("pull-zstd-unsealed-cold", "nixcast")
    sc, uc = med("pull-zstd-sealed-cold", "nixcast", "cpu"), med("pull-zstd-unsealed-cold", "nixcast", "cpu")
    p("## Sealed hosts: what sealing costs a cold pull (zstd, nixcast only, alternating)\n")
    p("The same closure published twice, once sealed to an SSH host key (`--recipient`), once plain; the agent "
      "opens the sealed one with that key. Target: sealed ≤ 1.10 × unsealed.\n")
    sb, ub = med("pull-zstd-sealed-cold", "nixcast", "bytes"), med("pull-zstd-unsealed-cold", "nixcast", "bytes")
    p("Sealed objects are padded to Padmé lengths (README, \"What a host, and a reader of the cache, can learn\"): "
      "the bytes column shows what padding and age's framing add on the wire.\n")
    p("| work | seconds | CPU seconds | peak RSS | bytes on the wire |")
    p("| --- | --- | --- | --- | --- |")
    for w, label in (("pull-zstd-unsealed-cold", "unsealed"), ("pull-zstd-sealed-cold", "sealed")):
        p(f"| {label} | {cell(w, 'nixcast')} | {med(w, 'nixcast', 'cpu'):.2f} | {med(w, 'nixcast', 'rss') / 1024:.0f} MiB "
          f"| {mib(med(w, 'nixcast', 'bytes'))} |")
    p(f"| **sealed / unsealed** | **{se / un:.2f}** | {sc / uc:.2f} | | {sb / ub:.3f} |")
    if (f"publish-cold-zstd-sealed-n{N}", "nixcast") in rows:
        p(f"\nPublishing it sealed: {cell(f'publish-cold-zstd-sealed-n{N}', 'nixcast')}.")
    p("")

fl = [(w, t) for (w, t) in rows if w.startswith("decode-")]
if fl:
    p("## Floors: single-core decompression of this cache's NARs (one run)\n")
    p("| work | seconds |")
    p("| --- | --- |")
    for w, t in sorted(fl):
        what = {"decode-largest": "the largest NAR", "decode-all": "all NARs, one stream"}[w.rsplit("-", 1)[0]]
        cmd = "xz -d -T1" if t == "xz" else "zstd -d"
        p(f"| `{cmd}`, {what} | {med(w, t):.2f} |")
    p("")
if ("import-all", "nix") in rows:
    imp = med("import-all", "nix")
    best = [v for v in (med("pull-zstd-cold", "nix-copy"), med("pull-zstd-cold", "nix-store")) if v is not None]
    p("## Floor: Nix's own import\n")
    p(f"`nix copy --no-recursive --from file://DIR` of all {N} paths from uncompressed NARs on the local disk into a "
      f"fresh store (what the agent's import through Nix costs at the least, with nothing to download or decode): "
      f"{cell('import-all', 'nix')}, CPU {med('import-all', 'nix', 'cpu'):.2f} s"
      + (f"; that is {imp / min(best):.2f} of the better Nix pull of the zstd cache." if best else ".") + "\n")

text = "\n".join(out) + "\n"
extra = ""
try:
    extra = open(out_path).read().split("<!-- notes -->", 1)[1]
except (OSError, IndexError):
    pass
text += "<!-- notes -->" + extra if extra else ""
open(out_path, "w").write(text)
print(text)
