"""`reportgen analyze`: run the six analyses on one checkpoint and write the original toolkit's files.

Besides the per-analysis files it writes results.json and arrays.npz, the same results object
`reportgen build` makes, so `reportgen render DIR` turns an analysis into a report. Everything is
written into a temporary directory beside --output-dir and swapped in at the end, so bad input or
an interruption leaves the previous output untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

from reportgen.catalog import ANALYSES, ANALYSIS_NAMES
from reportgen.parallel import run_jobs

DEFAULT_CONFIG = Path("configs/interpretability.yaml")


def register(sub) -> None:
    p = sub.add_parser("analyze", help="run the interpretability analyses on one checkpoint",
                       description="Run attention, activation patching, logit lens, circuit discovery, "
                                   "probing and ablation analyses; write figures and JSON per analysis.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, e.g. runs/add3_rev/checkpoint_best.pt")
    p.add_argument("--all", action="store_true", help="run all six analyses")
    for a in ANALYSES:
        p.add_argument(a.flag, dest=a.name, action="store_true", help=f"run {a.name.replace('_', ' ')}")
    p.add_argument("--examples", nargs="*", metavar="PROBLEM",
                   help="problems to show one by one, e.g. \"59 + 73\" \"12 + 34\" (default: from the config, "
                        "else generated examples)")
    p.add_argument("--config", help=f"analysis YAML (default: {DEFAULT_CONFIG} if present, else built-in defaults)")
    p.add_argument("--output-dir", "--output_dir", default="reports/interpretability",
                   help="where to write (default: %(default)s); replaced only when the run succeeds")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, help="seed of generated examples, splits and baselines (overrides the config)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.analysis.config import load_analysis_config
    from reportgen.analysis.plan import prepare
    from reportgen.atomic import replace_dir
    from reportgen.atomic import check_out_dir
    from reportgen.build import ModelRun, check_shown, compute_model_results, model_name, print_progress
    from reportgen.model.checkpoint import load_checkpoint
    from reportgen.model.device import resolve_device

    config = args.config if args.config or not DEFAULT_CONFIG.is_file() else DEFAULT_CONFIG
    cfg = load_analysis_config(config)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    check_shown(args.examples, cfg)
    chosen = [name for name in ANALYSIS_NAMES if getattr(args, name)]
    enabled = list(ANALYSIS_NAMES) if args.all else (chosen or None)
    out = Path(args.output_dir).resolve()
    check_out_dir(out, "--output-dir", "the analysis")
    ckpt = load_checkpoint(args.checkpoint, device=str(resolve_device(args.device)))
    plan = prepare(ckpt, cfg, args.examples, enabled)
    for note in plan.notes:
        print(f"reportgen: note: {note}", file=sys.stderr)
    say = (lambda message: None) if args.quiet else print_progress
    run_ = ModelRun(ckpt, plan, cfg, args.examples, say, bars=not args.quiet)
    model = model_name(compute_model_results(run_), args.checkpoint)
    replace_dir(out, lambda d: write_outputs(d, model, plan, cfg))
    findings = model.findings
    n = len(findings.examples)
    correct = sum(e.correct for e in findings.examples)
    print(f"analysed {args.checkpoint}: {', '.join(a for a in ANALYSIS_NAMES if a in plan.enabled)}; "
          f"{len(plan.batch)} held-out problems, {n} examples shown ({correct} answered correctly); "
          f"exact match {model.accuracy.exact_match.mean:.3f} on {model.accuracy.n} fresh examples")
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------- files
def write_outputs(root: Path, model, plan, cfg) -> None:
    """results.json and arrays.npz (readable by `reportgen render`), and the original toolkit's
    files (figures and JSON) for every analysis that ran."""
    from reportgen.build import make_report
    from reportgen.plots.toolkit import import_writers
    from reportgen.results.store import save_results

    root.mkdir(parents=True, exist_ok=True)
    save_results(make_report([model], title=None), root)
    findings = model.findings
    records = plan.shown
    _dump(root / "examples.json", [
        {"index": i, "key": e.key, "prompt": e.prompt, "target": e.target, "prediction": e.prediction,
         "correct": e.correct, "stratum": e.stratum}
        for i, e in enumerate(findings.examples)
    ])
    writers = {  # each returns its figure jobs (matplotlib and numpy only), run in parallel at the end
        "attention": lambda d: _attention_jobs(d, findings, records, plan.attention_layers, cfg),
        "logit_lens": lambda d: _logit_lens_jobs(d, findings),
        "circuits": lambda d: [lambda: _write_circuits(d, findings.circuits)],
        "probing": lambda d: _probing_jobs(d, findings.probing),
        "interventions": lambda d: [lambda: _write_interventions(d, findings.interventions)],
    }
    jobs = []
    for name in ANALYSIS_NAMES:
        part = getattr(findings, name)
        if part is None:
            continue
        d = root / name
        d.mkdir()
        _dump(d / "findings.json", part)
        if name in writers:
            jobs += writers[name](d)
    import_writers()
    run_jobs(jobs)


def _attention_jobs(d: Path, findings, records, layers, cfg) -> list:
    """Writes each example's statistics (torch, so here) and returns one job per example for its
    layer and head figures (laid out once)."""
    from reportgen.analysis.attention import write_example_stats
    from reportgen.plots.toolkit import ExampleFigures

    def job(i, ex):
        H = ex.attention.shape[1]
        figs = ExampleFigures(ex.tokens, H)
        for l in layers:
            heads = [d / f"example_{i}_layer_{l}_head_{h}.png" for h in range(H)]
            figs.save(ex.attention[l], l, d / f"example_{i}_layer_{l}_all_heads.png",
                      heads if cfg.attention.per_head_figures else None, title=f"{ex.prompt}{ex.target}  layer {l}")

    for i, (ex, record) in enumerate(zip(findings.examples, records)):
        write_example_stats(d / f"example_{i}_stats.json", ex.attention, record, ex.tokens, layers)
    return [functools.partial(job, i, ex) for i, ex in enumerate(findings.examples)]


def _logit_lens_jobs(d: Path, findings) -> list:
    from reportgen.analysis.logit_lens import plot_evolution, plot_predictions, write_entropy_json

    def job(i, ex):
        plot_evolution(ex, d / f"example_{i}_evolution.png")
        plot_predictions(ex, d / f"example_{i}_predictions.png")
        write_entropy_json(d / f"example_{i}_entropy.json", ex)

    return [functools.partial(job, i, ex) for i, ex in enumerate(findings.examples)]


def _write_circuits(d: Path, circuits) -> None:
    from reportgen.plots.toolkit import head_specialization

    def of(kind):
        return [c for c in circuits.components if c.kind == kind]

    _dump(d / "carry_heads.json", of("carry_head"))
    _dump(d / "operator_heads.json", of("operator_head"))
    _dump(d / "position_heads.json", of("position_head"))
    _dump(d / "delimiter_heads.json", of("delimiter_head"))
    _dump(d / "specialized_neurons.json", {"neurons": of("neuron"), "screen": circuits.neuron_test})
    _dump(d / "recoveries.json", circuits.recoveries)
    _dump(d / "null_checks.json", circuits.nulls)
    head_specialization(circuits.head_specialization, circuits.roles, d / "head_specialization.png")


def _probing_jobs(d: Path, probing) -> list:
    from reportgen.analysis.probing import plot_probe

    return [functools.partial(plot_probe, probing, label, d / f"{label}_results.png")
            for label in sorted({p.label for p in probing.probes})]


def _write_interventions(d: Path, interventions) -> None:
    from reportgen.plots.toolkit import layer_importance

    layer_effects = [e for e in interventions.default_effects() if e.component.split(".")[-1] in ("attn", "mlp")]
    if not layer_effects:
        return
    clean = interventions.clean.exact_match.mean
    drops = [clean - e.metrics.exact_match.mean for e in layer_effects]
    errs = [[e.metrics.exact_match.hi - e.metrics.exact_match.mean for e in layer_effects],
            [e.metrics.exact_match.mean - e.metrics.exact_match.lo for e in layer_effects]]  # the drop's [below, above]
    layer_importance([e.component for e in layer_effects], drops, errs, interventions.default_method,
                     d / "layer_importance.png")


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _jsonable(obj):
    """Plain JSON data from findings: dataclasses, numpy arrays and scalars; NaN becomes null."""
    import numpy as np

    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
