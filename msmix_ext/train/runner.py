"""Orchestration behind ``python -m msmix_ext.train``: every train fraction x backbone x
augmentation x seed, then the summaries and the output files.

One *run* trains one backbone with one augmentation from one seed on one train fraction
(:mod:`msmix_ext.train.loop`):

- Data: the synthetic MOSI-like set (:func:`~msmix_ext.train.data.make_synthetic`) or an
  MMSA feature pickle, z-scored with training-split statistics
  (:func:`~msmix_ext.train.data.standardize`).  Every run of a call sees the same splits;
  a fraction below 1 trains on :func:`~msmix_ext.train.inputs.train_subset` of the training
  split, drawn from the run's seed (the same subset for every augmentation of that seed).
- Model selection: after every epoch the validation split is evaluated; the best state's
  test metrics are reported (:mod:`msmix_ext.train.loop`).

:func:`run` writes ``results.json`` (config, per-seed metrics, summaries, paired
differences, per-epoch validation curves, timings, versions, machine), ``results.txt``
(the table and the "paired" section), ``results.png`` and ``train.log`` to the output
directory, and with ``save=True`` one checkpoint per run
(:mod:`msmix_ext.train.checkpoints`).  Modules: ``config`` (:class:`TrainConfig`),
``inputs`` (data), ``loop`` (step and loop), ``evaluation``, ``report`` and ``stats``
(table, paired statistics, figure), ``checkpoints``, ``progress`` (logging), ``runtime``.
"""
from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

import msmix_ext
from msmix_ext.train import distributed as train_distributed
from msmix_ext.train.checkpoints import CHECKPOINT_FORMAT, CheckpointError, evaluate_checkpoints, load_checkpoint
from msmix_ext.train.config import ALL_BACKBONES, BACKBONES, SENTIMENT_RANGE, TrainConfig, parse_fractions, parse_seeds
from msmix_ext.train.data import MultimodalDataset
from msmix_ext.train.evaluation import evaluate, predict
from msmix_ext.train.inputs import load_data
from msmix_ext.train.parallel import Job, resolve_jobs, run_jobs
from msmix_ext.train.loop import build_run, train_one, train_step
from msmix_ext.train.progress import log, setup_logging, show_bars
from msmix_ext.train.report import format_paired, format_table, paired, plot_results, summarize
from msmix_ext.train.runtime import Threads, default_out_dir, machine_info, write_json

__all__ = [
    "ALL_BACKBONES",
    "BACKBONES",
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "SENTIMENT_RANGE",
    "TrainConfig",
    "build_run",
    "evaluate",
    "evaluate_checkpoints",
    "format_paired",
    "format_table",
    "load_checkpoint",
    "load_data",
    "paired",
    "parse_fractions",
    "parse_seeds",
    "predict",
    "run",
    "setup_logging",
    "summarize",
    "train_one",
    "train_step",
]


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
        with Threads(cfg.threads):
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
        with Threads(cfg.threads):
            return _run(cfg, out, splits, data_s)
    finally:
        log.removeHandler(file_handler)
        file_handler.close()


def _job(cfg: TrainConfig, out: Optional[Path], fraction: float, backbone: str, aug: str, seed: int) -> Job:
    suffix = "" if fraction == 1.0 else f"-fraction{fraction:g}"
    ckpt = out / "checkpoints" / f"{backbone}-{aug}-seed{seed}{suffix}.pt" if cfg.save and out else None
    return fraction, backbone, aug, seed, ckpt


def _run(cfg: TrainConfig, out: Optional[Path], splits: Dict[str, MultimodalDataset], data_s: float
         ) -> Dict[str, Any]:
    t0 = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    log.info("msmix_ext %s, torch %s, device %s, %d thread(s); output: %s", msmix_ext.__version__,
             torch.__version__, cfg.device, torch.get_num_threads(), out)
    train = splits["train"]
    log.info("data %s (%s): train/valid/test = %d/%d/%d, dims %s, lengths %s (%.1f s)", cfg.data, cfg.dataset_kind,
             len(train), len(splits["valid"]), len(splits["test"]), train.feature_dims, train.seq_lens, data_s)
    jobs = [(f, b, a, s) for f in cfg.train_fractions for b in cfg.backbones for a in cfg.augmentations
            for s in cfg.seeds]
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
        "paired": {},
    }
    workers = resolve_jobs(cfg, len(jobs))
    results["workers"] = workers
    if workers > 1:
        log.info("%d runs in %d worker processes of %d torch thread(s) each", len(jobs), workers, cfg.threads)
    bar = tqdm(total=len(jobs), desc="runs", unit="run", position=0, disable=not show_bars(cfg.quiet),
               dynamic_ncols=True)
    records: Dict[int, Dict[str, Any]] = {}
    for index, record in run_jobs(cfg, splits, [_job(cfg, out, *job) for job in jobs], workers):
        fraction, backbone, aug, seed = jobs[index]
        bar.update(1)
        bar.set_postfix_str(f"done: {backbone}/{aug}/seed {seed}/fraction {fraction:g}", refresh=True)
        records[index] = record
        results["runs"] = [records[i] for i in sorted(records)]  # job order, whatever finished first
        m = record["test_metrics"]
        log.info("%s/%s/seed %d/fraction %g (%d samples): best epoch %d, valid %s %.4f, test %s %.4f, %.1f s",
                 backbone, aug, seed, fraction, record["train_samples"], record["best_epoch"], cfg.main_metric,
                 record["valid_metrics"][cfg.main_metric], cfg.main_metric, m[cfg.main_metric],
                 record["timing"]["total_s"])
        results["summary"] = summarize(results["runs"])
        results["paired"] = paired(results["runs"])
        results["wall_time_s"] = time.perf_counter() - t0
        if out is not None:
            write_json(out / "results.json", results)  # after every run: partial results survive
    bar.close()
    results["summary"] = summarize(results["runs"])
    results["paired"] = paired(results["runs"])
    table = format_table(results["summary"], len(cfg.seeds)) + "\n\n" + format_paired(results["paired"])
    results["table"] = table
    if out is None:
        results["out"] = None
        return results
    (out / "results.txt").write_text(table + "\n")
    if cfg.plot:
        plot_results(results, out / "results.png")
    results["wall_time_s"] = time.perf_counter() - t0
    write_json(out / "results.json", results)
    log.info("%d runs in %.1f s; wrote %s", len(jobs), results["wall_time_s"], out)
    results["out"] = str(out)
    return results
