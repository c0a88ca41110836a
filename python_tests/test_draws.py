"""The random draws of SASS and lam0 (design.md §4.5-4.6, 5): pinned golden values and
their distributions.

Golden draws
------------
``golden/sass_draws.json`` records ``idx1``, ``idx2`` and ``lam0`` of ``fused_mix`` for fixed
inputs and seeds, one case per random branch: the valid-pair draw, the fallback draw
without replacement and the fallback's with-replacement tail. A uniform but *different*
draw (a wrong Philox stream, counter or key order, a changed Beta sampler) passes every
distribution test below and fails here. The same table is checked on CUDA when a GPU
is present, so CPU and CUDA are pinned to one another as well.

The inputs are unit vectors at angles ``STEP * mark`` with the marks of a Golomb ruler,
so every pair of samples has its own angle difference and so its own S': no two S'
coincide, no S' lies near a threshold, and the test asserts the gaps are far above
float32 rounding. So the table does not depend on BLAS, thread count or CPU model.

To regenerate (only when the draw changes on purpose, e.g. a new stream layout or Beta
sampler; say so in the commit, since every seeded run's pairs change with it):

    .venv/bin/python python_tests/test_draws.py --write

Distribution tests
------------------
Each is seeded (so it gives the same verdict on every run) and its threshold is chosen
for a stated false-alarm rate over seeds; the comment by each says what it detects.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np
import pytest
import torch

import msmix_ext as mx

from conftest import requires_extension
from helpers import chi_square_pvalue, golomb_feats, golomb_similarity

pytestmark = requires_extension

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "sass_draws.json"
# float32 S' is exact to a few 1e-7; every gap the draws depend on must be far larger.
MIN_GAP = 1e-3

CASES = {
    # |V| = 12 ordered pairs >= K = 6: six distinct valid pairs
    "valid": dict(threshold=0.915, num_mix=6, seed=12345, alpha=2.0),
    # |V| = 6 < K = 10: ten distinct pairs from the 2K = 20 most similar unordered pairs
    "fallback": dict(threshold=0.97, num_mix=10, seed=777, alpha=0.5),
    # |V| = 6 < K = 40 > |C| = 28: every candidate once, then 12 with replacement
    "tail": dict(threshold=0.97, num_mix=40, seed=2**62 + 3, alpha=8.0),
}


def test_golden_inputs_have_no_near_ties():
    s = golomb_similarity()
    upper = sorted((float(s[i, j]) for i in range(8) for j in range(i + 1, 8)), reverse=True)
    # distinct S' for every unordered pair: fallback ranks and the candidate cut are robust
    assert min(a - b for a, b in zip(upper, upper[1:])) > MIN_GAP
    for name, case in CASES.items():
        assert min(abs(v - case["threshold"]) for v in upper) > MIN_GAP, name
    # the fused S' agrees with the hand formula to float32 rounding, far inside the gaps
    torch.testing.assert_close(mx.similarity(golomb_feats(dtype=torch.float32)).double(), s,
                               rtol=0, atol=1e-5)


def test_golden_cases_take_the_intended_branch():
    s = golomb_similarity()
    valid = lambda t: int((s > t).sum())  # noqa: E731  (the diagonal is 0, never above t)
    assert valid(CASES["valid"]["threshold"]) >= CASES["valid"]["num_mix"]
    assert valid(CASES["fallback"]["threshold"]) < CASES["fallback"]["num_mix"] < 28 / 2
    assert valid(CASES["tail"]["threshold"]) < CASES["tail"]["num_mix"] and CASES["tail"]["num_mix"] > 28


def draw(case, device="cpu", dtype=torch.float64):
    feats = golomb_feats(device, dtype)
    out = mx.fused_mix(feats, torch.zeros(8, dtype=dtype, device=device), torch.zeros(2, 8, device=device),
                       num_mix=case["num_mix"], threshold=case["threshold"], alpha=case["alpha"], seed=case["seed"])
    return out.idx1.cpu().tolist(), out.idx2.cpu().tolist(), out.lam0.cpu().double().tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", CASES)
def test_golden_draws(device, name, dtype):
    table = json.loads(GOLDEN.read_text())
    want = table[name]
    assert {k: want[k] for k in CASES[name]} == CASES[name], "golden/sass_draws.json was made for other inputs"
    idx1, idx2, lam0 = draw(CASES[name], device, dtype)
    assert (idx1, idx2) == (want["idx1"], want["idx2"])
    # lam0 is drawn in float64 (libm last bits may differ between machines) and stored in
    # the accumulate dtype
    tol = dict(rtol=1e-9, atol=0) if dtype == torch.float64 else dict(rtol=2**-23, atol=0)
    torch.testing.assert_close(torch.tensor(lam0, dtype=torch.float64), torch.tensor(want["lam0"], dtype=torch.float64),
                               **tol)


def test_golden_tail_structure():
    # the recorded tail itself obeys §4.6: the first |C| = 28 pairs are the 28 unordered
    # pairs, each once; the 12 after them repeat candidates
    want = json.loads(GOLDEN.read_text())["tail"]
    pairs = list(zip(want["idx1"], want["idx2"]))
    assert sorted(pairs[:28]) == [(i, j) for i in range(8) for j in range(i + 1, 8)]
    assert all(i < j for i, j in pairs[28:])


def _philox4x32_10(seed: int, index: np.ndarray, stream: int) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 (Salmon et al., SC'11) of counters (index, stream, 0) under the
    64-bit key ``seed``: the four 32-bit output words, one array each."""
    low32 = np.uint64(0xFFFFFFFF)
    c0, c1 = index & low32, index >> np.uint64(32)
    c2, c3 = np.full_like(index, stream), np.zeros_like(index)
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2  # < 2^64: exact
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & low32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & low32)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _valid_pair_keys(seed: int, batch: int) -> np.ndarray:
    """design.md §4.5: the priority key of ordered pair (i, j) at flat index f = i B + j
    is the low (f even) or high (f odd) 64 bits of Philox block f // 2 on stream 0."""
    flat = np.arange(batch * batch, dtype=np.uint64)
    v0, v1, v2, v3 = _philox4x32_10(seed, flat >> np.uint64(1), stream=0)
    return np.where(flat % np.uint64(2) == 0, v0 | (v1 << np.uint64(32)), v2 | (v3 << np.uint64(32)))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,seed", [(2, 5), (3, 2**40 + 17), (9, 123), (17, 2**63 - 1), (64, 99),
                                        (70, 2**33)])
