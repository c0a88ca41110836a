"""Benchmark of msmix_ext.fused_mix against the plain-PyTorch reference pipeline.

Compared implementations (all on the same inputs, timed interleaved in one run):

* ``fused``    - ``msmix_ext.fused_mix``: one ``msmix::fused_mix`` operator call forward
                 (SASS, ratios, mixing) and one ``msmix::fused_mix_backward`` backward.
* ``eager``    - ``msmix_ext.reference.fused_mix`` in eager mode. It draws the pairs
                 with ``torch.randperm`` over the valid pairs (``torch.nonzero``) and
                 ``lam0`` from ``torch.distributions.Beta``.
* ``compiled`` - ``torch.compile(msmix_ext.reference.fused_mix)`` with default options.
                 By default ``torch._dynamo.config.capture_dynamic_output_shape_ops = True``
                 so ``torch.nonzero`` is traced; the remaining data-dependent branches
                 still break the graph (``--compile-graph-breaks`` leaves the config at
                 its default and lets ``nonzero`` break the graph too).
* ``floor``    - the unavoidable work alone: one ``z @ z.T`` GEMM of the pre-normalised,
                 concatenated ``[B, sum D]`` features plus one copy of the output bytes
                 (``torch.cat`` of each modality into a preallocated ``[B + K]`` buffer).
                 Forward+backward adds one pass over the gradient bytes
                 (``torch.add(g[:B], g[B:], out=grad)``: read ``[B + K]``, write ``[B]``).

Forward: inputs do not require grad. Forward+backward: features and intensities
``[M, B]`` require grad, ``loss = sum_m combined_m.sum() + combined_labels.sum()``,
``loss.backward()``. The ``harness`` task times that loss and its backward over
``[B + K]`` rows made by ``torch.cat`` instead of mixing (every implementation pays
it); the report also gives forward+backward ratios net of it.

* ``compare``  - with ``--compare-to module:function``, any importable
                 ``fn(feats, labels, intensities)``, timed side by side with the others.
                 Forward+backward differentiates the sum of its output's ``feats`` and
                 ``labels`` when it has them (a MixOutput), else of every floating tensor
                 in the output that requires grad.

Usage: ``python bench/bench_mix.py [--device cpu|cuda] [--quick] [--out DIR] [--profile]
[--compare-to module:function]``.
Writes ``bench_<device>.json``, ``bench_<device>.md`` and ``bench_<device>_sweep.png``
(plus ``profile_<device>.txt`` with ``--profile``) to ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.utils.benchmark as tbench  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import msmix_ext as mx  # noqa: E402
from msmix_ext import reference  # noqa: E402

THRESHOLD = 0.4
ALPHA = 2.0

# Per-sample shapes of each modality.
WORKLOADS = {
    "pooled": [(128,), (128,), (128,)],
    "almt": [(8, 128), (8, 128), (8, 128)],
    "mosi": [(50, 768), (375, 5), (500, 20)],
    "mosei": [(50, 768), (500, 74), (500, 35)],
}
IMPLS = ("fused", "eager", "compiled", "floor")
IMPL_LABELS = {
    "fused": "fused (msmix_ext.fused_mix)",
    "eager": "eager reference",
    "compiled": "compiled reference",
    "floor": "floor (GEMM + output copy)",
}
MODES = ("fwd", "fwdbwd")

# CUDA kernel launches of one fused_mix call on the local pool, counted by reading
# the code path (csrc/fused.cpp and the .cu files; float32 features, labels and
# intensities, M <= 8 modalities). Forward at B <= 256: one row normalisation for
# all modalities, the Gram kernel, one block that draws the pairs and computes the
# ratios and picked labels (csrc/cuda/block_draw.h), 1 mix kernel. Backward:
# mix_backward (inverse-index block + gather + ratio gradients), 1
# intensity-gradient kernel, and only for the outputs the loss reads: 2 in-place
# adds of the ratio gradients (lam, lam_label), 1 label-gradient kernel.
CUDA_LAUNCHES = {
    "forward": "4 at B <= 256 (row normalisation, Gram, draw with ratios and picked labels, mix); above, "
               "sass_select's grid path (row normalisation, Gram, reduction, pair keys, fallback keys, "
               "selection, 3 at::sort, each a cub radix sort of about a dozen launches over 65536 keys) "
               "+ 1 ratio kernel + 1 mix kernel",
    "backward": "4 at K <= 2048 when the loss reads only the combined tensors: the inverse-index block, the "
                "source-gradient gather, the ratio gradients, the intensity gradient (above K = 2048 the index "
                "takes an entries kernel and a sort instead); +1 copy per output gradient that is not "
                "contiguous (the expanded ones of .sum(), as in this bench's loss: 4), +2 add_ when the loss "
                "also reads lam or lam_label, +1 label-gradient kernel when it reads labels1 or labels2",
}
MODE_LABELS = {"fwd": "forward", "fwdbwd": "forward+backward"}


def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


# --------------------------------------------------------------------------- machine info

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_flags() -> dict:
    """The compile flags of msmix_ext._C, read from the setuptools/ninja build folder if present."""
    flags = {"setup_py": "-O3 -Wall -Wno-unknown-pragmas (release; MSMIX_DEBUG=1 gives -O0 -g)"}
    build = os.path.join(ROOT, "build")
    if os.path.isdir(build):
        for entry in sorted(os.listdir(build)):
            ninja = os.path.join(build, entry, "build.ninja")
            if entry.startswith("temp") and os.path.exists(ninja):
                with open(ninja) as f:
                    for line in f:
                        m = re.match(r"^(cflags|post_cflags|cuda_cflags|cuda_post_cflags) = (.*)$", line)
                        if m:
                            kept = [t for t in m.group(2).split() if not t.startswith("-I")]
                            flags[f"ninja_{m.group(1)}"] = " ".join(kept)
    return flags


def extension_info() -> dict:
    """Which msmix_ext._C was loaded (file, mtime, hash) and the git state of the checkout."""
    import glob
    import hashlib
    import subprocess

    info = {}
    so = getattr(getattr(mx, "_C", None), "__file__", None) or next(
        iter(glob.glob(os.path.join(ROOT, "msmix_ext", "_C*.so"))), None)
    if so and os.path.exists(so):
        with open(so, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        info["extension_file"] = os.path.relpath(so, ROOT)
        info["extension_mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(so)).isoformat(timespec="seconds")
        info["extension_sha256_16"] = digest
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["git_head"] = head.stdout.strip()
            info["git_modified_tracked_files"] = [line[3:] for line in dirty.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def machine_info(device: str) -> dict:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "msmix_ext_version": mx.__version__,
        "msmix_ext_CUDA_COMPILED": bool(mx.CUDA_COMPILED),
        "msmix_ext_HAS_EXTENSION": bool(mx.HAS_EXTENSION),
        "build_flags": build_flags(),
        **extension_info(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- inputs

def make_inputs(workload: str, batch: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn((batch, *shape), generator=gen).to(device) for shape in WORKLOADS[workload]]
    labels = (torch.rand(batch, generator=gen) * 6 - 3).to(device)
    intens = (3 * torch.tanh(torch.randn(len(feats), batch, generator=gen))).to(device)
    return feats, labels, intens


def shapes_str(workload: str) -> str:
    return ", ".join("[B, " + ", ".join(map(str, s)) + "]" for s in WORKLOADS[workload])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- implementations

def fused_call(feats, labels, intens):
    return mx.fused_mix(feats, labels, intens, threshold=THRESHOLD, alpha=ALPHA)


def eager_call(feats, labels, intens):
    return reference.fused_mix(feats, labels, intens, threshold=THRESHOLD, alpha=ALPHA)


def make_forward(fn, feats, labels, intens):
    def run():
        return fn(feats, labels, intens)
    return run


def output_loss(out) -> torch.Tensor:
    """sum of the combined feats and labels of a MixOutput-like result, else of every
    floating tensor in the (nested) output that requires grad."""
    if hasattr(out, "feats") and hasattr(out, "labels"):
        parts = [out.labels, *out.feats]
    else:
        parts, stack = [], [out]
        while stack:
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                if item.is_floating_point() and item.requires_grad:
                    parts.append(item)
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
    loss = parts[0].sum()
    for t in parts[1:]:
        loss = loss + t.sum()
    return loss


def make_fwdbwd(fn, feats, labels, intens):
    leaves = [f.detach().clone().requires_grad_() for f in feats]
    inten_leaf = intens.detach().clone().requires_grad_()

    def run():
        for t in leaves:
            t.grad = None
        inten_leaf.grad = None
        output_loss(fn(leaves, labels, inten_leaf)).backward()
    return run


def load_compare(spec: str):
    """``module:function`` -> the function (``fn(feats, labels, intensities)``)."""
    import importlib
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        sys.exit(f"bench_mix.py: --compare-to must be module:function, got {spec!r}")
    fn = importlib.import_module(module_name)
    for part in attr.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        sys.exit(f"bench_mix.py: --compare-to {spec} is not callable")
    return fn


def make_fwd_grad(fn, feats, labels, intens):
    """Forward only, with features and intensities requiring grad (the graph is built)."""
    leaves = [f.detach().clone().requires_grad_() for f in feats]
    inten_leaf = intens.detach().clone().requires_grad_()
    return lambda: fn(leaves, labels, inten_leaf)


def identity_call(feats, labels, intens):
    """No mixing: the fwd+bwd harness's own cost (loss over [B + K] rows and its backward)."""
    from msmix_ext import MixOutput
    feats = [torch.cat([f, f]) for f in feats]
    return MixOutput(feats, torch.cat([labels, labels]) * intens.sum(), None, None, None, None, None, None,
                     None)


