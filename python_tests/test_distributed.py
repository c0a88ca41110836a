"""fused_mix / MSMix under torch.distributed: 2 spawned gloo ranks on the CPU (loopback only).

Each worker builds the same global batch from a fixed seed, takes its rank's rows, and
compares against fused_mix run in-process on the whole batch (the one-process result).
The checks share one spawn of the two ranks (process start-up dominates their cost); each
test reports its own check.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import msmix_ext
from conftest import requires_extension
from helpers import make_feats
from msmix_ext import MSMix, fused_mix, seed_tensor

pytestmark = [requires_extension,
              pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")]

WORLD = 2
ROOT = Path(__file__).resolve().parents[1]


def _worker(rank: int, folder: str) -> None:
    """Run every check of CHECKS on this rank; write the tracebacks of the failed ones."""
    torch.set_num_threads(1)
    # a rank stuck in a collective after its peer failed gives up within a minute
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    failures = {}
    try:
        for name, check in CHECKS.items():
            try:
                check(rank)
            except Exception:
                failures[name] = traceback.format_exc()
    finally:
        dist.destroy_process_group()
        Path(folder, f"rank{rank}.json").write_text(json.dumps(failures))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The failures of every check on each of the 2 gloo ranks."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _assert_passed(ranks, name):
    failed = [f"rank {r}:\n{failures[name]}" for r, failures in enumerate(ranks) if name in failures]
    assert not failed, "\n".join(failed)


def _global_batch(batch, shapes, label_shape=()):
    """feats, labels, intensities of the WORLD * batch rows of the group, float64."""
    n = WORLD * batch
    g = torch.Generator().manual_seed(7)
    feats = make_feats(shapes, n, dtype=torch.float64, seed=3)
    labels = torch.empty(n, *label_shape, dtype=torch.float64).uniform_(-3, 3, generator=g)
    intensities = torch.empty(len(shapes), n, dtype=torch.float64).uniform_(-3, 3, generator=g)
    return feats, labels, intensities


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _weights(out, seed):
    """Fixed random weights for every differentiable output of a MixOutput."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64)  # noqa: E731
    return [rand(f) for f in out.feats], rand(out.labels), rand(out.lam), rand(out.lam_label), \
        rand(out.labels1), rand(out.labels2)


def _loss(out, weights):
    wf, wl, wlam, wll, w1, w2 = weights
    loss = sum((f * w).sum() + 0.1 * (f ** 2 * w).sum() for f, w in zip(out.feats, wf))
    return loss + (out.labels * wl).sum() + (out.lam * wlam).sum() + (out.lam_label * wll).sum() \
        + (out.labels1 * w1).sum() + (out.labels2 * w2).sum()


def _rank_rows(t, rank, batch, num_mix):
    """This rank's rows of a one-process result: clean rows, then its K mixed rows."""
    n = WORLD * batch
    return torch.cat([t[rank * batch:(rank + 1) * batch], t[n + rank * num_mix:n + (rank + 1) * num_mix]])


