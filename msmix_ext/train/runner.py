"""Training and evaluation runner behind ``python -m msmix_ext.train``.

One *run* trains one backbone with one augmentation from one seed:

- Data: the synthetic MOSI-like set (:func:`~msmix_ext.train.data.make_synthetic`) or an
  MMSA feature pickle, z-scored with training-split statistics
  (:func:`~msmix_ext.train.data.standardize`).  Every run of a call sees the same data.
- Seeding: ``torch.manual_seed(seed)`` right before the backbone is built, so every
  augmentation starts from the same weights for a given seed; the order of the training
  batches comes from its own generator seeded with ``seed`` (same order for every
  augmentation); augmentation draws and dropout come from torch's global generator.
- Step (augmentation ``a``): ``feats = model.features(batch, padding masks)``; for the
  MS-Mix variants, intensities from :meth:`msmix_ext.MSMix.intensities` and SAL from
  :func:`msmix_ext.sentiment_alignment_loss` (``msmix-no-sal``: SAL weight 0;
  ``msmix-no-sig``: neither); ``out = augment(a, feats, labels, intensities, ...)``;
  ``pred = model.head(out.feats, combine_masks(...))`` (``manifold``: plain mixup applied by
  the head at a hidden layer drawn uniformly from ``0 .. hidden_layers``);
  ``loss = msmix_objective(pred, out, labels, sal, mix_weight, sal_weight, "l1")``.
  Adam over the backbone and the SIG predictors.
- Model selection: after every epoch the validation split is evaluated (no augmentation);
  the state with the best ``main_metric`` (validation MAE by default, lower is better,
  as MMSA's regression ``KeyEval``) is kept and the test split is evaluated once, on that
  state.  Evaluation always runs the eager (uncompiled) model, so a saved checkpoint
  reproduces its test metrics exactly (:func:`evaluate_checkpoints`).

:func:`run` writes ``results.json`` (config, per-seed metrics, per-epoch validation
curves, timings, versions, machine), ``results.txt`` (the table), ``results.png`` and
``train.log`` to the output directory, and with ``save=True`` one checkpoint per run.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

import msmix_ext
from msmix_ext import MSMix, combine_masks, msmix_objective, sentiment_alignment_loss
from msmix_ext.augment import AUGMENTATIONS, augment
from msmix_ext.models import MODELS, build_model
from msmix_ext.train import distributed as train_distributed
from msmix_ext.train.data import (
    MultimodalDataset,
    SyntheticConfig,
    DataError,
    load_mmsa_pickle,
    make_synthetic,
    standardize,
)
from msmix_ext.train.metrics import DATASET_KINDS, regression_metrics

__all__ = [
    "BACKBONES",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "MSMIX_VARIANTS",
    "TrainConfig",
    "evaluate",
    "evaluate_checkpoints",
    "format_table",
    "load_data",
    "parse_seeds",
    "run",
    "summarize",
    "train_one",
]

log = logging.getLogger("msmix_ext.train")

BACKBONES = tuple(MODELS)
"""Backbone names (``late_fusion``, ``cross_modal``)."""

MSMIX_VARIANTS = ("msmix", "msmix-no-sass", "msmix-no-sig", "msmix-no-sal")
_USES_SIG = ("msmix", "msmix-no-sass", "msmix-no-sal")  # need SIG intensities
_USES_SAL = ("msmix", "msmix-no-sass")  # SAL weight > 0

CHECKPOINT_FORMAT = "msmix_ext.train/1"

SENTIMENT_RANGE = {"mosi": 3.0, "mosei": 3.0, "sims": 1.0}
"""R, the label bound, per dataset kind (also SIG's output bound)."""


@dataclass
class TrainConfig:
    """Everything a call of :func:`run` depends on (stored in the JSON and checkpoints).

    ``synthetic`` overrides :class:`~msmix_ext.train.data.SyntheticConfig` fields (e.g.
    ``{"split_sizes": [60, 20, 20]}``) when ``data == "synthetic"``.  ``threads`` > 0 sets
    ``torch.set_num_threads`` for the call (restored afterwards); 0 keeps torch's setting.
    ``main_metric`` selects the model on the validation split and is the figure's
    metric (lower is better for ``MAE``, higher for every other metric).
    """

    data: str = "synthetic"
    dataset_kind: str = "mosi"
    data_seed: int = 0
    synthetic: Dict[str, Any] = field(default_factory=dict)
    standardize: bool = True
    backbones: Tuple[str, ...] = BACKBONES
    augmentations: Tuple[str, ...] = ("none", "mixup", "msmix")
    seeds: Tuple[int, ...] = (0, 1, 2)
    epochs: int = 15
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-3
    device: str = "cpu"
    compile: bool = False
    threads: int = 1
    mix_weight: float = 0.7
    sal_weight: float = 0.5
    sal_scale: float = 1000.0
    threshold: float = 0.4
    alpha: float = 2.0
    pool: str = "local"
    sig_heads: int = 4
    main_metric: str = "MAE"
    out: Optional[str] = None
    save: bool = False
    plot: bool = True
    quiet: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` for unusable values (names are checked against the registries)."""
        if self.dataset_kind not in DATASET_KINDS:
            raise ValueError(f"dataset_kind must be one of {DATASET_KINDS}, got {self.dataset_kind!r}")
        if not self.backbones:
            raise ValueError("no backbone given")
        for b in self.backbones:
            if b not in MODELS:
                raise ValueError(f"unknown backbone {b!r}; choose from {', '.join(BACKBONES)}")
        if not self.augmentations:
            raise ValueError("no augmentation given")
        for a in self.augmentations:
            if a not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation {a!r}; choose from {', '.join(AUGMENTATIONS)}")
        if not self.seeds:
            raise ValueError("no seed given")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {list(self.seeds)}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {list(self.seeds)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (mixing pairs samples), got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.pool not in ("local", "global"):
            raise ValueError(f"pool must be 'local' or 'global', got {self.pool!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda requested but torch.cuda.is_available() is False")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("backbones", "augmentations", "seeds"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("backbones", "augmentations", "seeds"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# --------------------------------------------------------------------------- helpers


def parse_seeds(text: str) -> Tuple[int, ...]:
    """``"42"`` -> ``(42,)``; ``"0,4,7"`` or ``"7,"`` -> those seeds (``--num-seeds`` gives a count)."""
    parts = [s.strip() for s in text.split(",")]
    if parts and not parts[-1]:
        parts.pop()  # a trailing comma
    try:
        return tuple(int(s) for s in parts)
    except ValueError:
        raise ValueError(f"--seeds must be a seed or a comma list of seeds (e.g. 42 or 0,1,2), got {text!r}") from None


def lower_is_better(metric: str) -> bool:
    return metric == "MAE"


def _finite_or_none(x: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None (strict JSON has no NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def machine_info(device: str = "cpu") -> Dict[str, Any]:
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info


def _synthetic_config(overrides: Dict[str, Any]) -> SyntheticConfig:
    def as_tuple(v: Any) -> Any:
        return tuple(as_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v

    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown SyntheticConfig fields {sorted(unknown)}")
    return SyntheticConfig(**{k: as_tuple(v) for k, v in overrides.items()})


def load_data(cfg: TrainConfig) -> Dict[str, MultimodalDataset]:
    """The train / valid / test splits ``cfg`` names (synthetic or an MMSA pickle), standardised."""
    if cfg.data == "synthetic":
        splits = make_synthetic(cfg.data_seed, _synthetic_config(cfg.synthetic))
    else:
        splits = load_mmsa_pickle(cfg.data)
    if cfg.standardize:
        try:
            splits = standardize(splits)
        except ValueError as e:  # e.g. a split with no valid token: the file is unusable
            raise DataError(f"{cfg.data}: {e}") from None
    bound = SENTIMENT_RANGE[cfg.dataset_kind]
    top = max(float(s.labels.abs().max()) for s in splits.values())
    if top > bound + 1e-6:
        log.warning("labels reach |y| = %.3g but dataset kind %r assumes |y| <= %g", top, cfg.dataset_kind, bound)
    return splits


class _TqdmHandler(logging.Handler):
    """Logging through ``tqdm.write`` so that log lines do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _show_bars(cfg: TrainConfig) -> bool:
    """Progress bars only on a terminal: redirected, their carriage returns fill a log file."""
    return not cfg.quiet and sys.stderr.isatty()


def setup_logging(quiet: bool = False) -> None:
    """Configure the ``msmix_ext.train`` logger for the CLI (INFO, or WARNING when quiet)."""
    log.setLevel(logging.DEBUG)
    for h in list(log.handlers):
        if isinstance(h, _TqdmHandler):
            log.removeHandler(h)
    handler = _TqdmHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.propagate = False


# --------------------------------------------------------------------------- model, step, eval


def build_run(backbone: str, augmentation: str, seed: int, input_dims: Sequence[int], cfg: TrainConfig
              ) -> Tuple[torch.nn.Module, Optional[MSMix]]:
    """Backbone (initialised from ``seed``) and, for the SIG variants, an :class:`MSMix`."""
    torch.manual_seed(seed)
    model = build_model(backbone, tuple(input_dims))
    msmix = None
    if augmentation in _USES_SIG:
        msmix = MSMix(model.feature_dims, num_heads=cfg.sig_heads, threshold=cfg.threshold, alpha=cfg.alpha,
                      max_intensity=SENTIMENT_RANGE[cfg.dataset_kind], sal_scale=cfg.sal_scale)
    return model.to(cfg.device), None if msmix is None else msmix.to(cfg.device)


def train_step(model, msmix: Optional[MSMix], batch, augmentation: str, cfg: TrainConfig,
               features_fn=None, head_fn=None) -> torch.Tensor:
    """The loss of one training batch (see the module docstring)."""
    features_fn = model.features if features_fn is None else features_fn
    head_fn = model.head if head_fn is None else head_fn
    labels = batch.labels
    feats = features_fn(batch.text, batch.audio, batch.vision, batch.masks)
    # The feature stage pools padded sequences away: its outputs carry no padding.
    feat_masks: List[Optional[torch.Tensor]] = [None] * len(feats)
    sal = labels.new_zeros(())
    intensities = None
    if augmentation in _USES_SIG:
        intensities = msmix.intensities(feats, feat_masks)
        if augmentation in _USES_SAL:
            sal = sentiment_alignment_loss(intensities, labels, msmix.max_intensity, msmix.sal_scale)
    sal_weight = cfg.sal_weight if augmentation in _USES_SAL else 0.0
    if augmentation == "manifold":
        layer = int(torch.randint(model.hidden_layers + 1, ()).item())
        mixed = {}

        # Eager even under --compile: tracing the mix into the head's graph trips an inductor
        # pattern-matcher error (torch 2.13, "Not all inputs to pattern found ... slice_shape").
        @torch.compiler.disable
        def mix_fn(hidden):
            mixed["out"] = augment("mixup", hidden, labels, alpha=cfg.alpha)
            return mixed["out"].feats

        pred = head_fn(feats, None, mix_fn, layer)
        out = mixed["out"]
    else:
        out = augment(augmentation, feats, labels, intensities, threshold=cfg.threshold, alpha=cfg.alpha,
                      pool=cfg.pool, group=train_distributed.mix_group())
        pred = head_fn(out.feats, combine_masks(feat_masks, out))
    return msmix_objective(pred, out, labels, sal, cfg.mix_weight, sal_weight, clean_loss="l1")


@torch.no_grad()
def predict(model, ds: MultimodalDataset, batch_size: int, device: str) -> torch.Tensor:
    """Eager predictions ``[N]`` (float32, CPU) in eval mode; restores the training mode."""
    was_training = model.training
    model.eval()
    try:
        preds = [model.head(model.features(b.text, b.audio, b.vision, b.masks)).float().cpu()
                 for b in (x.to(device) for x in ds.batches(batch_size))]
    finally:
        model.train(was_training)
    return torch.cat(preds)


def evaluate(model, ds: MultimodalDataset, kind: str, batch_size: int = 256, device: str = "cpu"
             ) -> Dict[str, float]:
    """MMSA regression metrics of ``model`` on ``ds`` (no augmentation); under torchrun the
    ranks share the predictions and every rank gets the metrics of the whole ``ds``."""
    if train_distributed.active():
        preds = train_distributed.predict_whole(predict, model, ds, batch_size, device)
    else:
        preds = predict(model, ds, batch_size, device)
    return regression_metrics(preds, ds.labels, kind)


def _state(module: Optional[torch.nn.Module]) -> Optional[Dict[str, torch.Tensor]]:
    return None if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def _better(value: float, best: Optional[float], lower: bool) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if lower else value > best)


def train_one(cfg: TrainConfig, splits: Dict[str, MultimodalDataset], backbone: str, augmentation: str,
              seed: int, checkpoint: Optional[Path] = None, position: int = 1) -> Dict[str, Any]:
    """Train one run, evaluate the best-validation state on test; returns its JSON record."""
    t_start = time.perf_counter()
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    model, msmix = build_run(backbone, augmentation, seed, train.feature_dims, cfg)
    params = list(model.parameters()) + ([] if msmix is None else list(msmix.parameters()))
    opt = torch.optim.Adam(params, lr=cfg.lr)
    features_fn, head_fn = model.features, model.head
    if cfg.compile:
        features_fn, head_fn = torch.compile(model.features), torch.compile(model.head)

    def step(batch):
        return train_step(model, msmix, batch, augmentation, cfg, features_fn, head_fn)

    if train_distributed.active():
        step = train_distributed.data_parallel(step, model, msmix, seed, cfg.device)
    order = torch.Generator().manual_seed(seed)
    lower = lower_is_better(cfg.main_metric)
    curves: Dict[str, Any] = {"train_loss": [], "valid": []}
    epoch_s: List[float] = []
    best, best_epoch, best_state = None, None, None
    n_batches = math.ceil(train_distributed.samples_per_rank(len(train)) / cfg.batch_size)
    skipped = 0
    model.train()
    if msmix is not None:
        msmix.train()
    epochs = tqdm(range(1, cfg.epochs + 1), desc=f"{backbone}/{augmentation}/s{seed}", unit="ep",
                  leave=False, position=position, disable=not _show_bars(cfg), dynamic_ncols=True)
    for epoch in epochs:
        t0 = time.perf_counter()
        total, count = 0.0, 0
        data = train_distributed.shard(train, seed, epoch) if train_distributed.active() else train
        bar = tqdm(data.batches(cfg.batch_size, shuffle=True, generator=order), total=n_batches,
                   desc=f"epoch {epoch}", unit="batch", leave=False, position=position + 1,
                   disable=not _show_bars(cfg), dynamic_ncols=True)
        for batch in bar:
            if batch.labels.shape[0] < 2:  # pairing needs two samples; same rule for every method
                skipped += 1
                continue
            batch = batch.to(cfg.device)
            loss = step(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{backbone}/{augmentation}/seed {seed}: non-finite loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            total += value * batch.labels.shape[0]
            count += batch.labels.shape[0]
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        train_s = time.perf_counter() - t0
        total, count = train_distributed.sum_over_ranks(total, count)
        valid_metrics = evaluate(model, valid, cfg.dataset_kind, cfg.eval_batch_size, cfg.device)
        epoch_s.append(time.perf_counter() - t0)
        curves["train_loss"].append(total / max(count, 1))
        curves["valid"].append(valid_metrics)
        score = valid_metrics[cfg.main_metric]
        if _better(score, best, lower):
            best, best_epoch = score, epoch
            best_state = (_state(model), _state(msmix))
        epochs.set_postfix(valid=f"{score:.4f}", best=f"{best if best is not None else float('nan'):.4f}",
                           refresh=False)
        # Without bars (stderr is a log file or CI), this line is the progress report.
        log.log(logging.DEBUG if _show_bars(cfg) else logging.INFO,
                "%s/%s/seed %d epoch %d/%d: train loss %.4f, valid %s %.4f (%.1f s train)", backbone,
                augmentation, seed, epoch, cfg.epochs, curves["train_loss"][-1], cfg.main_metric, score, train_s)
    epochs.close()
    if best_state is None:  # every validation score was NaN: report the last state
        log.warning("%s/%s/seed %d: no finite validation %s; using the last epoch", backbone, augmentation, seed,
                    cfg.main_metric)
        best_epoch, best_state = cfg.epochs, (_state(model), _state(msmix))
    model.load_state_dict(best_state[0])
    if msmix is not None:
        msmix.load_state_dict(best_state[1])
    t_test = time.perf_counter()
    test_metrics = evaluate(model, test, cfg.dataset_kind, cfg.eval_batch_size, cfg.device)
    test_s = time.perf_counter() - t_test
    record = {
        "backbone": backbone,
        "augmentation": augmentation,
        "seed": seed,
        "best_epoch": best_epoch,
        "valid_metrics": curves["valid"][best_epoch - 1],
        "test_metrics": test_metrics,
        "curves": curves,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_sig_params": 0 if msmix is None else sum(p.numel() for p in msmix.parameters()),
        "skipped_batches": skipped,
        "steps_per_epoch": n_batches,
        "timing": {"epoch_s": epoch_s, "train_total_s": sum(epoch_s), "test_s": test_s,
                   "total_s": time.perf_counter() - t_start},
        "checkpoint": None,
    }
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "config": cfg.to_dict(),
            "run": {"backbone": backbone, "augmentation": augmentation, "seed": seed, "best_epoch": best_epoch,
                    "input_dims": list(train.feature_dims)},
            "model": {k: v.cpu() for k, v in best_state[0].items()},
            "msmix": None if best_state[1] is None else {k: v.cpu() for k, v in best_state[1].items()},
            "test_metrics": test_metrics,
            "valid_metrics": record["valid_metrics"],
            "torch_version": str(torch.__version__),
        }, checkpoint)
        record["checkpoint"] = str(checkpoint)
    return record


# --------------------------------------------------------------------------- summary, table, plot


def summarize(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
    """``{backbone: {augmentation: {metric: {"mean", "std", "n"}}}}`` over seeds.

    ``std`` is the sample standard deviation (ddof = 1; 0 for a single seed); NaN values
    (e.g. an undefined correlation) are left out of both.
    """
    groups: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
    for r in runs:
        groups.setdefault((r["backbone"], r["augmentation"]), []).append(r["test_metrics"])
    out: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
    for (b, a), metrics in groups.items():
        row = {}
        for name in metrics[0]:
            vals = np.array([m[name] for m in metrics if m[name] is not None], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            row[name] = {
                "mean": float(vals.mean()) if vals.size else float("nan"),
                "std": float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else float("nan")),
                "n": int(vals.size),
            }
        out.setdefault(b, {})[a] = row
    return out


def format_table(summary: Dict[str, Dict[str, Dict[str, Dict[str, float]]]], n_seeds: Optional[int] = None) -> str:
    """Plain-text table: one row per backbone x augmentation, ``mean ± std`` per metric."""
    rows = [(b, a, m) for b, augs in summary.items() for a, m in augs.items()]
    if not rows:
        return "(no runs)"
    metrics = list(rows[0][2])
    head = ["backbone", "augmentation", "seeds", *metrics]
    body = []
    for b, a, m in rows:
        n = n_seeds if n_seeds is not None else max(v["n"] for v in m.values())
        body.append([b, a, str(n), *[f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in metrics]])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(head), "  ".join("-" * w for w in widths), *[fmt(r) for r in body]]
    return "\n".join(lines)


def plot_results(results: Dict[str, Any], path: Path) -> None:
    """Figure: test ``main_metric`` (mean ± std over seeds) per backbone and augmentation, and
    per backbone the validation curve of the same metric per epoch (mean over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    metric = cfg["main_metric"]
    summary = results["summary"]
    backbones = [b for b in cfg["backbones"] if b in summary]
    augs = [a for a in cfg["augmentations"] if any(a in summary[b] for b in backbones)]
    fig = Figure(figsize=(5.0 * (1 + len(backbones)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(backbones), squeeze=False)[0]
    colors = {a: f"C{i}" for i, a in enumerate(augs)}
    ax = axes[0]
    width = 0.8 / max(len(augs), 1)
    x = np.arange(len(backbones))
    for i, a in enumerate(augs):
        means = [summary[b].get(a, {}).get(metric, {}).get("mean", np.nan) for b in backbones]
        stds = [summary[b].get(a, {}).get(metric, {}).get("std", np.nan) for b in backbones]
        ax.bar(x + (i - (len(augs) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=a,
               color=colors[a])
    ax.set_xticks(x, backbones)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"test {metric} (mean ± std over seeds)")
    finite = [summary[b][a][metric]["mean"] for b in backbones for a in augs
              if a in summary[b] and summary[b][a][metric]["mean"] == summary[b][a][metric]["mean"]]
    if finite:  # zoom: differences between methods are small compared with the metric's value
        spread = [summary[b][a][metric]["std"] for b in backbones for a in augs if a in summary[b]]
        lo, hi = min(finite), max(finite)
        pad = max(hi - lo, max([s for s in spread if s == s] or [0.0]), 1e-3)
        ax.set_ylim(max(lo - 2 * pad, 0.0) if lo >= 0 else lo - 2 * pad, hi + 2 * pad)
    ax.legend(fontsize=8)
    for ax, b in zip(axes[1:], backbones):
        for a in augs:
            curves = [r["curves"]["valid"] for r in results["runs"] if r["backbone"] == b and r["augmentation"] == a]
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
        ax.set_title(f"{b}: valid {metric} (mean ± std over seeds)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- entry points


def default_out_dir() -> Path:
    return Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_finite_or_none(obj), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


class _Threads:
    """Context manager: ``torch.set_num_threads(n)`` for n > 0, restored on exit."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, None

    def __enter__(self):
        if self.n > 0:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)


def run(cfg: TrainConfig) -> Dict[str, Any]:
    """Train every backbone x augmentation x seed; write JSON, table, figure (and checkpoints).

    Returns the results dict written to ``<out>/results.json`` (``results["table"]`` holds
    the printed table and ``results["out"]`` the output directory).
    """
    cfg.validate()
    if cfg.data != "synthetic":
        cfg.data = str(Path(cfg.data).resolve())
    # Before any output exists: a bad data file leaves nothing behind.
    t_data = time.perf_counter()
    splits = load_data(cfg)
    data_s = time.perf_counter() - t_data
    if not train_distributed.is_writer():  # a torchrun rank > 0 trains along and writes nothing
        with _Threads(cfg.threads):
            return _run(cfg, None, splits, data_s)
    out = Path(cfg.out) if cfg.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    file_handler = logging.FileHandler(out / "train.log", mode="w")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    if log.level == logging.NOTSET or log.level > logging.DEBUG:
        log.setLevel(logging.DEBUG)
    try:
        with _Threads(cfg.threads):
            return _run(cfg, out, splits, data_s)
    finally:
        log.removeHandler(file_handler)
        file_handler.close()


def _run(cfg: TrainConfig, out: Optional[Path], splits: Dict[str, MultimodalDataset], data_s: float
         ) -> Dict[str, Any]:
    t0 = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    log.info("msmix_ext %s, torch %s, device %s, %d thread(s); output: %s", msmix_ext.__version__,
             torch.__version__, cfg.device, torch.get_num_threads(), out)
    train = splits["train"]
    log.info("data %s (%s): train/valid/test = %d/%d/%d, dims %s, lengths %s (%.1f s)", cfg.data, cfg.dataset_kind,
             len(train), len(splits["valid"]), len(splits["test"]), train.feature_dims, train.seq_lens, data_s)
    jobs = [(b, a, s) for b in cfg.backbones for a in cfg.augmentations for s in cfg.seeds]
    results: Dict[str, Any] = {
        "config": cfg.to_dict(),
        "msmix_ext_version": msmix_ext.__version__,
        "torch_version": str(torch.__version__),
        "numpy_version": np.__version__,
        "machine": machine_info(cfg.device),
        "argv": sys.argv,
        "world_size": train_distributed.world_size(),
        "started": started,
        "data": {"train": len(train), "valid": len(splits["valid"]), "test": len(splits["test"]),
                 "feature_dims": list(train.feature_dims), "seq_lens": list(train.seq_lens),
                 "load_s": data_s},
        "runs": [],
        "summary": {},
    }
    bar = tqdm(jobs, desc="runs", unit="run", position=0, disable=not _show_bars(cfg), dynamic_ncols=True)
    for backbone, aug, seed in bar:
        bar.set_postfix_str(f"{backbone}/{aug}/seed {seed}", refresh=True)
        ckpt = out / "checkpoints" / f"{backbone}-{aug}-seed{seed}.pt" if cfg.save and out else None
        record = train_one(cfg, splits, backbone, aug, seed, ckpt)
        results["runs"].append(record)
        m = record["test_metrics"]
        log.info("%s/%s/seed %d: best epoch %d, valid %s %.4f, test %s %.4f, %.1f s", backbone, aug, seed,
                 record["best_epoch"], cfg.main_metric, record["valid_metrics"][cfg.main_metric],
                 cfg.main_metric, m[cfg.main_metric], record["timing"]["total_s"])
        results["summary"] = summarize(results["runs"])
        results["wall_time_s"] = time.perf_counter() - t0
        if out is not None:
            _write_json(out / "results.json", results)  # after every run: partial results survive
    bar.close()
    results["summary"] = summarize(results["runs"])
    table = format_table(results["summary"], len(cfg.seeds))
    results["table"] = table
    if out is None:
        results["out"] = None
        return results
    (out / "results.txt").write_text(table + "\n")
    if cfg.plot:
        plot_results(results, out / "results.png")
    results["wall_time_s"] = time.perf_counter() - t0
    _write_json(out / "results.json", results)
    log.info("%d runs in %.1f s; wrote %s", len(jobs), results["wall_time_s"], out)
    results["out"] = str(out)
    return results


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def load_checkpoint(path: str | Path, device: str = "cpu") -> Dict[str, Any]:
    expected = f"expected a {CHECKPOINT_FORMAT} checkpoint (written by msmix-train --save)"
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}); {expected}") from None
    except Exception as e:  # torch.load of other bytes: unpickling errors of every kind
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail}); "
                              f"{expected}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: {expected}")
    return ckpt


def evaluate_checkpoints(paths: Sequence[str | Path], data: Optional[str] = None, device: str = "cpu",
                         threads: int = 1, out: Optional[str] = None) -> Dict[str, Any]:
    """Re-evaluate saved runs on their test split (``--eval-only --load``).

    Each checkpoint's stored config rebuilds its data (``data`` overrides the source)
    and backbone; the stored best state is loaded and the test metrics recomputed with
    the stored evaluation batch size.  ``results["runs"][i]["matches_saved"]`` says whether
    they equal the metrics stored at training time.  A directory in ``paths`` stands for
    every ``*.pt`` file in it (recursively).
    """
    files: List[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.pt")) if p.is_dir() else [p])
    if not files:
        raise CheckpointError(f"no checkpoint found in {[str(p) for p in paths]}")
    runs = []
    cache: Dict[str, Dict[str, MultimodalDataset]] = {}
    with _Threads(threads):
        for path in files:
            ckpt = load_checkpoint(path, device)
            cfg = TrainConfig.from_dict(ckpt["config"])
            cfg.device = device
            if data is not None:
                cfg.data = data if data == "synthetic" else str(Path(data).resolve())
            key = json.dumps({k: cfg.to_dict()[k] for k in ("data", "data_seed", "synthetic", "standardize",
                                                            "dataset_kind")}, sort_keys=True)
            if key not in cache:
                cache[key] = load_data(cfg)
            splits = cache[key]
            info = ckpt["run"]
            model, msmix = build_run(info["backbone"], info["augmentation"], info["seed"],
                                     splits["train"].feature_dims, cfg)
            model.load_state_dict(ckpt["model"])
            if msmix is not None and ckpt["msmix"] is not None:
                msmix.load_state_dict(ckpt["msmix"])
            metrics = evaluate(model, splits["test"], cfg.dataset_kind, cfg.eval_batch_size, device)
            saved = ckpt["test_metrics"]
            same = all((metrics[k] == saved[k]) or (metrics[k] != metrics[k] and saved[k] != saved[k])
                       for k in saved)
            diff = max((abs(metrics[k] - saved[k]) for k in saved if metrics[k] == metrics[k]), default=0.0)
            (log.info if same else log.warning)(
                "%s: %s/%s/seed %d test %s; %s the saved metrics (max |diff| %.3g)", path, info["backbone"],
                info["augmentation"], info["seed"], ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                "reproduces" if same else "DIFFERS from", diff)
            runs.append({"checkpoint": str(path), "backbone": info["backbone"], "augmentation": info["augmentation"],
                         "seed": info["seed"], "test_metrics": metrics, "saved_test_metrics": saved,
                         "matches_saved": same, "max_abs_diff": diff})
    summary = summarize(runs)
    results = {"mode": "eval-only", "torch_version": str(torch.__version__), "machine": machine_info(device),
               "runs": runs, "summary": summary, "table": format_table(summary)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        _write_json(Path(out) / "eval.json", results)
        (Path(out) / "eval.txt").write_text(results["table"] + "\n")
    return results
