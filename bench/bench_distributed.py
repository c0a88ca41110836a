"""Time and bytes per call of fused_mix(pool="global") against pool="local" on 2 CPU ranks (gloo).

Two processes are spawned on this machine (loopback, one torch thread each). For every
workload (per-rank batch B, K = B, float32, threshold 0.4) and pool, each rank runs

* forward:          ``fused_mix(feats, labels, intensities, pool=...)``
* forward+backward: the same with feats and intensities requiring grad, then
  ``(sum_m out.feats[m].sum() + out.labels.sum() + out.lam.sum()).backward()``

after warm-up, ``--reps`` times, each call started together (barrier) and timed on every
rank; a call's time is the slowest rank's, and the table gives the median (and IQR) over
calls. Bytes: every torch.distributed collective the call makes is counted (the bench wraps
``all_gather_single``, ``reduce_scatter_single`` and ``broadcast``); "sent per rank" is what a
ring algorithm sends from each rank: ``(W - 1) x`` the rank's block for all_gather and
reduce_scatter, the tensor for broadcast (from rank 0).

Usage: ``python bench/bench_distributed.py [--reps N] [--out DIR]`` writes
``bench_distributed_cpu.json`` and ``.md`` to ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import msmix_ext as mx  # noqa: E402
from bench_mix import THRESHOLD, WORKLOADS as MIX_WORKLOADS  # noqa: E402  (this folder)

WORLD = 2
# bench_mix.py's per-sample shapes; mosei is left out to keep the run short.
WORKLOADS = {name: MIX_WORKLOADS[name] for name in ("pooled", "almt", "mosi")}
BATCHES = (16, 64)

_calls: list[tuple[str, int]] = []  # (collective, bytes of the rank's block) of the call being measured


def _count(name: str, fn, block_bytes):
    def wrapped(*args, **kwargs):
        _calls.append((name, block_bytes(*args, **kwargs)))
        return fn(*args, **kwargs)
    return wrapped


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _install_counters() -> None:
    dist.all_gather_single = _count("all_gather", dist.all_gather_single, lambda out, inp, **kw: _nbytes(inp))
    dist.reduce_scatter_single = _count("reduce_scatter", dist.reduce_scatter_single,
                                        lambda out, inp, **kw: _nbytes(out))
    dist.broadcast = _count("broadcast", dist.broadcast, lambda t, *a, **kw: _nbytes(t))


def _inputs(shapes, batch, rank, grad):
    g = torch.Generator().manual_seed(1000 * rank + batch)
    feats = [torch.randn(batch, *s, generator=g).requires_grad_(grad) for s in shapes]
    labels = torch.empty(batch).uniform_(-3, 3, generator=g)
    intensities = torch.empty(len(shapes), batch).uniform_(-3, 3, generator=g).requires_grad_(grad)
    return feats, labels, intensities


def _one_call(inputs, pool, backward):
    feats, labels, intensities = inputs
    out = mx.fused_mix(feats, labels, intensities, threshold=THRESHOLD, pool=pool)
    if backward:
        (sum(f.sum() for f in out.feats) + out.labels.sum() + out.lam.sum()).backward()


def _worker(rank: int, init: str, reps: int, result_file: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    _install_counters()
    rows = []
    for name, shapes in WORKLOADS.items():
        for batch in BATCHES:
            for backward in (False, True):
                for pool in ("local", "global"):
                    inputs = _inputs(shapes, batch, rank, backward)
                    for _ in range(3):
                        _one_call(inputs, pool, backward)
                    times = []
                    for _ in range(reps):
                        _calls.clear()
                        dist.barrier()
                        t0 = time.perf_counter()
                        _one_call(inputs, pool, backward)
                        times.append(time.perf_counter() - t0)
                    every = [None] * WORLD
                    dist.all_gather_object(every, times)
                    slowest = [max(ts) for ts in zip(*every)]
                    q = statistics.quantiles(slowest, n=4)
                    sent = sum((WORLD - 1) * b if c != "broadcast" else b for c, b in _calls)
                    rows.append({"workload": name, "shapes": [list(s) for s in shapes], "B": batch, "K": batch,
                                 "mode": "forward+backward" if backward else "forward", "pool": pool,
                                 "median_s": statistics.median(slowest), "iqr_s": q[2] - q[0],
                                 "collectives": [{"op": c, "block_bytes": b} for c, b in _calls],
                                 "sent_bytes_per_rank": sent,
                                 "feature_bytes_per_rank": sum(batch * _nbytes(torch.empty(s)) for s in shapes)})
    if rank == 0:
        with open(result_file, "w") as f:
            json.dump(rows, f)
    dist.destroy_process_group()


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def _fmt_bytes(n: int) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + (" (uncommitted changes)" if dirty else " (clean tracked files)")
    except OSError:
        return "unknown"


def _markdown(rows, meta) -> str:
    lines = ["# fused_mix pool=\"global\" vs \"local\": 2 CPU ranks (gloo)", "",
             f"- CPU: {meta['processor']} ({meta['cpu_count']} cores), 1 torch thread per rank, torch {meta['torch']}",
             f"- code: git {meta['git']}",
             f"- load average at start {meta['load_start']}, at end {meta['load_end']}: the machine is shared, "
             "other work ran alongside.",
             f"- K = B per rank, threshold {THRESHOLD}, float32. Time: median (± IQR) over {meta['reps']} calls of the "
             "slowest rank's time, every call started together after a barrier.",
             "- bytes: the collectives each call makes, as bytes sent per rank by a ring algorithm "
             "((W - 1) x the rank's block for all_gather / reduce_scatter); `local` makes none.",
             "", "| workload | B per rank | mode | local | global | global/local | bytes sent per rank (global) "
             "| of which forward | rank's feature bytes |", "|---|---|---|---|---|---|---|---|---|"]
    by_key = {(r["workload"], r["B"], r["mode"], r["pool"]): r for r in rows}
    fwd_bytes = {(r["workload"], r["B"]): r["sent_bytes_per_rank"] for r in rows
                 if r["pool"] == "global" and r["mode"] == "forward"}
    for (name, batch, mode, pool), r in by_key.items():
        if pool != "global":
            continue
        loc = by_key[(name, batch, mode, "local")]
        lines.append(f"| {name} | {batch} | {mode} | {_fmt_time(loc['median_s'])} ± {_fmt_time(loc['iqr_s'])} | "
                     f"{_fmt_time(r['median_s'])} ± {_fmt_time(r['iqr_s'])} | {r['median_s'] / loc['median_s']:.2f}x | "
                     f"{_fmt_bytes(r['sent_bytes_per_rank'])} | {_fmt_bytes(fwd_bytes[(name, batch)])} | "
                     f"{_fmt_bytes(r['feature_bytes_per_rank'])} |")
    example = by_key[("almt", BATCHES[-1], "forward+backward", "global")]
    lines += ["", f"Collectives of one global forward+backward call (almt, B = {BATCHES[-1]}): "
              + ", ".join(f"{c['op']} {_fmt_bytes(c['block_bytes'])}" for c in example["collectives"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "rows.json")
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), args.reps, result_file), nprocs=WORLD, join=True)
        with open(result_file) as f:
            rows = json.load(f)
    meta = {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": str(torch.__version__), "git": _git(), "reps": args.reps, "world_size": WORLD,
            "load_start": load_start, "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        meta["processor"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_distributed_cpu.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    text = _markdown(rows, meta)
    with open(os.path.join(args.out, "bench_distributed_cpu.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
