#!/usr/bin/env python3
"""Static performance model of the crate's CUDA kernels (issue 13; `bash scripts/kernel-model.sh`).

Nothing here runs on a GPU. For every kernel entry point of kernels/*.cu it takes
  - from ptxas (-Xptxas -v, sm_90): registers, spill stores/loads, static shared memory, stack;
  - from the SASS (nvdisasm -g of the sm_90 cubin, compiled with -lineinfo): the per-element hot
    loops and their instruction counts, split by the execution unit they occupy;
  - from a simulation of the benchmark's rows (the same distributions as benches/common/rows.rs):
    the data-dependent quantities (how often a top-p histogram branch is taken, its shared-memory
    bank conflicts, how often a row re-reads itself);
and predicts the time of one launch at [N, V] = [4096, 151936] on an H100 and an H200 as

    T = max(T_hbm, T_issue, T_mufu, T_smem) + rows_per_SM · T_row / CTAs_per_SM

with every constant named in GPUS / COSTS below and its source next to it. The model is calibrated
on the one point measured on a GPU (shared/CUDA.md): a 16-byte-load row read of bf16
[4096, 152064] took 0.403 ms on the H100; `plain_read_bf16` at that shape must come within 15%.

How a hot loop is found: a loop is the address range [target, branch] of a backward branch (BRA
to a lower address) in a function's SASS; a hot loop is a loop that contains a 16-byte global load
(LDG.E.128*), the vectors of `for_each_vec` / `backward_row`. Its role is the kernel-source function
most of its instructions come from (the -lineinfo `//## File "...", line N` comments, mapped to the
enclosing top-level function of that file): `pass1` (the statistics pass), `plain_read_rows`,
`backward_row`, `level_pass_row` / `gather_f32` (top-p re-reads of a row). Elements per trip =
16-byte loads in the loop × elements per 16 bytes. A forward branch inside a hot loop that skips
a shared-memory atomic or store is a data-dependent region (the top-p histogram / candidate list):
it is weighted by the simulated probability that any lane of the warp takes it; every other
instruction of the loop counts once per trip (predicated-off instructions still issue).

Usage: kernel_model.py [--check EXPECTED] [--update EXPECTED] [--markdown] [--out DIR]
"""
import argparse
import math
import os
import random
import re
import struct
import subprocess
import sys
from collections import Counter, defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The kernels to model: kernels/ of this checkout, or RLVR_KERNEL_DIR (e.g. an older commit's, for a
# before/after table: `git archive <commit> kernels | tar -x -C DIR`, RLVR_KERNEL_DIR=DIR/kernels).
KDIR = os.path.abspath(os.environ.get("RLVR_KERNEL_DIR", os.path.join(REPO, "kernels")))

# ---- Constants, each with its source ------------------------------------------------------------
GPUS = {
    # H100 SXM5 80 GB: 132 SMs (NVIDIA H100 datasheet; verified on the lent H100, shared/CUDA.md);
    # boost clock 1.98 GHz (datasheet FP32 67 TFLOPS = 132 SMs × 128 lanes × 2 flops × f);
    # HBM3 3.35 TB/s and L2 50 MB (datasheet).
    "H100": dict(sms=132, clock_hz=1.98e9, hbm_bps=3.35e12, l2_bytes=50e6),
    # H200 SXM 141 GB: same GH100 SM configuration and clocks (datasheet FP32 67 TFLOPS; 132 SMs
    # in shared/CUDA.md); HBM3e 4.8 TB/s (datasheet); L2 50 MB.
    "H200": dict(sms=132, clock_hz=1.98e9, hbm_bps=4.8e12, l2_bytes=50e6),
}
SM = dict(
    # CUDA C++ Programming Guide, "Technical Specifications per Compute Capability", cc 9.0.
    regs=65536, max_threads=2048, max_ctas=32, smem_bytes=228 * 1024, smem_reserved_per_cta=1024,
    reg_alloc_unit=256,  # registers are allocated per warp in units of 256 (ptxas / occupancy calc)
    # Hopper whitepaper: 4 SM sub-partitions, each one warp scheduler issuing 1 warp-instruction/clk.
    issue_per_clk=4,
    # CUDA C++ Programming Guide, "Arithmetic Instructions" throughput table, cc 9.0: exp2/rcp/...
    # (MUFU) 16 results per clock per SM: a warp-instruction occupies the unit for 2 clocks.
    mufu_clk_per_warp_instr=2.0,
    # Programming Guide, "Shared Memory": 32 banks of 4 bytes per clock. A conflict-free warp access
    # is 1 clock; an atomic reads and writes its word (2); an n-way conflict multiplies by n.
    smem_clk_per_warp_access=1.0, smem_clk_per_warp_atomic=2.0,
)
COSTS = dict(
    # Latency of a global load that misses L2, under load. Published Hopper pointer chases
    # (arXiv 2402.13499; chipsandcheese.com "Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023)
    # put the idle latency at several hundred cycles; 600 ns is our loaded estimate. It is the
    # model's least certain constant: gpu-check measures the plain read, which bounds it.
    dram_latency_s=600e-9,
    # Latency of a load that hits L2: a few hundred cycles on Hopper in the same public
    # microbenchmarks; 300 clocks (150 ns at 1.98 GHz).
    l2_latency_s=150e-9,
    # A __syncthreads of 32 warps that arrive together: tens of cycles (arXiv 2402.13499 measures
    # barrier/sync latencies of this order); 40 clocks.
    barrier_clk=40,
    # A dependent ALU instruction of a single thread (no other warp to switch to): Hopper's
    # arithmetic latency is ~4 clocks, f64 and conversions more; 6 clocks on average.
    serial_clk_per_instr=6,
    # The once-per-row work that every warp executes (reductions, scans): warp-instructions issued
    # at the SM's issue rate (SM.issue_per_clk), counted statically (loops: see LOOP_TRIPS).
)
SHAPE = dict(n=4096, v=151936)
ANCHOR = dict(kernel="plain_read_bf16", gpu="H100", n=4096, v=152064, measured_ms=0.403, tolerance=0.15)
BLOCK = 1024
NB = 2048  # coarse buckets of the 16-bit top-p histogram (rows::NB)
# Roles of the hot loops that re-read a row for the top-p count (row_stats.cuh: level_pass_row's
# body is level_add; gather_f32's is list_append): they run on re-read rows only.
REREAD_ROLES = {"level_pass_row", "gather_f32"}

# Trip counts per thread of the loops outside the hot loops, by the source function they sit in
# (read from the kernel source; `None`: the loop runs once per CTA, not per row). Data-dependent
# ones take a workload value (see simulate()). Unknown loops count one trip and are listed.
LOOP_TRIPS = {
    "init_hist": None,            # once per CTA
    "clear_fine": 32768 // 4 // BLOCK,  # uint4 stores over the 16-bit counters
    "clear_level": 2048 // BLOCK,
    "block_crossing": 2,          # n/BLOCK items per thread (2048 buckets), twice (sum, find)
    # a warp per touched coarse bucket (before the redesign of issue 13, whose row_stats.cuh has
    # no mark_touched: a thread per coarse bucket, see touched_buckets_per_thread)
    "branch16": "touched_per_warp" if "mark_touched" in open(os.path.join(KDIR, "row_stats.cuh")).read()
    else "touched_buckets_per_thread",
    "clear_touched": "touched_per_warp",
    "mark_touched": NB // 4 // 512,   # groups of 4 buckets per thread (512 threads)
    "exact_level": 1,
    "level_pass_list": "list_trips",
    "sum_chunks_f64": 1,
    "grpo_loss_final": 1,
}
# The functions whose code one thread runs per row (thread 0's outputs): latency-bound, counted at
# COSTS.serial_clk_per_instr each, not at the SM's issue rate.
SERIAL_FUNCS = {"token_loss", "kl_term", "token_outputs", "agg_weight", "back_coef", "token_stats_rows",
                "row_lse", "row_entropy", "row_logp"}
# Dependent round trips on a row's critical path outside the streaming loop, read from the source
# (DRAM, L2): the row's first loads after the previous row's last barrier (1 DRAM); token_stats:
# thread 0 loads targets[row] before the pass, then logits[row, y] after it, a line the pass has
# just read (1 L2); grpo: thread 0's per-token inputs, prefetched to L2 before the pass, then
# logits[row, y] (2 L2).
DEP_LOADS = {"plain_read": (1, 0), "token_stats": (1, 1), "grpo": (1, 2), "grpo_backward": (1, 0)}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def tool(name):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    sys.exit(f"kernel-model: {name} not found on PATH (run: bash scripts/cuda-toolchain.sh && "
             f"source .cuda-toolchain/env.sh)")


# ---- ptxas and SASS ---------------------------------------------------------------------------
def compile_all(out):
    os.makedirs(out, exist_ok=True)
    nvcc = tool("nvcc")
    info, sass = {}, {}
    for f in sorted(os.listdir(KDIR)):
        if not f.endswith(".cu"):
            continue
        stem = f[:-3]
        cubin = os.path.join(out, stem + ".cubin")
        r = run([nvcc, "--cubin", "-O3", "-std=c++17", "-lineinfo", "-arch=sm_90", "-Xptxas", "-v", "-I", KDIR,
                 "-o", cubin, os.path.join(KDIR, f)])
        info.update(parse_ptxas(r.stdout + r.stderr, stem))
        sass.update(parse_sass(run([tool("nvdisasm"), "-gi", "-c", cubin]).stdout))
        for name, block in parse_max_threads(run([tool("cuobjdump"), "-elf", cubin]).stdout).items():
            info[name]["block"] = block
    return info, sass


def parse_max_threads(text):
    """Threads per CTA of each kernel: EIATTR_MAX_THREADS of its .nv.info section (the x of its
    __launch_bounds__, which the host launches with: src/cuda/context.rs)."""
    res, cur, want = {}, None, False
    for line in text.splitlines():
        m = re.match(r"\.nv\.info\.(\w+)", line.strip())
        if m:
            cur = m.group(1)
            continue
        if "EIATTR_MAX_THREADS" in line:
            want = True
            continue
        m = re.search(r"Value:\s+0x([0-9a-f]+)", line)
        if want and m and cur:
            res[cur] = int(m.group(1), 16)
            want = False
    return res


def parse_ptxas(text, stem):
    res, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            res[cur] = dict(file=stem, regs=0, spill_st=0, spill_ld=0, smem=0, stack=0, block=BLOCK)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            res[cur].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            res[cur]["regs"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            res[cur]["smem"] = int(m2.group(1)) if m2 else 0
    return res


class Instr:
    __slots__ = ("addr", "op", "text", "target", "file", "line", "frames")

    def __init__(self, addr, op, text, target, file, line, frames):
        self.addr, self.op, self.text, self.target, self.file, self.line = addr, op, text, target, file, line
        self.frames = frames  # (file, line) of the instruction and of every call site it is inlined at


def parse_sass(text):
    """Functions of `nvdisasm -gi` output: instructions with their source line and inline chain."""
    funcs, cur, labels, loc, frames, chain = {}, None, {}, (None, 0), [], ()
    for raw in text.splitlines():
        m = re.match(r"\s*\.text\.(\w+):", raw)
        if m:
            cur = m.group(1)
            funcs[cur] = dict(instrs=[], labels={})
            labels = funcs[cur]["labels"]
            continue
        if cur is None:
            continue
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?', raw)
        if m:
            if not frames:
                loc = (m.group(1), int(m.group(2)))
            frames.append((m.group(1), int(m.group(2))))
            if m.group(3):
                frames.append((m.group(3), int(m.group(4))))
            continue
        m = re.match(r"^(\.L_x_\d+):", raw)
        if m:
            labels[m.group(1)] = None  # resolved to the next instruction's address
            funcs[cur].setdefault("pending", []).append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", raw)
        if m:
            addr = int(m.group(1), 16)
            body = m.group(2).strip()
            for lab in funcs[cur].pop("pending", []):
                labels[lab] = addr
            toks = body.split()
            op = toks[1] if toks[0].startswith("@") else toks[0]
            tm = re.search(r"`\((\.L_x_\d+)\)", body)
            if frames:
                chain, frames = tuple(frames), []
            funcs[cur]["instrs"].append(Instr(addr, op, body, tm.group(1) if tm else None, loc[0], loc[1], chain))
    for f in funcs.values():
        f.pop("pending", None)
    return funcs


_func_cache = {}


def enclosing_function(path, line):
    """The top-level C++ function of kernels/<file> that contains `line` (lineinfo), or None."""
    if path is None or not path.startswith(KDIR):
        return None
    if path not in _func_cache:
        starts = []
        with open(path) as fh:
            lines = fh.read().split("\n")
        for i, l in enumerate(lines, 1):
            m = re.match(r"(?:template <[^>]*>\s*)?(?:extern \"C\" )?(?:__device__|__global__)[\w\s:<>*&,()]*?"
                         r"\b(\w+)\(", l)
            if m and not l.startswith(" "):
                starts.append((i, m.group(1)))
            m = re.match(r"#define (RLVR_\w+)", l)
            if m:
                starts.append((i, m.group(1)))
        _func_cache[path] = starts
    name = None
    for i, n in _func_cache[path]:
        if i <= line:
            name = n
    return name


def hot_end(fn):
    """Index one past the function's last EXIT: what follows is out-of-line code (the fallback paths
    of warp collectives), whose backward branches return to the main body and are not loops."""
    ins = fn["instrs"]
    return max((k for k, i in enumerate(ins) if i.op == "EXIT"), default=len(ins) - 1) + 1


_rare_cache = {}
RARE_BEGIN, RARE_END = re.compile(r"\(model: rare path from here(?:: (\w+))?\)"), "(model: rare path ends)"


def rare(frames):
    """The tag of the rare-path source region an instruction (its inline chain) lies in, or None:
    the kernels mark code that runs only on some rows with "(model: rare path from here: TAG)" ...
    "(model: rare path ends)" comments. Such code is not a per-row cost; its hot loops (re-reads)
    are weighted by the frequency of TAG in the simulated rows (simulate())."""
    for path, line in frames:
        if path not in _rare_cache:
            ranges, start = [], None
            if path.startswith(KDIR) and os.path.exists(path):
                with open(path) as fh:
                    for i, l in enumerate(fh, 1):
                        m = RARE_BEGIN.search(l)
                        if m:
                            start = (i, m.group(1) or "rare")
                        elif RARE_END in l and start is not None:
                            ranges.append((start[0], i, start[1]))
                            start = None
            _rare_cache[path] = ranges
        for a, b, tag in _rare_cache[path]:
            if a <= line <= b:
                return tag
    return None


_tail_lines = None


def in_tail_lambda(frames):
    """Whether a load is for_each_vec's one-vector step (the `auto one = [&]` lambda of common.cuh)."""
    global _tail_lines
    if _tail_lines is None:
        _tail_lines = (0, -1)
        with open(os.path.join(KDIR, "common.cuh")) as fh:
            lines = fh.read().split("\n")
        for i, l in enumerate(lines, 1):
            if "auto one = [&]" in l:
                end = next(j for j in range(i, len(lines) + 1) if lines[j - 1].strip() == "};")
                _tail_lines = (i, end)
    return any(p.endswith("common.cuh") and _tail_lines[0] <= ln <= _tail_lines[1] for p, ln in frames)


def loops(fn):
    """(start_index, end_index) of every backward branch's range in the main body, innermost first."""
    ins, labels = fn["instrs"], fn["labels"]
    idx = {i.addr: k for k, i in enumerate(ins)}
    res = []
    for k, i in enumerate(ins[:hot_end(fn)]):
        if i.op.startswith("BRA") and i.target in labels and labels[i.target] is not None and labels[i.target] <= i.addr:
            res.append((idx[labels[i.target]], k))
    res.sort(key=lambda r: r[1] - r[0])
    return res


HOT_ROLES = ("pass1", "plain_read_rows", "backward_row", "level_pass_row", "gather_f32")


def role_of(ins, lo, hi):
    """The role of a loop: the one of HOT_ROLES that most of its instructions are inlined from (the
    innermost such function of each instruction's -gi chain), else the kernel-source function most
    of its instructions come from."""
    roles, c = Counter(), Counter()
    for i in ins[lo:hi + 1]:
        for path, line in i.frames or ((i.file, i.line),):
            f = enclosing_function(path, line)
            if f in HOT_ROLES:
                roles[f] += 1
                break
        f = enclosing_function(i.file, i.line)
        if f and not (i.file or "").endswith("common.cuh"):
            c[f] += 1
    if roles:
        return roles.most_common(1)[0][0]
    return c.most_common(1)[0][0] if c else "?"


def unit_of(op):
    if op.startswith("MUFU"):
        return "mufu"
    if op.startswith("ATOMS"):
        return "atoms"
    if op.startswith(("LDS", "STS")):
        return "smem"
    return "alu"


def analyse(name, fn):
    """Hot loops of one kernel: role, elements per trip, instruction counts (data-dependent regions
    separately), and the static per-row remainder."""
    ins = fn["instrs"]
    labels = fn["labels"]
    vec = 4 if name.endswith("f32") else 8
    all_loops = loops(fn)
    hot = [lp for lp in all_loops if any(".128" in ins[k].op and ins[k].op.startswith("LDG")
                                         for k in range(lp[0], lp[1] + 1))]
    # Keep the innermost: the grid-stride row loop also contains the loads (a CAS spin inside a hot
    # loop has no load and stays part of its body).
    hot = [lp for lp in hot if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in hot)]
    in_hot = set()
    out = []
    for lo, hi in hot:
        in_hot.update(range(lo, hi + 1))
        # 16-byte loads per trip: distinct destination registers (a load whose path is chosen at run
        # time, __ldg or __ldcg, is two predicated LDGs into the same registers).
        n_ldg = len({re.sub(r"^@!?U?P\w+\s+", "", ins[k].text).split()[1] for k in range(lo, hi + 1)
                     if ins[k].op.startswith("LDG") and ".128" in ins[k].op})
        # data-dependent regions: a forward branch inside the loop that skips a shared atomic/store
        dep, nested = set(), set()
        n_regions = 0
        for k in range(lo, hi + 1):
            i = ins[k]
            if i.op.startswith("BRA") and i.target in labels and labels[i.target] is not None \
                    and labels[i.target] > i.addr and labels[i.target] <= ins[hi].addr:
                end = next(j for j in range(k, hi + 1) if ins[j].addr >= labels[i.target])
                body = range(k + 1, end)
                if k in dep:  # a region inside a histogram region: its first-touch bookkeeping
                    nested.update(body)
                elif any(ins[j].op.startswith(("ATOMS.ADD", "ATOMS.POPC", "STS")) for j in body):
                    dep.update(body)
                    n_regions += 1
        dep -= nested
        cnt = Counter(unit_of(ins[k].op) for k in range(lo, hi + 1) if k not in dep and k not in nested)
        dcnt = Counter(unit_of(ins[k].op) for k in dep)
        ncnt = Counter(unit_of(ins[k].op) for k in nested)
        tag = Counter(rare(ins[k].frames) for k in range(lo, hi + 1)).most_common(1)[0][0]
        # for_each_vec's one-vector steps after the full trips (its `one` lambda, common.cuh)
        tail = any(ins[k].op.startswith("LDG") and in_tail_lambda(ins[k].frames) for k in range(lo, hi + 1))
        out.append(dict(role=role_of(ins, lo, hi), tag=tag, tail=tail, elems=n_ldg * vec, vectors=n_ldg, base=cnt,
                        dep=dcnt,
                        nested=ncnt,
                        regions=n_regions, writes=any(ins[k].op.startswith("STG") and ".128" in ins[k].op
                                                      for k in range(lo, hi + 1))))
    # The rest: static count, loops outside hot loops by LOOP_TRIPS; the row loop (any loop that
    # contains a hot loop) is the per-row unit itself.
    trips_of = {}
    unknown = set()
    for lo, hi in all_loops:
        if lo in in_hot or any(lo <= h[0] and h[1] <= hi for h in hot):
            continue
        f = role_of(ins, lo, hi)
        t = LOOP_TRIPS.get(f, 1)
        if f not in LOOP_TRIPS:
            unknown.add(f)
        for k in range(lo, hi + 1):
            trips_of.setdefault(k, (f, t))  # innermost loop first
    rest = defaultdict(float)
    for k, i in enumerate(ins[:hot_end(fn)]):
        if k in in_hot:
            continue
        f = enclosing_function(i.file, i.line)
        if f == "init_hist" or (k in trips_of and trips_of[k][1] is None) or rare(i.frames):
            continue
        t = trips_of.get(k, (None, 1))[1]
        kind = "serial" if f in SERIAL_FUNCS else "block"
        if i.op.startswith("BAR"):
            kind = "bar"
        rest[(kind, t if isinstance(t, str) else None)] += 1 if isinstance(t, str) else t
    # A bulk L2 prefetch of the next row (UBLKPF, row_stats.cuh's prefetch_row) on the per-row path:
    # its bytes stream from HBM while the CTA does its per-row work.
    prefetch = 0
    if any(i.op.startswith("UBLKPF") and not rare(i.frames) for i in ins[:hot_end(fn)]):
        with open(os.path.join(KDIR, "row_stats.cuh")) as fh:
            m = re.search(r"PREFETCH_BYTES = (\d+)", fh.read())
        prefetch = int(m.group(1)) if m else 0
    return dict(hot=out, rest=dict(rest), unknown=sorted(unknown), prefetch=prefetch)


# ---- Workload: the benchmark's rows, simulated ------------------------------------------------------
def bf16(x):
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return struct.unpack("<f", struct.pack("<I", (b & 0xFFFF) << 16))[0], b & 0xFFFF


def key16(b):
    return b ^ (0xFFFF if b & 0x8000 else 0x8000)


def row_values(kind, v, rng):
    if kind == "lm":  # benches/common/rows.rs: N(0, 2²) plus 4 spikes U(12, 20)
        z = [rng.gauss(0.0, 2.0) for _ in range(v)]
        for _ in range(4):
            z[rng.randrange(v)] = rng.uniform(12.0, 20.0)
        return z
    return [rng.uniform(-0.5, 0.5) for _ in range(v)]


def simulate(kind, dtype, v=SHAPE["v"], rows=3, top_p=0.95, seed=2508_07534):
    """Top-p pass statistics of the kernels' load order over `rows` rows: candidate fraction, the
    probability that a warp runs a per-element / per-vector histogram region, the bank-conflict
    degree of those atomics, touched coarse buckets, and how often a row re-reads itself."""
    rng = random.Random(seed)
    prune = math.log(1 - top_p) - math.log(v) - 0.05  # src/cuda/token_stats.rs prune_z, T = 1
    vec = 4 if dtype == "f32" else 8
    u, blk = 4, 512  # pass 1: for_each_vec<4> on ROW_BLOCK = 512 threads
    nw = blk // 32
    step = u * blk * vec
    acc = defaultdict(float)
    for _ in range(rows):
        z = row_values(kind, v, rng)
        keys = None
        if dtype != "f32":
            pairs = [bf16(x) for x in z]
            z = [p[0] for p in pairs]
            keys = [key16(p[1]) for p in pairs]
        m_final = max(z)
        prev_max = -math.inf
        cand = elem_any = elem_slots = vec_any = vec_slots = 0
        conflict_sum = conflict_n = first_regions = 0
        buckets, words = set(), set()
        for s0 in range(0, v, step):
            seg = z[s0:s0 + step]
            # element e of the step: thread t = (e // vec) % BLOCK, warp = t // 32, slot = e % vec
            for ui in range(u):
                for w in range(blk // 32):
                    lanes = []
                    for lane in range(32):
                        j = (ui * blk + w * 32 + lane) * vec
                        vals = seg[j:j + vec]
                        if not vals:
                            continue
                        thr = max(prev_max, max(vals)) + prune
                        hits = [e for e, x in enumerate(vals) if x >= thr]
                        lanes.append((j, hits))
                    if not lanes:
                        continue
                    vec_slots += 1
                    vec_any += any(h for _, h in lanes)
                    for e in range(vec):
                        elem_slots += 1
                        active = [j + e for j, h in lanes if e in h]
                        if active:
                            elem_any += 1
                            cand += len(active)
                            if keys is not None:
                                banks = Counter((keys[s0 + a] >> 1) % 32 for a in active)
                                conflict_sum += max(banks.values())
                                conflict_n += 1
                                buckets.update(keys[s0 + a] >> 5 for a in active)
                                new = {keys[s0 + a] >> 1 for a in active} - words
                                first_regions += bool(new)
                                words |= new
            prev_max = max(prev_max, max(seg))
        kept = sum(1 for x in z if x >= m_final + prune)
        acc["cand_frac"] += cand / v / rows
        acc["kept_frac"] += kept / v / rows
        acc["q_elem"] += elem_any / elem_slots / rows
        acc["q_vec"] += vec_any / vec_slots / rows
        acc["conflict"] += (conflict_sum / conflict_n if conflict_n else 1.0) / rows
        acc["touched_buckets"] += len(buckets) / rows
        acc["q_first"] += (first_regions / elem_any if elem_any else 0.0) / rows
        # f32: more than LIST_CAP candidates re-read the row (coarse level + gather of the crossing
        # bucket, row_stats.cuh branch32); 16-bit: never for these rows (no bucket near 65536).
        # Rows taking each rare path (row_stats.cuh's tags): f32 candidates beyond the list
        # (`overflow`: a coarse level and a gather over the row), a crossing bucket beyond it too
        # (`overflow2`: bounded by the fullest coarse bucket of kept tokens); 16-bit counters that
        # wrap (`wrapped`: 65536 candidates of one value).
        over = dtype == "f32" and cand > 32768  # the shared candidate list overflowed
        acc["reread_passes"] += (2.0 if over else 0.0) / rows
        if dtype == "f32":
            acc["overflow"] += over / rows
            kept_keys = Counter(struct.unpack("<I", struct.pack("<f", x))[0] >> 21 for x in z if x >= m_final + prune)
            acc["overflow2"] += (over and max(kept_keys.values()) > 32768) / rows
        else:
            acc["wrapped"] += (max(Counter(keys).values()) >= 65536) / rows
        acc["list_trips"] += min(cand, 32768) / blk / rows
    # branch16 (one thread per coarse bucket, 2 per thread, 32 keys each, a loop ptxas unrolls 4x:
    # 8 trips): a warp runs the key loop of an iteration when any of its lanes' buckets was touched.
    p_warp = 1 - (1 - acc["touched_buckets"] / 2048) ** 32
    acc["touched_buckets_per_thread"] = 8 * 2 * p_warp
    # branch16 / clear_touched since the redesign: one warp per touched bucket, 16 warps.
    acc["touched_per_warp"] = acc["touched_buckets"] / nw
    return dict(acc)


def workloads(out):
    """simulate() for both row kinds and key widths, cached in `out` by the hash of this file."""
    import hashlib
    import json
    with open(os.path.abspath(__file__), "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()[:16]
    cache = os.path.join(out, f"workload-{digest}.json")
    if os.path.exists(cache):
        with open(cache) as fh:
            return {tuple(k.split("/")): v for k, v in json.load(fh).items()}
    print("kernel-model: simulating the benchmark's rows (LM-like and flat, bf16 and f32) ...", file=sys.stderr)
    wls = {(kind, dt): simulate(kind, dt) for kind in ("lm", "flat") for dt in ("bf16", "f32")}
    with open(cache, "w") as fh:
        json.dump({"/".join(k): v for k, v in wls.items()}, fh)
    return wls


# ---- The model ---------------------------------------------------------------------------------
def occupancy(k, block, dyn_smem):
    regs = max(k["regs"], 1)
    per_warp = math.ceil(regs * 32 / SM["reg_alloc_unit"]) * SM["reg_alloc_unit"]
    warps = block // 32
    by_regs = SM["regs"] // (per_warp * warps)
    by_threads = SM["max_threads"] // block
    smem = k["smem"] + dyn_smem + SM["smem_reserved_per_cta"]
    by_smem = SM["smem_bytes"] // smem
    return max(0, min(by_regs, by_threads, by_smem, SM["max_ctas"]))


def family(name):
    if name.startswith("plain_read"):
        return "plain_read"
    if name.startswith("token_stats"):
        return "token_stats"
    if name.startswith("grpo_backward"):
        return "grpo_backward"
    if name.startswith(("grpo_forward", "grpo_fused")):
        return "grpo"
    return "small"


def predict(name, k, a, gpu, wl, n, v):
    g = GPUS[gpu]
    b = 4 if name.endswith("f32") else 2
    topp = "_topp_" in name
    fam = family(name)
    dyn = 155904 if topp else 0  # sizeof(rows::Hist) = TOP_P_SHARED_BYTES in src/cuda/token_stats.rs
    block = k["block"]
    ctas = occupancy(k, block, dyn)
    if fam == "small" or not a["hot"] or ctas == 0:
        return dict(ctas=ctas, ms=None)
    elems = n * v
    sms, clk = g["sms"], g["clock_hz"]
    row_bytes = v * b
    # Issue / MUFU / shared-memory work per SM, from the hot loops.
    issue = mufu = smem = 0.0
    bytes_hbm = 0.0
    for h in a["hot"]:
        role = h["role"]
        if role in ("pass1", "plain_read_rows", "backward_row"):
            freq = 1.0
        elif role in REREAD_ROLES:
            freq = wl.get(h["tag"], 0.0) if wl else 0.0  # the share of rows that take this re-read
        else:
            freq = 1.0
        if freq == 0:
            continue
        # Trips per row of this loop (every warp of the CTA makes each trip), from the row's
        # 16-byte vectors: a role's loop with the most loads per trip takes the full trips; a second
        # loop of the same role (for_each_vec's one-vector steps) takes the rest of the row.
        vec = h["elems"] // h["vectors"]
        nvec = v // vec
        # (Loops of a role with its most loads per trip are each a pass of their own, e.g. the two
        # instantiations of level_pass_row; one with fewer is a tail.)
        top = max(o["vectors"] for o in a["hot"] if o["role"] == role and not o["tail"])
        tails = any(o["role"] == role and o["tail"] for o in a["hot"])
        main = not h["tail"]
        if main and not tails:
            per_row = math.ceil(nvec / (h["vectors"] * block))
        elif main:
            per_row = nvec // (h["vectors"] * block)
        else:  # a tail loop unrolled by ptxas makes `vectors` steps per trip
            rest = nvec - (nvec // (top * block)) * top * block
            per_row = math.ceil(rest / (h["vectors"] * block))
        trips = n / sms * (block // 32) * per_row * freq  # warp-trips per SM
        q = 1.0
        if h["regions"] and wl:
            q = wl["q_elem"] if h["regions"] >= h["elems"] // 2 else wl["q_vec"]
        qn = q * (wl["q_first"] if wl else 1.0)  # nested regions: a warp's first touch of a counter word
        cnt = Counter()
        for unit, c in h["base"].items():
            cnt[unit] += c
        for unit, c in h["dep"].items():
            cnt[unit] += q * c
        for unit, c in h["nested"].items():
            cnt[unit] += qn * c
        issue += trips * sum(cnt.values()) / SM["issue_per_clk"]
        mufu += trips * cnt["mufu"] * SM["mufu_clk_per_warp_instr"]
        conflict = wl["conflict"] if wl else 1.0
        atoms = h["base"]["atoms"] + (q * h["dep"]["atoms"] + qn * h["nested"]["atoms"]) * conflict
        smem += trips * (atoms * SM["smem_clk_per_warp_atomic"] + cnt["smem"] * SM["smem_clk_per_warp_access"])
        if not main:  # a pass's bytes are counted once, with its main loop
            continue
        if role == "backward_row":
            bytes_hbm += elems * b  # the write of dlogits
            if fam == "grpo":  # fused: the re-read hits L2 for the part read last (reuse distance)
                reuse = min(1.0, g["l2_bytes"] / (3 * sms * ctas * row_bytes))
                bytes_hbm += elems * b * (1 - reuse)
            else:
                bytes_hbm += elems * b
        elif role in REREAD_ROLES:
            reuse = min(1.0, g["l2_bytes"] / (2 * sms * ctas * row_bytes))
            bytes_hbm += elems * b * freq * (1 - reuse)
        else:
            bytes_hbm += elems * b
    t_hbm = bytes_hbm / g["hbm_bps"]
    t_issue, t_mufu, t_smem = issue / clk, mufu / clk, smem / clk
    # Per-row fixed cost (seconds): dependent DRAM round trips, barriers, block-wide and serial work.
    rest = a["rest"]
    block_instr = serial_instr = bars = 0.0
    for (kind, tname), c in rest.items():
        t = wl.get(tname, 1.0) if (tname and wl) else 1.0
        if kind == "bar":
            bars += c * t
        elif kind == "serial":
            serial_instr += c * t
        else:
            block_instr += c * t
    warps = block // 32
    row_clk = bars * COSTS["barrier_clk"] + block_instr * warps / SM["issue_per_clk"] \
        + serial_instr * COSTS["serial_clk_per_instr"]
    dram, l2 = DEP_LOADS[fam]
    t_row = dram * COSTS["dram_latency_s"] + l2 * COSTS["l2_latency_s"] + row_clk / clk
    rows_per_sm = math.ceil(n / (sms * ctas)) * ctas
    # The per-row work hides behind the next row's prefetch, as far as the SM's share of the HBM
    # bandwidth fills the prefetched bytes in that time.
    t_exposed = max(0.0, t_row - min(a["prefetch"], row_bytes) / (g["hbm_bps"] / sms))
    t_fixed = rows_per_sm * t_exposed / ctas
    t_stream = max(t_hbm, t_issue, t_mufu, t_smem)
    bound = ["hbm", "issue", "mufu", "smem"][[t_hbm, t_issue, t_mufu, t_smem].index(t_stream)]
    # Instructions per element of the passes every row makes (the statistics pass and/or the
    # backward's), histogram regions included at their workload weight.
    mains = {}
    for h in a["hot"]:
        if not h["tail"] and (h["role"] not in mains or h["vectors"] > mains[h["role"]]["vectors"]):
            mains[h["role"]] = h
    per_elem = sum((sum(h["base"].values()) + (wl["q_elem"] if wl else 1.0) * sum(h["dep"].values())) / h["elems"]
                   for r, h in mains.items() if r in ("pass1", "plain_read_rows", "backward_row"))
    return dict(ctas=ctas, ms=(t_stream + t_fixed) * 1e3, hbm_ms=t_hbm * 1e3, issue_ms=t_issue * 1e3,
                mufu_ms=t_mufu * 1e3, smem_ms=t_smem * 1e3, fixed_ms=t_fixed * 1e3, row_us=t_row * 1e6,
                bound=bound, passes=bytes_hbm / (elems * b), instr_per_elem=per_elem)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "target", "kernel-model"))
    ap.add_argument("--check", help="fail on a spill or a >10%% regression against this table")
    ap.add_argument("--update", help="write the predicted table to this file")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()

    info, sass = compile_all(args.out)
    wls = workloads(args.out)
    n, v = SHAPE["n"], SHAPE["v"]
    rows = []
    unknown = set()
    for name in sorted(info):
        k = info[name]
        a = analyse(name, sass[name])
        unknown.update(a["unknown"])
        dt = "f32" if name.endswith("f32") else "bf16"
        for gpu in GPUS:
            for kind in (("lm", "flat") if "_topp_" in name else ("lm",)):
                p = predict(name, k, a, gpu, wls[(kind, dt)] if "_topp_" in name else None, n, v)
                rows.append((name, kind if "_topp_" in name else "-", gpu, k, a, p))
    # Calibration anchor.
    anc = None
    for name, kind, gpu, k, a, p in rows:
        if name == ANCHOR["kernel"] and gpu == ANCHOR["gpu"]:
            anc = predict(name, k, a, gpu, None, ANCHOR["n"], ANCHOR["v"])
    print_table(rows, wls, anc, args.markdown)
    if unknown:
        print(f"kernel-model: loops outside the hot loops counted once (no LOOP_TRIPS entry): "
              f"{', '.join(sorted(unknown))}", file=sys.stderr)
    failed = False
    ratio = anc["ms"] / ANCHOR["measured_ms"]
    if abs(ratio - 1) > ANCHOR["tolerance"]:
        print(f"kernel-model: FAIL: calibration {ANCHOR['kernel']} predicted {anc['ms']:.3f} ms vs measured "
              f"{ANCHOR['measured_ms']} ms ({ratio:.2f}x, tolerance ±{ANCHOR['tolerance']:.0%})", file=sys.stderr)
        failed = True
    spills = [(nm, k["spill_st"], k["spill_ld"]) for nm, k in info.items() if k["spill_st"] or k["spill_ld"]]
    for nm, st, ld in spills:
        print(f"kernel-model: FAIL: {nm} spills ({st} B stores, {ld} B loads)", file=sys.stderr)
        failed = True
    table = {(r[0], r[1], r[2]): r[5]["ms"] for r in rows if r[5]["ms"] is not None}
    if args.update:
        with open(args.update, "w") as fh:
            fh.write("# kernel\trows\tgpu\tpredicted_ms (written by scripts/kernel-model.sh --update)\n")
            for (nm, kind, gpu), ms in sorted(table.items()):
                fh.write(f"{nm}\t{kind}\t{gpu}\t{ms:.4f}\n")
    if args.check:
        with open(args.check) as fh:
            for line in fh:
                if line.startswith("#") or not line.strip():
                    continue
                nm, kind, gpu, ms = line.split("\t")
                now = table.get((nm, kind, gpu))
                if now is None:
                    print(f"kernel-model: FAIL: {nm} ({kind}, {gpu}) is in {args.check} but not modelled",
                          file=sys.stderr)
                    failed = True
                elif now > float(ms) * 1.10:
                    print(f"kernel-model: FAIL: {nm} ({kind}, {gpu}) regressed: {now:.4f} ms predicted vs "
                          f"{float(ms):.4f} ms committed (> +10%)", file=sys.stderr)
                    failed = True
    h = {r[0]: r[5]["ms"] for r in rows if r[2] == "H100" and r[1] in ("lm", "-")}
    print(f"predicted H100 ms: stats_bf16_topp={h['token_stats_topp_bf16']:.3f} "
          f"stats_f32_topp={h['token_stats_topp_f32']:.3f} grpo_fused_bf16_topp={h['grpo_fused_topp_bf16']:.3f}")
    return 1 if failed else 0


def print_table(rows, wls, anc, md):
    """One line per kernel (and row kind for top-p kernels): the compiler's numbers, the H100's
    time components, and the predicted time on both GPUs. O(N) kernels are listed after."""
    hdr = ["kernel", "rows", "threads", "regs", "spill B", "smem B", "CTAs/SM", "instr/elem", "HBM passes",
           "hbm ms", "issue ms", "mufu ms", "smem ms", "row µs", "fixed ms", "bound", "H100 ms", "H200 ms"]
    by = {(r[0], r[1], r[2]): r for r in rows}
    out, small = [], []
    for name, kind, gpu, k, a, p in rows:
        if gpu != "H100":
            continue
        if p["ms"] is None:
            small.append(f"{name} ({k['block']} threads, {k['regs']} regs, {k['spill_st'] + k['spill_ld']} B spill)")
            continue
        h200 = by[(name, kind, "H200")][5]["ms"]
        out.append([name, kind, k["block"], k["regs"], k["spill_st"] + k["spill_ld"], k["smem"], p["ctas"],
                    f"{p['instr_per_elem']:.1f}", f"{p['passes']:.2f}", f"{p['hbm_ms']:.3f}",
                    f"{p['issue_ms']:.3f}", f"{p['mufu_ms']:.3f}", f"{p['smem_ms']:.3f}", f"{p['row_us']:.2f}",
                    f"{p['fixed_ms']:.3f}", p["bound"], f"{p['ms']:.3f}", f"{h200:.3f}"])
    if md:
        print("| " + " | ".join(hdr) + " |")
        print("|" + "|".join("---" for _ in hdr) + "|")
        for r in out:
            print("| " + " | ".join(str(c) for c in r) + " |")
    else:
        w = [max(len(str(r[i])) for r in out + [hdr]) for i in range(len(hdr))]
        for r in [hdr] + out:
            print("  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(r)))
    print()
    print("O(N) kernels (not modelled: a few µs each at N = 4096): " + ", ".join(small))
    print()
    print("workload (simulated rows of benches/common/rows.rs's distributions, top-p 0.95, T = 1):")
    for (kind, dt), wl in sorted(wls.items()):
        print(f"  {kind:4} {dt:4}: candidates {wl['cand_frac']:.1%} of the row (kept by the final max "
              f"{wl['kept_frac']:.1%}), warp runs a per-element region {wl['q_elem']:.1%} / per-vector "
              f"{wl['q_vec']:.1%}, bank-conflict degree {wl['conflict']:.2f}, touched buckets "
              f"{wl['touched_buckets']:.0f}, re-read passes {wl['reread_passes']:.1f}")
    print(f"calibration: {ANCHOR['kernel']} at [{ANCHOR['n']}, {ANCHOR['v']}] on the {ANCHOR['gpu']}: predicted "
          f"{anc['ms']:.3f} ms, measured {ANCHOR['measured_ms']} ms ({anc['ms'] / ANCHOR['measured_ms']:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
