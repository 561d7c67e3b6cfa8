"""`reportgen export`: a checkpoint's model as a directory TransformerLens or `transformers` loads."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint for TransformerLens or Hugging Face transformers",
        description="Write the checkpoint's model as a directory that TransformerLens (HookedTransformer, --to "
                    "transformer-lens) or transformers (GPT-2, --to hf) loads: config.json, model.safetensors, "
                    "vocab.json, and for hf the tokenizer files. A model the format cannot hold exactly is refused. "
                    "--out is replaced whole, and only if it is empty or holds exactly what reportgen wrote there.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, e.g. runs/add3_rev/checkpoint_best.pt")
    p.add_argument("--to", required=True, choices=["transformer-lens", "hf"], help="format to write")
    p.add_argument("--out", required=True, help="directory to write, e.g. exports/add3_rev-tl")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.atomic import replace_dir
    from reportgen.atomic import check_out_dir
    from reportgen.model.checkpoint import load_checkpoint
    from reportgen.model.interop import export_files

    out = Path(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    files = export_files(ckpt, args.to)
    check_out_dir(out, "--out", "the export")

    def write(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    replace_dir(out, write)
    print(f"exported {args.checkpoint} for {args.to} to {out}: {', '.join(sorted(files))}")
    if args.to == "hf":
        print("  b_U is folded into ln_f.bias (GPT-2 has no unembedding bias); the logits are the same")
    return 0