class Floor:
    """The unavoidable work: one GEMM of the normalised concatenated rows plus writing
    the output bytes once (and, for the backward, one pass over the gradient bytes)."""

    def __init__(self, feats, labels, num_mix: int):
        batch = feats[0].shape[0]
        assert num_mix == batch, "the floor's copies assume K = B"
        self.z = torch.cat([F.normalize(f.reshape(batch, -1).float(), dim=1) for f in feats], dim=1)
        self.s = self.z.new_empty((batch, batch))
        self.feats, self.labels, self.batch = feats, labels, batch
        self.outs = [f.new_empty((batch + num_mix, *f.shape[1:])) for f in feats]
        self.label_out = labels.new_empty((batch + num_mix,))
        self.grads = [torch.randn_like(o) for o in self.outs]
        self.grad_in = [torch.empty_like(f) for f in feats]

    def fwd(self):
        torch.mm(self.z, self.z.T, out=self.s)
        for f, o in zip(self.feats, self.outs):
            torch.cat([f, f], out=o)
        torch.cat([self.labels, self.labels], out=self.label_out)

    def fwdbwd(self):
        self.fwd()
        b = self.batch
        for g, gi in zip(self.grads, self.grad_in):
            torch.add(g[:b], g[b:], out=gi)

    def memory_bytes(self) -> int:
        """Bytes that must exist at the peak of forward+backward: outputs, S, input grads."""
        tensors = [self.s, self.label_out, *self.outs, *self.grad_in]
        return sum(t.numel() * t.element_size() for t in tensors)


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters
    return {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "calls_captured": int(counters["stats"].get("calls_captured", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "graph_break_reasons": sorted({str(k).splitlines()[0][:160] for k in counters["graph_break"]}),
        "frames_ok": int(counters["frames"].get("ok", 0)),
        "frames_total": int(counters["frames"].get("total", 0)),
    }


# --------------------------------------------------------------------------- timing

def timer(fn, num_threads: int) -> tbench.Timer:
    return tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)


def summarize(times: list[float], n_runs: int, rounds: int) -> dict:
    arr = np.asarray(times)
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(arr.min()), "n_blocks": int(arr.size), "n_runs": int(n_runs), "rounds": rounds}


