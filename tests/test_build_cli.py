"""`reportgen build` and `reportgen render`: validation before work, atomic site swap, cache, no torch in render."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from reportgen import build
from reportgen.atomic import MANIFEST, replace_dir
from reportgen.cli import main
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import save_checkpoint
from reportgen.names import unique_names
from reportgen.model.transformer import ModelConfig, Transformer
from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE, load_results, save_results
from test_results import sample_report

ROOT = Path(__file__).resolve().parent.parent
TASK = {"task": "add", "max_digits": 3, "min_digits": 1, "with_steps": False, "answer_order": "plain"}
# Small enough for a 1-layer CPU model in seconds; every analysis still runs.
FAST_CONFIG = """\
n_examples: 40
n_example_pages: 2
harder_test_digits: 4
probing:
  n_examples: 40
"""


def make_checkpoint(path: Path, n_layers: int = 1, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_layers=n_layers, n_heads=2, d_model=32, d_mlp=64, n_ctx=24))
    history = {"step": [0, 10], "train_loss": [2.5, 2.0], "val_exact_match": [0.0, 0.0], "elapsed_s": [0.0, 1.0]}
    save_checkpoint(path, model, Tokenizer(), data=TASK, history=history, seed=seed, train_config={"lr": 1e-3})
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory with a checkpoint, a small analysis config and an existing (sentinel) site."""
    monkeypatch.chdir(tmp_path)
    make_checkpoint(tmp_path / "runs" / "add_tiny" / "checkpoint_best.pt")
    (tmp_path / "fast.yaml").write_text(FAST_CONFIG)
    def previous(d: Path) -> None:
        (d / "index.html").write_text("<p>the previous report</p>")
        (d / RESULTS_FILE).write_text('{"sentinel": true}')

    replace_dir(tmp_path / "site", previous)  # as a build writes it: with its file manifest
    return tmp_path


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Temporary build, probe or swap directories left beside the site."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".site."))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def assert_refused(work: Path, rc: int, err: str, before: dict, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("reportgen: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(work / "site") == before
    assert leftovers(work) == []
    assert not (work / build.CACHE_DIR).exists()


# ---------------------------------------------------------------- validation before work
def test_missing_checkpoint_is_refused(work, capsys):
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt",
                      "--compare", "runs/nope/checkpoint_best.pt", "--no-pdf")
    assert_refused(work, rc, err, before, "checkpoint not found", "runs/nope/checkpoint_best.pt")


def test_truncated_checkpoint_is_refused(work, capsys):
    bad = work / "runs" / "broken" / "checkpoint_best.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes((work / "runs" / "add_tiny" / "checkpoint_best.pt").read_bytes()[:500])
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", str(bad), "--no-pdf")
    assert_refused(work, rc, err, before, "corrupt or truncated")


def test_example_of_another_task_names_model_and_example(work, capsys):
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt",
                      "--examples", "59 + 73", "12 * 34", "--config", "fast.yaml", "--no-pdf")
    assert_refused(work, rc, err, before, "model add_tiny", "12", "34", "'*'")


def test_a_harder_test_longer_than_the_context_is_refused_before_any_work(work, capsys):
    (work / "long.yaml").write_text(FAST_CONFIG.replace("harder_test_digits: 4", "harder_test_digits: 9"))
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt", "--config", "long.yaml")
    assert_refused(work, rc, err, before, "harder_test_digits 9", "context of 24")


def test_malformed_config_is_refused(work, capsys):
    (work / "bad.yaml").write_text("n_examples: [1, 2\n")
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt", "--config", "bad.yaml")
    assert_refused(work, rc, err, before, "bad.yaml")


def test_unwritable_out_dir_is_refused(work, capsys):
    (work / "afile").write_text("not a directory")
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt",
                      "--config", "fast.yaml", "--out", "afile/site", "--no-pdf")
    assert_refused(work, rc, err, before, "cannot write the site", "afile")