def test_valid_draw_takes_the_smallest_philox_keys(batch, seed, threads):
    # The valid-pair draw recomputed from the published Philox: the K valid pairs with
    # the smallest (key, flat) in ascending order. The CPU computes these keys in AVX2
    # registers where it can, four blocks at a time, with scalar rounds at odd row starts
    # and row ends; odd B and B = 70 put both in every row, the seeds above 2^32 use both
    # key words. S' is the operator's own, so no pair can flip at the threshold.
    feats = [torch.randn(batch, 6, generator=torch.Generator().manual_seed(batch)) for _ in range(2)]
    s = mx.similarity(feats).numpy()
    threshold = 0.3
    valid = (s > threshold) & ~np.eye(batch, dtype=bool)
    num_mix = max(1, int(valid.sum()) // 2)
    assert valid.sum() >= num_mix
    keys = _valid_pair_keys(seed, batch)
    flat = np.flatnonzero(valid.reshape(-1))
    want = flat[np.lexsort((flat, keys[flat]))][:num_mix]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        idx1, idx2 = mx.sass_select(feats, num_mix, threshold, seed=seed)
    finally:
        torch.set_num_threads(previous)
    assert (idx1 * batch + idx2).tolist() == want.tolist()


# --- distributions -----------------------------------------------------------------------------

def _ordered_pair_counts(batch, idx1, idx2):
    return torch.bincount(idx1 * batch + idx2, minlength=batch * batch)


def test_valid_draw_is_uniform_without_replacement():
    # Golomb inputs, threshold 0.55: V holds 30 of the 56 ordered pairs.
    s = golomb_similarity()
    feats = golomb_feats()
    threshold, num_mix, draws = 0.55, 5, 3000
    valid = torch.nonzero((s > threshold).reshape(-1)).reshape(-1)
    assert valid.numel() == 30
    counts = torch.zeros(64, dtype=torch.long)
    first = torch.zeros(64, dtype=torch.long)
    for seed in range(draws):
        idx1, idx2 = mx.sass_select(feats, num_mix, threshold, seed=seed)
        flat = idx1 * 8 + idx2
        assert flat.unique().numel() == num_mix, "a valid pair was drawn twice in one call"
        counts += torch.bincount(flat, minlength=64)
        first[flat[0]] += 1
    assert counts.sum() == counts[valid].sum(), "a pair outside V was drawn"
    # Uniform without replacement: every valid pair is in a call with probability K / |V|,
    # and is the first pair with probability 1 / |V|. At p > 1e-3 (the false-alarm rate),
    # the 15000 inclusions detect with power > 0.99 a tilt of 10% between two halves of V
    # (noncentrality 15000 * 0.1^2 / ... >= 40 against ~30 degrees of freedom); the 3000
    # first picks detect a tilt of 25%.
    assert chi_square_pvalue(counts[valid], draws * num_mix / valid.numel()) > 1e-3
    assert chi_square_pvalue(first[valid], draws / valid.numel()) > 1e-3


def test_fallback_tail_is_uniform_over_candidates_with_replacement():
    # B = 5: C is all 10 unordered pairs; K = 14 leaves a tail of 4 draws with replacement.
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(5, 4, generator=g)]
    num_mix, draws = 14, 2000
    candidates = torch.tensor([i * 5 + j for i in range(5) for j in range(i + 1, 5)])
    tail = torch.zeros(25, dtype=torch.long)
    for seed in range(draws):
        idx1, idx2 = mx.sass_select(feats, num_mix, threshold=0.99, seed=seed)
        flat = idx1 * 5 + idx2
        assert sorted(flat[:10].tolist()) == candidates.tolist(), "every candidate once before the tail"
        tail += torch.bincount(flat[10:], minlength=25)
    assert tail.sum() == tail[candidates].sum() == draws * 4
    # 8000 multinomial draws over 10 ranks: at a 1e-3 false-alarm rate this detects with
    # power > 0.99 one rank drawn at 0 or 2x its share (e.g. floor(u * (|C| - 1)), which
    # never picks the last rank), or a 15% tilt between the top and bottom half of C.
    assert chi_square_pvalue(tail[candidates], draws * 4 / 10) > 1e-3


