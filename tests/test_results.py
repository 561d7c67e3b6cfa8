"""The results object: exact round trip, byte-identical files, refusals, JSON Schema, comparisons."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import numpy as np
import jsonschema
import pytest

from reportgen.findings import AnalysisFindings, Estimate
from reportgen.errors import ReportgenError
from reportgen.results import compare_models, load_results, save_results
from reportgen.results.compare import apart
from reportgen.results.schema import (
    SCHEMA_VERSION, Accuracy, ModelResults, Provenance, Report, TrainingCurve,
)
from reportgen.results.store import (
    ARRAYS_FILE, RESULTS_FILE, SCHEMA_PATH, dump_results, json_schema, normalized,
)

ROOT = Path(__file__).resolve().parent.parent
TASK = {"task": "add", "min_digits": 1, "max_digits": 3, "with_steps": False, "answer_order": "plain"}
SHAPE = {"n_layers": 1, "n_heads": 4, "d_model": 64, "d_mlp": 256, "n_ctx": 48, "d_vocab": 21, "ln_eps": 1e-5}


# ---------------------------------------------------------------- sample data
class _Filler:
    """Fills any dataclass from its type hints with varied values, NaN and inf included, so the
    round trip covers every field of every findings dataclass (also fields added later)."""

    def __init__(self, adversarial: bool = True):
        self.k = 0
        self.adversarial = adversarial  # also None for Optional fields, arrays inside untyped dicts

    def __call__(self, hint):
        self.k += 1
        k = self.k
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            return hint(**{f.name: self(hints[f.name]) for f in dataclasses.fields(hint)})
        if origin is typing.Union or type(None) in args:
            inner = next(a for a in args if a is not type(None))
            return None if self.adversarial and k % 7 == 0 else self(inner)
        if origin is list or hint is list:
            return [self(args[0] if args else int) for _ in range(2)]
        if origin is dict or hint is dict:
            if not args:  # untyped: plain JSON with a non-finite float (and arrays, oddly named)
                plain = {"z": k, "a": [1.5, {"b": True}], "nan": math.nan}
                odd = {"arr": np.arange(3, dtype=np.int64), "../odd key": np.zeros(2, dtype=np.float16)}
                return {**plain, **odd} if self.adversarial else plain
            return {f"k{k}": self(args[1]), "a": self(args[1])}
        if hint is np.ndarray:
            arr = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4) * k
            arr[0, 0, 0] = np.nan
            return arr
        if hint is float:
            return [math.nan, math.inf, -math.inf, -0.0, 0.1 + 0.2, 1e-300, float(k) / 3][k % 7]
        if hint is int:
            return k
        if hint is bool:
            return k % 2 == 0
        if hint is str:
            return f"s{k} <é>"
        raise TypeError(hint)


def model_results(name="m", task=TASK, shape=SHAPE, em=(0.9, 0.85, 0.94), strata=None,
                  adversarial=False) -> ModelResults:
    strata = strata or {"no_carry": (0.99, 0.95, 1.0), "cascade": (0.5, 0.4, 0.6)}
    prov = Provenance(
        checkpoint=f"runs/{name}/checkpoint_best.pt", file_name="checkpoint_best.pt", sha256="ab" * 32,
        model_config=dict(shape), train_config={"lr": 0.001, "betas": [0.9, 0.98]}, task=dict(task), seed=42,
        data_manifest_hash=None, versions_training={"torch": "2.13.0"}, versions_analysis={"torch": "2.13.0"},
        analysis_config={"seed": 0, "enabled": ["attention"]}, examples=["59 + 73"], reportgen_version="0.1.0",
    )
    acc = Accuracy(exact_match=Estimate(*em, 512), digit_accuracy=0.97,
                   by_stratum={s: Estimate(*v, 128) for s, v in strata.items()}, n=512, seed=1234, unseen=True)
    curve = TrainingCurve(steps=[0, 100], train_loss=[2.3, 0.1], val_exact_match=[0.0, math.nan])
    return ModelResults(name=name, label=name, provenance=prov, accuracy=acc, training=curve,
                        findings=_Filler(adversarial)(AnalysisFindings))


def sample_report(*models: ModelResults) -> Report:
    models = list(models) or [model_results("a", adversarial=True), model_results("b", em=(0.5, 0.45, 0.55))]
    return Report(schema_version=SCHEMA_VERSION, title="T <&>", generated_at="", models=models,
                  comparison=compare_models(models))


def assert_same(a, b, path="report"):
    """Exact equality: same types, arrays with the same dtype and values (NaN equal to NaN)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b, equal_nan=True), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b) or set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path
        if isinstance(a, float):
            assert math.copysign(1, a) == math.copysign(1, b), path  # -0.0 stays -0.0


