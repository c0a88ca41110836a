"""One training step and the training loop of one run (one backbone, augmentation, seed, fraction).

- Seeding: ``torch.manual_seed(seed)`` right before the backbone is built, so every
  augmentation starts from the same weights for a given seed; the order of the training
  batches comes from its own generator seeded with ``seed`` (same order for every
  augmentation); augmentation draws and dropout come from torch's global generator.
- Step: ``feats = model.features(batch, padding masks)``; what follows is read from the
  augmentation's :class:`~msmix_ext.augment.Augmentation` entry: SIG intensities from
  :meth:`msmix_ext.MSMix.intensities` when it ``uses_sig``, SAL from
  :func:`msmix_ext.sentiment_alignment_loss` when it ``adds_sal``; the mix at the feature
  stage, or (``at_hidden_layer``) at a hidden layer of the head drawn uniformly from
  ``0 .. hidden_layers``; ``loss = msmix_objective(pred, out, labels, sal, mix_weight,
  sal_weight if adds_sal else 0, "l1")``.  Adam over the backbone and the SIG predictors.
- Model selection: after every epoch the validation split is evaluated (no augmentation);
  the state with the best ``main_metric`` is kept and the test split is evaluated once, on
  that state.  Evaluation always runs the eager model, so a saved checkpoint reproduces
  its test metrics exactly.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from msmix_ext import MSMix, combine_masks, msmix_objective, sentiment_alignment_loss
from msmix_ext import augment as augmentations
from msmix_ext.augment import augment
from msmix_ext.models import MMSA_BACKBONES, build_model
from msmix_ext.train import distributed as train_distributed
from msmix_ext.train.checkpoints import save_checkpoint
from msmix_ext.train.config import SENTIMENT_RANGE, TrainConfig, lower_is_better
from msmix_ext.train.data import MultimodalDataset
from msmix_ext.train.evaluation import evaluate
from msmix_ext.train.progress import log, show_bars

__all__ = ["build_run", "compiled_stages", "train_one", "train_step"]


def build_run(backbone: str, augmentation: str, seed: int, input_dims: Sequence[int], cfg: TrainConfig
              ) -> Tuple[torch.nn.Module, Optional[MSMix]]:
    """Backbone (initialised from ``seed``) and, for the augmentations that use SIG, an :class:`MSMix`."""
    torch.manual_seed(seed)
    # MMSA's configs have one entry per dataset: the dataset kind picks it.
    options = {"dataset": cfg.dataset_kind} if backbone in MMSA_BACKBONES else {}
    model = build_model(backbone, tuple(input_dims), **options, **cfg.backbone_options.get(backbone, {}))
    msmix = None
    if augmentations.get(augmentation).uses_sig:
        msmix = MSMix(model.feature_dims, num_heads=cfg.sig_heads, threshold=cfg.threshold, alpha=cfg.alpha,
                      max_intensity=SENTIMENT_RANGE[cfg.dataset_kind], sal_scale=cfg.sal_scale)
    return model.to(cfg.device), None if msmix is None else msmix.to(cfg.device)


def compiled_stages(model, backbone: str) -> Tuple[Callable, Callable]:
    """``(features_fn, head_fn)`` for ``--compile``: ``torch.compile`` of each stage the backbone
    declares traceable (``model.compilable_stages``, default both); the others stay eager, and a
    log line says so (MMSA's LSTM subnets and MulT's attention are not traceable by dynamo)."""
    stages = tuple(getattr(model, "compilable_stages", ("features", "head")))
    eager = [s for s in ("features", "head") if s not in stages]
    if eager:
        log.info("%s: --compile compiles %s; eager (not traceable by dynamo): %s", backbone,
                 " and ".join(stages) or "nothing of the backbone", " and ".join(eager))
    features_fn = torch.compile(model.features) if "features" in stages else model.features
    head_fn = torch.compile(model.head) if "head" in stages else model.head
    return features_fn, head_fn


def train_step(model, msmix: Optional[MSMix], batch, augmentation: str, cfg: TrainConfig,
               features_fn=None, head_fn=None) -> torch.Tensor:
    """The loss of one training batch (see the module docstring)."""
    entry = augmentations.get(augmentation)
    features_fn = model.features if features_fn is None else features_fn
    head_fn = model.head if head_fn is None else head_fn
    labels = batch.labels
    feats = features_fn(batch.text, batch.audio, batch.vision, batch.masks)
    # The feature stage pools padded sequences away: its outputs carry no padding.
    feat_masks: List[Optional[torch.Tensor]] = [None] * len(feats)
    intensities = msmix.intensities(feats, feat_masks) if entry.uses_sig else None
    if entry.adds_sal:
        sal = sentiment_alignment_loss(intensities, labels, msmix.max_intensity, msmix.sal_scale)
    else:
        sal = labels.new_zeros(())
    if entry.at_hidden_layer:
        layer = int(torch.randint(model.hidden_layers + 1, ()).item())
        mixed = {}

        # Eager even under --compile: tracing the mix into the head's graph trips an inductor
        # pattern-matcher error (torch 2.13, "Not all inputs to pattern found ... slice_shape").
        @torch.compiler.disable
        def mix_fn(hidden):
            mixed["out"] = augment(augmentation, hidden, labels, alpha=cfg.alpha)
            return mixed["out"].feats

        pred = head_fn(feats, None, mix_fn, layer)
        out = mixed["out"]
    else:
        out = augment(augmentation, feats, labels, intensities, threshold=cfg.threshold, alpha=cfg.alpha,
                      pool=cfg.pool, group=train_distributed.mix_group())
        pred = head_fn(out.feats, combine_masks(feat_masks, out))
    return msmix_objective(pred, out, labels, sal, cfg.mix_weight, cfg.sal_weight if entry.adds_sal else 0.0,
                           clean_loss="l1")


def _state(module: Optional[torch.nn.Module]) -> Optional[Dict[str, torch.Tensor]]:
    return None if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def _better(value: float, best: Optional[float], lower: bool) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if lower else value > best)


def run_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """``cfg.epochs``, or more when those give fewer than ``cfg.min_steps`` optimizer steps:
    a small train fraction then gets the step budget of a larger one."""
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(steps_per_epoch, 1)))


def train_one(cfg: TrainConfig, splits: Dict[str, MultimodalDataset], backbone: str, augmentation: str,
              seed: int, checkpoint: Optional[Path] = None, position: int = 1, train_fraction: float = 1.0
              ) -> Dict[str, Any]:
    """Train one run on ``splits["train"]`` (already the fraction's subset), evaluate the
    best-validation state on test; returns its JSON record."""
    t_start = time.perf_counter()
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    model, msmix = build_run(backbone, augmentation, seed, train.feature_dims, cfg)
    params = list(model.parameters()) + ([] if msmix is None else list(msmix.parameters()))
    opt = torch.optim.Adam(params, lr=cfg.lr)
    features_fn, head_fn = compiled_stages(model, backbone) if cfg.compile else (model.features, model.head)
    min_batch = getattr(model, "min_train_batch", 2)  # pairing needs two samples; BatchNorm subnets need two too

    def step(batch):
        return train_step(model, msmix, batch, augmentation, cfg, features_fn, head_fn)

    if train_distributed.active():
        step = train_distributed.data_parallel(step, model, msmix, seed, cfg.device)
    order = torch.Generator().manual_seed(seed)
    lower = lower_is_better(cfg.main_metric)
    bars = show_bars(cfg.quiet)
    name = f"{backbone}/{augmentation}/seed {seed}" + ("" if train_fraction == 1.0 else f"/fraction {train_fraction:g}")
    curves: Dict[str, Any] = {"train_loss": [], "valid": []}
    epoch_s: List[float] = []
    best, best_epoch, best_state = None, None, None
    n_batches = math.ceil(train_distributed.samples_per_rank(len(train)) / cfg.batch_size)
    num_epochs = run_epochs(cfg, n_batches)
    skipped = 0
    model.train()
    if msmix is not None:
        msmix.train()
    epochs = tqdm(range(1, num_epochs + 1), desc=name, unit="ep", leave=False, position=position,
                  disable=not bars, dynamic_ncols=True)
    for epoch in epochs:
        t0 = time.perf_counter()
        total, count = 0.0, 0
        data = train_distributed.shard(train, seed, epoch) if train_distributed.active() else train
        bar = tqdm(data.batches(cfg.batch_size, shuffle=True, generator=order), total=n_batches,
                   desc=f"epoch {epoch}", unit="batch", leave=False, position=position + 1,
                   disable=not bars, dynamic_ncols=True)
        for batch in bar:
            if batch.labels.shape[0] < min_batch:  # the same rule for every augmentation
                skipped += 1
                continue
            batch = batch.to(cfg.device)
            loss = step(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite loss at epoch {epoch}")
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
        log.log(logging.DEBUG if bars else logging.INFO,
                "%s epoch %d/%d: train loss %.4f, valid %s %.4f (%.1f s train)", name, epoch, num_epochs,
                curves["train_loss"][-1], cfg.main_metric, score, train_s)
    epochs.close()
    if best_state is None:  # every validation score was NaN: report the last state
        log.warning("%s: no finite validation %s; using the last epoch", name, cfg.main_metric)
        best_epoch, best_state = num_epochs, (_state(model), _state(msmix))
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
        "train_fraction": train_fraction,
        "train_samples": len(train),
        "best_epoch": best_epoch,
        "valid_metrics": curves["valid"][best_epoch - 1],
        "test_metrics": test_metrics,
        "curves": curves,
        "num_params": sum(p.numel() for p in model.parameters()),
        "num_sig_params": 0 if msmix is None else sum(p.numel() for p in msmix.parameters()),
        "skipped_batches": skipped,
        "steps_per_epoch": n_batches,
        "epochs": num_epochs,
        "timing": {"epoch_s": epoch_s, "train_total_s": sum(epoch_s), "test_s": test_s,
                   "total_s": time.perf_counter() - t_start},
        "checkpoint": None,
    }
    if checkpoint is not None:
        save_checkpoint(checkpoint, cfg, record, train.feature_dims, best_state)
        record["checkpoint"] = str(checkpoint)
    return record