def run_interleaved(tasks: dict, rounds: int, min_run_time: float, num_threads: int, pbar=None,
                    warmup: int = 2) -> dict:
    """Times every task with Timer.blocked_autorange, interleaved: rounds of A, B, C, ...

    Returns per task the pooled block times' median / IQR, plus the per-round medians
    (so ratios can also be taken round by round).
    """
    for fn in tasks.values():
        for _ in range(warmup):
            fn()
    pooled = {name: [] for name in tasks}
    n_runs = {name: 0 for name in tasks}
    per_round = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            m = timer(fn, num_threads).blocked_autorange(min_run_time=min_run_time)
            pooled[name].extend(m.times)
            n_runs[name] += len(m.times) * m.number_per_run
            per_round[name].append(m.median)
            if pbar is not None:
                pbar.update(1)
    out = {}
    for name in tasks:
        out[name] = summarize(pooled[name], n_runs[name], rounds)
        out[name]["round_medians_s"] = per_round[name]
    return out


def ratio_stats(num: dict, den: dict) -> dict:
    """num / den, from the pooled medians and round by round."""
    per_round = [a / b for a, b in zip(num["round_medians_s"], den["round_medians_s"])]
    return {"ratio": num["median_s"] / den["median_s"], "round_median": float(np.median(per_round)),
            "round_min": float(min(per_round)), "round_max": float(max(per_round))}


def net_ratio_stats(num: dict, den: dict, harness: dict) -> dict:
    """(num - harness) / (den - harness): the ratio of what each adds to the harness."""
    def net(a, b, h):
        return (a - h) / (b - h)
    per_round = [net(a, b, h) for a, b, h in zip(num["round_medians_s"], den["round_medians_s"],
                                                 harness["round_medians_s"])]
    return {"ratio": net(num["median_s"], den["median_s"], harness["median_s"]),
            "round_median": float(np.median(per_round)), "round_min": float(min(per_round)),
            "round_max": float(max(per_round))}


# --------------------------------------------------------------------------- memory

def measured_launches(feats, labels, intens) -> dict:
    """GPU kernels of one fused_mix call, counted by torch.profiler: the forward, and the
    backward pass of the bench's loss (which adds the fill of the loss's own seed gradient).
    A profiler failure is recorded, not raised, so that the timings still come back."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(run) -> int:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    leaves = [f.detach().clone().requires_grad_() for f in feats]
    inten_leaf = intens.detach().clone().requires_grad_()
    try:
        fused_call(feats, labels, intens)  # warm-up
        forward = kernels(lambda: fused_call(feats, labels, intens))
        loss = output_loss(fused_call(leaves, labels, inten_leaf))
        loss.backward(retain_graph=True)  # warm-up
        for t in [*leaves, inten_leaf]:
            t.grad = None  # so that the counted pass assigns the gradients, not adds them
        return {"forward": forward, "backward": kernels(loss.backward)}
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        return {"error": f"{type(exc).__name__}: {exc}"}


def peak_memory_bytes(fn, device: str) -> int:
    """Peak bytes allocated during one call, above what was allocated before it.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats.
    CPU: torch.profiler(profile_memory=True): the allocator's allocation and free
    events of the call, in time order, summed; the peak of that running sum.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return int(peak)


# --------------------------------------------------------------------------- one configuration

def config_rounds(workload: str, batch: int, rounds: int) -> int:
    """Fewer interleaved rounds where one call takes a large part of a second or more."""
    if batch >= 2048:
        return min(rounds, 2)
    if workload == "mosei" or batch >= 1024:
        return max(2, rounds - 2)
    return rounds


