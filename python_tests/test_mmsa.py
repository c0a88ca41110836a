"""MMSA's TFN, LMF and MulT as backbones (msmix_ext.models.mmsa): MS-Mix sits between MMSA's
encoders and its fusion, training works end to end, and each of MMSA's quirks is handled."""
import json

import pytest
import torch

from msmix_ext.train import loop, runner
from msmix_ext.train.__main__ import main

from conftest import requires_extension
from test_train import TINY, write_mmsa_pickle

pytestmark = requires_extension
MMSA = pytest.importorskip("MMSA", reason="MMSA not installed (pip install 'msmix_ext[mmsa]')")
mmsa = pytest.importorskip("msmix_ext.models.mmsa")

MOSI_DIMS = (768, 5, 20)  # MMSA's MOSI pickles: BERT text, COVAREP audio, Facet vision
B = 6


def _mosi_batch(seed=0, lens=(50, 375, 500)):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, n, d, generator=g) for n, d in zip(lens, MOSI_DIMS)]
    lengths = [torch.randint(max(n // 2, 5), n + 1, (B,), generator=g) for n in lens]
    masks = [torch.arange(n)[None] < k[:, None] for n, k in zip(lens, lengths)]
    labels = torch.rand(B, generator=g) * 6 - 3
    return xs, masks, labels


class _Batch:
    def __init__(self, xs, masks, labels):
        self.text, self.audio, self.vision = xs
        self.masks, self.labels = masks, labels


def _fusion_inputs(model, name):
    """Modules whose first input is the mixed feature tensor of each modality, and how to
    turn that input back into the feature layout ``[B', ...]``."""
    fusion = model._fusion
    if name == "mult":  # MulT permutes to [L, B, d] before its cross-modal transformers
        mods = [fusion.trans_l_with_a, fusion.trans_a_with_l, fusion.trans_v_with_l]
        return mods, lambda x: x.permute(1, 0, 2)
    return [fusion._modules[k] for k in ("text_subnet", "audio_subnet", "video_subnet")], lambda x: x


@pytest.mark.parametrize("name", ["tfn", "lmf", "mult"])
def test_one_msmix_step_mixed_rows_reach_fusion_and_sig_learns(name, monkeypatch):
    cfg = runner.TrainConfig(backbones=(name,))
    model, msmix = loop.build_run(name, "msmix", 0, MOSI_DIMS, cfg)
    mixed = {}
    real_augment = loop.augment

    def spy(*args, **kw):
        mixed["out"] = real_augment(*args, **kw)
        return mixed["out"]

    monkeypatch.setattr(loop, "augment", spy)
    mods, layout = _fusion_inputs(model, name)
    seen = {}  # by modality: MMSA calls the modules in its own order (TFN: audio, video, text)

    def record(m):
        def hook(module, args, output):
            seen.setdefault(m, layout(args[0]))  # returns None: the output is left alone
        return hook

    hooks = [mod.register_forward_hook(record(m)) for m, mod in enumerate(mods)]
    # the first layer after the fusion input: it must see B + K rows too
    first = getattr(model.mmsa, {"tfn": "post_fusion_layer_1", "lmf": "audio_factor", "mult": "proj1"}[name])
    model.train()
    torch.manual_seed(1)
    loss = loop.train_step(model, msmix, _Batch(*_mosi_batch()), "msmix", cfg)
    for h in hooks:
        h.remove()
    out = mixed["out"]
    k = out.idx1.shape[0]
    assert k == B and len(seen) == 3
    for m in range(3):
        assert seen[m].shape[0] == B + k
        assert torch.equal(seen[m][B:], out.feats[m][B:])  # the mixed rows MS-Mix produced
    if name == "tfn":
        assert model.mmsa.post_fusion_layer_1.weight.shape[1] == (model.feature_dims[0] + 1) * \
            (model.feature_dims[1] + 1) * (model.feature_dims[2] + 1)
    loss.backward()
    sig_grads = [p.grad for p in msmix.parameters()]
    assert all(g is not None for g in sig_grads) and any(g.abs().sum() > 0 for g in sig_grads)
    grad = first.grad if isinstance(first, torch.nn.Parameter) else first.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    opt = torch.optim.Adam(list(model.parameters()) + list(msmix.parameters()), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["tfn", "lmf", "mult"])
def test_two_stages_equal_mmsa_forward_in_eval(name):
    # Without padding (MMSA ignores it) and, for MulT, without the reduction, features -> head is
    # MMSA's own forward exactly.
    torch.manual_seed(0)
    model = mmsa.build(name, MOSI_DIMS, reduced=False).eval()
    (t, a, v), _, _ = _mosi_batch(lens=(12, 15, 20))
    with torch.no_grad():
        got = model.head(model.features(t, a, v))
        if name == "mult":
            want = model.mmsa(t, a, v)["M"].reshape(-1)
        else:  # TFN/LMF take audio and vision time-averaged
            want = model.mmsa(t, a.mean(1, keepdim=True), v.mean(1, keepdim=True))["M"].reshape(-1)
    assert torch.equal(got, want)


def test_hyperparameters_come_from_mmsa_config_adapted_to_the_data():
    cfg = MMSA.config.get_config_regression("tfn", "mosi")
    model = mmsa.build("tfn", (16, 5, 20))
    assert model.feature_dims == (cfg.text_out, cfg.hidden_dims[1], cfg.hidden_dims[2])
    assert model.mmsa.text_subnet.rnn.input_size == 16 and model.mmsa.audio_subnet.norm.num_features == 5
    lmf = MMSA.config.get_config_regression("lmf", "sims")
    assert mmsa.build("lmf", (16, 5, 20), dataset="sims").mmsa.rank == lmf.rank
    mult = mmsa.build("mult", (16, 5, 20))
    assert mult.mmsa.layers == 2 and mult.max_steps == mmsa.MULT_MAX_STEPS  # the disclosed reduction
    assert mmsa.build("mult", (16, 5, 20), reduced=False).mmsa.layers == \
        MMSA.config.get_config_regression("mult", "mosi").nlevels
    with pytest.raises(ValueError, match="has no key 'nlevel'"):
        mmsa.build("mult", (16, 5, 20), config={"nlevel": 3})


@pytest.mark.parametrize("name", ["tfn", "mult"])
def test_padded_frames_do_not_matter(name):
    # MMSA's models read padded steps and MMSA time-averages over padding; here padding is
    # zeroed before the encoders and the audio/vision means are over valid frames.
    model = mmsa.build(name, MOSI_DIMS).eval()
    xs, masks, _ = _mosi_batch(lens=(20, 40, 40))
    noisy = [torch.where(m.unsqueeze(-1), x, torch.full_like(x, 7.0)) for x, m in zip(xs, masks)]
    with torch.no_grad():
        for f, g in zip(model.features(*xs, masks), model.features(*noisy, masks)):
            assert torch.equal(f, g)


def test_batchnorm_subnets_refuse_a_training_batch_of_one_and_the_loop_skips_it(tmp_path):
    model = mmsa.build("tfn", (16, 5, 20)).train()
    with pytest.raises(ValueError, match="BatchNorm1d: a training batch needs >= 2 samples"):
        model.features(torch.randn(1, 4, 16), torch.randn(1, 4, 5), torch.randn(1, 4, 20))
    # 33 training samples in batches of 16: the last batch holds one sample and is skipped
    tiny = dict(TINY, split_sizes=[33, 16, 16])
    res = runner.run(runner.TrainConfig(synthetic=tiny, backbones=("tfn",), augmentations=("msmix",), seeds=(0,),
                                        epochs=1, batch_size=16, out=str(tmp_path), plot=False, quiet=True))
    assert res["runs"][0]["skipped_batches"] == 1


def test_fusion_view_follows_train_and_eval():
    # The fusion view is a copy; its own training flag (read by MMSA's F.dropout) must follow the model.
    model = mmsa.build("mult", (16, 5, 20))
    feats = [torch.randn(4, 8, 50) for _ in range(3)]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.head(feats), model.head(feats))
        model.train()
        torch.manual_seed(0)
        assert not torch.equal(model.head(feats), model.head(feats))


def test_compile_covers_what_dynamo_can_trace(monkeypatch, caplog):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn.__name__) or fn)
    for name, want in (("tfn", ["head"]), ("lmf", ["head"]), ("mult", []), ("late_fusion", ["features", "head"])):
        compiled.clear()
        with caplog.at_level("INFO", logger="msmix_ext.train"):
            loop.compiled_stages(loop.build_run(name, "none", 0, (16, 5, 20), runner.TrainConfig())[0], name)
        assert compiled == want
    assert "tfn: --compile compiles head; eager (not traceable by dynamo): features" in caplog.text
    assert "mult: --compile compiles nothing of the backbone; eager (not traceable by dynamo): features and head" in caplog.text


def test_cli_mmsa_backbones_on_an_mmsa_pickle_with_paired_output(tmp_path):
    data = write_mmsa_pickle(tmp_path / "tiny.pkl", n=(24, 10, 12), lens=(7, 9, 11), dims=(12, 4, 6))
    out = tmp_path / "run"
    assert main(["--data", str(data), "--backbones", "tfn,lmf,mult", "--augmentations", "none,msmix", "--epochs", "1",
                 "--seeds", "0,1", "--train-fraction", "0.5", "--batch-size", "8", "--out", str(out), "--quiet",
                 "--no-plot", "--jobs", "1"]) == 0
    text = (out / "results.txt").read_text()
    for name in ("tfn", "lmf", "mult"):
        assert name in text
    assert "\npaired:" in text
    res = json.loads((out / "results.json").read_text())
    assert {r["backbone"] for r in res["runs"]} == {"tfn", "lmf", "mult"}
    assert set(res["paired"]["0.5"]) == {"tfn", "lmf", "mult"}