# ---------------------------------------------------------------- round trip and bytes
def test_round_trip_is_exact(tmp_path):
    report = sample_report()
    save_results(report, tmp_path)
    loaded = load_results(tmp_path)
    assert_same(report, loaded)
    assert isinstance(loaded.models[0].findings.examples[0].attention, np.ndarray)
    assert loaded.models[0].findings.examples[0].attention.dtype == np.float32


def test_files_are_byte_identical_across_saves(tmp_path):
    report = sample_report()
    save_results(report, tmp_path / "one")
    save_results(load_results(tmp_path / "one"), tmp_path / "two")
    for name in (RESULTS_FILE, ARRAYS_FILE):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    with zipfile.ZipFile(tmp_path / "one" / ARRAYS_FILE) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert len(zf.infolist()) > 5


def test_results_json_is_strict_json_with_sorted_keys(tmp_path):
    save_results(sample_report(), tmp_path)
    text = (tmp_path / RESULTS_FILE).read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["schema_version"] == SCHEMA_VERSION
    assert json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n" == text
    assert '"$float": "nan"' in text and '"$float": "-inf"' in text


def test_arrays_load_with_plain_numpy(tmp_path):
    report = sample_report()
    save_results(report, tmp_path)
    ref = json.loads((tmp_path / RESULTS_FILE).read_text())["models"][0]["findings"]["examples"][0]["attention"]
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as npz:
        assert np.array_equal(npz[ref["$array"]], report.models[0].findings.examples[0].attention, equal_nan=True)


def test_normalized_equals_the_loaded_report(tmp_path):
    report = sample_report()
    save_results(report, tmp_path)
    assert dump_results(normalized(report)) == dump_results(load_results(tmp_path))


# ---------------------------------------------------------------- refusals
def _one_line_error(results_dir) -> str:
    with pytest.raises(ReportgenError) as e:
        load_results(results_dir)
    msg = str(e.value)
    assert "\n" not in msg and str(results_dir) in msg
    return msg


def test_other_schema_version_is_refused(tmp_path):
    save_results(sample_report(), tmp_path)
    data = json.loads((tmp_path / RESULTS_FILE).read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / RESULTS_FILE).write_text(json.dumps(data))
    assert "schema version" in _one_line_error(tmp_path)


def test_garbled_json_is_refused(tmp_path):
    save_results(sample_report(), tmp_path)
    (tmp_path / RESULTS_FILE).write_bytes((tmp_path / RESULTS_FILE).read_bytes()[:300])
    assert "not valid JSON" in _one_line_error(tmp_path)


def test_truncated_arrays_are_refused(tmp_path):
    save_results(sample_report(), tmp_path)
    (tmp_path / ARRAYS_FILE).write_bytes((tmp_path / ARRAYS_FILE).read_bytes()[:100])
    assert ARRAYS_FILE in _one_line_error(tmp_path)


def test_wrong_field_type_names_the_place(tmp_path):
    save_results(sample_report(), tmp_path)
    data = json.loads((tmp_path / RESULTS_FILE).read_text())
    data["models"][1]["accuracy"]["n"] = "many"
    (tmp_path / RESULTS_FILE).write_text(json.dumps(data))
    assert "models.1.accuracy.n" in _one_line_error(tmp_path)


def test_missing_files_are_refused(tmp_path):
    assert RESULTS_FILE in _one_line_error(tmp_path)


# ---------------------------------------------------------------- JSON Schema
def test_shipped_schema_matches_the_dataclasses():
    shipped = json.loads(SCHEMA_PATH.read_text())
    assert shipped == json_schema(), (
        "reportgen/schema/results.schema.json is stale; refresh it with "
        "python -c 'from reportgen.results.store import write_json_schema; write_json_schema()'"
    )


def test_results_json_validates_against_the_shipped_schema(tmp_path):
    save_results(sample_report(), tmp_path)
    doc = json.loads((tmp_path / RESULTS_FILE).read_text())
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    validator.validate(doc)
    doc["models"][0]["accuracy"]["exact_match"]["mean"] = "high"
    with pytest.raises(jsonschema.ValidationError, match="'high' is not valid under any of the given schemas"):
        validator.validate(doc)
    del doc["models"][0]["findings"]["examples"][0]["answer"]
    assert any("'answer' is a required property" in e.message for e in validator.iter_errors(doc))


