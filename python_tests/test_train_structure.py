"""The training package's structure: the augmentation registry is the one place that says what
an augmentation does; the operator package needs torch alone; train fractions; paired output."""
import json
import subprocess
import sys

import pytest
import torch

from msmix_ext import augment as aug
from msmix_ext.train import inputs, loop, runner
from msmix_ext.train.__main__ import main
from msmix_ext.train.data import make_synthetic, SyntheticConfig

from conftest import requires_extension
from test_augment import _Batch
from test_train import TINY, TINY_ARGS


def test_import_msmix_ext_loads_no_training_dependency():
    code = ("import sys, torch; before = set(sys.modules); import msmix_ext, msmix_ext.augment, msmix_ext.models; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    new = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
                     .stdout.replace("'", '"'))
    assert not {"numpy", "tqdm", "matplotlib", "MMSA"} & set(new), new


@requires_extension
def test_the_loop_follows_the_registry_not_the_names(monkeypatch):
    # An entry that mixes like msmix and adds no SAL must train exactly like msmix-no-sal.
    monkeypatch.setitem(aug.REGISTRY, "renamed", aug.Augmentation("renamed", aug.REGISTRY["msmix"].mix,
                                                                  uses_sig=True, pools_across_ranks=True))
    cfg = runner.TrainConfig(sal_weight=5.0)
    losses = []
    for name in ("renamed", "msmix-no-sal"):
        model, msmix = loop.build_run("late_fusion", name, 0, (16, 5, 20), cfg)
        torch.manual_seed(3)
        losses.append(loop.train_step(model, msmix, _Batch(torch.Generator().manual_seed(0)), name, cfg).item())
    assert losses[0] == losses[1]


def test_registry_entries_state_sig_and_sal():
    sig = {n for n, a in aug.REGISTRY.items() if a.uses_sig}
    sal = {n for n, a in aug.REGISTRY.items() if a.adds_sal}
    assert sig == {"msmix", "msmix-no-sass", "msmix-no-sal"} and sal == {"msmix", "msmix-no-sass"}
    assert [n for n, a in aug.REGISTRY.items() if a.at_hidden_layer] == ["manifold"]
    assert sal <= sig  # SAL is a loss on the SIG intensities


def _train():
    return make_synthetic(0, SyntheticConfig(split_sizes=(101, 8, 8), speakers_per_split=(5, 2, 2),
                                             seq_lens=(4, 4, 4), text_dim=4))["train"]


def test_train_subset_is_stratified_by_label_and_drawn_from_the_seed():
    train = _train()
    sub = inputs.train_subset(train, 0.1, seed=4)
    assert len(sub) == 10
    assert torch.equal(sub.labels, inputs.train_subset(train, 0.1, seed=4).labels)
    assert not torch.equal(sub.labels, inputs.train_subset(train, 0.1, seed=5).labels)
    # stratum k holds the sorted labels at positions [10.1 k, 10.1 (k + 1)): one pick each
    ranked = torch.sort(train.labels.reshape(-1)).values
    bounds = [len(t) for t in torch.tensor_split(torch.arange(101), 10)]
    starts = torch.cumsum(torch.tensor([0] + bounds), 0)
    picked = torch.sort(sub.labels.reshape(-1)).values
    for k in range(10):
        assert ranked[starts[k]] <= picked[k] <= ranked[starts[k + 1] - 1]
    assert inputs.train_subset(train, 1.0, seed=4) is train
    with pytest.raises(ValueError, match="train fraction must be in"):
        inputs.train_subset(train, 0.0, seed=0)


@requires_extension
def test_cli_train_fraction_same_subset_per_seed_and_paired_section(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY_ARGS, "--backbones", "late_fusion", "--augmentations", "none,mixup,msmix", "--seeds", "0,1",
                 "--train-fraction", "0.5,1.0", "--out", str(out), "--no-plot"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["train_fractions"] == [0.5, 1.0]
    sizes = {(r["train_fraction"], r["augmentation"]): r["train_samples"] for r in res["runs"]}
    assert sizes[(0.5, "none")] == sizes[(0.5, "msmix")] == 20 and sizes[(1.0, "msmix")] == 40
    pair = res["paired"]["0.5"]["late_fusion"]["none"]["msmix"]["MAE"]
    by = {(r["train_fraction"], r["augmentation"], r["seed"]): r["test_metrics"]["MAE"] for r in res["runs"]}
    want = [by[(0.5, "msmix", s)] - by[(0.5, "none", s)] for s in (0, 1)]
    assert pair["mean"] == pytest.approx(sum(want) / 2) and pair["n"] == 2
    assert "msmix" in res["paired"]["1"]["late_fusion"]["mixup"]
    text = (out / "results.txt").read_text()
    assert "\npaired:" in text and "late_fusion" in text


def test_cli_rejects_bad_fractions(capsys):
    with pytest.raises(SystemExit):
        main([*TINY_ARGS, "--train-fraction", "0.5,1.5"])
    assert "train fractions must be in (0, 1]" in capsys.readouterr().err


def test_backbone_options_are_checked():
    with pytest.raises(ValueError, match="not among the backbones"):
        runner.TrainConfig(backbones=("late_fusion",), backbone_options={"mult": {"reduced": False}}).validate()
    with pytest.raises(ValueError, match=r"backbone_options\['late_fusion'\] must be a dict"):
        runner.TrainConfig(backbones=("late_fusion",), backbone_options={"late_fusion": 3}).validate()
    cfg = runner.TrainConfig(backbones=("late_fusion",), backbone_options={"late_fusion": {"hidden": 8}})
    assert loop.build_run("late_fusion", "none", 0, (16, 5, 20), cfg)[0].feature_dims == (8, 8, 8)