def _check_global_equals_one_process(rank, batch, num_mix, shapes, threshold, label_shape=(), drawn=False,
                                     group=None):
    feats, labels, intensities = _global_batch(batch, shapes, label_shape)
    n, m = WORLD * batch, len(shapes)
    # one process on the concatenated batch
    rf, rl, ri = _leaves(*feats), *_leaves(labels, intensities)
    seed = seed_tensor(generator=torch.Generator().manual_seed(100)) if drawn else 1234
    ref = fused_mix(rf, rl, ri, num_mix=WORLD * num_mix, threshold=threshold, seed=seed)
    ref_weights = _weights(ref, seed=11)
    _loss(ref, ref_weights).backward()
    # this rank's part under pool="global"
    rows = slice(rank * batch, (rank + 1) * batch)
    lf, ll, li = _leaves(*[f[rows] for f in feats]), *_leaves(labels[rows], intensities[:, rows])
    if drawn:  # every rank draws from its own generator; rank 0's seed must win
        kwargs = {"generator": torch.Generator().manual_seed(100 + 17 * rank)}
    else:
        kwargs = {"seed": 1234}
    out = fused_mix(lf, ll, li, num_mix=num_mix, threshold=threshold, pool="global", group=group, **kwargs)
    mixed = slice(rank * num_mix, (rank + 1) * num_mix)
    for got, want in zip(out.feats, ref.feats):
        torch.testing.assert_close(got, _rank_rows(want, rank, batch, num_mix), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.labels, _rank_rows(ref.labels, rank, batch, num_mix), rtol=0, atol=1e-10)
    assert torch.equal(out.idx1, ref.idx1[mixed]) and torch.equal(out.idx2, ref.idx2[mixed])
    for name in ("lam_label", "labels1", "labels2", "lam0"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name)[mixed], rtol=0, atol=1e-10)
    torch.testing.assert_close(out.lam, ref.lam[:, mixed], rtol=0, atol=1e-10)
    # the ranks' losses, with this rank's slice of the same weights, sum to the one-process loss
    wf, wl, wlam, wll, w1, w2 = ref_weights
    local_weights = ([_rank_rows(w, rank, batch, num_mix) for w in wf], _rank_rows(wl, rank, batch, num_mix),
                     wlam[:, mixed], wll[mixed], w1[mixed], w2[mixed])
    _loss(out, local_weights).backward()
    for got, want in zip(lf, rf):
        torch.testing.assert_close(got.grad, want.grad[rows], rtol=0, atol=1e-10)
    torch.testing.assert_close(ll.grad, rl.grad[rows], rtol=0, atol=1e-10)
    torch.testing.assert_close(li.grad, ri.grad[:, rows], rtol=0, atol=1e-10)
    assert int(out.idx1.max()) < n and int(out.idx2.max()) < n and out.lam.shape == (m, num_mix)


def _global_cases(rank):
    # sequences and vectors, an explicit seed; the pairs come from both ranks' rows
    _check_global_equals_one_process(rank, batch=6, num_mix=4, shapes=[(5,), (3, 4)], threshold=0.3)
    # too few similar pairs: the fallback of the whole batch; [B, 1] labels; K > B
    _check_global_equals_one_process(rank, batch=3, num_mix=5, shapes=[(4,), (2, 3), (6,)], threshold=0.99,
                                     label_shape=(1,))
    # a drawn seed: rank 0's draw is broadcast, here on a process group of its own
    _check_global_equals_one_process(rank, batch=5, num_mix=5, shapes=[(6,), (4,)], threshold=0.4, drawn=True,
                                     group=dist.new_group())


def test_global_pool_equals_one_process_on_the_concatenated_batch(ranks):
    _assert_passed(ranks, "global")


def _msmix_global(rank):
    batch, dims = 4, (6, 5)
    feats, labels, _ = _global_batch(batch, [(3, d) for d in dims])
    torch.manual_seed(0)
    module = MSMix(dims, num_heads=2, pool="global").double().train()
    reference = MSMix(dims, num_heads=2).double().train()
    reference.load_state_dict(module.state_dict())
    rows = slice(rank * batch, (rank + 1) * batch)
    out, sal = module([f[rows] for f in feats], labels[rows], seed=5)
    ref, _ = reference(feats, labels, seed=5)
    for got, want in zip(out.feats, ref.feats):
        torch.testing.assert_close(got, _rank_rows(want, rank, batch, batch), rtol=0, atol=1e-10)
    torch.testing.assert_close(out.lam, ref.lam[:, rank * batch:(rank + 1) * batch], rtol=0, atol=1e-10)
    # SAL stays the loss of the rank's own batch
    own = module.intensities([f[rows] for f in feats])
    torch.testing.assert_close(sal, msmix_ext.sentiment_alignment_loss(own, labels[rows], 3.0, 1000.0))


def test_msmix_module_global_pool(ranks):
    _assert_passed(ranks, "msmix")