# ---------------------------------------------------------------- comparison
def test_same_task_and_shape_are_comparable_with_leaders():
    a = model_results("a", em=(0.9, 0.87, 0.93), strata={"no_carry": (1.0, 0.97, 1.0), "cascade": (0.3, 0.22, 0.38)})
    b = model_results("b", em=(0.8, 0.77, 0.83), strata={"no_carry": (0.99, 0.96, 1.0), "cascade": (0.6, 0.52, 0.68)})
    c = compare_models([a, b])
    assert {(g.aspect, tuple(g.models)) for g in c.groups} == {
        ("accuracy", ("a", "b")), ("positions", ("a", "b")), ("heads", ("a", "b")), ("layers", ("a", "b"))}
    leaders = {lead.stratum: lead for lead in c.leaders}
    assert [lead.stratum for lead in c.leaders] == ["all", "no_carry", "cascade"]  # difficulty order
    assert (leaders["all"].best, leaders["all"].runner_up, leaders["all"].ci_overlap) == ("a", "b", False)
    assert (leaders["no_carry"].best, leaders["no_carry"].ci_overlap) == ("a", True)
    assert (leaders["cascade"].best, leaders["cascade"].ci_overlap) == ("b", False)
    assert leaders["cascade"].exact_match.mean == 0.6 and leaders["cascade"].runner_up_exact_match.mean == 0.3
    assert c.notes == []


def test_different_tasks_and_shapes_get_notes():
    a = model_results("a")
    b = model_results("b", task={**TASK, "with_steps": True}, shape={**SHAPE, "n_layers": 2})
    m = model_results("m", task={**TASK, "task": "mul", "max_digits": 2}, shape={**SHAPE, "n_heads": 2})
    c = compare_models([a, b, m])
    groups = {(g.aspect, tuple(g.models)) for g in c.groups}
    assert ("accuracy", ("a", "b")) in groups and ("accuracy", ("m",)) in groups
    assert ("positions", ("a",)) in groups and ("positions", ("b",)) in groups
    assert ("heads", ("a", "m")) not in groups and ("layers", ("a", "m")) in groups
    assert {lead.stratum for lead in c.leaders} == {"all", "no_carry", "cascade"}
    assert all(set(lead.models) == {"a", "b"} for lead in c.leaders)
    text = " ".join(c.notes)
    assert "Accuracy per stratum compare only between models with the same task and digit range" in text
    assert "m (mul, 1-2 digits)" in text
    assert "with steps" in text and "final answer only" in text
    assert "2 layers x 4 heads" in text


def test_apart_is_one_interval_beyond_every_other_as_shown():
    e = lambda lo, hi: Estimate(mean=(lo + hi) / 2, lo=lo, hi=hi, n=10)  # noqa: E731
    assert apart(e(0.5, 0.6), [e(0.1, 0.4), e(0.2, 0.49)]) == "above"
    assert apart(e(0.1, 0.2), [e(0.3, 0.4), e(0.21, 0.5)]) == "below"
    assert apart(e(0.5, 0.6), [e(0.1, 0.4), e(0.2, 0.5)]) is None  # touches one of them
    assert apart(e(0.5, 0.6), []) is None
    assert apart(e(0.5, 0.6), [e(0.1, float("nan"))]) is None  # a missing bound is unbounded
    two_digits = lambda x: round(x, 2)  # noqa: E731
    assert apart(e(0.501, 0.6), [e(0.1, 0.499)]) == "above"
    assert apart(e(0.501, 0.6), [e(0.1, 0.499)], two_digits) is None  # the printed intervals touch


def test_single_model_has_no_leaders_or_notes():
    c = compare_models([model_results("solo")])
    assert c.leaders == [] and c.notes == [] and len(c.groups) == 4


def test_analyses_not_run_are_noted():
    a, b = model_results("a"), model_results("b")
    b.findings.patching = b.findings.probing = None
    assert compare_models([a, b]).notes == ["b: not analysed with patching, probing, so it is missing from those comparisons."]


# ---------------------------------------------------------------- torch-free
def test_results_stage_does_not_import_torch():
    code = ("import sys, reportgen.results, reportgen.results.compare, reportgen.build, "
            "reportgen.cli.render, reportgen.cli.build, reportgen.render.report; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


def test_report_round_trip_through_bytes_in_memory():
    report = sample_report()
    json_bytes, npz_bytes = dump_results(report)
    with zipfile.ZipFile(io.BytesIO(npz_bytes)) as zf:
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+\.npy", i.filename) for i in zf.infolist())
    assert_same(normalized(report), report)
