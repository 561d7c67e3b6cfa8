"""The analysis orchestrator: one batch, one cached forward pass (and those of the untrained
twins), the six analyses, and the per-example findings the report shows.

The aggregate analyses run on `n_examples` generated stratified problems that the model never
trained on (none of its data set's splits where the task has enough other problems; see
examples.held_out_records), so that scores and intervals rest on a stratified population of
unseen problems whatever examples the user names. The examples shown one by one (the user's,
else the first generated ones) get their own forward pass. Everything cheap (parsing examples,
checking layers, tokenising) is validated before any forward pass, in `analysis.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from reportgen import hooks as hp
from reportgen.analysis.api import token_labels
from reportgen.analysis.attention import analyze_attention, keep_layers, stacked_patterns
from reportgen.analysis.circuits import neuron_screen, run_circuits
from reportgen.analysis.config import ANALYSES, AnalysisConfig, CircuitConfig
from reportgen.analysis.plan import Plan, prepare
from reportgen.analysis.engine import (
    AT_TARGETS, cached_pass, greedy_predictions, heap_trimmed, is_correct, old_objects_frozen, release_memory,
    run_with_cache, untrained_twins,
)
from reportgen.analysis.examples import ExampleBatch, build_batch, example_key
from reportgen.findings import AnalysisFindings, AttentionFindings, ExampleFindings
from reportgen.analysis.interventions import run_interventions
from reportgen.analysis.logit_lens import by_role as lens_by_role
from reportgen.analysis.logit_lens import LensArrays, compute_lens, example_lens, target_lens
from reportgen.analysis.logit_lens import summarize as summarize_lens
from reportgen.analysis.patching import run_patching
from reportgen.analysis.probing import analyze_probing
from reportgen.data.arithmetic import predicting_positions
from reportgen.model.checkpoint import Checkpoint


def analyze(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]] = None,
            enabled: Optional[Iterable[str]] = None, progress: bool = True) -> AnalysisFindings:
    """Run the enabled analyses on a checkpoint and collect them into AnalysisFindings."""
    return run_plan(ckpt, cfg, prepare(ckpt, cfg, examples, enabled), progress)


@heap_trimmed()  # what the analyses' passes free goes back to the system as they run
@old_objects_frozen()  # their garbage collections scan only what they make
def run_plan(ckpt: Checkpoint, cfg: AnalysisConfig, plan: Plan, progress: bool = True,
             shown: bool = True) -> AnalysisFindings:
    """The analyses of a prepared plan, with progress on stderr (one step per analysis: a bar on a
    terminal, a line per step elsewhere); `shown`: also the examples shown one by one."""
    from reportgen.progress import progress as progress_bar

    model, tok, batch, on, seed = ckpt.model, ckpt.tokenizer, plan.batch, plan.enabled, cfg.seed
    budget = cfg.memory_budget_mb  # each analysis cuts its batched passes to it
    # The analyses that read the cached runs first; the caches are freed before the others, which
    # make their own forward passes (probing's are the largest).
    order = [a for a in ANALYSES if a in on and a in CACHE_READERS] + [a for a in ANALYSES if a in on - CACHE_READERS]
    bar = progress_bar(len(order) + 2, "analyze", enabled=progress)
    bar.set_postfix_str("forward pass")
    twins = untrained_twins(model, cfg.untrained_twins, seed) if on & (TWIN_READERS | CACHE_READERS) else []
    runs = cached_runs(model, tok, batch, twins, on, seed, cfg.attention.role_margin, cfg.circuits)
    bar.update()

    runners = {
        "attention": lambda: keep_layers(runs.attention, plan.attention_layers),
        "patching": lambda: run_patching(model, tok, batch, cfg.patching, seed, budget),
        "logit_lens": lambda: summarize_lens(runs.lens, compute_lens(twins[0], tok, runs.twin_caches[0], batch),
                                             [r["labels"]["stratum"] for r in batch.records], seed,
                                             lens_by_role(target_lens(model, tok, runs.cache, batch), batch, seed)),
        "circuits": lambda: run_circuits(model, tok, batch, runs.cache, runs.attention, twins, runs.twin_caches,
                                         cfg.circuits, seed, runs.screens, budget, runs.free),
        "probing": lambda: analyze_probing(ckpt, twins, cfg.probing, plan.probe_layers, seed, plan.questions),
        "interventions": lambda: run_interventions(model, tok, batch, cfg.interventions, seed, budget),
    }
    out = AnalysisFindings(examples=[], population=plan.population)
    for i, name in enumerate(order):
        if name not in CACHE_READERS:
            runs.free()
        if not TWIN_READERS & set(order[i:]):
            twins.clear()  # the untrained twins (a model each) are not needed by what is left
        bar.set_postfix_str(name)
        setattr(out, name, runners[name]())
        bar.update()
    runs.free()
    bar.set_postfix_str("examples")
    out.examples = example_findings(ckpt, plan.shown) if shown else []
    bar.update()
    bar.close()
    return out


CACHE_READERS = {"attention", "logit_lens", "circuits"}  # the analyses reading the cached forward passes
TWIN_READERS = {"logit_lens", "circuits", "probing"}  # those running the untrained twins (the cached runs do too)


@dataclass
class CachedRuns:
    """The model's and the twins' cached forward passes over the batch, and what is computed from
    them for several analyses."""

    cache: Optional[dict]
    twin_caches: list
    attention: Optional[AttentionFindings]
    lens: Optional[LensArrays]
    screens: Optional[list] = None  # circuits' neuron screens of the model and each twin

    def free(self) -> None:
        """Drop the caches (hundreds of MB on long inputs) and give their memory back to the system."""
        if self.cache is None and not self.twin_caches:
            return
        self.cache, self.twin_caches, self.lens = None, [], None
        release_memory()


def cached_runs(model, tok, batch: ExampleBatch, twins: list, on: set[str], seed: int,
                role_margin: float, circuits: CircuitConfig) -> CachedRuns:
    """The forward passes the analyses in `on` read (none for those making their own); with
    circuits on (`circuits` its config), each pass's neuron screen is made from it at once, so
    that the MLP activations it reads are never held for more than one model."""
    if not on & CACHE_READERS:
        return CachedRuns(None, [], None, None)
    n_layers = model.cfg.n_layers
    screened = screened_hooks if "circuits" in on else (lambda name: False)
    screens = [] if "circuits" in on else None

    def cached(subject, names):
        _, cache = cached_pass(subject, batch, names, screened)
        if screens is not None:
            screens.append(neuron_screen(cache, batch, n_layers, circuits, seed))
        return {k: v for k, v in cache.items() if not k.endswith(AT_TARGETS)}

    # The logit lens decodes the model's residual stream and the first twin's (its baseline); the
    # other twins' caches hold attention patterns only.
    whole = cached_hooks if "logit_lens" in on else pattern_hooks
    cache = cached(model, whole)
    twin_caches = [cached(t, whole if i == 0 else pattern_hooks) for i, t in enumerate(twins)]
    attention = None
    if on & {"attention", "circuits"}:  # circuits picks its candidates from every layer's role scores
        attention = analyze_attention(batch, cache, twin_caches, n_layers, list(range(n_layers)), seed, role_margin)
    lens = compute_lens(model, tok, cache, batch) if "logit_lens" in on else None
    return CachedRuns(cache, twin_caches, attention, lens, screens)


def cached_hooks(name: str) -> bool:
    """What the analyses read whole of the cached runs (the model's and its twins'): attention
    patterns (attention roles, position heads) and the residual stream the logit lens decodes
    (the embedding and each block's output; a later block's resid_pre is the previous output)."""
    return hp.site_of(name) == hp.ATTN_PATTERN or hp.in_stream(name)


def pattern_hooks(name: str) -> bool:
    """The attention patterns alone (what attention roles and position heads read)."""
    return hp.site_of(name) == hp.ATTN_PATTERN


def screened_hooks(name: str) -> bool:
    """What they read at the target positions only: MLP activations (the neuron screen)."""
    return hp.site_of(name) == hp.MLP_POST


def example_findings(ckpt: Checkpoint, records: list[dict]) -> list[ExampleFindings]:
    """ExampleFindings of the shown records (one forward pass, batched greedy decoding)."""
    batch = build_batch(records, ckpt.tokenizer, ckpt.model.cfg.n_ctx, device=ckpt.model.device)
    _, cache = run_with_cache(ckpt.model, batch)
    lens = compute_lens(ckpt.model, ckpt.tokenizer, cache, batch)
    predictions = greedy_predictions(ckpt.model, ckpt.tokenizer, records)
    patterns = stacked_patterns(cache, ckpt.model.cfg.n_layers)
    out = []
    for i, (r, pred) in enumerate(zip(records, predictions)):
        n = int(batch.lengths[i])
        out.append(ExampleFindings(
            key=example_key(r),
            prompt=r["prompt"],
            target=r["target"],
            problem=f"{r['a']} {r['op']} {r['b']}",
            answer=str(r["answer"]),
            prediction=pred,
            correct=is_correct(r, pred),
            stratum=r["labels"]["stratum"],
            labels=r["labels"],
            tokens=token_labels(ckpt.tokenizer, batch.tokens[i, :n].tolist()),
            answer_positions=[q for q, _ in predicting_positions(r)],
            attention=patterns[:, i, :, :n, :n].to(torch.float32).cpu().numpy().astype(np.float32),
            **example_lens(lens, i),
        ))
    return out
