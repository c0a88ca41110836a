"""Checkpoints of the training command: their format, writing, reading, and re-evaluation."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from msmix_ext.train.config import TrainConfig
from msmix_ext.train.data import MultimodalDataset
from msmix_ext.train.evaluation import evaluate
from msmix_ext.train.inputs import load_data
from msmix_ext.train.progress import log
from msmix_ext.train.report import format_table, summarize
from msmix_ext.train.runtime import Threads, machine_info, write_json

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "evaluate_checkpoints", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "msmix_ext.train/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: Path, cfg: TrainConfig, record: Dict[str, Any], input_dims: Sequence[int],
                    best_state: Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]]]) -> None:
    """Write one run's best state with its config and metrics (read by :func:`load_checkpoint`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "run": {"backbone": record["backbone"], "augmentation": record["augmentation"], "seed": record["seed"],
                "train_fraction": record["train_fraction"], "best_epoch": record["best_epoch"],
                "input_dims": list(input_dims)},
        "model": {k: v.cpu() for k, v in best_state[0].items()},
        "msmix": None if best_state[1] is None else {k: v.cpu() for k, v in best_state[1].items()},
        "test_metrics": record["test_metrics"],
        "valid_metrics": record["valid_metrics"],
        "torch_version": str(torch.__version__),
    }, path)


def load_checkpoint(path: str | Path, device: str = "cpu") -> Dict[str, Any]:
    expected = f"expected a {CHECKPOINT_FORMAT} checkpoint (written by msmix-train --save)"
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e}); {expected}") from None
    except Exception as e:  # torch.load of other bytes: unpickling errors of every kind
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail}); "
                              f"{expected}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: {expected}")
    return ckpt


def evaluate_checkpoints(paths: Sequence[str | Path], data: Optional[str] = None, device: str = "cpu",
                         threads: int = 1, out: Optional[str] = None) -> Dict[str, Any]:
    """Re-evaluate saved runs on their test split (``--eval-only --load``).

    Each checkpoint's stored config rebuilds its data (``data`` overrides the source)
    and backbone; the stored best state is loaded and the test metrics recomputed with
    the stored evaluation batch size.  ``results["runs"][i]["matches_saved"]`` says whether
    they equal the metrics stored at training time.  A directory in ``paths`` stands for
    every ``*.pt`` file in it (recursively).
    """
    files: List[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.pt")) if p.is_dir() else [p])
    if not files:
        raise CheckpointError(f"no checkpoint found in {[str(p) for p in paths]}")
    from msmix_ext.train.loop import build_run  # the loop writes checkpoints: import it here, not at the top

    runs = []
    cache: Dict[str, Dict[str, MultimodalDataset]] = {}
    with Threads(threads):
        for path in files:
            ckpt = load_checkpoint(path, device)
            cfg = TrainConfig.from_dict(ckpt["config"])
            cfg.device = device
            if data is not None:
                cfg.data = data if data == "synthetic" else str(Path(data).resolve())
            key = json.dumps({k: cfg.to_dict()[k] for k in ("data", "data_seed", "synthetic", "standardize",
                                                            "dataset_kind")}, sort_keys=True)
            if key not in cache:
                cache[key] = load_data(cfg)
            splits = cache[key]
            info = ckpt["run"]
            model, msmix = build_run(info["backbone"], info["augmentation"], info["seed"],
                                     splits["train"].feature_dims, cfg)
            model.load_state_dict(ckpt["model"])
            if msmix is not None and ckpt["msmix"] is not None:
                msmix.load_state_dict(ckpt["msmix"])
            metrics = evaluate(model, splits["test"], cfg.dataset_kind, cfg.eval_batch_size, device)
            saved = ckpt["test_metrics"]
            same = all((metrics[k] == saved[k]) or (metrics[k] != metrics[k] and saved[k] != saved[k])
                       for k in saved)
            diff = max((abs(metrics[k] - saved[k]) for k in saved if metrics[k] == metrics[k]), default=0.0)
            (log.info if same else log.warning)(
                "%s: %s/%s/seed %d test %s; %s the saved metrics (max |diff| %.3g)", path, info["backbone"],
                info["augmentation"], info["seed"], ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                "reproduces" if same else "DIFFERS from", diff)
            runs.append({"checkpoint": str(path), "backbone": info["backbone"], "augmentation": info["augmentation"],
                         "seed": info["seed"], "train_fraction": info.get("train_fraction", 1.0),  # older: 1
                         "test_metrics": metrics, "saved_test_metrics": saved,
                         "matches_saved": same, "max_abs_diff": diff})
    summary = summarize(runs)
    results = {"mode": "eval-only", "torch_version": str(torch.__version__), "machine": machine_info(device),
               "runs": runs, "summary": summary, "table": format_table(summary)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "eval.json", results)
        (Path(out) / "eval.txt").write_text(results["table"] + "\n")
    return results