def bench_config(workload: str, batch: int, args, pbar, with_sass: bool) -> dict:
    device = args.device
    feats, labels, intens = make_inputs(workload, batch, device)
    num_mix = batch
    floor = Floor(feats, labels, num_mix)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    compiled = torch.compile(reference.fused_mix)
    skip_compile = args.no_compile or (args.quick and batch != 64)

    def compiled_call(f, y, i):
        return compiled(f, y, i, threshold=THRESHOLD, alpha=ALPHA)

    calls = {"fused": fused_call, "eager": eager_call, "compiled": compiled_call}
    impls = IMPLS
    if args.compare_to:
        calls["compare"] = load_compare(args.compare_to)
        impls = IMPLS + ("compare",)
    tasks = {}
    for mode in MODES:
        for impl in impls:
            if impl == "compiled" and skip_compile:
                continue
            if impl == "floor":
                tasks[(mode, impl)] = floor.fwd if mode == "fwd" else floor.fwdbwd
            elif mode == "fwd":
                tasks[(mode, impl)] = make_forward(calls[impl], feats, labels, intens)
            else:
                tasks[(mode, impl)] = make_fwdbwd(calls[impl], feats, labels, intens)
    # The benchmark's own loss over [B + K] rows and its backward, without any mixing.
    tasks[("fwdbwd", "harness")] = make_fwdbwd(identity_call, feats, labels, intens)
    result = {"workload": workload, "B": batch, "K": num_mix, "shapes": shapes_str(workload),
              "loadavg_before": list(os.getloadavg())}
    big = batch >= 2048 or workload == "mosei"
    if with_sass:
        idx1, idx2 = mx.sass_select(feats, num_mix, THRESHOLD, seed=0)
        tasks[("fwd", "sass_select")] = lambda: mx.sass_select(feats, num_mix, THRESHOLD, seed=0)
        lam = torch.rand(len(feats), num_mix, device=device)
        lam_label = lam.mean(0)
        tasks[("fwd", "mix_only")] = lambda: mx.mix(feats, labels, idx1, idx2, lam, lam_label)
        # SASS's own GEMM: z @ z.T of the normalised concatenated rows (the floor's z).
        tasks[("fwd", "gemm")] = lambda: torch.mm(floor.z, floor.z.T, out=floor.s)

    # Compile (and warm up) the reference for both modes before anything is timed.
    if not skip_compile:
        t0 = time.perf_counter()
        for mode in MODES:
            for _ in range(2 if big else 4):
                tasks[(mode, "compiled")]()
        sync(device)
        result["compile"] = {"warmup_wall_s": time.perf_counter() - t0, **dynamo_counters()}
        before = result["compile"]["unique_graphs"]

    rounds = config_rounds(workload, batch, args.rounds)
    pbar.set_description(f"{workload} B={batch}")
    timings = run_interleaved(tasks, rounds, args.min_run_time, torch.get_num_threads(), pbar,
                              warmup=1 if big else 2)
    if not skip_compile:
        after = dynamo_counters()["unique_graphs"]
        result["compile"]["graphs_compiled_while_timing"] = after - before
    result["timings"] = {f"{mode}/{impl}": t for (mode, impl), t in timings.items()}

    ratios = {}
    for mode in MODES:
        fused = timings[(mode, "fused")]
        floor_t = timings[(mode, "floor")]
        for impl in ("eager", "compiled", "compare"):
            if (mode, impl) in timings:
                ratios[f"{mode}/{impl}_over_fused"] = ratio_stats(timings[(mode, impl)], fused)
        for impl in IMPLS:
            if (mode, impl) in timings and impl != "floor":
                ratios[f"{mode}/{impl}_over_floor"] = ratio_stats(timings[(mode, impl)], floor_t)
    for impl in ("eager", "compiled", "compare"):
        if ("fwdbwd", impl) in timings:
            ratios[f"fwdbwd/{impl}_over_fused_net_of_harness"] = net_ratio_stats(
                timings[("fwdbwd", impl)], timings[("fwdbwd", "fused")], timings[("fwdbwd", "harness")])
    if with_sass:
        ratios["fwd/sass_select_share_of_fused"] = ratio_stats(timings[("fwd", "sass_select")],
                                                               timings[("fwd", "fused")])
        ratios["fwd/sass_select_over_gemm"] = ratio_stats(timings[("fwd", "sass_select")],
                                                          timings[("fwd", "gemm")])
    result["ratios"] = ratios

    # Peak memory of forward+backward, one call each (after the warm-up above).
    mem = {}
    for impl in IMPLS:
        if impl == "floor":
            mem["floor"] = floor.memory_bytes()
        elif ("fwdbwd", impl) in tasks:
            mem[impl] = peak_memory_bytes(tasks[("fwdbwd", impl)], device)
    result["peak_memory_fwdbwd_bytes"] = mem
    if device == "cuda":
        result["cuda_launches_measured"] = measured_launches(feats, labels, intens)
    result["loadavg_after"] = list(os.getloadavg())
    pbar.update(1)
    return result


# --------------------------------------------------------------------------- end to end