def _beta_cdf(x: float, alpha: float) -> float:
    """The Beta(alpha, alpha) CDF, the regularised incomplete beta function (mpmath)."""
    import mpmath

    return float(mpmath.betainc(alpha, alpha, 0, x, regularized=True))


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0, 8.0])
def test_lam0_is_beta_alpha_alpha(alpha):
    pytest.importorskip("mpmath")
    n = 20000
    feats = [torch.randn(4, 3, generator=torch.Generator().manual_seed(0))]
    lam0 = torch.ops.msmix.sass_select(feats, n, 0.4, torch.tensor(11), alpha)[2].double()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)), kurtosis 3 - 6 / (2a + 3).
    var = 1 / (4 * (2 * alpha + 1))
    kurtosis = 3 - 6 / (2 * alpha + 3)
    # |z| < 4.5 for mean and variance: false alarm < 1e-5 each. The mean test detects a
    # shift of 0.01 (a skewed Beta(a, b) with b/a off by ~8%); the variance test (its
    # standard error var * sqrt((kurtosis - 1) / n)) detects an alpha off by 8% at
    # alpha = 8, and by 2% at alpha = 0.2, with power > 0.9.
    z_mean = (lam0.mean().item() - 0.5) / math.sqrt(var / n)
    z_var = (lam0.var().item() - var) / (var * math.sqrt((kurtosis - 1) / n))
    assert abs(z_mean) < 4.5 and abs(z_var) < 4.5, (z_mean, z_var)
    # Kolmogorov-Smirnov against the exact CDF on a grid: the critical value 1.95 / sqrt(n)
    # (false alarm 1e-3) detects any CDF error above 0.014, e.g. Beta(a, a) drawn as
    # Beta(a + 1, a + 1) or through a mis-scaled Gamma.
    grid = [k / 100 for k in range(1, 100)]
    empirical = [(lam0 <= x).double().mean().item() for x in grid]
    assert max(abs(e - _beta_cdf(x, alpha)) for e, x in zip(empirical, grid)) < 1.95 / math.sqrt(n)


def _write_golden():
    table = {}
    for name, case in CASES.items():
        idx1, idx2, lam0 = draw(case)
        table[name] = {**case, "idx1": idx1, "idx2": idx2, "lam0": lam0}
    lines = [f" {json.dumps(name)}: {json.dumps(case)}" for name, case in table.items()]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python python_tests/test_draws.py --write   (see the module docstring first)")
    _write_golden()
