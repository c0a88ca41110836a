"""The training CLI / runner (msmix_ext.train): MMSA pickles, checkpoints, every augmentation."""
import json
import math
import pickle

import numpy as np
import pytest
import torch

from msmix_ext.augment import AUGMENTATIONS
from msmix_ext.train import runner
from msmix_ext.train.__main__ import main

from conftest import requires_extension

pytestmark = requires_extension

# A synthetic set small enough for a one-epoch run in well under a second per run.
TINY = {"split_sizes": [40, 16, 16], "speakers_per_split": [4, 2, 2], "seq_lens": [6, 12, 16], "text_dim": 16}
# --jobs 1: the tests train in this process (tests/test_train.py::test_jobs_* cover the workers).
TINY_ARGS = ["--synthetic-config", json.dumps(TINY), "--epochs", "1", "--batch-size", "16", "--quiet", "--jobs", "1"]
MOSI_METRICS = {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE",
                "Corr"}


def write_mmsa_pickle(path, n=(24, 10, 12), lens=(7, 9, 11), dims=(12, 4, 6), seed=0):
    """A tiny unaligned MMSA pickle: lengths for audio/vision, -inf in audio (valid and padded frames)."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, size in zip(("train", "valid", "test"), n):
        labels = np.round(rng.uniform(-3, 3, size) * 3) / 3
        text = rng.normal(size=(size, lens[0], dims[0])).astype(np.float32)
        text += labels[:, None, None].astype(np.float32) * 0.5  # something to learn
        audio = rng.normal(size=(size, lens[1], dims[1])).astype(np.float32)
        vision = rng.normal(size=(size, lens[2], dims[2])).astype(np.float32)
        audio_len = rng.integers(1, lens[1] + 1, size)
        vision_len = rng.integers(1, lens[2] + 1, size)
        audio_len[0] = 0  # an utterance without audio frames
        for i in range(size):
            audio[i, audio_len[i]:] = 0
            vision[i, vision_len[i]:] = 0
        audio[1, 0, :2] = -np.inf  # a valid frame (COVAREP writes -inf; MMSA sets it to 0)
        audio[2, -1, 1] = -np.inf  # a padded frame
        data[split] = {
            "text": text, "audio": audio, "vision": vision,
            "regression_labels": labels.astype(np.float32).reshape(-1, 1),
            "audio_lengths": audio_len, "vision_lengths": vision_len,
            "id": [f"{split}_{i}" for i in range(size)],
        }
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def _all_finite(metrics):
    return all(v is not None and math.isfinite(v) for v in metrics.values())


def test_mmsa_pickle_one_epoch(tmp_path, capsys):
    data = write_mmsa_pickle(tmp_path / "tiny.pkl")
    out = tmp_path / "run"
    rc = main(["--data", str(data), "--backbones", "late_fusion,cross_modal", "--augmentations", "none,msmix",
               "--num-seeds", "2", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--quiet",
               "--jobs", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "late_fusion" in printed and "cross_modal" in printed and "msmix" in printed and "MAE" in printed
    assert "±" in printed
    for name in ("results.json", "results.txt", "results.png", "train.log"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert res["torch_version"] == str(torch.__version__)
    assert res["config"]["data"] == str(data.resolve())
    assert res["data"]["train"] == 24 and res["data"]["feature_dims"] == [12, 4, 6]
    assert len(res["runs"]) == 2 * 2 * 2
    for r in res["runs"]:
        assert set(r["test_metrics"]) == MOSI_METRICS
        assert _all_finite(r["test_metrics"]), r
        assert len(r["curves"]["valid"]) == 1 and r["best_epoch"] == 1
        assert math.isfinite(r["curves"]["train_loss"][0])
        assert r["timing"]["total_s"] > 0
    summary = res["summary"]["1"]["cross_modal"]["msmix"]["MAE"]
    maes = [r["test_metrics"]["MAE"] for r in res["runs"] if (r["backbone"], r["augmentation"]) == ("cross_modal", "msmix")]
    assert summary["n"] == 2
    assert summary["mean"] == pytest.approx(np.mean(maes))
    assert summary["std"] == pytest.approx(np.std(maes, ddof=1))
    assert (out / "results.txt").read_text().strip() == res["table"]


def test_save_then_eval_only_reproduces_test_metrics(tmp_path, capsys):
    data = write_mmsa_pickle(tmp_path / "tiny.pkl", seed=1)
    out = tmp_path / "run"
    assert main(["--data", str(data), "--augmentations", "msmix,manifold", "--seeds", "3,", "--epochs", "2", "--jobs", "1",
                 "--batch-size", "8", "--eval-batch-size", "5", "--out", str(out), "--save", "--quiet",
                 "--no-plot"]) == 0
    res = json.loads((out / "results.json").read_text())
    ckpts = sorted((out / "checkpoints").glob("*.pt"))
    assert len(ckpts) == 4 and all(r["checkpoint"] for r in res["runs"])
    ck = torch.load(res["runs"][0]["checkpoint"], weights_only=True)
    assert ck["run"]["seed"] == 3 and ck["config"]["eval_batch_size"] == 5
    assert ck["msmix"] is not None  # SIG predictors saved with the backbone
    capsys.readouterr()

    # CLI: every checkpoint in the directory re-evaluated, exit status 0 only on an exact match
    assert main(["--eval-only", "--load", str(out / "checkpoints"), "--quiet", "--out", str(tmp_path / "ev")]) == 0
    assert "reproduced exactly" in capsys.readouterr().out
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    by_ckpt = {r["checkpoint"]: r for r in res["runs"]}
    assert len(ev["runs"]) == 4
    for r in ev["runs"]:
        assert r["matches_saved"] and r["max_abs_diff"] == 0.0
        assert r["test_metrics"] == by_ckpt[r["checkpoint"]]["test_metrics"]  # bit-exact floats via JSON

    # Python API on one file; a model that was not trained would not match
    again = runner.evaluate_checkpoints([ckpts[0]])["runs"][0]
    assert again["matches_saved"] and again["test_metrics"] == by_ckpt[str(ckpts[0])]["test_metrics"]
    ck["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "tampered.pt")
    assert not runner.evaluate_checkpoints([tmp_path / "tampered.pt"])["runs"][0]["matches_saved"]


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_every_augmentation_runs(tmp_path, augmentation):
    cfg = runner.TrainConfig(synthetic=TINY, augmentations=(augmentation,), seeds=(0,), epochs=1, batch_size=16,
                             out=str(tmp_path), quiet=True, plot=False)
    res = runner.run(cfg)
    assert [(r["backbone"], r["augmentation"]) for r in res["runs"]] == [(b, augmentation) for b in runner.BACKBONES]
    for r in res["runs"]:
        assert _all_finite(r["test_metrics"]), r
        assert math.isfinite(r["curves"]["train_loss"][0])
        assert (r["num_sig_params"] > 0) == (augmentation in ("msmix", "msmix-no-sass", "msmix-no-sal"))
    assert augmentation in res["table"]


def test_same_seed_same_start_and_deterministic(tmp_path):
    dims = (16, 5, 20)
    cfg = runner.TrainConfig()
    for backbone in runner.BACKBONES:
        states = [runner.build_run(backbone, a, 4, dims, cfg)[0].state_dict() for a in ("none", "msmix", "mixup")]
        for s in states[1:]:
            assert all(torch.equal(s[k], states[0][k]) for k in s)
    kw = dict(synthetic=TINY, backbones=("cross_modal",), augmentations=("msmix",), seeds=(1,), epochs=2,
              batch_size=16, quiet=True, plot=False)
    a = runner.run(runner.TrainConfig(out=str(tmp_path / "a"), **kw))["runs"][0]
    b = runner.run(runner.TrainConfig(out=str(tmp_path / "b"), **kw))["runs"][0]
    assert a["test_metrics"] == b["test_metrics"] and a["curves"] == b["curves"]


def test_parse_seeds_and_bad_arguments(tmp_path, capsys):
    assert runner.parse_seeds("3") == (3,)
    assert runner.parse_seeds("0,4,7") == (0, 4, 7)
    assert runner.parse_seeds("7,") == (7,)
    for args in (["--augmentations", "nope"], ["--backbones", "resnet"], ["--dataset-kind", "iemocap"],
                 ["--batch-size", "1"], ["--eval-only"], ["--load", "x.pt"], ["--seeds", "0,0"]):
        with pytest.raises(SystemExit) as e:
            main([*args, "--out", str(tmp_path), "--quiet"])
        assert e.value.code == 2, args
    assert "nope" in capsys.readouterr().err


def test_sims_kind_uses_sims_metrics(tmp_path):
    cfg = runner.TrainConfig(synthetic=TINY, dataset_kind="sims", backbones=("late_fusion",),
                             augmentations=("msmix",), seeds=(0,), epochs=1, batch_size=16, out=str(tmp_path),
                             quiet=True, plot=False)
    model, msmix = runner.build_run("late_fusion", "msmix", 0, (16, 5, 20), cfg)
    assert msmix.max_intensity == 1.0
    res = runner.run(cfg)
    assert set(res["runs"][0]["test_metrics"]) == {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}


def test_jobs_give_the_records_of_a_serial_call(tmp_path):
    # Runs seed themselves, so two spawned workers (one torch thread each) must reproduce the
    # serial call's records exactly, in job order, whatever finishes first.
    kw = dict(synthetic=TINY, augmentations=("none", "msmix"), seeds=(0,), train_fractions=(0.5, 1.0), epochs=2,
              batch_size=16, threads=1, quiet=True, plot=False)
    serial = runner.run(runner.TrainConfig(out=str(tmp_path / "serial"), jobs=1, **kw))
    parallel = runner.run(runner.TrainConfig(out=str(tmp_path / "parallel"), jobs=2, **kw))
    assert serial["workers"] == 1 and parallel["workers"] == 2
    keys = ("train_fraction", "backbone", "augmentation", "seed", "test_metrics", "valid_metrics", "curves",
            "best_epoch", "train_samples")
    assert len(serial["runs"]) == 8
    for a, b in zip(serial["runs"], parallel["runs"]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert serial["table"] == parallel["table"]


def test_resolve_jobs(monkeypatch):
    from msmix_ext.train import parallel
    monkeypatch.setattr(parallel, "usable_cores", lambda: 8)
    cfg = runner.TrainConfig(jobs=0, threads=2)
    assert parallel.resolve_jobs(cfg, 100) == 4  # 8 cores / 2 threads
    assert parallel.resolve_jobs(cfg, 3) == 3  # never more workers than runs
    assert parallel.resolve_jobs(runner.TrainConfig(jobs=0, threads=0), 100) == 8
    assert parallel.resolve_jobs(runner.TrainConfig(jobs=5), 100) == 5
    assert parallel.resolve_jobs(runner.TrainConfig(jobs=5), 1) == 1
    assert parallel.resolve_jobs(runner.TrainConfig(jobs=5, device="cuda"), 100) == 1


def test_min_steps_gives_a_small_fraction_more_epochs(tmp_path):
    # 40 training samples in batches of 16: 3 steps per epoch on all of them, 2 on half.
    # At least 6 steps: 2 epochs on all, 3 on half; --epochs stays the floor.
    cfg = runner.TrainConfig(synthetic=TINY, backbones=("late_fusion",), augmentations=("none",), seeds=(0,),
                             train_fractions=(0.5, 1.0), epochs=1, min_steps=6, batch_size=16, jobs=1, quiet=True,
                             plot=False, out=str(tmp_path))
    runs = {r["train_fraction"]: r for r in runner.run(cfg)["runs"]}
    assert {f: (r["steps_per_epoch"], r["epochs"], len(r["curves"]["valid"])) for f, r in runs.items()} == {
        0.5: (2, 3, 3), 1.0: (3, 2, 2)}
    with pytest.raises(ValueError, match=r"min_steps must be >= 0, got -1"):
        runner.TrainConfig(min_steps=-1).validate()
