"""`reportgen import`: a reportgen checkpoint from a TransformerLens or Hugging Face GPT-2 model.

(The module is import_.py because `import` is a Python keyword; the command is `reportgen import`.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

CHECK_EXAMPLES = 100


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="make a checkpoint from a TransformerLens or Hugging Face GPT-2 model",
        description="Convert a model trained elsewhere into a reportgen checkpoint for the task and token ids you "
                    "state, so that eval, analyze and build work on it. Architectures reportgen cannot compute "
                    "exactly are refused by name. The checkpoint records where it came from.")
    p.add_argument("--from", dest="source_format", required=True, choices=["transformer-lens", "hf"],
                   help="format of the source model")
    p.add_argument("src", metavar="SRC", help="directory holding config.json and the weights (model.safetensors, or "
                                              "one .safetensors/.pt/.pth/.bin file), or that weights file")
    p.add_argument("--task", required=True, help="task the model was trained on: add, sub, mul or addsub")
    p.add_argument("--digits", required=True, metavar="MIN-MAX", help="operand digits it was trained on, e.g. 1-3 or 3")
    p.add_argument("--answer-order", choices=["plain", "reversed"], default="plain",
                   help="answer digits most significant first (plain) or reversed (default: %(default)s)")
    p.add_argument("--with-steps", action="store_true",
                   help="the model writes reportgen's scratchpad before the answer")
    p.add_argument("--vocab", required=True, metavar="MAP",
                   help='JSON object from reportgen\'s tokens to the model\'s token ids, '
                        'e.g. {"<bos>": 0, "0": 1, ...}')
    p.add_argument("--out", required=True, help="checkpoint file to write, e.g. runs/imported/checkpoint.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.atomic import OwnedFiles, write_error
    from reportgen.errors import ReportgenError
    from reportgen.model.checkpoint import checkpoint_bytes
    from reportgen.model.interop import import_model

    task = _task(args)
    out = Path(args.out)
    if out.is_dir():
        raise ReportgenError(f"--out {out} is a directory; give the checkpoint file to write, "
                             f"e.g. {out / 'checkpoint.pt'}")
    model, tokenizer, meta = import_model(args.source_format, args.src, task, args.vocab)
    _check_replaceable(out)
    data = checkpoint_bytes(model, tokenizer, **meta)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        OwnedFiles(out.parent).write(out.name, data)
    except OSError as e:
        raise write_error(out, e) from None
    cfg = model.cfg
    print(f"imported {args.src} ({args.source_format}: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model "
          f"{cfg.d_model}, d_mlp {cfg.d_mlp}, n_ctx {cfg.n_ctx}, d_vocab {cfg.d_vocab}) to {out}")
    for note in meta["imported_from"]["notes"]:
        print(f"  {note}")
    print(f"  exact match on {CHECK_EXAMPLES} fresh problems of the stated task and format: "
          f"{_exact_match(model, tokenizer, task):.2f} (if that is lower than you expect, check --task, --digits, "
          "--answer-order, --with-steps and --vocab)")
    return 0


def _exact_match(model, tokenizer, task: dict) -> float:
    """Greedy-decoding exact match on CHECK_EXAMPLES stratified problems: a quick check that the
    stated task, format and token ids are the model's."""
    from reportgen.data.dataset import count_questions, stratified_examples
    from reportgen.train.evaluate import evaluate

    n = min(CHECK_EXAMPLES, count_questions(task["task"], task["min_digits"], task["max_digits"]))
    records = stratified_examples(task["task"], n, task["max_digits"], task["min_digits"], 0, task["with_steps"],
                                  task["answer_order"])
    return evaluate(model, tokenizer, records).exact_match


def _task(args: argparse.Namespace) -> dict:
    """The checkpoint's data spec from --task, --digits, --answer-order and --with-steps."""
    from reportgen.data.arithmetic import TASKS
    from reportgen.data.dataset import MAX_DIGITS_LIMIT
    from reportgen.errors import ReportgenError

    if args.task not in TASKS:
        raise ReportgenError(f"unknown --task {args.task!r}; use one of {', '.join(TASKS)}")
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", args.digits)
    if not m:
        raise ReportgenError(f"--digits {args.digits!r} is not a digit count or range; write e.g. 1-3 or 3")
    lo, hi = int(m[1]), int(m[2] or m[1])
    if not 1 <= lo <= hi <= MAX_DIGITS_LIMIT:
        raise ReportgenError(f"--digits {args.digits!r} must be a range MIN-MAX with 1 <= MIN <= MAX <= "
                             f"{MAX_DIGITS_LIMIT}")
    return {"task": args.task, "min_digits": lo, "max_digits": hi, "with_steps": bool(args.with_steps),
            "answer_order": args.answer_order}


def _check_replaceable(out: Path) -> None:
    """An existing --out may be replaced only if it is a checkpoint an earlier import wrote there,
    unchanged since: a trained checkpoint or a file of the user's is never lost."""
    from reportgen.atomic import OwnedFiles
    from reportgen.errors import ReportgenError
    from reportgen.model.checkpoint import read_checkpoint_payload

    if not out.exists() and not out.is_symlink():
        return
    if not OwnedFiles(out.parent).foreign([out.name]):
        try:
            if "imported_from" in read_checkpoint_payload(out):
                return
        except ReportgenError:
            pass
    raise ReportgenError(f"--out {out} exists and is not a checkpoint an earlier `reportgen import` wrote there; "
                         "move it or choose another --out")
