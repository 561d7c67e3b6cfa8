"""`reportgen train`: train a model from a YAML config (values overridable on the command line)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train", help="train a transformer on arithmetic",
                       description="Train a transformer; writes checkpoint_best.pt, checkpoint_last.pt, "
                                   "metrics.jsonl, metrics.json and training_curve.png to the output dir.")
    p.add_argument("--config", default="configs/train.yaml", help="training YAML (default: %(default)s)")
    p.add_argument("--output-dir", "--output_dir", required=True, help="run directory, e.g. runs/seed42")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="device (overrides the config)")
    p.add_argument("--max-steps", "--max_steps", type=int, help="step budget (overrides optim.max_steps)")
    p.add_argument("--data", help="train on this `reportgen data` directory (overrides data.dir)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt in the output dir")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set model.n_layers=1 (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.configfile import from_dict, load_yaml
    from reportgen.train.config import TrainConfig, apply_overrides

    raw = load_yaml(args.config)
    overrides = list(args.set)
    for flag, key in ((args.seed, "seed"), (args.device, "device"), (args.max_steps, "optim.max_steps"),
                      (args.data, "data.dir")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    where = f"{args.config} with {' '.join(overrides)}" if overrides else args.config
    cfg = from_dict(TrainConfig, apply_overrides(raw, overrides), where)
    out = Path(args.output_dir)

    from reportgen.train.trainer import Trainer

    metrics = Trainer(cfg, out, resume=args.resume).run()
    test = metrics["test"]
    print(f"trained {metrics['steps']} steps in {metrics['train_seconds']} s; best step {metrics['best_step']}")
    print(f"test exact match {test['exact_match']:.4f} [{test['lo']:.4f}, {test['hi']:.4f}] (n={test['n']})")
    for stratum, s in test["by_stratum"].items():
        print(f"  {stratum:12s} {s['exact_match']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}] (n={s['n']})")
    print(f"checkpoint: {out / 'checkpoint_best.pt'}", file=sys.stderr)
    return 0
