"""``reportgen data``: generate an arithmetic data set (train/val/test + manifest)."""

from __future__ import annotations

import argparse
import shlex

from reportgen.data.arithmetic import ANSWER_ORDERS, STRATA, TASKS
from reportgen.data.dataset import SPLITS, DataSpec, write_dataset

DEFAULTS = {
    "instances": 20000,
    "max_digits": 3,
    "min_digits": 1,
    "answer_order": "plain",
    "seed": 0,
    "val_fraction": 0.1,
    "test_fraction": 0.1,
    "stratified_fraction": 0.5,
}


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "data",
        help="generate an arithmetic data set (train/val/test splits and a manifest)",
        description=(
            "Generate arithmetic questions with exact ground-truth labels. Val and test are "
            "stratified equally over no_carry/one_carry/multi_carry/cascade; the files are "
            "byte-identical for the same arguments."
        ),
    )
    p.add_argument("--task", required=True, choices=TASKS, help="which arithmetic task")
    p.add_argument("--instances", type=int, default=DEFAULTS["instances"], metavar="N",
                   help="total questions over all splits (default %(default)s)")
    p.add_argument("--max-digits", "--max_length", dest="max_digits", type=int,
                   default=DEFAULTS["max_digits"], metavar="D",
                   help="most digits per operand (default %(default)s)")
    p.add_argument("--min-digits", "--min_length", dest="min_digits", type=int,
                   default=DEFAULTS["min_digits"], metavar="d",
                   help="fewest digits per operand (default %(default)s)")
    p.add_argument("--with-steps", "--with_steps", dest="with_steps", action="store_true",
                   help="targets write out the column-by-column steps before '|answer'")
    p.add_argument("--answer-order", dest="answer_order", choices=ANSWER_ORDERS,
                   default=DEFAULTS["answer_order"],
                   help="write the answer plain or reversed (least significant digit first)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], metavar="S",
                   help="random seed (default %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory, must be new or empty (default data/<task>)")
    p.add_argument("--val-fraction", dest="val_fraction", type=float,
                   default=DEFAULTS["val_fraction"], metavar="F",
                   help="share of instances in the val split (default %(default)s)")
    p.add_argument("--test-fraction", dest="test_fraction", type=float,
                   default=DEFAULTS["test_fraction"], metavar="F",
                   help="share of instances in the test split (default %(default)s)")
    p.add_argument("--stratified-fraction", dest="stratified_fraction", type=float,
                   default=DEFAULTS["stratified_fraction"], metavar="F",
                   help="share of train drawn with equal quotas per stratum (default %(default)s)")
    p.set_defaults(func=run)
    return p


def spec_from_args(args) -> DataSpec:
    """The DataSpec of parsed arguments (ReportgenError for bad values)."""
    return DataSpec(
        task=args.task,
        instances=args.instances,
        max_digits=args.max_digits,
        min_digits=args.min_digits,
        with_steps=bool(args.with_steps),
        answer_order=args.answer_order,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        stratified_fraction=args.stratified_fraction,
    )


def out_dir_from_args(args) -> str:
    return args.out if args.out else f"data/{args.task}"


def canonical_command(spec: DataSpec, out: str) -> str:
    """The full ``reportgen data ...`` command line for a spec (every option spelled out
    in a fixed order), independent of how the user typed it."""
    parts = [
        "reportgen", "data",
        "--task", spec.task,
        "--instances", str(spec.instances),
        "--max-digits", str(spec.max_digits),
        "--min-digits", str(spec.min_digits),
    ]
    if spec.with_steps:
        parts.append("--with-steps")
    parts += [
        "--answer-order", spec.answer_order,
        "--seed", str(spec.seed),
        "--val-fraction", repr(float(spec.val_fraction)),
        "--test-fraction", repr(float(spec.test_fraction)),
        "--stratified-fraction", repr(float(spec.stratified_fraction)),
        "--out", out,
    ]
    return " ".join(shlex.quote(p) for p in parts)


def run(args) -> int:
    spec = spec_from_args(args)
    out = out_dir_from_args(args)
    manifest = write_dataset(spec, out, canonical_command(spec, out))
    print(format_summary(manifest, out))
    return 0


def format_summary(manifest: dict, out: str) -> str:
    counts = manifest["counts"]
    strat = manifest["stratification"]
    lines = [
        f"wrote {sum(counts.values())} questions to {out} "
        f"(train {counts['train']}, val {counts['val']}, test {counts['test']})",
        "  split  " + "".join(f"{s:>13}" for s in STRATA),
    ]
    for name in SPLITS:
        row = "".join(f"{manifest['strata'][name][s]:>13}" for s in STRATA)
        lines.append(f"  {name:<6} {row}")
    rate = strat["uniform_rate"]["cascade"]
    approx = "" if strat["uniform_rate_method"].startswith("exact") else "~"
    lines.append(
        f"  cascade share of test {100 * strat['share']['test']['cascade']:.1f}% "
        f"(uniform sampling: {approx}{100 * rate:.1f}%)"
    )
    for s, why in strat["impossible"].items():
        lines.append(f"  note: {s} {why}; its quota went to the other strata")
    for s, why in strat["shortfalls"].items():
        lines.append(f"  note: {s}: {why}")
    digest = manifest["content_hash"][:16]
    lines.append(f"  manifest: {out}/manifest.json (content hash {digest}...)")
    return "\n".join(lines)
