"""The analysis orchestrator: one batch, one cached forward pass (and one of the untrained twin),
the six analyses, and the per-example findings the report shows.

The batch holds the examples to show (the user's, else the first generated ones) followed by
`n_examples` generated stratified examples (duplicates dropped), so that aggregate scores and
their intervals rest on a stratified population even when the user names only a few problems.
Everything cheap (parsing examples, checking layers, tokenising) is validated before any
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional

import numpy as np
import torch

from reportgen.analysis.api import check_layers, token_labels
from reportgen.analysis.attention import analyze_attention, stacked_patterns
from reportgen.analysis.circuits import run_circuits
from reportgen.analysis.config import ANALYSES, AnalysisConfig
from reportgen.analysis.engine import greedy_predictions, is_correct, run_with_cache, untrained_twin
from reportgen.analysis.examples import (
    ExampleBatch, build_batch, distinct, example_key, generated_records, range_notes, records_from_texts,
)
from reportgen.analysis.findings import AnalysisFindings, AttentionFindings, ExampleFindings
from reportgen.analysis.interventions import run_interventions
from reportgen.analysis.logit_lens import LensArrays, compute_lens, example_lens
from reportgen.analysis.logit_lens import summarize as summarize_lens
from reportgen.analysis.patching import run_patching
from reportgen.analysis.probing import analyze_probing, check_probe_layers
from reportgen.data.arithmetic import predicting_positions
from reportgen.data.dataset import count_questions
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import Checkpoint


@dataclass
class Plan:
    """Validated inputs of one analysis run."""

    batch: ExampleBatch
    n_shown: int  # the first n_shown records of the batch get an ExampleFindings
    enabled: set[str]
    attention_layers: list[int]
    probe_layers: list[int]
    notes: list[str]  # about the user's examples, e.g. longer than anything the model was trained on


def parse_enabled(names: Optional[Iterable[str]], cfg: AnalysisConfig) -> set[str]:
    """The analyses to run: `names` (e.g. from CLI flags) or the config's `enabled` list."""
    chosen = set(cfg.enabled if names is None else names)
    unknown = sorted(chosen - set(ANALYSES))
    if unknown:
        raise ReportgenError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(ANALYSES)}")
    if not chosen:
        raise ReportgenError(f"no analysis selected; choose from {', '.join(ANALYSES)} (or --all)")
    return chosen


def select_records(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]]) -> tuple[list[dict], int]:
    """(records of the batch, number of them to show one by one), user examples first."""
    texts = cfg.examples if examples is None else examples
    if examples is not None and not examples:
        raise ReportgenError("the example list is empty; give problems like --examples '59 + 73' or leave it out")
    shown = distinct(records_from_texts(list(texts), ckpt))
    t = ckpt.task
    n_gen = min(cfg.n_examples, count_questions(t["task"], t["min_digits"], t["max_digits"]))
    generated = generated_records(ckpt, n_gen, cfg.seed) if n_gen else []
    if not shown:
        shown = generated[: cfg.n_example_pages]
    records = distinct(shown + generated)
    if not records:
        raise ReportgenError("no examples to analyse; give --examples or set n_examples > 0 in the config")
    return records, len(shown)


def prepare(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]] = None,
            enabled: Optional[Iterable[str]] = None) -> Plan:
    """Validate everything cheap: analyses, layers, examples, and their fit to the context."""
    chosen = parse_enabled(enabled, cfg)
    n_layers = ckpt.model.cfg.n_layers
    att_layers = cfg.attention.layers_to_analyze
    attention_layers = check_layers(range(n_layers) if att_layers is None else att_layers, n_layers,
                                    "attention layer")
    probe_layers = check_probe_layers(cfg.probing, n_layers)
    records, n_shown = select_records(ckpt, cfg, examples)
    batch = build_batch(records, ckpt.tokenizer, ckpt.model.cfg.n_ctx, device=ckpt.model.device)
    notes = range_notes(records[:n_shown], ckpt.task) if examples or cfg.examples else []
    return Plan(batch, n_shown, chosen, attention_layers, probe_layers, notes)


