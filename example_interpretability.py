"""Tour of the public analysis API on one checkpoint: all six analyses, printed as plain findings.

    python example_interpretability.py [runs/NAME/checkpoint_best.pt] [--out reports/example]

Without a checkpoint argument, the first runs/*/checkpoint_best.pt is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reportgen.analysis import (
    ActivationPatcher,
    AttentionAnalyzer,
    CircuitDiscovery,
    InterventionAnalyzer,
    LogitLens,
    ProbingClassifier,
    load_model_and_tokenizer,
)
from reportgen.analysis.api import text_records
from reportgen.analysis.examples import generated_records
from reportgen.analysis.config import ProbingConfig
from reportgen.analysis.probing import held_out_layouts
from reportgen.errors import ReportgenError


def find_checkpoint(given: str | None) -> str:
    if given:
        return given
    found = sorted(Path("runs").glob("*/checkpoint_best.pt"))
    if not found:
        raise ReportgenError("no runs/*/checkpoint_best.pt found; pass a checkpoint path or train one first")
    return str(found[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--out", default="reports/example", help="where figures go (default: %(default)s)")
    args = parser.parse_args()
    try:
        tour(find_checkpoint(args.checkpoint), Path(args.out))
    except ReportgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def units_digit_pos(text: str, task: dict) -> int:
    """Token index of the answer's units digit in BOS + prompt + answer + EOS, in the task's format
    (last answer token for plain answers, first for reversed ones)."""
    record = text_records([text], task)[0]
    return 1 + record["answer_span"][0] + record["answer_columns"].index(0)


def tour(checkpoint: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, ckpt = load_model_and_tokenizer(checkpoint)
    task = ckpt.task
    records = generated_records(ckpt, 16, seed=0)  # stratified problems in the model's own format
    examples = [r["prompt"] for r in records]
    print(f"checkpoint {checkpoint}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, task {task}")

    print("\n1. Attention patterns")
    attn = AttentionAnalyzer(model, tokenizer, task)
    attn.plot_attention_heads(examples[0], layer_idx=model.cfg.n_layers - 1, save_path=out / "attention.png")
    stats = attn.head_statistics(examples)
    for s in sorted(stats.head_stats, key=lambda s: -s.operator.mean)[:3]:
        print(f"   L{s.layer}H{s.head}: operator {s.operator.mean:.2f} [{s.operator.lo:.2f}, {s.operator.hi:.2f}], "
              f"sink {s.sink.mean:.2f}, entropy {s.entropy.mean:.2f}")
    roles: dict[str, list[str]] = {}  # each head's role at each answer column (key group beating the twins)
    for r in stats.head_roles:
        if r.held and r.query_role == "answer":
            roles.setdefault(f"L{r.layer}H{r.head}", []).append(f"column {r.column}: {r.key_group} {r.mass.mean:.2f}")
    for head, held in roles.items():
        print(f"   {head} attends " + "; ".join(held))
    print(f"   figure: {out / 'attention.png'}")

    print("\n2. Activation patching")
    patcher = ActivationPatcher(model, tokenizer, task)
    try:
        effects = patcher.compute_patching_effect("12 + 34", "12 + 35", target_token_pos=units_digit_pos("12 + 34", task))
        print("   recovery by layer (12+34 -> 12+35, units digit of the answer):",
              ", ".join(f"L{l} {v:.2f}" for l, v in effects.items()))
    except ReportgenError as e:
        print(f"   skipped: {e}")

    print("\n3. Logit lens")
    lens = LogitLens(model, tokenizer, task)
    lens.visualize_prediction_evolution(examples[1], position=-1, save_path=out / "logit_lens.png")
    conv = lens.analyze_convergence(examples[1], target_token_pos=-1)
    print(f"   {examples[1]}: last digit {conv['target']} converges at {conv['convergence_label']}; "
          f"P(correct) per layer " + ", ".join(f"{p:.2f}" for p in conv["prob"]))

    print("\n4. Circuit discovery")
    discovery = CircuitDiscovery(model, tokenizer, task)
    carry = discovery.find_carry_detection_heads([(e, None) for e in examples])
    operator = discovery.find_operator_attention_heads(examples, sorted({r["op"] for r in records}))
    for t in carry[:3]:
        u = t["untrained"]
        print(f"   carry test L{t['layer']}H{t['head']} (column {t['column']}, read at {t['target']}): "
              f"{'confirmed' if t['confirmed'] else 'not confirmed'}; carry-flip recovery {t['recovery']:.2f}"
              + (f", on sum-flip pairs {t['sum_flip']['mean']:.2f}" if t["sum_flip"] else "")
              + (f", largest same-layer head in the untrained twins {u['mean']:.2f}" if u else ""))
    for d in operator[:3]:
        att = ", ".join(f"'{op}' {v:.2f}" for op, v in d["operator_attention"].items())
        print(f"   operator attention L{d['layer']}H{d['head']}: {att}")

    print("\n5. Linear probing")
    prober = ProbingClassifier(model, tokenizer, task)
    # A probe reads problems of one layout: the most common one of the longest operands.
    one_layout = held_out_layouts(ckpt, ProbingConfig(n_examples=120), seed=0)[0][0]
    labels = [r["labels"]["columns"][1]["carry_in"] for r in one_layout]
    res = prober.probe_across_layers([r["prompt"] for r in one_layout], labels, "carry_into_column_1")
    print(f"   carry-into-column-1 probe on {res['layout']} at the first answer position: " + ", ".join(
        f"{name} {acc:.2f} (untrained {u:.2f})" for name, acc, u in zip(res["layer_labels"], res["accuracy"], res["untrained"])
    ) + f"; majority {res['majority']:.2f}; {res['n_test']} held-out problems (`reportgen analyze --probing` tests them)")

    print("\n6. Ablation interventions")
    intervener = InterventionAnalyzer(model, tokenizer, task)
    importance = intervener.measure_layer_importance(examples=examples, component="attn")
    for layer, drop in importance.items():
        print(f"   mean-ablating layer {layer}'s attention: exact match -{drop['exact_match']:.2f}, "
              f"answer log-prob -{drop['logprob']:.2f}")
    print(f"\nfigures in {out}; for the full analysis run `reportgen analyze --checkpoint {checkpoint} --all`")


if __name__ == "__main__":
    sys.exit(main())
