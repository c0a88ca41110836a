"""MS-Mix across the ranks of a torch.distributed process group (the ``pool=`` of :func:`fused_mix`).

- ``pool="local"``: each rank mixes its own batch. A seed drawn from a generator is
  folded with the rank (:func:`fold_rank`), so ranks seeded alike still draw apart.
- ``pool="global"``: :func:`global_fused_mix`, SASS over the batch of the whole group.

torch.distributed is the engine; nothing here reads a tensor on the host except the
shape check of :func:`global_fused_mix` (see there).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

from . import ops as _ops
from ._types import MixOutput
from .ratios import mix_ratios

POOLS = ("local", "global")

# Odd, so rank * _RANK_STRIDE differs mod 2**63 for every pair of ranks.
_RANK_STRIDE = 0x9E3779B97F4A7C15
_SEED_MASK = 2**63 - 1


def check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be 'local' or 'global', got {pool!r}")


def process_group_active() -> bool:
    """True under an initialised default process group (e.g. a torchrun worker)."""
    return dist.is_available() and dist.is_initialized()


def fold_rank(seed: torch.Tensor, rank: int) -> torch.Tensor:
    """``seed`` XOR a per-rank constant: unchanged on rank 0, a different seed on every other rank.

    XOR keeps the seed in ``[0, 2**63 - 1]``; it is a tensor op, so a device seed stays on
    the device and torch.compile traces it.
    """
    if rank == 0:
        return seed
    return torch.bitwise_xor(seed, (rank * _RANK_STRIDE) & _SEED_MASK)


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 (rank order); the backward sums every rank's gradient of a
    row block back onto the rank that owns it (reduce_scatter), so gradients of the
    ranks' losses add up as in one process."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        out = rows.new_empty((world * rows.shape[0], *rows.shape[1:]))
        dist.all_gather_single(out, rows.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def _gather_rows(tensors: Sequence[torch.Tensor], group) -> list[torch.Tensor]:
    """Every tensor ``[B, ...]`` gathered to ``[world * B, ...]`` in rank order, with gradients.

    Tensors are packed by dtype into ``[B, C]`` buffers, so one collective moves each dtype.
    """
    batch = tensors[0].shape[0]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for members in by_dtype.values():
        widths = [tensors[i][0].numel() for i in members]
        packed = torch.cat([tensors[i].reshape(batch, -1) for i in members], dim=1)
        gathered = _GatherRows.apply(packed, group)
        for i, piece in zip(members, gathered.split(widths, dim=1)):
            out[i] = piece.reshape(-1, *tensors[i].shape[1:])
    return out  # type: ignore[return-value]


def _header_device(group, device: torch.device) -> torch.device:
    """Where the shape check's collective runs: on the CPU whenever the group's backend
    takes CPU tensors (gloo, or ``cpu:gloo,cuda:nccl``), so no device sync is needed."""
    if device.type == "cpu" or "gloo" in str(dist.get_backend(group)):
        return torch.device("cpu")
    return device


def _check_same_shapes(feats: Sequence[torch.Tensor], labels: torch.Tensor, intensities: torch.Tensor,
                       num_mix: int, group) -> None:
    """Raise on every rank alike unless B, K and the trailing shapes and dtypes agree.

    Mismatched sizes would otherwise hang or corrupt the gathers. On an NCCL-only group the
    check reads 3 * world int64 values back from the device, the one host sync of the call.
    """
    batch = feats[0].shape[0]
    signature = repr(([(tuple(f.shape[1:]), str(f.dtype)) for f in feats], tuple(labels.shape[1:]),
                      str(labels.dtype), tuple(intensities.shape[:1]), str(intensities.dtype)))
    mine = torch.tensor([batch, num_mix, zlib.crc32(signature.encode())], dtype=torch.long,
                        device=_header_device(group, feats[0].device))
    world = dist.get_world_size(group)
    every = mine.new_empty((world * 3,))
    dist.all_gather_single(every, mine, group=group)
    batches, mixes, signatures = every.view(world, 3).cpu().T.tolist()
    if len(set(batches)) > 1:
        raise ValueError(f"pool='global' needs the same batch size B on every rank; got B = {batches} "
                         "in rank order (a DistributedSampler gives every rank equal batches)")
    if len(set(mixes)) > 1:
        raise ValueError(f"pool='global' needs the same num_mix on every rank; got {mixes} in rank order")
    if len(set(signatures)) > 1:
        raise ValueError("pool='global' needs feats, labels and intensities of the same trailing shapes "
                         f"and dtypes on every rank; this rank has {signature}")


def global_fused_mix(feats: list[torch.Tensor], labels: torch.Tensor, intensities: torch.Tensor, *,
                     num_mix: int, threshold: float, seed: torch.Tensor, seed_drawn: bool, alpha: float,
                     group) -> MixOutput:
    """``pool="global"`` of :func:`msmix_ext.fused_mix` (inputs already validated locally).

    The group's batch is the concatenation of the ranks' batches in rank order (N = world * B
    rows); SASS runs on it with ``world * num_mix`` pairs and one seed (a drawn seed is rank
    0's, broadcast). This rank returns its own clean rows followed by the mixed rows
    ``[rank * K, (rank + 1) * K)``; ``idx1`` / ``idx2`` are row indices of the group's batch.

    Communication per call: one all_gather of the rows (SASS's cosine similarities need every
    element of every row, so the rows travel once and the mixed rows' partners come from that
    same gather), of the labels and of the intensities (the min-max weights are over the group's
    batch); in the backward, one reduce_scatter of the same size returns each rank the summed
    gradients of its rows. Plus an 8-byte seed broadcast and a 24-byte-per-rank shape check.
    """
    _check_same_shapes(feats, labels, intensities, num_mix, group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    batch, device = feats[0].shape[0], feats[0].device
    if seed_drawn:
        leader = dist.get_global_rank(group or dist.group.WORLD, 0)
        seed = fold_rank(seed, leader).to(device)
        dist.broadcast(seed, group=group, group_src=0)
    *all_feats, all_labels, all_intensities = _gather_rows([*feats, labels, intensities.T], group)
    all_intensities = all_intensities.T
    idx1, idx2, lam0 = _ops.sass_select([f.detach() for f in all_feats], world * num_mix,
                                                   float(threshold), seed, float(alpha))
    mine = slice(rank * num_mix, (rank + 1) * num_mix)
    idx1, idx2, lam0 = idx1[mine], idx2[mine], lam0[mine]
    lam, lam_label = mix_ratios(all_intensities, idx1, idx2, lam0)
    # mix writes the N clean rows of the group, then this rank's K mixed rows: keep the latter.
    mixed_feats, mixed_labels = _ops.mix(all_feats, all_labels, idx1, idx2, lam, lam_label)
    n = world * batch
    out_feats = [torch.cat([f, m[n:]]) for f, m in zip(feats, mixed_feats)]
    return MixOutput(out_feats, torch.cat([labels, mixed_labels[n:]]), idx1, idx2, lam, lam_label,
                     all_labels.index_select(0, idx1), all_labels.index_select(0, idx2), lam0)