def analyze(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]] = None,
            enabled: Optional[Iterable[str]] = None, progress: bool = True) -> AnalysisFindings:
    """Run the enabled analyses on a checkpoint and collect them into AnalysisFindings."""
    return run_plan(ckpt, cfg, prepare(ckpt, cfg, examples, enabled), progress)


def run_plan(ckpt: Checkpoint, cfg: AnalysisConfig, plan: Plan, progress: bool = True) -> AnalysisFindings:
    """The analyses of a prepared plan, with progress on stderr (one step per analysis: a bar on a
    terminal, a line per step elsewhere)."""
    from reportgen.progress import progress as progress_bar

    model, tok, batch, on, seed = ckpt.model, ckpt.tokenizer, plan.batch, plan.enabled, cfg.seed
    n_layers = model.cfg.n_layers
    order = [a for a in ANALYSES if a in on]
    bar = progress_bar(len(order) + 2, "analyze", enabled=progress)
    bar.set_postfix_str("forward pass")
    _, cache = run_with_cache(model, batch)
    twin = twin_cache = attention_all = None
    if on & {"attention", "probing", "circuits", "logit_lens"}:
        twin = untrained_twin(model, seed)
        _, twin_cache = run_with_cache(twin, batch)
    if on & {"attention", "circuits"}:  # circuits picks its candidates from every layer's role scores
        attention_all = analyze_attention(batch, cache, twin_cache, n_layers, list(range(n_layers)), seed)
    lens = compute_lens(model, tok, cache, batch)
    bar.update()

    runners = {
        "attention": lambda: _keep_layers(attention_all, plan.attention_layers),
        "patching": lambda: run_patching(model, tok, batch, cfg.patching, seed),
        "logit_lens": lambda: summarize_lens(lens, compute_lens(twin, tok, twin_cache, batch),
                                             [r["labels"]["stratum"] for r in batch.records], seed),
        "circuits": lambda: run_circuits(model, tok, batch, cache, attention_all, twin, cfg.circuits, seed),
        "probing": lambda: analyze_probing(batch, cache, twin_cache, cfg.probing, plan.probe_layers, seed),
        "interventions": lambda: run_interventions(model, tok, batch, cfg.interventions, seed),
    }
    out = AnalysisFindings(examples=[])
    for name in order:
        bar.set_postfix_str(name)
        setattr(out, name, runners[name]())
        bar.update()
    bar.set_postfix_str("examples")
    out.examples = example_findings(ckpt, batch, plan.n_shown, cache, lens)
    bar.update()
    bar.close()
    return out


def _keep_layers(findings: AttentionFindings, layers: list[int]) -> AttentionFindings:
    keep = set(layers)
    return replace(findings, head_stats=[s for s in findings.head_stats if s.layer in keep],
                   role_scores=[s for s in findings.role_scores if s.layer in keep])


def example_findings(ckpt: Checkpoint, batch: ExampleBatch, n_shown: int, cache: dict, lens: LensArrays) -> list[ExampleFindings]:
    """ExampleFindings for the first n_shown records (batched greedy decoding, cached patterns)."""
    records = batch.records[:n_shown]
    predictions = greedy_predictions(ckpt.model, ckpt.tokenizer, records)
    patterns = stacked_patterns(cache, ckpt.model.cfg.n_layers)[:, :n_shown]
    out = []
    for i, (r, pred) in enumerate(zip(records, predictions)):
        n = int(batch.lengths[i])
        out.append(ExampleFindings(
            key=example_key(r),
            prompt=r["prompt"],
            target=r["target"],
            prediction=pred,
            correct=is_correct(r, pred),
            stratum=r["labels"]["stratum"],
            labels=r["labels"],
            tokens=token_labels(ckpt.tokenizer, batch.tokens[i, :n]),
            answer_positions=[q for q, _ in predicting_positions(r)],
            attention=patterns[:, i, :, :n, :n].to(torch.float32).cpu().numpy().astype(np.float32),
            **example_lens(lens, i),
        ))
    return out
