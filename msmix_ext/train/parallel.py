"""Runs of one call trained side by side in worker processes (``--jobs``).

Every run is a pure function of its (fraction, backbone, augmentation, seed): it seeds
torch itself (:func:`~msmix_ext.train.loop.build_run`) and draws its training subset from
its seed, so the order and the process it runs in change nothing; with one torch thread
per worker (the default ``--threads 1``) the records equal those of a serial call.
Each worker builds the data once (:func:`~msmix_ext.train.inputs.load_data`: the
synthetic set is regenerated from its seed, a pickle is read again) rather than receiving
it through a pipe. Workers are spawned, not forked: the parent already runs torch's
thread pools, which a fork does not carry over safely.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch

from msmix_ext.train import distributed as train_distributed
from msmix_ext.train.config import TrainConfig
from msmix_ext.train.data import MultimodalDataset
from msmix_ext.train.inputs import load_data, train_subset
from msmix_ext.train.loop import train_one

__all__ = ["Job", "resolve_jobs", "run_jobs"]

Job = Tuple[float, str, str, int, Optional[Path]]  # fraction, backbone, augmentation, seed, checkpoint


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(cfg: TrainConfig, num_runs: int) -> int:
    """Worker processes for ``num_runs`` runs: ``cfg.jobs``, or with 0 (auto) one per usable
    core's worth of ``cfg.threads`` on the CPU; always 1 under torchrun or on a GPU."""
    if train_distributed.active() or cfg.device != "cpu" or num_runs <= 1:
        return 1
    if cfg.jobs > 0:
        return min(cfg.jobs, num_runs)
    return max(1, min(usable_cores() // max(cfg.threads, 1), num_runs))


def _one(cfg: TrainConfig, splits: Dict[str, MultimodalDataset], job: Job) -> Dict[str, Any]:
    fraction, backbone, aug, seed, ckpt = job
    run_splits = dict(splits, train=train_subset(splits["train"], fraction, seed))
    return train_one(cfg, run_splits, backbone, aug, seed, ckpt, train_fraction=fraction)


_WORKER: Dict[str, Any] = {}


def _init_worker(cfg_dict: Dict[str, Any]) -> None:
    cfg = TrainConfig.from_dict(cfg_dict)
    cfg.quiet = True  # no bars from the workers; the parent reports each finished run
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    _WORKER["cfg"], _WORKER["splits"] = cfg, load_data(cfg)


def _run_in_worker(job: Job) -> Dict[str, Any]:
    return _one(_WORKER["cfg"], _WORKER["splits"], job)


def run_jobs(cfg: TrainConfig, splits: Dict[str, MultimodalDataset], jobs: Sequence[Job], workers: int
             ) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yields ``(index into jobs, record)`` as runs finish: in order with one worker (in this
    process), in order of completion with several."""
    if workers <= 1:
        for i, job in enumerate(jobs):
            yield i, _one(cfg, splits, job)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(cfg.to_dict(),))
    try:
        pending: Dict[Future, int] = {pool.submit(_run_in_worker, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                yield pending.pop(future), future.result()
    finally:  # on an error (or Ctrl-C) the queued runs are dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)
