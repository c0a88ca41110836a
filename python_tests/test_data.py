"""Dataset container, MMSA pickle loader and synthetic generator."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from msmix_ext.train.data import (
    MultimodalDataset,
    SyntheticConfig,
    load_mmsa_pickle,
    make_synthetic,
    standardize,
)

SMALL = SyntheticConfig(split_sizes=(60, 20, 30), speakers_per_split=(6, 2, 3), seq_lens=(8, 30, 40), text_dim=24)


def tiny_dataset(n=7, with_masks=True):
    g = torch.Generator().manual_seed(0)
    lens = (3, 4, 5)
    dims = (6, 2, 3)
    xs = [torch.randn(n, L, D, generator=g) for L, D in zip(lens, dims)]
    masks = [torch.rand(n, L, generator=g) > 0.3 for L in lens] if with_masks else [None] * 3
    return MultimodalDataset(*xs, torch.arange(n, dtype=torch.float32), *masks, meta={"id": torch.arange(n)})


# ----------------------------------------------------------------------------- container


def test_container_properties_and_subset():
    ds = tiny_dataset()
    assert len(ds) == 7
    assert ds.feature_dims == (6, 2, 3)
    assert ds.seq_lens == (3, 4, 5)
    sub = ds.subset([4, 1])
    assert torch.equal(sub.labels, torch.tensor([4.0, 1.0]))
    assert torch.equal(sub.audio, ds.audio[[4, 1]])
    assert torch.equal(sub.vision_mask, ds.vision_mask[[4, 1]])
    assert torch.equal(sub.meta["id"], torch.tensor([4, 1]))


def test_batches_cover_every_sample_once():
    ds = tiny_dataset()
    batches = list(ds.batches(3))
    assert [len(b.labels) for b in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(7))
    b = batches[1]
    assert torch.equal(b.text, ds.text[3:6])
    assert torch.equal(b.masks[2], ds.vision_mask[3:6])
    assert [len(b.labels) for b in ds.batches(3, drop_last=True)] == [3, 3]


def test_shuffle_follows_the_generator():
    ds = tiny_dataset()

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b.index for b in ds.batches(2, shuffle=True, generator=g)])

    assert torch.equal(order(5), order(5))
    assert torch.equal(order(5), torch.randperm(7, generator=torch.Generator().manual_seed(5)))
    assert sorted(order(6).tolist()) == list(range(7))
    for b in ds.batches(2, shuffle=True, generator=torch.Generator().manual_seed(3)):
        assert torch.equal(b.labels, b.index.float())  # labels were set to the sample index


def test_batch_without_masks_and_to():
    ds = tiny_dataset(with_masks=False)
    b = next(ds.batches(4)).to("cpu")
    assert b.masks == (None, None, None)
    assert b.audio.shape == (4, 4, 2)


def test_container_validation():
    ds = tiny_dataset()
    args = [ds.text, ds.audio, ds.vision, ds.labels]
    with pytest.raises(ValueError, match="labels must be"):
        MultimodalDataset(*args[:3], ds.labels[:, None])
    with pytest.raises(ValueError, match="audio has 6 samples"):
        MultimodalDataset(ds.text, ds.audio[:6], ds.vision, ds.labels)
    with pytest.raises(ValueError, match="vision must be"):
        MultimodalDataset(ds.text, ds.audio, ds.vision[:, 0], ds.labels)
    with pytest.raises(ValueError, match="text must be floating"):
        MultimodalDataset(ds.text.long(), ds.audio, ds.vision, ds.labels)
    with pytest.raises(ValueError, match="audio_mask must be bool"):
        MultimodalDataset(*args, None, ds.audio_mask.float())
    with pytest.raises(ValueError, match="train: text_mask must be"):
        MultimodalDataset(*args, ds.text_mask[:, :2], name="train")
    with pytest.raises(ValueError, match="meta"):
        MultimodalDataset(*args, meta={"x": torch.zeros(3)})
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))


def test_standardize_uses_reference_valid_tokens():
    tr, te = tiny_dataset(), tiny_dataset()
    te = MultimodalDataset(te.text * 2 + 1, te.audio, te.vision, te.labels, *te.masks)
    tr.audio[~tr.audio_mask] = 1e6  # padding must not enter the statistics
    out = standardize({"train": tr, "test": te})
    for mod, mask in zip(("text", "audio", "vision"), tr.masks):
        valid = getattr(out["train"], mod)[mask]
        torch.testing.assert_close(valid.mean(0), torch.zeros(valid.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(valid.shape[1]), atol=1e-5, rtol=0)
        assert (getattr(out["train"], mod)[~mask] == 0).all()
    # the test split is transformed with the training statistics
    raw = tr.text[tr.text_mask]
    expect = (te.text - raw.mean(0)) / raw.std(0, unbiased=False) * te.text_mask.unsqueeze(-1)
    torch.testing.assert_close(out["test"].text, expect, atol=1e-5, rtol=1e-5)
    assert out["test"].labels is te.labels
    with pytest.raises(ValueError, match="reference"):
        standardize({"test": te})


# ----------------------------------------------------------------------------- MMSA pickle


def mmsa_split(n, rng, aligned=False):
    split = {
        "text": rng.standard_normal((n, 4, 10)).astype(np.float32),
        "audio": rng.standard_normal((n, 6, 3)),  # float64, converted to float32
        "vision": rng.standard_normal((n, 5, 2)).astype(np.float32),
        "regression_labels": rng.uniform(-3, 3, (n, 1)).astype(np.float32),
        "raw_text": ["x"] * n,
        "id": [str(i) for i in range(n)],
    }
    if not aligned:
        split["audio_lengths"] = [6, 0, 3, 9][:n]  # 9 > L: clipped to 6
        split["vision_lengths"] = np.array([1, 2, 5, 4][:n])
        bert = np.zeros((n, 3, 4))
        bert[:, 1, :2] = 1  # first two text tokens valid
        split["text_bert"] = bert
    return split


def write_pickle(tmp_path, data):
    path = tmp_path / "feat.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_load_unaligned(tmp_path):
    rng = np.random.default_rng(0)
    data = {s: mmsa_split(4, rng) for s in ("train", "valid", "test")}
    data["train"]["audio"][0, 1, 2] = -np.inf
    out = load_mmsa_pickle(write_pickle(tmp_path, data))
    assert set(out) == {"train", "valid", "test"}
    tr = out["train"]
    assert tr.name == "train"
    assert tr.text.dtype == tr.audio.dtype == torch.float32
    assert tr.audio[0, 1, 2] == 0  # -inf -> 0, as MMSA does
    assert torch.isfinite(tr.audio).all()
    np.testing.assert_allclose(tr.labels.numpy(), data["train"]["regression_labels"][:, 0])
    assert tr.audio_mask.sum(1).tolist() == [6, 0, 3, 6]
    assert tr.vision_mask.sum(1).tolist() == [1, 2, 5, 4]
    assert torch.equal(tr.vision_mask[1], torch.tensor([True, True, False, False, False]))
    assert tr.text_mask.sum(1).tolist() == [2, 2, 2, 2]


def test_load_aligned_has_no_masks(tmp_path):
    rng = np.random.default_rng(1)
    data = {s: mmsa_split(3, rng, aligned=True) for s in ("train", "valid", "test")}
    data["valid"]["regression_labels"] = data["valid"]["regression_labels"][:, 0]  # [N] also fine
    out = load_mmsa_pickle(write_pickle(tmp_path, data))
    assert out["test"].masks == (None, None, None)
    assert out["valid"].labels.shape == (3,)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("valid"), "missing split 'valid'"),
        (lambda d: d["test"].pop("vision"), "split 'test' has no key 'vision'"),
        (lambda d: d["train"].update(audio=np.zeros((4, 6))), r"train/audio: expected \[N, L, D\]"),
        (lambda d: d["train"].update(text=np.zeros((3, 4, 10))), "train/text has 3 samples"),
        (lambda d: d["valid"].update(regression_labels=np.zeros((4, 2))), "valid/regression_labels"),
        (lambda d: d["test"].update(audio_lengths=[1, -1, 2, 3]), "test/audio_lengths: negative"),
        (lambda d: d["test"].update(vision_lengths=[1.5, 1, 2, 3]), "test/vision_lengths: lengths must be whole"),
        (lambda d: d["train"].update(vision_lengths=[1, 2]), r"train/vision_lengths: expected shape \(4,\)"),
        (lambda d: d["train"].update(text=np.array([[["a"]]] * 4)), "train/text: expected a numeric array"),
        (lambda d: d.update(train=[1, 2]), "split 'train' is a list"),
    ],
)
def test_load_errors_name_split_and_key(tmp_path, edit, message):
    rng = np.random.default_rng(2)
    data = {s: mmsa_split(4, rng) for s in ("train", "valid", "test")}
    edit(data)
    with pytest.raises(ValueError, match=message):
        load_mmsa_pickle(write_pickle(tmp_path, data))


def test_load_nonfinite(tmp_path):
    rng = np.random.default_rng(3)
    data = {s: mmsa_split(4, rng) for s in ("train", "valid", "test")}
    data["valid"]["vision"][2, 0, 1] = np.nan
    data["valid"]["audio"][1, 0, 0] = np.inf  # only -inf is MMSA's padding value
    path = write_pickle(tmp_path, data)
    with pytest.raises(ValueError, match="valid/audio holds 1 NaN/infinite"):
        load_mmsa_pickle(path)
    out = load_mmsa_pickle(path, nonfinite_to_zero=True)
    assert out["valid"].vision[2, 0, 1] == 0 and out["valid"].audio[1, 0, 0] == 0
    assert torch.isfinite(out["valid"].vision).all()


def test_load_rejects_non_dict(tmp_path):
    with pytest.raises(ValueError, match="dict of splits"):
        load_mmsa_pickle(write_pickle(tmp_path, [1, 2, 3]))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic():
    a, b, c = make_synthetic(3, SMALL), make_synthetic(3, SMALL), make_synthetic(4, SMALL)
    for split in ("train", "valid", "test"):
        for field in ("text", "audio", "vision", "labels", "text_mask", "audio_mask", "vision_mask"):
            assert torch.equal(getattr(a[split], field), getattr(b[split], field))
        for key in a[split].meta:
            assert torch.equal(a[split].meta[key], b[split].meta[key])
    assert not torch.equal(a["train"].text, c["train"].text)


def test_synthetic_structure():
    data = make_synthetic(0, SMALL)
    speakers = {}
    for split, n in zip(("train", "valid", "test"), SMALL.split_sizes):
        ds = data[split]
        assert len(ds) == n
        assert ds.seq_lens == SMALL.seq_lens and ds.feature_dims == SMALL.feature_dims
        assert ds.text.dtype == torch.float32
        lengths = ds.meta["lengths"]
        for m, (x, mask) in enumerate(zip((ds.text, ds.audio, ds.vision), ds.masks)):
            L = x.shape[1]
            assert torch.equal(mask, torch.arange(L)[None, :] < lengths[:, m, None])  # prefix masks
            assert (x[~mask] == 0).all()  # zero padding
            assert (lengths[:, m] >= 1).all()
        y = ds.labels
        assert y.abs().max() <= 3
        torch.testing.assert_close(y * 3, torch.round(y * 3))  # multiples of 1/3
        role, strength = ds.meta["role"], ds.meta["strength"]
        assert ((role == 0).any(dim=1)).all()  # every sample has a congruent modality
        assert (strength[role == 0] > 0).all() and (strength[role == 2] < 0).all()
        assert (strength[role == 1].abs() < 0.1 * 3).all()  # |a| < 0.1 times expressiveness
        speakers[split] = set(ds.meta["speaker"].tolist())
    assert not (speakers["train"] & speakers["valid"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["valid"] & speakers["test"])


def test_synthetic_default_matches_mosi_shapes():
    data = make_synthetic(0)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [1284, 229, 686]
    tr = data["train"]
    assert tuple(tr.text.shape[1:]) == (50, 128)
    assert tuple(tr.audio.shape[1:]) == (375, 5)
    assert tuple(tr.vision.shape[1:]) == (500, 20)
    # The label follows the latent sentiment, and the roles follow their probabilities.
    s, y = tr.meta["sentiment"], tr.labels
    assert torch.corrcoef(torch.stack([s, y]))[0, 1] > 0.9
    frac = (tr.meta["role"] == 0).float().mean(0)
    assert 0.65 < frac[0] < 0.85 and 0.45 < frac[1] < 0.65 and 0.4 < frac[2] < 0.6
    zero = (y == 0).float().mean()
    assert 0.03 < zero < 0.15  # MOSI has ~7% neutral labels


def test_synthetic_sentiment_is_in_the_features():
    # Masked-mean text features along the best linear direction track the label.
    data = make_synthetic(1, SMALL)
    tr = data["train"]
    mask = tr.text_mask.unsqueeze(-1)
    x = (tr.text * mask).sum(1) / mask.sum(1)
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    w = torch.linalg.lstsq(x, tr.labels.double()[:, None]).solution
    fit = (x @ w)[:, 0]
    assert torch.corrcoef(torch.stack([fit, tr.labels.double()]))[0, 1] > 0.5


def test_synthetic_config_validation():
    with pytest.raises(ValueError, match="role_probs"):
        make_synthetic(0, dataclasses.replace(SMALL, role_probs=((1.0, 0.0, 0.0),) * 2))
    with pytest.raises(ValueError, match="congruent"):
        make_synthetic(0, dataclasses.replace(SMALL, role_probs=((0.0, 1.0, 0.0),) * 3))
    with pytest.raises(ValueError, match="split_sizes"):
        make_synthetic(0, dataclasses.replace(SMALL, split_sizes=(0, 1, 1)))
    with pytest.raises(ValueError, match="ar_coefficient"):
        make_synthetic(0, dataclasses.replace(SMALL, ar_coefficient=1.0))
    with pytest.raises(ValueError, match="burst_fraction"):
        make_synthetic(0, dataclasses.replace(SMALL, burst_fraction=(0.5, 0.2)))
    with pytest.raises(ValueError, match="sentiment_mixture"):
        make_synthetic(0, dataclasses.replace(SMALL, sentiment_mixture=((0.5, 0.0, 1.0),)))