class SmallModel(nn.Module):
    """Per-modality mean-pool + Linear, concat, MLP head."""

    def __init__(self, dims, hidden: int = 64):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, hidden) for d in dims)
        self.head = nn.Sequential(nn.Linear(hidden * len(dims), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, feats):
        pooled = [f.mean(dim=1) if f.dim() == 3 else f for f in feats]
        return self.head(torch.cat([p(x) for p, x in zip(self.proj, pooled)], dim=-1)).squeeze(-1)


def bench_end_to_end(args, pbar) -> dict:
    device, workload, batch = args.device, "almt", 64
    feats, labels, _ = make_inputs(workload, batch, device, seed=1)
    dims = [s[-1] for s in WORKLOADS[workload]]
    torch.manual_seed(0)
    model = SmallModel(dims).to(device)
    msmix = mx.MSMix(dims, threshold=THRESHOLD, alpha=ALPHA).to(device).train()
    opt = torch.optim.Adam(list(model.parameters()) + list(msmix.parameters()), lr=1e-4)

    def finish(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_fused():
        out, sal = msmix(feats, labels)
        finish(mx.msmix_objective(model(out.feats), out, labels, sal))

    def step_reference():
        intens = msmix.intensities(feats)
        sal = mx.sentiment_alignment_loss(intens, labels, msmix.max_intensity, msmix.sal_scale)
        out = reference.fused_mix(feats, labels, intens, threshold=THRESHOLD, alpha=ALPHA)
        finish(mx.msmix_objective(model(out.feats), out, labels, sal))

    def step_clean():
        finish(F.l1_loss(model(feats), labels))

    def step_sig_only():
        intens = msmix.intensities(feats)
        sal = mx.sentiment_alignment_loss(intens, labels, msmix.max_intensity, msmix.sal_scale)
        finish(F.l1_loss(model(feats), labels) + 0.5 * sal)

    doubled = [torch.cat([f, f]) for f in feats]
    labels2 = torch.cat([labels, labels])

    def step_clean_doubled():
        finish(F.l1_loss(model(doubled), labels2))

    tasks = {"fused": step_fused, "reference": step_reference, "none": step_clean,
             "none_2B": step_clean_doubled, "sig_only": step_sig_only}
    pbar.set_description("end-to-end almt B=64")
    timings = run_interleaved(tasks, args.rounds, args.min_run_time, torch.get_num_threads(), pbar,
                              warmup=3)
    base = timings["none"]["median_s"]
    shares = {}
    for name in ("fused", "reference"):
        t = timings[name]["median_s"]
        shares[name] = {"aug_share_of_step": (t - base) / t,
                        "aug_share_beyond_2B_backbone": (t - timings["none_2B"]["median_s"]) / t,
                        "sig_sal_share_of_step": (timings["sig_only"]["median_s"] - base) / t,
                        "mixing_share_of_step": (t - timings["sig_only"]["median_s"]
                                                 - (timings["none_2B"]["median_s"] - base)) / t,
                        "step_over_none": t / base}
    return {"workload": workload, "B": batch, "K": batch, "shapes": shapes_str(workload),
            "model": "per-modality mean-pool + Linear(128->64), concat, Linear(192->64)-ReLU-Linear(64->1); "
                     "Adam; MSMix SIG predictors (4 heads) in both augmented variants",
            "timings": timings, "shares": shares}


# --------------------------------------------------------------------------- profile

def profile_fused(args, workloads, path: str) -> None:
    """Where the fused call's time goes: stage timings and a torch.profiler table."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from msmix_ext.ratios import mix_ratios, stack_intensities

    lines = [f"# Profile of msmix_ext.fused_mix on {args.device}, threads={torch.get_num_threads()}", "",
             "Stages: the public building blocks that fused_mix's one operator call composes in C++:",
             "seed_tensor + stack_intensities + msmix.sass_select (S from Gram products + pair draw + lam0;",
             "msmix.similarity is its first part alone) + mix_ratios (here the public Python building block;",
             "fused_mix runs a C++ ratio kernel instead) + msmix.mix + labels[idx].",
             "'fused fwd, inputs requiring grad' also records fused_mix's C++ autograd node and saves its",
             "inputs. 'mix_backward' is the C++ backward kernel called directly; 'loss + backward, no mixing'",
             "is the fwd+bwd harness alone (cat [B] -> [B + K], sum, backward), so fused fwd+bwd - fused fwd",
             "(grad) - that = the autograd backward of fused_mix.",
             ""]
    threads = torch.get_num_threads()
    for workload in workloads:
        batch = 64
        feats, labels, intens = make_inputs(workload, batch, args.device)
        seed = mx.seed_tensor(0)
        idx1, idx2, lam0 = torch.ops.msmix.sass_select(feats, batch, THRESHOLD, seed, ALPHA)
        lam, lam_label = mix_ratios(intens, idx1, idx2, lam0)
        grads = [torch.ones((2 * batch, *f.shape[1:])) for f in feats]
        grad_labels = torch.ones(2 * batch)
        stages = {
            "fused_mix (whole forward)": lambda: fused_call(feats, labels, intens),
            "seed_tensor": lambda: mx.seed_tensor(None, None, feats[0].device),
            "stack_intensities": lambda: stack_intensities(intens, len(feats), batch),
            "torch.ops.msmix.sass_select": lambda: torch.ops.msmix.sass_select(feats, batch, THRESHOLD, seed,
                                                                               ALPHA),
            "torch.ops.msmix.similarity": lambda: torch.ops.msmix.similarity(feats),
            "mix_ratios (torch ops)": lambda: mix_ratios(intens, idx1, idx2, lam0),
            "torch.ops.msmix.mix": lambda: torch.ops.msmix.mix(feats, labels, idx1, idx2, lam, lam_label),
            "labels[idx1], labels[idx2]": lambda: (labels[idx1], labels[idx2]),
            "floor fwd (GEMM + copy)": Floor(feats, labels, batch).fwd,
            "fused fwd, inputs requiring grad": make_fwd_grad(fused_call, feats, labels, intens),
            "torch.ops.msmix.mix_backward": lambda: torch.ops.msmix.mix_backward(
                grads, grad_labels, feats, labels, idx1, idx2, lam, lam_label, [True, False, True, True]),
            "loss + backward, no mixing": make_fwdbwd(identity_call, feats, labels, intens),
            "fused fwd+bwd (whole)": make_fwdbwd(fused_call, feats, labels, intens),
            "eager ref fwd+bwd (whole)": make_fwdbwd(eager_call, feats, labels, intens),
        }
        lines.append(f"## {workload} B=64 ({shapes_str(workload)})")
        lines.append("")
        lines.append("Stage timings (Timer.blocked_autorange, interleaved, 3 rounds, median):")
        lines.append("")
        timings = run_interleaved(stages, 3, args.min_run_time, threads)
        for name, t in timings.items():
            lines.append(f"  {name:32s} {t['median_s'] * 1e6:10.1f} us  (IQR {t['iqr_s'] * 1e6:.1f} us)")
        lines.append("")

        run = make_fwdbwd(fused_call, feats, labels, intens)
        for _ in range(5):  # warm-up
            run()
        n_iter = 50
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n_iter):
                with record_function("fused_fwdbwd_iteration"):
                    run()
        lines.append(f"torch.profiler, {n_iter} iterations of fused forward+backward "
                     "(loss = sum of combined outputs), sorted by self CPU time:")
        lines.append("")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40,
                                               max_name_column_width=48))
        lines.append("")
        log(f"profiled {workload}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"wrote {path}")


# --------------------------------------------------------------------------- reports

def fmt_t(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def fmt_cell(t: dict | None) -> str:
    if t is None:
        return "-"
    return f"{fmt_t(t['median_s'])} ± {fmt_t(t['iqr_s'])}"


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def markdown(report: dict) -> str:
    info, cfg = report["machine"], report["config"]
    out = [f"# MS-Mix benchmark ({info['device']})", ""]
    out.append(f"- CPU: {info['cpu_model']} ({info['cpu_count']} cores), torch threads: {info['torch_threads']}, "
               f"GPU: {info['gpu'] or 'none'}, torch {info['torch_version']}, "
               f"msmix_ext.CUDA_COMPILED={info['msmix_ext_CUDA_COMPILED']}")
    if "git_head" in info:
        mod = info.get("git_modified_tracked_files") or []
        out.append(f"- code: git {info['git_head'][:10]}" + (f" with uncommitted changes to {', '.join(mod)}" if mod else
                   " (clean tracked files)") + f"; msmix_ext._C built {info.get('extension_mtime', '?')}, "
                   f"sha256 {info.get('extension_sha256_16', '?')}; compile flags: "
                   f"{info['build_flags'].get('ninja_post_cflags', info['build_flags']['setup_py'])}")
    if "loadavg_at_start" in info:
        out.append(f"- load average (1/5/15 min) at start {' '.join(info['loadavg_at_start'])}, at end "
                   f"{' '.join(info.get('loadavg_at_end', ['?']))}: the machine is shared, other work ran alongside.")
    out.append(f"- K = B, threshold {THRESHOLD}, alpha {ALPHA}, float32. Times: medians (± IQR) of "
               f"torch.utils.benchmark `blocked_autorange` blocks pooled over {cfg['rounds']} interleaved rounds "
               "(fused, eager, compiled, floor in turn; fewer rounds for mosei and B >= 1024, see the JSON); "
               "ratios are taken within this run.")
    out.append("- eager reference = `msmix_ext.reference.fused_mix` (pairs by `torch.randperm` over the "
               "`torch.nonzero` valid pairs, `lam0` from `torch.distributions.Beta`); compiled reference = "
               f"`torch.compile` of it, default options, {cfg['compile_setting']}.")
    out.append("- floor = one `z @ z.T` GEMM of the pre-normalised concatenated features + `torch.cat` of each "
               "modality into a preallocated `[B+K]` buffer; fwd+bwd adds `torch.add(g[:B], g[B:], out=grad)`.")
    out.append("- fwd+bwd: features and intensities `[M, B]` require grad; "
               "loss = sum of every combined tensor (features and labels); `loss.backward()`.")
    out.append("")
    for section, configs in (("B = 64, all workloads", report["workloads"]), (
            "Sweep over B (almt: 3 x [B, 8, 128])", report["sweep"])):
        out.append(f"## {section}")
        out.append("")
        out.append("| workload | B | mode | fused | eager ref | compiled ref | floor | eager/fused | "
                   "compiled/fused | fused/floor | eager/floor | compiled/floor |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in configs:
            for mode in MODES:
                t = c["timings"]
                r = c["ratios"]

                def rat(key):
                    return f"{r[key]['ratio']:.2f}x" if key in r else "-"
                out.append(f"| {c['workload']} | {c['B']} | {MODE_LABELS[mode]} | "
                           + " | ".join(fmt_cell(t.get(f"{mode}/{impl}")) for impl in IMPLS) + " | "
                           + " | ".join(rat(f"{mode}/{k}") for k in (
                               "eager_over_fused", "compiled_over_fused", "fused_over_floor",
                               "eager_over_floor", "compiled_over_floor")) + " |")
        out.append("")
        if section.startswith("Sweep"):
            out.append("SASS alone in the sweep (`msmix_ext.sass_select`, fixed seed; `mix_only` = "
                       "`msmix_ext.mix` with given pairs and ratios):")
            out.append("")
            out.append("| B | fused_mix fwd | fused_mix fwd+bwd | sass_select | share of fused fwd | "
                       "share of fused fwd+bwd | mix only | GEMM+copy floor (fwd) | GEMM z @ z.T | "
                       "sass_select / GEMM |")
            out.append("|---|---|---|---|---|---|---|---|---|---|")
            for c in configs:
                t = c["timings"]
                sass = t["fwd/sass_select"]["median_s"]
                out.append(f"| {c['B']} | {fmt_cell(t['fwd/fused'])} | {fmt_cell(t['fwdbwd/fused'])} | "
                           f"{fmt_cell(t.get('fwd/sass_select'))} | "
                           f"{sass / t['fwd/fused']['median_s'] * 100:.0f}% | "
                           f"{sass / t['fwdbwd/fused']['median_s'] * 100:.0f}% | "
                           f"{fmt_cell(t.get('fwd/mix_only'))} | {fmt_cell(t['fwd/floor'])} | "
                           f"{fmt_cell(t.get('fwd/gemm'))} | "
                           + (f"{c['ratios']['fwd/sass_select_over_gemm']['ratio']:.2f}x |"
                              if 'fwd/sass_select_over_gemm' in c['ratios'] else "- |"))
            out.append("")
            for mode in MODES:
                first = next((c["B"] for c in configs if c["timings"]["fwd/sass_select"]["median_s"]
                              > 0.5 * c["timings"][f"{mode}/fused"]["median_s"]), None)
                out.append(f"- SASS (`sass_select`) takes over half of the fused {MODE_LABELS[mode]} "
                           + (f"from B = {first} on." if first else "nowhere in this sweep."))
            out.append("")
    out.append("## Forward+backward net of the benchmark's own loss")
    out.append("")
    out.append("harness = the same loss and `loss.backward()` over `[B + K]` rows made by `torch.cat` instead "
               "of mixing: every implementation pays it. Net ratios are (impl - harness) / (fused - harness).")
    out.append("")
    out.append("| workload | B | fused fwd+bwd | harness | harness share of fused | eager/fused net | "
               "compiled/fused net |")
    out.append("|---|---|---|---|---|---|---|")
    for c in report["workloads"] + [c for c in report["sweep"] if c["B"] != 64]:
        t, r = c["timings"], c["ratios"]
        if "fwdbwd/harness" not in t:
            continue
        share = t["fwdbwd/harness"]["median_s"] / t["fwdbwd/fused"]["median_s"] * 100
        nets = [f"{r[k]['ratio']:.2f}x" if k in r else "-" for k in (
            "fwdbwd/eager_over_fused_net_of_harness", "fwdbwd/compiled_over_fused_net_of_harness")]
        out.append(f"| {c['workload']} | {c['B']} | {fmt_cell(t['fwdbwd/fused'])} | {fmt_cell(t['fwdbwd/harness'])} | "
                   f"{share:.0f}% | {nets[0]} | {nets[1]} |")
    out.append("")
    compare = [c for c in report["workloads"] + report["sweep"] if "fwd/compare" in c["timings"]]
    if compare:
        out.append(f"## --compare-to {cfg.get('compare_to')}")
        out.append("")
        out.append("| workload | B | mode | fused | compare | compare/fused |")
        out.append("|---|---|---|---|---|---|")
        for c in compare:
            for mode in MODES:
                out.append(f"| {c['workload']} | {c['B']} | {MODE_LABELS[mode]} | "
                           f"{fmt_cell(c['timings'][f'{mode}/fused'])} | {fmt_cell(c['timings'][f'{mode}/compare'])} | "
                           f"{c['ratios'][f'{mode}/compare_over_fused']['ratio']:.2f}x |")
        out.append("")
    out.append("## CUDA launches per fused_mix call (counted from the code path)")
    out.append("")
    for mode, text in CUDA_LAUNCHES.items():
        out.append(f"- {mode}: {text}")
    out.append("")
    measured = [c for c in report["workloads"] + report["sweep"] if "cuda_launches_measured" in c]
    if measured:
        out.append("Measured with torch.profiler (GPU kernels of one call; the backward of the bench's loss "
                   "includes the fill of the loss's seed gradient):")
        out.append("")
        out.append("| workload | B | forward | backward |")
        out.append("|---|---|---|---|")
        for c in measured:
            n = c["cuda_launches_measured"]
            out.append(f"| {c['workload']} | {c['B']} | " + (
                f"{n['forward']} | {n['backward']} |" if "error" not in n else f"failed: {n['error']} | |"))
        out.append("")
    out.append("## Peak memory of forward+backward (MiB)")
    out.append("")
    out.append(f"Accounting: {report['memory_accounting']}")
    out.append("")
    out.append("| workload | B | fused | eager ref | compiled ref | floor (outputs + S + input grads) |")
    out.append("|---|---|---|---|---|---|")
    for c in report["workloads"] + [c for c in report["sweep"] if c["B"] != 64]:
        mem = c["peak_memory_fwdbwd_bytes"]
        out.append(f"| {c['workload']} | {c['B']} | " + " | ".join(fmt_mb(mem.get(i)) for i in IMPLS) + " |")
    out.append("")
    e2e = report.get("end_to_end")
    if e2e:
        out.append(f"## End-to-end training step ({e2e['workload']}, B = {e2e['B']}, K = {e2e['K']})")
        out.append("")
        out.append(f"Model: {e2e['model']}.")
        out.append("")
        out.append("| step | time | augmentation share of step | of which SIG + SAL | of which backbone on "
                   "B+K rows | of which mixing (SASS, ratios, mix, mixed loss) |")
        out.append("|---|---|---|---|---|---|")
        names = {"fused": "MSMix (fused) + msmix_objective", "reference": "SIG + reference.fused_mix + "
                 "msmix_objective", "none": "no augmentation (clean B)", "none_2B": "no augmentation, "
                 "batch duplicated to B+K rows", "sig_only": "SIG + SAL on the clean batch, no mixing"}
        t_none = e2e["timings"]["none"]["median_s"]
        for key, label in names.items():
            t = e2e["timings"][key]
            sh = e2e["shares"].get(key)
            if sh:
                backbone = (e2e["timings"]["none_2B"]["median_s"] - t_none) / t["median_s"]
                cells = [f"{sh['aug_share_of_step'] * 100:.0f}%", f"{sh['sig_sal_share_of_step'] * 100:.0f}%",
                         f"{backbone * 100:.0f}%", f"{sh['mixing_share_of_step'] * 100:.0f}%"]
            else:
                cells = ["-"] * 4
            out.append(f"| {label} | {fmt_cell(t)} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("Shares are of the step's median time: augmentation = (step - clean step) / step; SIG + SAL = "
                   "(SIG-only step - clean step) / step; backbone on B+K = (duplicated-batch step - clean step) / "
                   "step; mixing = the rest.")
        out.append("")
    out.append(f"Total benchmark wall time: {report['wall_s']:.0f} s.")
    return "\n".join(out) + "\n"


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["sweep"]
    bs = [c["B"] for c in sweep]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"fused": dict(marker="o"), "eager": dict(marker="s"), "compiled": dict(marker="^"),
              "floor": dict(linestyle="--", color="gray")}
    for ax, mode in zip(axes, MODES):
        for impl in IMPLS:
            key = f"{mode}/{impl}"
            pts = [(c["B"], c["timings"][key]["median_s"] * 1e3) for c in sweep if key in c["timings"]]
            if pts:
                ax.plot(*zip(*pts), label=IMPL_LABELS[impl], **styles[impl])
        if mode == "fwd" and all("fwd/sass_select" in c["timings"] for c in sweep):
            ax.plot(bs, [c["timings"]["fwd/sass_select"]["median_s"] * 1e3 for c in sweep],
                    label="msmix_ext.sass_select alone", linestyle=":", marker="x")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (K = B)")
        ax.set_ylabel("time per call (ms, median)")
        ax.set_title(f"almt 3 x [B, 8, 128], {MODE_LABELS[mode]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"MS-Mix on {report['machine']['device']} ({report['machine']['cpu_model']}, "
                 f"{report['machine']['torch_threads']} threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="fewer workloads and sweep points, shorter timing; compiled reference at B = 64 only")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per configuration")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="blocked_autorange min_run_time per measurement (s)")
    p.add_argument("--compile-graph-breaks", action="store_true",
                   help="leave capture_dynamic_output_shape_ops off (torch.nonzero breaks the graph)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled reference")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end training step")
    p.add_argument("--profile", action="store_true",
                   help="also write profile_<device>.txt: where fused_mix's time goes (B = 64)")
    p.add_argument("--profile-only", action="store_true", help="write the profile only, no benchmark")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the .md and .png from an existing bench_<device>.json in --out")
    p.add_argument("--workloads", nargs="*", default=None, choices=list(WORKLOADS))
    p.add_argument("--sweep", nargs="*", type=int, default=None, help="batch sizes of the almt sweep")
    p.add_argument("--compare-to", default=None, metavar="MODULE:FUNCTION",
                   help="also time this importable fn(feats, labels, intensities) side by side")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = args.rounds or 3
        args.min_run_time = args.min_run_time or 0.05
        args.workloads = args.workloads or ["pooled", "almt", "mosi"]
        args.sweep = args.sweep or [16, 64, 256]
    else:
        args.rounds = args.rounds or 8
        args.min_run_time = args.min_run_time or 0.1
        args.workloads = args.workloads or list(WORKLOADS)
        args.sweep = args.sweep or [16, 64, 256, 1024, 4096]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("bench_mix.py: --device cuda but torch.cuda.is_available() is False")
        if not mx.CUDA_COMPILED:
            sys.exit("bench_mix.py: --device cuda but msmix_ext was built without its CUDA kernels "
                     "(msmix_ext.CUDA_COMPILED is False); rebuild with MSMIX_FORCE_CUDA=1")
    if not mx.HAS_EXTENSION:
        sys.exit("bench_mix.py: msmix_ext._C is not built; run `python setup.py build_ext --inplace`")
    if args.compile_graph_breaks:
        compile_setting = ("torch._dynamo.config.capture_dynamic_output_shape_ops left False "
                           "(torch.nonzero and the data-dependent branches break the graph)")
    else:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        compile_setting = ("torch._dynamo.config.capture_dynamic_output_shape_ops = True "
                           "(torch.nonzero traced; the data-dependent `if`s still break the graph)")
    if args.no_compile:
        compile_setting = "not run (--no-compile)"
    os.makedirs(args.out, exist_ok=True)
    warnings.filterwarnings("ignore", message=".*Memory block of unknown size.*")
    profile_workloads = [w for w in ("pooled", "almt", "mosi") if w in args.workloads] or ["almt"]
    profile_path = os.path.join(args.out, f"profile_{args.device}.txt")
    if args.profile_only:
        profile_fused(args, profile_workloads, profile_path)
        return 0
    if args.render_only:
        base = os.path.join(args.out, f"bench_{args.device}")
        with open(base + ".json") as f:
            report = json.load(f)
        with open(base + ".md", "w") as f:
            f.write(markdown(report))
        plot(report, base + "_sweep.png")
        log(f"re-rendered {base}.md and {base}_sweep.png from {base}.json")
        return 0
    t_start = time.perf_counter()
    torch.manual_seed(0)
    info = machine_info(args.device)
    log(f"bench_mix: {info['cpu_model']}, {info['torch_threads']} threads, torch {info['torch_version']}, "
        f"device {args.device}; workloads {args.workloads}, sweep {args.sweep}, rounds {args.rounds}, "
        f"min_run_time {args.min_run_time}s")

    n_impl = len(IMPLS) - (1 if args.no_compile else 0)
    configs = [(w, 64, False) for w in args.workloads]
    if "almt" not in args.workloads and 64 in args.sweep:
        configs.append(("almt", 64, True))
    configs += [("almt", b, True) for b in args.sweep if b != 64]
    configs = [(w, b, s or (w == "almt" and b in args.sweep)) for w, b, s in configs]
    total = 0
    for w, b, s in configs:
        rounds = config_rounds(w, b, args.rounds)
        n = n_impl - (1 if (args.quick and b != 64 and not args.no_compile) else 0)
        # per round: each implementation in both modes, the harness, and the sweep's three SASS tasks
        total += rounds * (2 * (n + (1 if args.compare_to else 0)) + 1 + (3 if s else 0)) + 1
    total += 0 if args.no_e2e else 5 * args.rounds
    results = []
    with tqdm(total=total, file=sys.stderr, unit="meas", dynamic_ncols=True) as pbar:
        for w, b, s in configs:
            t0 = time.perf_counter()
            res = bench_config(w, b, args, pbar, with_sass=s)
            results.append(res)
            r = res["ratios"]
            comp = (f", compiled/fused {r['fwdbwd/compiled_over_fused']['ratio']:.2f}x"
                    if "fwdbwd/compiled_over_fused" in r else "")
            log(f"[{w} B={b}] fwd+bwd: fused {fmt_t(res['timings']['fwdbwd/fused']['median_s'])}, "
                f"eager/fused {r['fwdbwd/eager_over_fused']['ratio']:.2f}x{comp}, "
                f"fused/floor {r['fwdbwd/fused_over_floor']['ratio']:.2f}x  ({time.perf_counter() - t0:.0f} s)")
        e2e = None if args.no_e2e else bench_end_to_end(args, pbar)

    workloads = [r for r in results if r["B"] == 64 and r["workload"] in args.workloads]
    sweep = sorted([r for r in results if r["workload"] == "almt" and r["B"] in args.sweep], key=lambda r: r["B"])
    dominates = {mode: next((r["B"] for r in sweep if r["timings"]["fwd/sass_select"]["median_s"]
                             > 0.5 * r["timings"][f"{mode}/fused"]["median_s"]), None) for mode in MODES}
    report = {
        "machine": info,
        "config": {"quick": args.quick, "rounds": args.rounds, "min_run_time_s": args.min_run_time,
                   "threshold": THRESHOLD, "alpha": ALPHA, "num_mix": "B", "dtype": "float32",
                   "compile_setting": compile_setting, "compare_to": args.compare_to,
                   "cuda_launches_per_call": CUDA_LAUNCHES, "workload_shapes": {k: shapes_str(k) for k in WORKLOADS},
                   "timer": "torch.utils.benchmark.Timer.blocked_autorange, num_threads=torch.get_num_threads()",
                   "fwdbwd_loss": "sum(combined_feats[m].sum()) + combined_labels.sum()",
                   "reference_randomness": "torch.randperm over the valid pairs (torch.nonzero), "
                                           "lam0 from torch.distributions.Beta"},
        "memory_accounting": ("CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the "
                              "bytes allocated before the call" if args.device == "cuda" else
                              "torch.profiler(profile_memory=True): every CPU allocation and free of one "
                              "forward+backward call (after warm-up), summed in time order; the peak of that "
                              "running sum = the most bytes live at once beyond the inputs. The floor row is "
                              "computed: combined outputs + the [B, B] similarity + the input gradients."),
        "workloads": workloads,
        "sweep": sweep,
        "sass_dominates_from_B": dominates,
        "end_to_end": e2e,
    }
    report["wall_s"] = time.perf_counter() - t_start
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_end"] = f.read().split()[:3]
    except OSError:
        pass
    base = os.path.join(args.out, f"bench_{args.device}")
    md = markdown(report)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(base + ".md", "w") as f:
        f.write(md)
    plot(report, base + "_sweep.png")
    print(md)
    log(f"wrote {base}.json, {base}.md, {base}_sweep.png in {report['wall_s']:.0f} s")
    if args.profile:
        profile_fused(args, profile_workloads, profile_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
