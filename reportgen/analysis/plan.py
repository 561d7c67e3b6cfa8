"""What one analysis run is asked to do, validated before any forward pass: the analyses, layers,
the held-out problems of the aggregate analyses and the examples shown one by one, tokenised and
checked against the model's context. Light to import (no analysis module): the build validates
and plans every model in its own process before the analyses run in workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from reportgen.analysis.api import check_layers
from reportgen.analysis.config import ANALYSES, AnalysisConfig
from reportgen.analysis.examples import (
    ExampleBatch, build_batch, distinct, held_out_from, range_notes, records_from_texts,
)
from reportgen.data.dataset import count_questions
from reportgen.errors import ReportgenError
from reportgen.findings import Population
from reportgen.model.checkpoint import Checkpoint
from reportgen.train.splits import training_questions


@dataclass
class Plan:
    """Validated inputs of one analysis run."""

    batch: ExampleBatch  # the aggregate analyses' held-out problems
    shown: list[dict]  # the examples shown one by one
    population: Population
    questions: Optional[dict]  # the model's data splits as question sets (train.splits.training_questions), or None
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


def select_records(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]], questions: Optional[dict]):
    """(held-out records of the aggregate analyses, their Population, records shown one by one);
    `questions`: the model's data splits (train.splits.training_questions)."""
    texts = cfg.examples if examples is None else examples
    if examples is not None and not examples:
        raise ReportgenError("the example list is empty; give problems like --examples '59 + 73' or leave it out")
    shown = distinct(records_from_texts(list(texts), ckpt))
    t = ckpt.task
    n = min(cfg.n_examples, count_questions(t["task"], t["min_digits"], t["max_digits"]))
    records, excluded = held_out_from(ckpt, n, cfg.seed, questions) if n else ([], "")
    records = distinct(records)
    if not records:
        raise ReportgenError("no problems to analyse; set n_examples > 0 in the config")
    if not shown:
        shown = records[: cfg.n_example_pages]
    return records, Population(len(records), excluded), shown


def prepare(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]] = None,
            enabled: Optional[Iterable[str]] = None) -> Plan:
    """Validate everything cheap: analyses, layers, examples, and their fit to the context."""
    return prepare_with(ckpt, cfg, training_questions(ckpt.meta), examples, enabled)


def prepare_with(ckpt: Checkpoint, cfg: AnalysisConfig, questions: Optional[dict],
                 examples: Optional[list[str]] = None, enabled: Optional[Iterable[str]] = None) -> Plan:
    """prepare, given the model's training questions (train.splits.training_questions, e.g. regenerated
    for several models side by side)."""
    chosen = parse_enabled(enabled, cfg)
    n_layers = ckpt.model.cfg.n_layers
    att_layers = cfg.attention.layers_to_analyze
    attention_layers = check_layers(range(n_layers) if att_layers is None else att_layers, n_layers,
                                    "attention layer")
    probe_layers = check_layers(range(n_layers) if cfg.probing.layers is None else cfg.probing.layers,
                                n_layers, "probing layer")
    records, population, shown = select_records(ckpt, cfg, examples, questions)
    batch = build_batch(records, ckpt.tokenizer, ckpt.model.cfg.n_ctx, device=ckpt.model.device)
    build_batch(shown, ckpt.tokenizer, ckpt.model.cfg.n_ctx)  # the shown examples fit the context
    notes = range_notes(shown, ckpt.task) if examples or cfg.examples else []
    return Plan(batch, shown, population, questions, chosen, attention_layers, probe_layers, notes)
