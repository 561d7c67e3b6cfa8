"""`reportgen build` end to end: checkpoints -> accuracy and analyses -> results -> site and PDF.

Everything the user gave is validated before any work starts. Each model's results are cached
under `<out dir parent>/.reportgen-cache/<key>/`, so a rebuild with nothing changed does no torch
work. The site is rendered into a temporary directory beside the output and swapped in only when
complete: a failed or interrupted build leaves the previous site as it was.

Torch-using stages are imported inside the functions that need them: `reportgen render` uses
`make_report` and `write_site` from here without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from reportgen.findings import Estimate
from reportgen.atomic import check_out_dir, replace_dir
from reportgen.configfile import to_dict
from reportgen.errors import ReportgenError
from reportgen.fingerprint import code_digest, library_version
from reportgen.names import run_name, unique_names
from reportgen.parallel import cpus, die_with_parent, map_in_processes
from reportgen.results.compare import compare_models
from reportgen.results.schema import (
    SCHEMA_VERSION, Accuracy, HarderTest, ModelResults, Provenance, Report, TrainingCurve,
)
from reportgen.results.store import load_results, normalized, save_results

if TYPE_CHECKING:
    from reportgen.analysis.config import AnalysisConfig
    from reportgen.analysis.plan import Plan
    from reportgen.model.checkpoint import Checkpoint

Progress = Callable[[str], None]

DEFAULT_CONFIG = Path("configs/interpretability.yaml")
EVAL_EXAMPLES = 512  # fresh stratified test set per model (128 per stratum)
EVAL_SEED = 1234  # the same seed `reportgen eval` uses by default
CACHE_DIR = ".reportgen-cache"
MAX_SHOWN = 100  # examples shown one by one, each with a page and figures (100 took 650 MB and 6 min on two busy cores)


def _quiet(message: str) -> None:
    pass


def print_progress(message: str) -> None:
    """Progress for the command line: one line per step on stderr."""
    print(f"reportgen: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- build
def build_report(checkpoints: list[str], compare: list[str], examples: Optional[list[str]],
                 config_path: Optional[str], out_dir: str | Path, title: Optional[str], pdf: bool = True,
                 device: str = "cpu", progress: Optional[Progress] = None, use_cache: bool = True,
                 pdf_summary: bool = False) -> Report:
    """Analyse every checkpoint (the first is the primary model), write the site to `out_dir`.

    `examples` are problem texts ('59 + 73') analysed one by one in every model; None uses the
    config's `examples`, and when it has none the analyses choose. `config_path` None uses
    configs/interpretability.yaml if present, else the analysis defaults. `progress` receives one
    line per step (the analyses also report theirs on stderr: a bar on a terminal, lines elsewhere);
    None is silent. `pdf_summary` makes report.pdf the short version.
    """
    from reportgen.model.checkpoint import load_checkpoint
    from reportgen.model.device import resolve_device

    paths = list(checkpoints) + list(compare)
    if not paths:
        raise ReportgenError("no checkpoint given; pass --checkpoint runs/NAME/checkpoint_best.pt")
    torch_device = str(resolve_device(device))
    ckpts = [load_checkpoint(p, device=torch_device) for p in paths]
    labels = [run_name(p) for p in paths]
    names = unique_names(labels)
    cfg = _load_config(config_path)
    examples = list(examples) if examples else None
    check_shown(examples, cfg)
    out = Path(out_dir).resolve()
    check_out_dir(out)

    say = progress or _quiet
    cache = out.parent / CACHE_DIR if use_cache else None
    tells = [functools.partial(_prefixed, say, f"[{i}/{len(paths)}] {name}: ") for i, name in enumerate(names, 1)]
    keys = [cache_key(ckpt.sha256, to_dict(cfg), examples) for ckpt in ckpts]
    results = [_cache_get(cache, key, tell) if cache else None for key, tell in zip(keys, tells)]
    # The training data are regenerated only for the models to analyse; a cached model's plan
    # only checks its inputs (as they were checked when its results were made).
    analyse = [i for i, r in enumerate(results) if r is None]
    questions = dict(zip(analyse, _training_questions([ckpts[i] for i in analyse])))
    runs = [ModelRun(ckpt, _prepare(ckpt, name, cfg, examples, questions.get(i)), cfg, examples, tell,
                     progress is not None) for i, (ckpt, name, tell) in enumerate(zip(ckpts, names, tells))]
    for run in runs:
        for note in run.plan.notes:
            run.say(f"note: {note}")
    for i, result in zip(analyse, compute_all([runs[i] for i in analyse], torch_device, say)):
        results[i] = result
        if cache:
            _cache_put(cache, keys[i], result)
    models = [model_name(r, path, name, label) for r, path, name, label in zip(results, paths, names, labels)]
    report = make_report(models, title)
    write_site(report, out, pdf, say, pdf_summary)
    return report


def _prefixed(progress: Progress, prefix: str, message: str) -> None:
    progress(prefix + message)


def _training_questions(ckpts: list[Checkpoint]) -> list[Optional[dict]]:
    """Each model's training questions, its data set regenerated (seconds of pure Python per model)
    in processes side by side."""
    from reportgen.train.splits import training_questions

    return map_in_processes(training_questions, [ckpt.meta for ckpt in ckpts])


def _prepare(ckpt: Checkpoint, name: str, cfg: AnalysisConfig, examples: Optional[list[str]],
             questions: Optional[dict]) -> Plan:
    """The analyses' validated plan for one model: examples of its task that fit its context,
    layers it has. Errors name the model."""
    from reportgen.analysis.plan import prepare_with

    t = ckpt.task
    try:
        check_harder_fits(ckpt, cfg.harder_test_digits)
        return prepare_with(ckpt, cfg, questions, examples)
    except ReportgenError as e:
        raise ReportgenError(
            f"model {name} ({ckpt.path}; trained on {t['task']}, {t['min_digits']}-{t['max_digits']} digits): {e}"
        ) from None


def check_shown(examples: Optional[list[str]], cfg: AnalysisConfig) -> None:
    """Refuse more than MAX_SHOWN examples to show one by one (--examples, the config's examples,
    or n_example_pages when there are none), before any work."""
    for n, what in ((len(examples or []), "--examples"), (len(cfg.examples), "the config's examples"),
                    (0 if examples or cfg.examples else cfg.n_example_pages, "the config's n_example_pages")):
        if n > MAX_SHOWN:
            raise ReportgenError(f"{what} asks to show {n} examples one by one; at most {MAX_SHOWN} can be (each gets its "
                                 "own page and figures, all held in memory): give fewer (the aggregate analyses use "
                                 "n_examples, up to 5000, generated examples besides)")


def _load_config(config_path: Optional[str]) -> AnalysisConfig:
    from reportgen.analysis.config import load_analysis_config

    if config_path is None and DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
    return load_analysis_config(config_path)


# ---------------------------------------------------------------- one model
def cache_key(checkpoint_sha256: str, analysis_config: dict, examples: Optional[list[str]]) -> str:
    """sha256 of everything that determines a model's results except the checkpoint's path,
    including the code of every stage up to the results and the numeric libraries' versions."""
    payload = {
        "code": code_digest(("torch", "numpy", "scikit-learn"), upto="results"),
        "checkpoint_sha256": checkpoint_sha256,
        "analysis_config": analysis_config,
        "examples": examples,
        "evaluation": {"n": EVAL_EXAMPLES, "seed": EVAL_SEED},
        "reportgen_version": reportgen_version(),
        "schema_version": SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclasses.dataclass
class ModelRun:
    """One model's validated inputs."""

    ckpt: Checkpoint
    plan: Plan
    cfg: AnalysisConfig
    examples: Optional[list[str]]
    say: Progress
    bars: bool  # let the analyses draw progress bars


# The analyses of one model in jobs of comparable cost on the demos, so that the models of a build
# keep every core busy (each job a process with one torch thread: these models are too small for
# a second thread to pay). The analyses that read the cached forward passes of the model and its
# twins (run.CACHE_READERS) share a job, so those passes run once. The first job also measures
# accuracy and the examples shown.
JOB_ANALYSES = (("probing", "interventions"), ("attention", "logit_lens", "circuits"), ("patching",))


def compute_all(runs: list[ModelRun], device: str, say: Progress = _quiet) -> list[ModelResults]:
    """Each run's results, computed in parallel processes where there are CPUs to spare (not on a
    GPU): every model's analyses split into JOB_ANALYSES, the first job also measuring accuracy
    and the examples shown, then merged. Progress lines of the jobs come from this process."""
    jobs = [(i, set(group) & run.plan.enabled, k == 0) for i, run in enumerate(runs)
            for k, group in enumerate(JOB_ANALYSES) if k == 0 or set(group) & run.plan.enabled]
    # Longest first (the cost grows with the input's length), so the last jobs are the short ones.
    jobs.sort(key=lambda j: (-runs[j[0]].plan.batch.tokens.shape[1], j[0]))
    if device != "cpu" or cpus() < 2 or len(jobs) < 2:
        return [compute_model_results(run) for run in runs]
    workers = min(cpus(), len(jobs))
    say(f"evaluating and analysing {len(runs)} model(s) as {len(jobs)} jobs in {workers} processes")
    parts: list[Optional[ModelResults]] = [None] * len(jobs)
    for done, (k, part) in enumerate(_in_processes([
            functools.partial(_job, dataclasses.replace(runs[i], say=_quiet, bars=False), analyses, first)
            for i, analyses, first in jobs], workers), 1):
        parts[k] = part
        i, analyses, first = jobs[k]
        runs[i].say(f"{', '.join(sorted(analyses)) or 'evaluation'}{' and examples' if first else ''} done "
                    f"({done} of {len(jobs)} jobs)")
    out: list[Optional[ModelResults]] = [None] * len(runs)
    for (i, _, first), part in zip(jobs, parts):
        if first:
            out[i] = part
    for (i, analyses, first), part in zip(jobs, parts):
        for name in analyses if not first else ():
            setattr(out[i].findings, name, getattr(part.findings, name))
    return out


def _in_processes(jobs: list[Callable[[], ModelResults]], workers: int) -> Iterator[tuple[int, ModelResults]]:
    """(index, result) of each job as it finishes, from `workers` fresh processes with one thread
    each (joblib's loky processes: started without re-running the caller's script, so the Python
    API needs no `if __name__ == "__main__"` guard; they end with this process however it ends,
    and are shut down after the last job so that their memory is free for the figures)."""
    from joblib import Parallel, delayed, parallel_config
    from joblib.externals.loky import get_reusable_executor

    try:
        # Each worker watches this process from its start, before it imports torch and unpickles a
        # job: a build killed in those seconds would otherwise leave workers idling for minutes.
        with parallel_config(backend="loky", n_jobs=workers, inner_max_num_threads=1, max_nbytes=None,
                             initializer=die_with_parent, initargs=(os.getpid(),)):
            yield from Parallel(return_as="generator_unordered")(delayed(_indexed)(k, job) for k, job in enumerate(jobs))
    finally:
        get_reusable_executor().shutdown(wait=True)


def _indexed(k: int, job: Callable[[], ModelResults]) -> tuple[int, ModelResults]:
    return k, job()


def _job(run: ModelRun, analyses: set[str], first: bool) -> ModelResults:
    import torch

    from reportgen.analysis.engine import release_memory

    torch.set_num_threads(1)
    result = compute_model_results(run, analyses, first)
    # A worker whose memory stays 300 MB above its size after its first job is replaced by loky
    # (as leaking), which costs a new process its imports in the middle of the build.
    release_memory()
    return result


def model_name(result: ModelResults, path: str, name: Optional[str] = None, label: Optional[str] = None) -> ModelResults:
    """`result` named for a report: by default after its run directory (runs/add3_rev/... -> add3_rev)."""
    label = label or run_name(path)
    name = name or unique_names([label])[0]
    prov = dataclasses.replace(result.provenance, checkpoint=str(path), file_name=Path(path).name)
    return dataclasses.replace(result, name=name, label=label, provenance=prov)


def compute_model_results(run: ModelRun, analyses: Optional[set[str]] = None, first: bool = True) -> ModelResults:
    """Accuracy on a fresh stratified test set, the planned analyses and provenance of one model
    (unnamed: the report names it). A job of compute_all runs only `analyses`, and only its
    `first` job measures accuracy and the examples shown."""
    from reportgen.analysis.examples import held_out_from
    from reportgen.analysis.run import run_plan

    ckpt, say = run.ckpt, run.say
    accuracy = harder = None
    if first:
        records, excluded = held_out_from(ckpt, EVAL_EXAMPLES, EVAL_SEED, run.plan.questions)
        unseen = bool(excluded)
        say(f"evaluating on {len(records)} fresh stratified examples"
            + ("" if unseen else " (the training data could not be recovered: some may be training questions)"))
        accuracy = _accuracy(ckpt, records, unseen)
        if run.cfg.harder_test_digits:
            digits = run.cfg.harder_test_digits
            say(f"evaluating on {EVAL_EXAMPLES} problems of {digits}-digit operands (the harder test)")
            harder = HarderTest(digits, _accuracy(ckpt, harder_records(ckpt, digits), digits > ckpt.task["max_digits"]))
    plan = run.plan if analyses is None else dataclasses.replace(run.plan, enabled=analyses)
    say("running the analyses" + ("" if analyses is None else f" ({', '.join(sorted(analyses)) or 'examples'})"))
    findings = run_plan(ckpt, run.cfg, plan, progress=run.bars, shown=first)
    h = ckpt.meta.get("history") or {}
    training = TrainingCurve(steps=[int(s) for s in h.get("step", [])],
                             train_loss=[float(x) for x in h.get("train_loss", [])],
                             val_exact_match=[float(x) for x in h.get("val_exact_match", [])])
    return ModelResults(name="", label="", provenance=_provenance(ckpt, run.cfg, run.examples), accuracy=accuracy,
                        training=training, findings=findings, harder=harder)


def _accuracy(ckpt: Checkpoint, records: list[dict], unseen: bool) -> Accuracy:
    """Greedy-decoding exact match of `records` with Wilson intervals, overall and per stratum."""
    from reportgen.train.evaluate import evaluate

    ev = evaluate(ckpt.model, ckpt.tokenizer, records)
    return Accuracy(
        exact_match=_estimate(ev.exact_match, ev.lo, ev.hi, ev.n),
        digit_accuracy=float(ev.digit_accuracy),
        by_stratum={s: _estimate(v["exact_match"], v["lo"], v["hi"], v["n"]) for s, v in ev.by_stratum.items()},
        n=ev.n,
        seed=EVAL_SEED,
        unseen=unseen,
    )


def check_harder_fits(ckpt: Checkpoint, digits: int) -> None:
    """The harder test's longest problem must fit the model's context (checked before any work)."""
    from reportgen.analysis.examples import build_batch
    from reportgen.data.arithmetic import TASK_OPS, make_record

    if not digits:
        return
    t, big = ckpt.task, 10**digits - 1
    longest = [make_record(big, big, op, t["with_steps"], t["answer_order"]) for op in TASK_OPS[t["task"]]]
    try:
        build_batch(longest, ckpt.tokenizer, ckpt.model.cfg.n_ctx)
    except ReportgenError:
        raise ReportgenError(f"harder_test_digits {digits} makes problems longer than the model's context of "
                             f"{ckpt.model.cfg.n_ctx} tokens; use fewer digits") from None


def harder_records(ckpt: Checkpoint, digits: int) -> list[dict]:
    """EVAL_EXAMPLES stratified problems of the model's task and format, every operand `digits` long."""
    from reportgen.data.dataset import stratified_examples

    t = ckpt.task
    return stratified_examples(t["task"], EVAL_EXAMPLES, digits, digits, EVAL_SEED, t["with_steps"], t["answer_order"])


def _estimate(mean, lo, hi, n) -> Estimate:
    return Estimate(float(mean), float(lo), float(hi), int(n))


def _provenance(ckpt: Checkpoint, cfg: AnalysisConfig, examples: Optional[list[str]]) -> Provenance:
    from reportgen.model.checkpoint import library_versions

    meta = ckpt.meta
    return Provenance(
        checkpoint=ckpt.path, file_name=Path(ckpt.path).name, sha256=ckpt.sha256,
        model_config=dict(meta["model_config"]),
        # An imported model (`reportgen import`) was trained elsewhere: its table says where it came from.
        train_config=dict(meta.get("train_config")
                          or ({"imported_from": meta["imported_from"]} if "imported_from" in meta else {})),
        task=dict(ckpt.task), seed=meta.get("seed"), data_manifest_hash=meta.get("data_manifest_hash"),
        versions_training=dict(meta.get("versions") or {}), versions_analysis=library_versions(),
        analysis_config=to_dict(cfg), examples=list(cfg.examples if examples is None else examples),
        reportgen_version=reportgen_version(),
    )


def _cache_get(cache: Path, key: str, say: Progress) -> Optional[ModelResults]:
    entry = cache / key
    if not entry.is_dir():
        return None
    try:
        (model,) = load_results(entry).models
    except (ReportgenError, ValueError) as e:
        say(f"ignoring an unreadable cache entry ({e}); recomputing")
        return None
    say(f"using cached results ({entry})")
    return model


def _cache_put(cache: Path, key: str, model: ModelResults) -> None:
    """Store one model's results atomically: a half-written entry is never visible."""
    replace_dir(cache / key, lambda tmp: save_results(make_report([model], title=""), tmp))


# ---------------------------------------------------------------- report and site (torch-free)
def make_report(models: list[ModelResults], title: Optional[str]) -> Report:
    """The report over `models` with its comparison, normalized as if loaded from disk."""
    title = title if title is not None else "Interpretability report: " + " vs ".join(m.label for m in models)
    return normalized(Report(schema_version=SCHEMA_VERSION, title=title, generated_at=generated_at(),
                             models=models, comparison=compare_models(models)))


def generated_at() -> str:
    """SOURCE_DATE_EPOCH as ISO 8601 UTC, or else today's UTC date: a report is dated, and two
    builds of the same inputs on the same day are byte-identical (fix SOURCE_DATE_EPOCH for more)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return datetime.now(timezone.utc).strftime("%Y-%m-%d")
    try:
        return datetime.fromtimestamp(int(raw), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        raise ReportgenError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, got {raw!r}") from None


def reportgen_version() -> str:
    return library_version("reportgen") or "unknown"


def write_site(report: Report, out: Path, pdf: bool, progress: Progress = _quiet, summary: bool = False) -> None:
    """Render `report` (render_site also writes results.json and arrays.npz into the site) into a
    temporary directory, then swap it in for `out`. A site already rendered from the same inputs
    and untouched since is left as it is."""
    from reportgen.render.report import render_site, site_is_current

    if site_is_current(report, out, pdf, summary):
        progress(f"{out} is up to date (same results, templates and settings); nothing to render")
        return
    progress(f"rendering the site{' and PDF' if pdf else ''}")
    replace_dir(out, lambda tmp: render_site(report, tmp, pdf=pdf, log=progress, summary=summary))
    progress(f"wrote {out}")