def _local_draws(rank):
    feats, labels, intensities = _global_batch(4, [(5,), (3,)])
    torch.manual_seed(0)  # as most training scripts do, on every rank
    drawn = fused_mix(feats, labels, intensities, num_mix=6, threshold=0.2).lam0
    both = torch.empty(WORLD * 6, dtype=drawn.dtype)
    dist.all_gather_single(both, drawn)
    assert not torch.equal(both[:6], both[6:]), "ranks drew the same lam0 under one manual_seed"
    # rank 0 draws what one process draws; an explicit seed is used as given on every rank
    torch.manual_seed(0)
    one_process = fused_mix(feats, labels, intensities, num_mix=6, threshold=0.2, seed=seed_tensor())
    assert torch.equal(drawn, one_process.lam0) == (rank == 0)
    explicit = fused_mix(feats, labels, intensities, num_mix=6, threshold=0.2, seed=99).lam0
    dist.all_gather_single(both, explicit)
    assert torch.equal(both[:6], both[6:])


def test_local_pool_draws_differ_per_rank(ranks):
    _assert_passed(ranks, "local")


def _mismatches(rank):
    shapes = [(5,), (3,)]
    feats, labels, intensities = _global_batch(5, shapes)
    b = 4 + rank  # B = 4 on rank 0, 5 on rank 1
    with pytest.raises(ValueError, match=r"same batch size B on every rank; got B = \[4, 5\]"):
        fused_mix([f[:b] for f in feats], labels[:b], intensities[:, :b], pool="global")
    with pytest.raises(ValueError, match=r"same num_mix on every rank; got \[2, 3\]"):
        fused_mix(feats, labels, intensities, num_mix=2 + rank, pool="global")
    wider = make_feats([(5 + rank,), (3,)], 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="same trailing shapes and dtypes on every rank"):
        fused_mix(wider, labels, intensities, pool="global")
    # the group is still usable after the errors
    out = fused_mix(feats, labels, intensities, num_mix=3, pool="global", seed=1)
    assert out.feats[0].shape == (10 + 3, 5)


def test_global_pool_mismatched_ranks_raise_on_every_rank(ranks):
    _assert_passed(ranks, "mismatch")


CHECKS = {"global": _global_cases, "msmix": _msmix_global, "local": _local_draws, "mismatch": _mismatches}


def test_pool_argument_is_checked():
    feats, labels, intensities = _global_batch(3, [(4,)])
    with pytest.raises(ValueError, match="pool must be 'local' or 'global', got 'world'"):
        fused_mix(feats, labels, intensities, pool="world")
    with pytest.raises(ValueError, match="pool must be 'local' or 'global'"):
        MSMix((4,), pool="all")


def test_global_pool_without_process_group_is_the_local_call():
    feats, labels, intensities = _global_batch(4, [(4,), (2, 3)])
    a = fused_mix(feats, labels, intensities, seed=3, pool="global")
    b = fused_mix(feats, labels, intensities, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.feats, b.feats)) and torch.equal(a.idx1, b.idx1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("pool", ["global"])
def test_torchrun_trains_one_data_parallel_model(tmp_path, pool):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "msmix_ext.train", "--epochs", "1", "--backbones", "late_fusion", "--augmentations", "msmix",
           "--seeds", "1", "--synthetic-config", '{"split_sizes": [36, 11, 13]}', "--batch-size", "6",
           "--pool", pool, "--no-plot", "--quiet", "--save", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == WORLD and results["config"]["pool"] == pool
    (record,) = results["runs"]
    # every rank's share of the epoch: 36 / 2 = 18 samples in batches of 6
    assert record["steps_per_epoch"] == 3
    # only rank 0 wrote: one result set, one checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "results.json", "results.txt", "train.log"]
    # the test metrics are of the whole test split: one process re-evaluating the checkpoint agrees
    from msmix_ext.train import runner
    again = runner.evaluate_checkpoints([out / "checkpoints"])["runs"][0]
    assert again["max_abs_diff"] < 1e-5, again
