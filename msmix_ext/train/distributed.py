"""Data-parallel training under torchrun: ``torchrun --nproc_per_node N -m msmix_ext.train --pool local|global``.

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; :func:`session` then initialises the
process group (gloo on the CPU; NCCL for CUDA tensors with gloo for CPU ones) and the runner
trains one model on all ranks:

- every rank draws its training samples from a ``DistributedSampler`` (reshuffled per epoch,
  the same seed as the run) in batches of ``--batch-size``, so a step sees N x that many samples;
- the step runs inside ``DistributedDataParallel``, which averages the gradients;
- torch's generator is reseeded per rank after the model is built (identical weights,
  independent dropout and augmentation draws);
- MS-Mix mixes with ``pool=cfg.pool`` on a process group of its own, apart from DDP's;
- evaluation splits the validation / test set across the ranks and gathers the predictions,
  so every rank computes the metrics of the whole split and selects the same epoch; the
  recorded training loss of an epoch is over the samples of every rank;
- only rank 0 writes (log, results, figure, checkpoints) and prints.

Without torchrun none of this is active and the runner is the one-process runner.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

# The process group MS-Mix's collectives run on, while a session is active.
_mix_group: Optional[dist.ProcessGroup] = None


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True inside :func:`session` under torchrun."""
    return _mix_group is not None


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes output: rank 0, or the only process."""
    return rank() == 0


def mix_group() -> Optional[dist.ProcessGroup]:
    return _mix_group


@contextmanager
def session(device: str) -> Iterator[str]:
    """Under torchrun, a process group for the block; yields the device this rank trains on
    (``cuda`` becomes ``cuda:LOCAL_RANK``). Without torchrun it yields ``device`` unchanged."""
    global _mix_group
    if not launched():
        yield device
        return
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"  # CPU tensors (the shape check, metrics) stay off the GPU
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        # MS-Mix's collectives run inside the backward, next to DDP's gradient all-reduces:
        # a group of their own keeps the two streams of collectives apart.
        _mix_group = dist.new_group(backend=backend)
        yield device
    finally:
        _mix_group = None
        dist.destroy_process_group()


def samples_per_rank(n: int) -> int:
    """Training samples a rank sees per epoch (DistributedSampler pads the split to N x that)."""
    return math.ceil(n / world_size())


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (the values themselves when not under torchrun)."""
    if not active():
        return values
    summed = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(summed)  # a CPU tensor: gloo (alone or next to NCCL)
    return tuple(summed.tolist())


def shard(dataset, seed: int, epoch: int):
    """This rank's training samples of ``epoch``: a DistributedSampler shard, equal in size on
    every rank, so the ranks' batches have equal sizes (as ``pool="global"`` needs)."""
    sampler = DistributedSampler(range(len(dataset)), num_replicas=world_size(), rank=rank(), shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    return dataset.subset(torch.tensor(list(sampler), dtype=torch.long))


class _Step(nn.Module):
    """The trained modules under one root, whose forward is the training step, for DDP."""

    def __init__(self, modules: list[Optional[nn.Module]]):
        super().__init__()
        self.parts = nn.ModuleList(m for m in modules if m is not None)

    def forward(self, step: Callable, batch):
        return step(batch)


def data_parallel(step: Callable, model: nn.Module, msmix: Optional[nn.Module], seed: int,
                  device: str) -> Callable:
    """``step(batch) -> loss`` run through DistributedDataParallel over ``model`` and ``msmix``.

    Also reseeds torch's generator with a per-rank seed (rank 0 keeps its stream), so the
    ranks' dropout and augmentation draws differ.
    """
    device_ids = [torch.device(device).index] if device.startswith("cuda") else None
    ddp = DistributedDataParallel(_Step([model, msmix]), device_ids=device_ids)
    if rank() > 0:
        torch.manual_seed(seed + rank() * 2**32)
    return lambda batch: ddp(step, batch)


def predict_whole(predict: Callable, model: nn.Module, dataset, batch_size: int, device: str) -> torch.Tensor:
    """``predict`` on the whole ``dataset``, each rank predicting one contiguous part; the
    predictions ``[N]`` (float32, CPU, in dataset order) on every rank."""
    n, world = len(dataset), world_size()
    per_rank = math.ceil(n / world)
    start, stop = min(rank() * per_rank, n), min((rank() + 1) * per_rank, n)
    padded = torch.zeros(per_rank, dtype=torch.float32)
    if stop > start:
        padded[:stop - start] = predict(model, dataset.subset(torch.arange(start, stop)), batch_size, device)
    every = padded.new_empty(world * per_rank)
    dist.all_gather_single(every, padded)  # CPU tensors: gloo (alone or next to NCCL)
    return every[:n]