def test_out_dir_holding_other_files_is_refused(work, capsys):
    (work / "notes").mkdir()
    (work / "notes" / "thesis.tex").write_text("precious")
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt",
                      "--config", "fast.yaml", "--out", "notes", "--no-pdf")
    assert_refused(work, rc, err, before, "no reportgen manifest")
    assert (work / "notes" / "thesis.tex").read_text() == "precious"


def test_a_site_with_a_file_added_or_edited_is_refused(work, capsys):
    """The user's notes in an earlier site, or their edit of one of its pages, are never deleted."""
    for change in ("add", "edit"):
        if change == "add":
            (work / "site" / "MY_NOTES.md").write_text("precious")
        else:
            (work / "site" / "MY_NOTES.md").unlink()
            (work / "site" / "index.html").write_text("<p>my edit</p>")
        before = snapshot(work / "site")
        rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt",
                          "--config", "fast.yaml", "--no-pdf")
        assert_refused(work, rc, err, before, "added or changed", "MY_NOTES.md" if change == "add" else "index.html")


# ---------------------------------------------------------------- atomic swap (renderer failure injected)
def _renderer(monkeypatch, render_site) -> None:
    fake = types.SimpleNamespace(render_site=render_site, site_is_current=lambda *a: False)
    monkeypatch.setitem(sys.modules, "reportgen.render.report", fake)


@pytest.mark.parametrize("error", [RuntimeError("renderer broke"), KeyboardInterrupt()])
def test_failed_render_leaves_previous_site_and_no_temp_dirs(work, monkeypatch, error):
    def render_site(report, out_dir, pdf=True, log=None, summary=False):
        (Path(out_dir) / "index.html").write_text("half-written")
        raise error

    _renderer(monkeypatch, render_site)
    before = snapshot(work / "site")
    with pytest.raises(type(error)):
        build.write_site(sample_report(), work / "site", pdf=False)
    assert snapshot(work / "site") == before
    assert leftovers(work) == []


def test_swap_replaces_the_site_whole(work, monkeypatch):
    def render_site(report, out_dir, pdf=True, log=None, summary=False):
        (Path(out_dir) / "index.html").write_text(report.title)
        save_results(report, out_dir)  # render_site writes the results files into the site

    _renderer(monkeypatch, render_site)
    report = sample_report()
    build.write_site(report, work / "site", pdf=False)
    assert sorted(snapshot(work / "site")) == [MANIFEST, ARRAYS_FILE, "index.html", RESULTS_FILE]
    assert (work / "site" / "index.html").read_text() == report.title
    assert (work / "site").stat().st_mode & 0o777 == 0o755
    assert leftovers(work) == []
    assert load_results(work / "site").title == report.title


# ---------------------------------------------------------------- helpers
def test_unique_names_are_safe_and_deterministic():
    assert unique_names(["add3_1layer", "add3_1layer", "Add3 1Layer!", "", "../x"]) == [
        "add3_1layer", "add3_1layer-2", "add3-1layer", "model", "x"]


def test_generated_at_is_source_date_epoch_or_the_day(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert build.generated_at() == datetime.now(timezone.utc).strftime("%Y-%m-%d")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert build.generated_at() == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ReportgenError):
        build.generated_at()


def test_cache_key_covers_config_and_examples():
    key = build.cache_key("ab" * 32, {"seed": 0}, ["59 + 73"])
    assert key == build.cache_key("ab" * 32, {"seed": 0}, ["59 + 73"]) and len(key) == 64
    assert len({key, build.cache_key("cd" * 32, {"seed": 0}, ["59 + 73"]),
                build.cache_key("ab" * 32, {"seed": 1}, ["59 + 73"]),
                build.cache_key("ab" * 32, {"seed": 0}, None)}) == 4


