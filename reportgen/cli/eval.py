"""`reportgen eval`: exact match of a checkpoint on a fresh stratified test set of its own task."""

from __future__ import annotations

import argparse
import json

MAX_INSTANCES = 100_000  # a 95% interval no wider than about 0.006; more only takes longer


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a fresh stratified test set",
                       description="Greedy-decode a fresh test set of the checkpoint's own task and format, "
                                   "stratified by difficulty; print exact match with 95% Wilson intervals.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--instances", type=int, default=2000, help="test examples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the fresh test set (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.errors import ReportgenError

    if not 0 < args.instances <= MAX_INSTANCES:
        raise ReportgenError(f"--instances must be between 1 and {MAX_INSTANCES}, got {args.instances}")
    from reportgen.analysis.examples import unseen_records
    from reportgen.model.checkpoint import load_checkpoint
    from reportgen.train.evaluate import evaluate
    from reportgen.model.device import resolve_device

    ckpt = load_checkpoint(args.checkpoint, device=str(resolve_device(args.device)))
    records, unseen = unseen_records(ckpt, args.instances, args.seed)
    res = evaluate(ckpt.model, ckpt.tokenizer, records)
    t = ckpt.task
    print(f"{args.checkpoint}: task {t['task']}, {t['min_digits']}-{t['max_digits']} digits, "
          f"{'with' if t['with_steps'] else 'without'} steps, {t['answer_order']} answers")
    print("test questions: none from the model's training data (train, val and test splits)" if unseen else
          "test questions: the model's training data could not be recovered, so some may be training questions")
    print(f"exact match {res.exact_match:.4f} [{res.lo:.4f}, {res.hi:.4f}] (n={res.n}); "
          f"per-digit accuracy {res.digit_accuracy:.4f}")
    for stratum, s in res.by_stratum.items():
        print(f"  {stratum:12s} {s['exact_match']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}] (n={s['n']})")
    if args.json:
        print(json.dumps({**res.to_dict(), "checkpoint": args.checkpoint, "sha256": ckpt.sha256, "task": t,
                          "unseen": unseen}, sort_keys=True))
    return 0
