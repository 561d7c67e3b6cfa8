"""What the speed benchmarks share: random models with large weights, addition problems of given
operand lengths, and CPU timing."""

from __future__ import annotations

import argparse
import random
import time

import torch

from reportgen.data.arithmetic import make_record
from reportgen.data.tokenizer import Tokenizer
from reportgen.model.transformer import ModelConfig, Transformer

TOKENIZER = Tokenizer()


def model_of(n_layers: int, d_model: int, std: float = 0.3, seed: int = 0) -> Transformer:
    """A random 4-head model whose weight matrices are N(0, std), large enough that logits differ."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_layers=n_layers, n_heads=4, d_model=d_model, d_mlp=4 * d_model, n_ctx=32,
                                    d_vocab=len(TOKENIZER))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                p.normal_(0, std)
    return model


def problems(len_a: int, len_b: int, n: int, seed: int) -> list[dict]:
    """n additions of a len_a-digit and a len_b-digit number whose sum has no extra digit (one layout)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.randrange(10 ** (len_a - 1), 10**len_a), rng.randrange(10 ** (len_b - 1), 10**len_b)
        if len(str(a + b)) == max(len_a, len_b):
            out.append(make_record(a, b, "+"))
    return out


def timed(fn, repeats: int):
    """Best CPU time of this process over `repeats` runs (with one thread, other load on the
    machine does not count against either method) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t)
    return best, result


def timing_args(doc: str) -> argparse.Namespace:
    """--threads (set for torch here) and --repeats of a timing benchmark whose docstring is `doc`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args
