"""Summaries of a training call: mean ± std per group, paired differences, table, figure."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from msmix_ext.train.stats import paired_difference

__all__ = ["PAIRED_BASELINES", "PAIRED_METRICS", "format_paired", "format_table", "fraction_key", "paired",
           "plot_results", "summarize"]

PAIRED_METRICS = ("MAE", "Corr", "Has0_acc_2")
"""The metrics compared per seed (those the dataset kind reports; SIMS has no ``Has0_acc_2``)."""

PAIRED_BASELINES = ("none", "mixup")
"""Each augmentation is compared with these, when the call trained them."""


def fraction_key(fraction: float) -> str:
    """The JSON key of a train fraction: ``1.0`` -> ``"1"``, ``0.25`` -> ``"0.25"``."""
    return f"{fraction:g}"


def _groups(runs: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str, str], List[Dict[str, Any]]]:
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in runs:
        key = (fraction_key(r.get("train_fraction", 1.0)), r["backbone"], r["augmentation"])
        groups.setdefault(key, []).append(r)
    return groups


def summarize(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Dict[str, Dict[str, float]]]]]:
    """``{fraction: {backbone: {augmentation: {metric: {"mean", "std", "n"}}}}}`` over seeds
    (``fraction`` as :func:`fraction_key` writes it).

    ``std`` is the sample standard deviation (ddof = 1; 0 for a single seed); NaN values
    (e.g. an undefined correlation) are left out of both.
    """
    out: Dict[str, Dict[str, Dict[str, Dict[str, Dict[str, float]]]]] = {}
    for (f, b, a), group in _groups(runs).items():
        metrics = [r["test_metrics"] for r in group]
        row = {}
        for name in metrics[0]:
            vals = np.array([np.nan if m[name] is None else m[name] for m in metrics], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            row[name] = {
                "mean": float(vals.mean()) if vals.size else float("nan"),
                "std": float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else float("nan")),
                "n": int(vals.size),
            }
        out.setdefault(f, {}).setdefault(b, {})[a] = row
    return out


def _value(metrics: Dict[str, Any], name: str) -> float:
    return float("nan") if metrics[name] is None else metrics[name]


def paired(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Dict[str, Dict[str, Dict[str, float]]]]]]:
    """``{fraction: {backbone: {baseline: {augmentation: {metric: stats}}}}}``: per seed, the
    augmentation's test metric minus the baseline's (seeds both trained), summarised by
    :func:`~msmix_ext.train.stats.paired_difference` (mean, 95% CI, sign-flip p, n)."""
    by_seed: Dict[Tuple[str, str, str], Dict[int, Dict[str, Any]]] = {
        key: {r["seed"]: r["test_metrics"] for r in group} for key, group in _groups(runs).items()}
    out: Dict[str, Any] = {}
    for (f, b, a), seeds in by_seed.items():
        for base in PAIRED_BASELINES:
            ref = by_seed.get((f, b, base))
            # a baseline is compared with the baselines before it only (mixup - none, not also none - mixup)
            if ref is None or a in PAIRED_BASELINES[:PAIRED_BASELINES.index(base) + 1]:
                continue
            common = sorted(set(seeds) & set(ref))
            reported = [m for m in PAIRED_METRICS if common and m in ref[common[0]]]
            stats = {m: paired_difference([_value(seeds[s], m) for s in common], [_value(ref[s], m) for s in common])
                     for m in reported}
            out.setdefault(f, {}).setdefault(b, {}).setdefault(base, {})[a] = stats
    return out


def _columns(head: List[str], body: List[List[str]], left: int) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *[fmt(r) for r in body]])


def format_table(summary: Dict[str, Any], n_seeds: Optional[int] = None) -> str:
    """Plain-text table: one row per train fraction x backbone x augmentation, ``mean ± std`` per metric."""
    rows = [(f, b, a, m) for f, backbones in summary.items() for b, augs in backbones.items() for a, m in augs.items()]
    if not rows:
        return "(no runs)"
    metrics = list(rows[0][3])
    head = ["fraction", "backbone", "augmentation", "seeds", *metrics]
    body = []
    for f, b, a, m in rows:
        n = n_seeds if n_seeds is not None else max(v["n"] for v in m.values())
        body.append([f, b, a, str(n), *[f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in metrics]])
    return _columns(head, body, 3)


def _paired_cell(s: Dict[str, float]) -> str:
    if s["n"] == 0:
        return "n/a"
    ci = "" if s["n"] < 2 else f" [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
    return f"{s['mean']:+.4f}{ci} p={s['p']:.3g}"


def format_paired(pairs: Dict[str, Any]) -> str:
    """The "paired" section of ``results.txt``: per fraction, backbone, baseline and
    augmentation, ``mean [95% CI] p`` of the per-seed differences."""
    rows = [(f, b, base, a, stats) for f, backbones in pairs.items() for b, bases in backbones.items()
            for base, augs in bases.items() for a, stats in augs.items()]
    lines = ["paired: per-seed test metric of the augmentation minus the baseline's (same seed: same initial",
             "weights, batch order and training subset); mean [95% t interval] and the exact sign-flip",
             "permutation p-value (two-sided). MAE: negative is better; Corr, Has0_acc_2: positive is better."]
    if not rows:
        return "\n".join(lines + ["(no baseline among the augmentations: train none or mixup to compare)"])
    metrics = [m for m in PAIRED_METRICS if m in rows[0][4]]
    head = ["fraction", "backbone", "augmentation", "vs", "seeds", *metrics]
    body = [[f, b, a, base, str(max(s["n"] for s in stats.values())), *[_paired_cell(stats[m]) for m in metrics]]
            for f, b, base, a, stats in rows]
    return "\n".join(lines + [_columns(head, body, 4)])


def plot_results(results: Dict[str, Any], path: Path) -> None:
    """Figure: per train fraction, the paired difference to ``none`` (else ``mixup``) of test
    ``main_metric`` (mean and 95% CI over seeds) per backbone and augmentation, or without a
    baseline the test metric (mean ± std); and per backbone the validation curve of the same
    metric per epoch at the largest fraction (mean ± std over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    metric = cfg["main_metric"]
    summary, pairs = results["summary"], results.get("paired", {})
    fractions = [f for f in map(fraction_key, cfg.get("train_fractions", [1.0])) if f in summary]
    backbones = [b for b in cfg["backbones"] if any(b in summary[f] for f in fractions)]
    augs = list(cfg["augmentations"])
    colors = {a: f"C{i}" for i, a in enumerate(augs)}
    fig = Figure(figsize=(5.0 * (len(fractions) + len(backbones)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(fractions) + len(backbones), squeeze=False)[0]
    x = np.arange(len(backbones))
    for ax, f in zip(axes, fractions):
        base = next((b for b in PAIRED_BASELINES if b in augs), None)
        shown = [a for a in augs if a != base]
        width = 0.8 / max(len(shown), 1)
        for i, a in enumerate(shown):
            if base is not None:
                stats = [pairs.get(f, {}).get(b, {}).get(base, {}).get(a, {}).get(metric) for b in backbones]
                mean = np.array([np.nan if s is None else s["mean"] for s in stats])
                err = np.array([[np.nan, np.nan] if s is None else [s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]]
                                for s in stats]).T
            else:
                cells = [summary[f].get(b, {}).get(a, {}).get(metric, {}) for b in backbones]
                mean = np.array([c.get("mean", np.nan) for c in cells])
                err = np.array([c.get("std", np.nan) for c in cells])
            ax.bar(x + (i - (len(shown) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=a, color=colors[a])
        ax.set_xticks(x, backbones)
        if base is not None:
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_ylabel(f"test {metric} minus {base}'s (same seed)")
            ax.set_title(f"fraction {f}: paired difference, mean and 95% CI")
        else:
            ax.set_ylabel(f"test {metric}")
            ax.set_title(f"fraction {f}: test {metric} (mean ± std over seeds)")
        ax.legend(fontsize=8)
    last = fractions[-1] if fractions else None
    for ax, b in zip(axes[len(fractions):], backbones):
        for a in augs:
            curves = [r["curves"]["valid"] for r in results["runs"] if r["backbone"] == b and r["augmentation"] == a
                      and fraction_key(r.get("train_fraction", 1.0)) == last]
            if not curves:
                continue
            vals = np.array([[np.nan if e[metric] is None else e[metric] for e in c] for c in curves], dtype=float)
            epochs = np.arange(1, vals.shape[1] + 1)
            mean = np.nanmean(vals, axis=0)
            ax.plot(epochs, mean, label=a, color=colors[a])
            if vals.shape[0] > 1:
                std = np.nanstd(vals, axis=0)
                ax.fill_between(epochs, mean - std, mean + std, color=colors[a], alpha=0.15)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric}")
        ax.set_title(f"{b}, fraction {last}: valid {metric} (mean ± std)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
