"""Batched (layer, position) residual-stream patching sweep vs one patched forward pass per
(layer, position), on the same pairs; prints both times, the speed-up and the largest difference.

    PYTHONPATH=. python benchmarks/bench_patching.py [--threads N] [--repeats R]

Target: >= 5x faster with identical numbers (max abs diff <= 1e-5). The loop runs once over the
pairs' whole inputs (what a straightforward implementation patches) and once over the same inputs
cut after the last answer-predicting position, as the batched sweep cuts them. Times are CPU time
of this process with one thread, so other load on the machine does not count.
"""

from __future__ import annotations


import torch

from reportgen.analysis.pairs import make_pairs
from reportgen.analysis.patching import PairRun, hook_name, logit_diff, pair_batch
from workloads import TOKENIZER, model_of, problems, timed, timing_args

MIN_DENOMINATOR = 1.0


def usable_pairs(model, recs, n: int):
    """n carry-flip pairs whose logit difference is large enough to normalise by."""
    pairs = make_pairs(recs, "carry_flip", 8 * n, seed=0)
    kept = PairRun(model, pair_batch(pairs, TOKENIZER), ("resid_pre",), MIN_DENOMINATOR).pairs
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} usable pairs, wanted {n}")
    return kept[:n]


def batched(model, pb) -> torch.Tensor:
    run = PairRun(model, pb, ("resid_pre",), MIN_DENOMINATOR)
    return run.sweep("resid_pre", "denoise")


def full_inputs(pb) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs' whole inputs, BOS + prompt + answer + EOS, as the straightforward loop sees them."""
    enc = lambda r: TOKENIZER.encode(r["prompt"] + r["target"], bos=True, eos=True)  # noqa: E731
    return (torch.tensor([enc(p.clean) for p in pb.pairs]), torch.tensor([enc(p.corrupt) for p in pb.pairs]))


def naive(model, pb, clean_tokens, corrupt_tokens) -> torch.Tensor:
    """One full forward pass of the corrupt batch per (layer, position), clean value patched in."""
    with torch.no_grad():
        lc, clean = model.run_with_cache(clean_tokens, names=lambda n: n.endswith("hook_resid_pre"))
        args = (pb.pred_pos, pb.correct, pb.counterfactual)
        ld_clean, ld_corrupt = logit_diff(lc, *args), logit_diff(model(corrupt_tokens), *args)
        L, P = model.cfg.n_layers, clean_tokens.shape[1]
        out = torch.zeros(len(pb.pairs), L, P)
        for l in range(L):
            name = hook_name("resid_pre", l)
            for p in range(P):
                def patch(x, _n, p=p):
                    x = x.clone()
                    x[:, p] = clean[name][:, p]
                    return x
                ld = logit_diff(model(corrupt_tokens, hooks={name: patch}), *args)
                out[:, l, p] = (ld - ld_corrupt) / (ld_clean - ld_corrupt)
    return out


def main() -> None:
    args = timing_args(__doc__)
    cases = [  # (layers, d_model, pairs, operand digits): 3+3 digits, and 6+7 digits = 24 tokens
        (2, 64, 8, (3, 3)),
        (4, 128, 64, (6, 7)),
    ]
    print(f"torch threads: {args.threads}; CPU time, best of {args.repeats}")
    for L, d, n, (la, lb) in cases:
        model = model_of(L, d, std=0.5 if d <= 64 else 0.3)  # logit differences far from zero
        pb = pair_batch(usable_pairs(model, problems(la, lb, 4 * n, seed=1), n), TOKENIZER)
        full = full_inputs(pb)
        P = pb.clean.shape[1]
        t_fast, fast = timed(lambda: batched(model, pb), args.repeats)
        t_full, slow = timed(lambda: naive(model, pb, *full), args.repeats)
        t_cut, cut = timed(lambda: naive(model, pb, pb.clean, pb.corrupt), args.repeats)
        diff = max((fast - slow[:, :, :P]).abs().max().item(), slow[:, :, P:].abs().max().item(),
                   (fast - cut).abs().max().item())
        print(f"{L} layers, d_model {d}, {n} pairs of {full[0].shape[1]} tokens: batched {t_fast * 1e3:.1f} ms; "
              f"loop over whole inputs {t_full * 1e3:.1f} ms ({t_full / t_fast:.1f}x); loop over inputs cut after "
              f"the last predicting position ({P} tokens) {t_cut * 1e3:.1f} ms ({t_cut / t_fast:.1f}x); "
              f"max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