def test_cache_key_changes_with_the_analysis_code(tmp_path, monkeypatch):
    """A cached result made by other analysis code is not reused (the package version does not
    move between development commits)."""
    from reportgen import fingerprint

    copy = tmp_path / "reportgen"
    shutil.copytree(fingerprint.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE", copy)
    key = build.cache_key("ab" * 32, {"seed": 0}, None)
    (copy / "render" / "site.py").write_text("# render code does not change results\n")
    (copy / "render" / "new_page.py").write_text("# nor does a new render module\n")
    assert build.cache_key("ab" * 32, {"seed": 0}, None) == key
    # any other source, changed or new, does: none is listed by hand
    for name in ["analysis/logit_lens.py", "parallel.py", "fingerprint.py", "names.py", "hooks.py",
                 "sweep/jobs.py", "analysis/new_analysis.py", "new_helper.py"]:
        path = copy / name
        path.write_text((path.read_text() if path.exists() else "") + "\n# changed\n")
        assert build.cache_key("ab" * 32, {"seed": 0}, None) != key, name
        key = build.cache_key("ab" * 32, {"seed": 0}, None)


def test_site_fingerprint_changes_with_any_reportgen_source(tmp_path, monkeypatch):
    """A site is re-rendered after any change to reportgen's code, a new module included."""
    from reportgen import fingerprint
    from reportgen.render.stamp import fingerprint as site_fingerprint

    copy = tmp_path / "reportgen"
    shutil.copytree(fingerprint.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE", copy)
    stamp = site_fingerprint(b"{}", b"", pdf=False)
    assert site_fingerprint(b"{}", b"", pdf=False) == stamp
    for name in ["render/site.py", "results/compare.py", "names.py", "parallel.py", "fingerprint.py",
                 "analysis/findings.py", "render/new_page.py", "new_helper.py"]:
        path = copy / name
        path.write_text((path.read_text() if path.exists() else "") + "\n# changed\n")
        assert site_fingerprint(b"{}", b"", pdf=False) != stamp, name
        stamp = site_fingerprint(b"{}", b"", pdf=False)


# ---------------------------------------------------------------- end to end (real analyses and renderer)
def cli_in(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """`reportgen ARGV` in a fresh interpreter, failing if it imported torch when argv[0] is render."""
    code = ("import sys\nfrom reportgen.cli import main\nrc = main(sys.argv[1:])\n"
            "assert sys.argv[1] != 'render' or 'torch' not in sys.modules, 'render imported torch'\nsys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1700000000"}
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True)


BUILD = ["build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt", "--compare",
         "runs/add_tiny_2layer/checkpoint_best.pt", "--examples", "59 + 73", "999 + 1",
         "--config", "fast.yaml", "--title", "Tiny", "--no-pdf"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A directory where `reportgen build` made site/ from two tiny random models."""
    d = tmp_path_factory.mktemp("e2e")
    make_checkpoint(d / "runs" / "add_tiny" / "checkpoint_best.pt")
    make_checkpoint(d / "runs" / "add_tiny_2layer" / "checkpoint_best.pt", n_layers=2, seed=1)
    (d / "fast.yaml").write_text(FAST_CONFIG)
    proc = cli_in(d, *BUILD)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.mark.slow
def test_build_writes_the_site_and_its_results(built):
    site = built / "site"
    assert {"index.html", RESULTS_FILE, ARRAYS_FILE} <= set(snapshot(site))
    assert leftovers(built) == []
    report = load_results(site)
    assert [m.name for m in report.models] == ["add_tiny", "add_tiny_2layer"]
    assert report.generated_at == "2023-11-14T22:13:20Z" and report.title == "Tiny"
    first = report.models[0]
    assert [e.prompt for e in first.findings.examples[:2]] == ["59+73=", "999+1="]
    assert first.accuracy.n == build.EVAL_EXAMPLES and first.accuracy.seed == build.EVAL_SEED
    assert first.harder.digits == 4 and first.harder.accuracy.n == build.EVAL_EXAMPLES and first.harder.accuracy.unseen
    assert "harder-test.csv" in {p.name for p in (site / "tables").rglob("*.csv")}
    assert first.training.steps == [0, 10] and first.provenance.seed == 0
    assert first.provenance.checkpoint == "runs/add_tiny/checkpoint_best.pt"
    assert first.provenance.model_config["n_layers"] == 1 and first.provenance.task == TASK
    assert all(getattr(first.findings, a) is not None for a in ("attention", "patching", "logit_lens",
                                                                  "circuits", "probing", "interventions"))
    assert any(note.startswith("Per-head tables") for note in report.comparison.notes)
    assert {lead.stratum for lead in report.comparison.leaders} >= {"all"}
    assert len(list((built / build.CACHE_DIR).iterdir())) == 2


@pytest.mark.slow
def test_cached_rebuild_does_no_torch_work_and_gives_the_same_files(built, monkeypatch, capsys):
    import reportgen.analysis.run as analysis_run
    import reportgen.train.evaluate as evaluate

    before = snapshot(built / "site")
    monkeypatch.chdir(built)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.setattr(analysis_run, "run_plan", lambda *a, **k: pytest.fail("analyses ran on a cached rebuild"))
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluation ran on a cached rebuild"))
    rc, err = run_cli(capsys, *BUILD)
    assert rc == 0 and err.count("using cached results") == 2, err
    assert snapshot(built / "site") == before
    assert leftovers(built) == []


@pytest.mark.slow
def test_unchanged_site_is_not_rendered_again_and_an_edited_one_is_kept(built, monkeypatch, capsys):
    import reportgen.render.report as render

    monkeypatch.chdir(built)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    real = render.render_site
    monkeypatch.setattr(render, "render_site", lambda *a, **k: pytest.fail("an up-to-date site was rendered"))
    before = snapshot(built / "site")
    rc, err = run_cli(capsys, *BUILD)
    assert rc == 0 and "is up to date" in err, err
    assert snapshot(built / "site") == before

    calls = []
    monkeypatch.setattr(render, "render_site", lambda *a, **k: (calls.append(1), real(*a, **k)))
    page = next(p for p in sorted(before) if p.endswith(".html") and p != "index.html")
    (built / "site" / page).unlink()  # a page deleted: nothing of the user's is lost by rendering again
    rc, err = run_cli(capsys, *BUILD)
    assert rc == 0 and calls == [1] and "is up to date" not in err, err
    assert snapshot(built / "site") == before

    (built / "site" / page).write_text("edited by hand")  # refused: the edit is kept
    rc, err = run_cli(capsys, *BUILD)
    assert rc == 2 and calls == [1] and "added or changed" in err and page in err, err
    assert (built / "site" / page).read_text() == "edited by hand"
    (built / "site" / page).write_bytes(before[page])


@pytest.mark.slow
def test_render_reproduces_the_site_without_torch(built):
    proc = cli_in(built, "render", "site", "--out", "rerendered", "--no-pdf")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(built / "rerendered") == snapshot(built / "site")


@pytest.mark.slow
def test_render_merges_results_dirs(built, capsys, monkeypatch):
    monkeypatch.chdir(built)
    rc, err = run_cli(capsys, "render", "site", "site", "--out", "merged", "--no-pdf")
    assert rc == 0, err
    merged = load_results(built / "merged")
    assert [m.name for m in merged.models] == ["add_tiny", "add_tiny_2layer", "add_tiny-2", "add_tiny_2layer-2"]
    assert merged.title == "Interpretability report: add_tiny vs add_tiny_2layer vs add_tiny vs add_tiny_2layer"
    heads = [g.models for g in merged.comparison.groups if g.aspect == "heads"]
    assert heads == [["add_tiny", "add_tiny-2"], ["add_tiny_2layer", "add_tiny_2layer-2"]]


@pytest.mark.parametrize("argv, fragment", [
    (["build", "--examples"], "argument --examples: expected at least one argument"),
    (["eval", "--checkpoint", "x.pt", "--instances", "abc"], "invalid int value: 'abc'"),
    (["analyze", "--checkpoint", "x.pt", "--device", "nonsense"], "argument --device"),
    (["nonsense"], "invalid choice"),
])
def test_usage_errors_are_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and err.count("\n") == 1 and fragment in err and "--help" in err, err


def test_a_config_that_is_not_text_is_one_line(work, capsys):
    (work / "binary.yaml").write_bytes(b"\x00\xff\xfe")
    before = snapshot(work / "site")
    rc, err = run_cli(capsys, "build", "--checkpoint", "runs/add_tiny/checkpoint_best.pt", "--config", "binary.yaml")
    assert_refused(work, rc, err, before, "binary.yaml", "UTF-8")


DEMOS = {name: str(ROOT / "runs" / name / "checkpoint_best.pt") for name in ("add3_rev", "add3_steps")}


@pytest.mark.slow
def test_examples_as_the_site_shows_them_are_accepted_back(tmp_path):
    """Both demo models: each example as its page shows it, in the model's own format ('249+93=243'
    reversed, the whole scratchpad with steps), goes back in through --examples as the same example."""
    import html
    import re

    (tmp_path / "attention.yaml").write_text("enabled: [attention]\nn_examples: 24\nn_example_pages: 6\n")
    first = cli_in(tmp_path, "build", "--checkpoint", DEMOS["add3_rev"], "--compare", DEMOS["add3_steps"],
                   "--config", "attention.yaml", "--no-pdf", "--out", "site")
    assert first.returncode == 0, first.stderr
    for name, checkpoint in DEMOS.items():
        pages = sorted((tmp_path / "site" / "examples" / name).glob("*.html"))
        shown = [html.unescape(re.search(r"<h1><code>(.*?)</code></h1>", p.read_text(encoding="utf-8"))[1])
                 for p in pages]
        assert len(shown) == 6
        assert all(("|" in s) == (name == "add3_steps") for s in shown)  # written in the model's own format
        again = cli_in(tmp_path, "build", "--checkpoint", checkpoint, "--examples", *shown, "--config",
                       "attention.yaml", "--no-pdf", "--out", f"again-{name}")
        assert again.returncode == 0, again.stderr
        examples = load_results(tmp_path / f"again-{name}").models[0].findings.examples
        assert [e.prompt + e.target for e in examples[:len(shown)]] == shown
    wrong = cli_in(tmp_path, "build", "--checkpoint", DEMOS["add3_rev"], "--examples", "59+48=710", "--config",
                   "attention.yaml", "--no-pdf", "--out", "wrong")
    assert wrong.returncode == 2 and "59+48=710" in wrong.stderr and "59+48=701" in wrong.stderr


@pytest.mark.slow
def test_the_python_api_builds_from_a_script_without_a_main_guard(work):
    """The analysis jobs run in worker processes that must not re-run the caller's script."""
    make_checkpoint(work / "runs" / "other" / "checkpoint_best.pt", seed=1)
    (work / "script.py").write_text(
        "from reportgen.build import build_report\n"
        "print('script ran', flush=True)\n"
        "build_report(['runs/add_tiny/checkpoint_best.pt'], ['runs/other/checkpoint_best.pt'], None, 'fast.yaml',\n"
        "             'api-site', None, pdf=False, progress=print, use_cache=False)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "script.py"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("script ran") == 1
    if build.cpus() > 1:
        assert "jobs in 2 processes" in proc.stdout, proc.stdout
    assert (work / "api-site" / "index.html").is_file()


def test_the_analyses_reading_the_cached_runs_share_one_job():
    """Else every job among them repeats the forward passes of the model and its twins."""
    from reportgen.analysis.run import CACHE_READERS

    assert sum(bool(set(group) & CACHE_READERS) for group in build.JOB_ANALYSES) == 1
