"""Backbones: shapes, gradients, padding masks, the Manifold-Mixup hook."""
import pytest
import torch

from msmix_ext.models import MODELS, CrossModalTransformer, LateFusion, build_model
from msmix_ext.models.common import check_masks, masked_mean
from msmix_ext.models.cross_modal import TokenPool

DIMS = (12, 5, 7)
LENS = (6, 9, 11)
B = 5


def make_inputs(seed=0, batch=B):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, L, D, generator=g) for L, D in zip(LENS, DIMS)]
    # prefix masks with varied lengths; sample 1 has no valid audio at all
    masks = []
    for m, L in enumerate(LENS):
        lengths = torch.randint(1, L + 1, (batch,), generator=g)
        if m == 1:
            lengths[1] = 0
        masks.append(torch.arange(L)[None, :] < lengths[:, None])
    return xs, masks


def make_model(name, dropout=0.0):
    torch.manual_seed(0)
    return build_model(name, DIMS, dropout=dropout)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes(name):
    model = make_model(name).eval()
    xs, masks = make_inputs()
    feats = model.features(*xs, masks)
    assert len(feats) == 3
    for f, d in zip(feats, model.feature_dims):
        assert f.shape[0] == B and f.shape[-1] == d
    if isinstance(model, CrossModalTransformer):
        assert all(f.shape == (B, 4, 32) for f in feats)
    else:
        assert all(f.shape == (B, 64) for f in feats)
    pred = model(*xs, masks)
    assert pred.shape == (B,)
    assert torch.isfinite(pred).all()
    torch.testing.assert_close(pred, model.head(feats))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_every_parameter(name):
    model = make_model(name).train()
    xs, masks = make_inputs()
    y = torch.linspace(-2, 2, B)
    loss = (model(*xs, masks) - y).pow(2).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padded_values_do_not_matter(name):
    model = make_model(name).eval()
    xs, masks = make_inputs()
    ref = model(*xs, masks)
    g = torch.Generator().manual_seed(1)
    changed = []
    for x, m in zip(xs, masks):
        junk = 100 * torch.randn(x.shape, generator=g)
        junk[:, :, 0] = float("nan")  # even NaN padding is ignored
        changed.append(torch.where(m.unsqueeze(-1), x, junk))
    assert torch.isnan(changed[1]).any()
    out = model(*changed, masks)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mask_equals_truncation(name):
    # A masked, padded sample gives what the same sample gives with its padding cut off.
    model = make_model(name).eval()
    xs, masks = make_inputs()
    full = model(*xs, masks)
    for i in range(B):
        if not all(m[i].any() for m in masks):
            continue
        cut = [x[i:i + 1, : int(m[i].sum())] for x, m in zip(xs, masks)]
        torch.testing.assert_close(model(*cut)[0], full[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_none_mask_equals_all_true(name):
    model = make_model(name).eval()
    xs, _ = make_inputs()
    ones = [torch.ones(x.shape[:2], dtype=torch.bool) for x in xs]
    torch.testing.assert_close(model(*xs, ones), model(*xs), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(*xs, [None, ones[1], None]), model(*xs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mix_hook(name):
    model = make_model(name).eval()
    xs, masks = make_inputs()
    feats = model.features(*xs, masks)
    ref = model.head(feats)
    idx1, idx2 = torch.tensor([0, 3]), torch.tensor([2, 4])
    seen = []

    def identity(hidden):
        seen.append([h.shape for h in hidden])
        return hidden

    def append_mix(hidden):
        return [torch.cat([h, 0.3 * h[idx1] + 0.7 * h[idx2]]) for h in hidden]

    for layer in range(model.hidden_layers + 1):
        torch.testing.assert_close(model.head(feats, mix_fn=identity, mix_layer=layer), ref)
        out = model.head(feats, mix_fn=append_mix, mix_layer=layer)
        assert out.shape == (B + 2,)
        # Samples do not interact in eval mode, so the clean rows are unchanged.
        torch.testing.assert_close(out[:B], ref, rtol=1e-5, atol=1e-6)
    assert len(seen) == model.hidden_layers + 1
    assert len(seen[0]) == 3  # layer 0 is the feature list
    # Mixing the feature list inside the head equals mixing it before the head.
    torch.testing.assert_close(model.head(append_mix(list(feats))), model.head(feats, None, append_mix, 0))


def test_late_fusion_hidden_is_single_tensor():
    model = make_model("late_fusion").eval()
    xs, masks = make_inputs()
    shapes = {}

    def record(layer):
        def fn(hidden):
            shapes[layer] = [tuple(h.shape) for h in hidden]
            return hidden
        return fn

    feats = model.features(*xs, masks)
    for layer in (1, 2):
        model.head(feats, mix_fn=record(layer), mix_layer=layer)
    assert shapes == {1: [(B, 64)], 2: [(B, 64)]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_head_argument_errors(name):
    model = make_model(name)
    xs, masks = make_inputs()
    feats = model.features(*xs, masks)
    with pytest.raises(ValueError, match="together"):
        model.head(feats, mix_fn=lambda h: h)
    with pytest.raises(ValueError, match="mix_layer"):
        model.head(feats, mix_fn=lambda h: h, mix_layer=model.hidden_layers + 1)
    with pytest.raises(ValueError, match="padding"):
        model.head(feats, masks)
    with pytest.raises(ValueError, match="feature tensors"):
        model.head(feats[:2])
    with pytest.raises(ValueError, match="returned"):
        model.head(feats, mix_fn=lambda h: h[:1] + h, mix_layer=0)
    model.head(feats, [None, None, None])  # all-None masks are fine


def test_mask_and_name_validation():
    xs, masks = make_inputs()
    with pytest.raises(ValueError, match="3 entries"):
        check_masks(masks[:2], xs)
    with pytest.raises(ValueError, match="bool"):
        check_masks([masks[0].float(), None, None], xs)
    with pytest.raises(ValueError, match="mask 2"):
        check_masks([None, None, masks[2][:, :-1]], xs)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("misa", DIMS)
    with pytest.raises(ValueError, match="divisible"):
        CrossModalTransformer(DIMS, d_model=30, num_heads=4)


def test_masked_mean():
    x = torch.tensor([[[1.0], [3.0], [float("inf")]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0], [0.0]]))
    torch.testing.assert_close(masked_mean(x[1:], None), torch.tensor([[4.0]]))


def test_token_pool_equals_direct_attention():
    # The pool's reordered computation against per-token keys/values and a masked softmax.
    torch.manual_seed(0)
    pool = TokenPool(in_dim=6, dim=8, num_tokens=3, num_heads=2).eval()
    x = torch.randn(4, 5, 6)
    lengths = [5, 2, 0, 1]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    got = pool(x, mask)
    with torch.no_grad():
        q = pool.q(pool.queries)  # [T, d]
        heads = []
        for hd in range(2):
            cols = slice(4 * hd, 4 * hd + 4)
            rows = []
            for b in range(4):
                n = lengths[b]
                if n == 0:  # nothing to attend to
                    rows.append(torch.zeros(3, 4))
                    continue
                k = x[b, :n] @ pool.k.weight[cols].T
                v = x[b, :n] @ pool.v.weight[cols].T + pool.v.bias[cols]
                w = torch.softmax(q[:, cols] @ k.T / 2.0, dim=-1)  # sqrt(dh) = 2
                rows.append(w @ v)
            heads.append(torch.stack(rows))
        hidden = pool.queries + pool.out(torch.cat(heads, dim=-1))
        expect = hidden + pool.ff(pool.norm_ff(hidden))
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    # without a mask every token counts
    full = pool(x)
    torch.testing.assert_close(full[0], got[0], rtol=1e-5, atol=1e-5)


@pytest.fixture
def one_thread():
    # Tiny models gain nothing from threads, and two OpenMP threads stall badly when
    # another process holds a core.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_few_steps_fit_a_tiny_batch(name, one_thread):
    torch.manual_seed(0)
    model = build_model(name, DIMS)
    xs, masks = make_inputs(batch=16)
    y = torch.linspace(-3, 3, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (model(*xs, masks) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_model_classes_exported():
    assert MODELS == {"late_fusion": LateFusion, "cross_modal": CrossModalTransformer}
