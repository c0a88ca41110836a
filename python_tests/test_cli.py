"""The training command's errors and options as a user meets them: one line per bad data
file (no traceback unless --debug), unambiguous --seeds / --num-seeds, and plain log lines
instead of progress bars when stderr is not a terminal."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from msmix_ext.train.__main__ import build_parser, config_from_args, main

EXPECTED = "expected an MMSA feature pickle"


def _split(n=4, text=None):
    return {"text": np.zeros((n, 3, 4)) if text is None else text, "audio": np.zeros((n, 2, 3)),
            "vision": np.zeros((n, 2, 5)), "regression_labels": np.zeros(n)}


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _write_pickle(path, obj):
    return _write_bytes(path, pickle.dumps(obj))


# name -> (make the --data path under tmp, a fragment the one-line message must hold)
BAD_DATA = {
    "missing": (lambda d: d / "nope.pkl", "no such file"),
    "directory": (lambda d: d, "is a directory"),
    "empty": (lambda d: _write_bytes(d / "e.pkl", b""), "empty or truncated"),
    "not a pickle": (lambda d: _write_bytes(d / "t.pkl", b"hello, world"), "not a readable pickle"),
    "truncated": (lambda d: _write_bytes(d / "c.pkl", pickle.dumps({"train": np.zeros(64)})[:40]),
                  "not a readable pickle"),
    "wrong type": (lambda d: _write_pickle(d / "l.pkl", [1, 2, 3]), "expected a dict of splits, got list"),
    "missing split": (lambda d: _write_pickle(d / "s.pkl", {"train": _split(), "valid": _split()}),
                      "missing split 'test'"),
    "missing key": (lambda d: _write_pickle(d / "k.pkl", {s: {"text": np.zeros((4, 3, 4))}
                                                       for s in ("train", "valid", "test")}),
                    "split 'train' has no key 'audio'"),
    "ragged": (lambda d: _write_pickle(d / "r.pkl", {s: _split(2, text=[[1.0], [1.0, 2.0]])
                                                  for s in ("train", "valid", "test")}),
               "train/text: expected a numeric [N, L, D] array"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_file_gives_one_line(case, tmp_path, capsys):
    make, fragment = BAD_DATA[case]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = make(data_dir)
    out = tmp_path / "out"
    assert main(["--data", str(path), "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"msmix-train: error: {path}") and fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists(), "a bad data file must not leave an output folder behind"


def test_debug_shows_the_traceback(tmp_path):
    # A real process: the traceback is what the interpreter prints for an uncaught error.
    proc = subprocess.run([sys.executable, "-m", "msmix_ext.train", "--data", str(tmp_path / "nope.pkl"),
                           "--debug", "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr and "no such file" in proc.stderr


def test_bad_checkpoint_gives_one_line(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    bogus.write_text("not a checkpoint")
    assert main(["--eval-only", "--load", str(bogus)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"msmix-train: error: {bogus}: not a readable checkpoint")


@pytest.mark.parametrize("argv,seeds", [
    ([], (0, 1, 2)),
    (["--seeds", "42"], (42,)),
    (["--seeds", "7,"], (7,)),
    (["--seeds", "0,4,7"], (0, 4, 7)),
    (["--seeds", " 3 , 5 "], (3, 5)),
    (["--num-seeds", "4"], (0, 1, 2, 3)),
])
def test_seeds_are_unambiguous(argv, seeds):
    assert config_from_args(build_parser().parse_args(argv)).seeds == seeds


@pytest.mark.parametrize("argv", [["--seeds", "x"], ["--seeds", "1,,2"], ["--num-seeds", "0"],
                                  ["--seeds", "1", "--num-seeds", "2"]])
def test_bad_seeds_are_argument_errors(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path), "--quiet"])
    assert e.value.code == 2
    assert "seeds" in capsys.readouterr().err


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    out = tmp_path / "run"
    synthetic = json.dumps({"split_sizes": [40, 16, 16]})
    proc = subprocess.run(
        [sys.executable, "-m", "msmix_ext.train", "--synthetic-config", synthetic, "--backbones", "late_fusion",
         "--augmentations", "msmix", "--seeds", "0", "--epochs", "2", "--batch-size", "16", "--no-plot",
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr, "tqdm bars wrote carriage returns into a non-terminal stderr"
    epoch_lines = [line for line in proc.stderr.splitlines() if "late_fusion/msmix/seed 0 epoch" in line]
    assert [line.split(" epoch ")[1].split(":")[0] for line in epoch_lines] == ["1/2", "2/2"]
