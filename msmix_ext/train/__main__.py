"""``python -m msmix_ext.train`` / ``msmix-train``: train and compare augmentations.

Trains every backbone x augmentation x seed, prints a table of test metrics
(mean ± std over seeds), and writes ``results.json``, ``results.txt``,
``results.png`` and ``train.log`` to ``--out``.  See :mod:`msmix_ext.train.runner`.

Examples::

    python -m msmix_ext.train                                   # defaults, synthetic data
    python -m msmix_ext.train --data MOSI/unaligned_50.pkl --epochs 30 --num-seeds 5
    python -m msmix_ext.train --augmentations none,msmix,msmix-no-sal --save --out runs/abl
    python -m msmix_ext.train --eval-only --load runs/abl/checkpoints
    torchrun --nproc_per_node 2 -m msmix_ext.train --pool global   # one data-parallel model
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional, Sequence

from msmix_ext.augment import AUGMENTATIONS
from msmix_ext.models import MMSA_BACKBONES
from msmix_ext.train import distributed, runner
from msmix_ext.train.data import DataError
from msmix_ext.train.checkpoints import CheckpointError
from msmix_ext.train.metrics import DATASET_KINDS

_DEFAULTS = runner.TrainConfig()


def _comma_list(text: str) -> List[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msmix-train",
        description="Train and evaluate multimodal sentiment backbones with mixup augmentations "
                    "(MS-Mix and baselines) over several seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help="'synthetic' or the path of an MMSA feature pickle (default: synthetic; "
                        "with --eval-only: the checkpoint's own data)")
    d.add_argument("--dataset-kind", choices=DATASET_KINDS, default=_DEFAULTS.dataset_kind,
                   help="label range R (3 for mosi/mosei, 1 for sims) and metric set")
    d.add_argument("--data-seed", type=int, default=_DEFAULTS.data_seed, help="seed of the synthetic dataset")
    d.add_argument("--synthetic-config", default=None, metavar="JSON",
                   help='SyntheticConfig overrides, e.g. \'{"split_sizes": [200, 50, 50]}\'')
    d.add_argument("--no-standardize", action="store_true", help="do not z-score features with train statistics")
    r = p.add_argument_group("runs")
    r.add_argument("--backbones", default=",".join(_DEFAULTS.backbones),
                   help=f"comma list from {', '.join(runner.ALL_BACKBONES)} ({', '.join(MMSA_BACKBONES)}: "
                        "MMSA's models, need pip install msmix_ext[mmsa])")
    r.add_argument("--backbone-options", default=None, metavar="JSON",
                   help='constructor options per backbone, e.g. \'{"mult": {"reduced": false}}\' '
                        "(MulT at MMSA's full width and depth)")
    r.add_argument("--augmentations", default=",".join(_DEFAULTS.augmentations),
                   help=f"comma list from {', '.join(AUGMENTATIONS)}")
    seeds = r.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", default=None,
                       help="one seed or a comma list of seeds, e.g. 42 or 0,1,2 "
                            f"(default: {','.join(map(str, _DEFAULTS.seeds))})")
    seeds.add_argument("--num-seeds", type=int, default=None, metavar="N", help="seeds 0..N-1")
    r.add_argument("--train-fraction", default="1.0", metavar="FRACTIONS",
                   help="comma list of fractions in (0, 1], e.g. 0.1,0.25,1.0: each run trains on a "
                        "label-stratified subset of the training split, the same for every augmentation "
                        "of a seed")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    t.add_argument("--min-steps", type=int, default=_DEFAULTS.min_steps, metavar="N",
                   help="train at least N optimizer steps per run: a small --train-fraction then runs more "
                        "epochs, so every fraction gets the same step budget (default 0: --epochs only)")
    t.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    t.add_argument("--eval-batch-size", type=int, default=_DEFAULTS.eval_batch_size)
    t.add_argument("--lr", type=float, default=_DEFAULTS.lr)
    t.add_argument("--device", default=_DEFAULTS.device, help="cpu or cuda")
    t.add_argument("--compile", action="store_true", help="torch.compile the model's feature and head steps "
                                                          "(training only; evaluation stays eager)")
    t.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="worker processes training runs side by side (default 0: one per core's worth of "
                        "--threads; 1 = serial); every run's result is the same either way")
    t.add_argument("--threads", type=int, default=_DEFAULTS.threads,
                   help="torch.set_num_threads for the run (0: leave torch's default). 1 is the default "
                        "because the small per-batch ops gain little from more and lose a lot on a busy machine")
    t.add_argument("--main-metric", default=_DEFAULTS.main_metric,
                   help="validation metric for model selection, and the figure's metric")
    m = p.add_argument_group("MS-Mix")
    m.add_argument("--mix-weight", type=float, default=_DEFAULTS.mix_weight, help="weight of the mixed-sample loss")
    m.add_argument("--sal-weight", type=float, default=_DEFAULTS.sal_weight, help="weight of SAL")
    m.add_argument("--sal-scale", type=float, default=_DEFAULTS.sal_scale, help="the scale inside SAL")
    m.add_argument("--threshold", type=float, default=_DEFAULTS.threshold, help="SASS similarity threshold")
    m.add_argument("--alpha", type=float, default=_DEFAULTS.alpha,
                   help="Beta(alpha, alpha) of the mixing ratios (Dirichlet(alpha) for multimix)")
    m.add_argument("--pool", choices=("local", "global"), default=_DEFAULTS.pool,
                   help="under torchrun: MS-Mix pairs samples within each rank's batch (local) or "
                        "across the batches of all ranks (global)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="output directory (default: runs/<timestamp>)")
    o.add_argument("--save", action="store_true", help="write a checkpoint per run (best validation state)")
    o.add_argument("--no-plot", action="store_true", help="skip the PNG figure")
    o.add_argument("--eval-only", action="store_true", help="evaluate checkpoints given with --load, no training")
    o.add_argument("--load", nargs="+", default=None, metavar="PATH",
                   help="checkpoint files or directories for --eval-only")
    o.add_argument("--quiet", action="store_true", help="no progress bars, warnings only; the table is still printed")
    o.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def _seeds(args: argparse.Namespace) -> tuple:
    if args.num_seeds is not None:
        if args.num_seeds < 1:
            raise ValueError(f"--num-seeds must be >= 1, got {args.num_seeds}")
        return tuple(range(args.num_seeds))
    return _DEFAULTS.seeds if args.seeds is None else runner.parse_seeds(args.seeds)


def config_from_args(args: argparse.Namespace) -> runner.TrainConfig:
    return runner.TrainConfig(
        data=args.data or "synthetic",
        dataset_kind=args.dataset_kind,
        data_seed=args.data_seed,
        synthetic=json.loads(args.synthetic_config) if args.synthetic_config else {},
        standardize=not args.no_standardize,
        backbones=tuple(_comma_list(args.backbones)),
        backbone_options=json.loads(args.backbone_options) if args.backbone_options else {},
        augmentations=tuple(_comma_list(args.augmentations)),
        seeds=_seeds(args),
        train_fractions=runner.parse_fractions(args.train_fraction),
        epochs=args.epochs,
        min_steps=args.min_steps,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        lr=args.lr,
        device=args.device,
        compile=args.compile,
        threads=args.threads,
        jobs=args.jobs,
        mix_weight=args.mix_weight,
        sal_weight=args.sal_weight,
        sal_scale=args.sal_scale,
        threshold=args.threshold,
        alpha=args.alpha,
        pool=args.pool,
        main_metric=args.main_metric,
        out=args.out,
        save=args.save,
        plot=not args.no_plot,
        quiet=args.quiet,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 an eval-only mismatch, 2 bad arguments or data)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(parser, args)
    except (DataError, CheckpointError) as e:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)  # one line; --debug for the traceback
        return 2


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    runner.setup_logging(args.quiet)
    t0 = time.perf_counter()
    if args.eval_only:
        if distributed.launched():
            parser.error("--eval-only runs in one process; start it without torchrun")
        if not args.load:
            parser.error("--eval-only needs --load PATH")
        try:
            results = runner.evaluate_checkpoints(args.load, data=args.data, device=args.device,
                                                  threads=args.threads, out=args.out)
        except (DataError, CheckpointError):
            raise
        except ValueError as e:
            parser.error(str(e))
        print(results["table"])
        ok = all(r["matches_saved"] for r in results["runs"])
        print(f"{len(results['runs'])} checkpoint(s); test metrics "
              f"{'reproduced exactly' if ok else 'DIFFER from the saved ones'}")
        return 0 if ok else 1
    if args.load:
        parser.error("--load is only used with --eval-only")
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except (ValueError, json.JSONDecodeError) as e:
        parser.error(str(e))
    with distributed.session(cfg.device) as device:
        cfg.device = device
        writer = distributed.is_writer()
        if not writer:  # torchrun ranks > 0: warnings only, rank 0 reports
            cfg.quiet = True
            runner.setup_logging(quiet=True)
        results = runner.run(cfg)
    if not writer:
        return 0
    print(results["table"])
    print(f"wall time {time.perf_counter() - t0:.1f} s; results in {results['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
