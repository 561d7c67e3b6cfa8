"""`reportgen analyze`: bad input is a one-line error that leaves the previous output alone;
a good run writes the original toolkit's files."""

from __future__ import annotations

import json
import shutil

import pytest

from reportgen.atomic import MANIFEST, replace_dir
from reportgen.cli import main
from reportgen.results.store import load_results

FAST = """
n_examples: 30
examples: ["59 + 73"]
attention: {per_head_figures: true}
probing: {n_examples: 40, hooks: [hook_resid_post], labels: [carry_out, digit]}
"""


@pytest.fixture
def fast_config(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text(FAST)
    return str(path)


@pytest.fixture
def previous_output(tmp_path):
    """The output of an earlier run (written by replace_dir, so it carries its file manifest)."""
    out = tmp_path / "reports" / "interpretability"
    replace_dir(out, lambda d: (d / "examples.json").write_text("previous run"))
    return out


def _run(argv, capsys):
    rc = main(["analyze", "--quiet", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("extra, message", [
    (["--examples", "59 # 73"], "unknown character '#'"),
    (["--examples", "99999999999 + 9999999999"], "context"),
    (["--examples", "59 - 73"], "operator '-'"),
    (["--examples"], "example list is empty"),
    (["--config", "LAYER"], "attention layer 7 is out of range"),
    (["--config", "BADKEY"], "unknown key 'layers_to_analyse'"),
    (["--checkpoint", "MISSING"], "checkpoint not found"),
])
def test_bad_input_is_one_line_and_keeps_the_previous_output(checkpoint_path, previous_output, tmp_path, capsys,
                                                             extra, message):
    (tmp_path / "layer.yaml").write_text("attention:\n  layers_to_analyze: [0, 7]\n")
    (tmp_path / "badkey.yaml").write_text("attention:\n  layers_to_analyse: [0]\n")
    swap = {"LAYER": str(tmp_path / "layer.yaml"), "BADKEY": str(tmp_path / "badkey.yaml"),
            "MISSING": str(tmp_path / "nope.pt")}
    argv = ["--checkpoint", checkpoint_path, "--attention", "--output-dir", str(previous_output)]
    rc, out, err = _run(argv + [swap.get(a, a) for a in extra], capsys)
    assert rc == 2
    assert err.startswith("reportgen: error:") and err.count("\n") == 1 and message in err
    assert sorted(p.name for p in previous_output.iterdir()) == [MANIFEST, "examples.json"]
    assert (previous_output / "examples.json").read_text() == "previous run"
    assert sorted(p.name for p in previous_output.parent.iterdir()) == ["interpretability"]


def test_a_directory_of_other_files_is_never_replaced(checkpoint_path, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("precious")
    rc, _, err = _run(["--checkpoint", checkpoint_path, "--logit-lens", "--output-dir", str(thesis)], capsys)
    assert rc == 2 and "no reportgen manifest" in err and err.count("\n") == 1
    assert [p.name for p in thesis.iterdir()] == ["chapter1.tex"]
    assert (thesis / "chapter1.tex").read_text() == "precious"


@pytest.mark.parametrize("change", ["results.json only", "a note added", "a file edited", "a checkpoint copied in"])
def test_an_output_with_anything_reportgen_did_not_write_is_never_replaced(checkpoint_path, previous_output,
                                                                            tmp_path, capsys, change):
    """A folder with a bare results.json (no manifest), or an earlier output holding a file the
    user added or changed, e.g. the checkpoint being analysed, is refused and left as it is."""
    if change == "results.json only":
        previous_output = tmp_path / "mine"
        previous_output.mkdir()
        (previous_output / "results.json").write_text("{}")
        (previous_output / "thesis.tex").write_text("precious")
    elif change == "a note added":
        (previous_output / "notes.md").write_text("precious")
    elif change == "a file edited":
        (previous_output / "examples.json").write_text("precious")
    else:
        shutil.copy(checkpoint_path, previous_output / "model.pt")
        checkpoint_path = str(previous_output / "model.pt")
    before = {p: p.read_bytes() for p in previous_output.rglob("*") if p.is_file()}
    rc, _, err = _run(["--checkpoint", checkpoint_path, "--logit-lens", "--output-dir", str(previous_output)], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--output-dir" in err, err
    assert {p: p.read_bytes() for p in previous_output.rglob("*") if p.is_file()} == before


def test_an_output_missing_one_of_its_files_is_replaced(previous_output, checkpoint_path, fast_config, capsys):
    (previous_output / "examples.json").unlink()  # nothing of the user's is lost by replacing it
    rc, _, err = _run(["--checkpoint", checkpoint_path, "--logit-lens", "--config", fast_config,
                       "--output-dir", str(previous_output)], capsys)
    assert rc == 0, err
    assert (previous_output / "results.json").is_file() and (previous_output / MANIFEST).is_file()


def test_run_writes_the_toolkit_files_and_replaces_the_output(checkpoint_path, previous_output, fast_config, capsys):
    argv = ["--checkpoint", checkpoint_path, "--attention", "--logit-lens", "--probing", "--config", fast_config,
            "--examples", "59 + 73", "12 + 34", "--output-dir", str(previous_output)]
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    names = {str(p.relative_to(previous_output)) for p in previous_output.rglob("*") if p.is_file()}
    expected = {MANIFEST, "examples.json", "attention/findings.json", "logit_lens/findings.json", "probing/findings.json",
                "probing/carry_out_results.png", "probing/digit_results.png", "results.json", "arrays.npz"}
    for i in range(2):
        expected |= {f"attention/example_{i}_stats.json", f"logit_lens/example_{i}_evolution.png",
                     f"logit_lens/example_{i}_predictions.png", f"logit_lens/example_{i}_entropy.json"}
        for l in range(2):
            expected |= {f"attention/example_{i}_layer_{l}_all_heads.png"}
            expected |= {f"attention/example_{i}_layer_{l}_head_{h}.png" for h in range(2)}
    assert names == expected
    examples = json.loads((previous_output / "examples.json").read_text())
    assert [e["key"] for e in examples] == ["59plus73", "12plus34"]
    stats = json.loads((previous_output / "attention" / "example_0_stats.json").read_text())
    assert stats["answer_positions"] == [6, 7, 8] and len(stats["heads"]) == 4
    assert sorted(p.name for p in previous_output.parent.iterdir()) == ["interpretability"]
    (model,) = load_results(previous_output).models
    assert model.findings.patching is None and model.findings.probing is not None
    assert [e.prompt for e in model.findings.examples] == ["59+73=", "12+34="]
    assert model.provenance.checkpoint == checkpoint_path and model.accuracy.n > 0


@pytest.mark.slow
def test_all_analyses_write_every_file(checkpoint_path, tmp_path, fast_config, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(["--checkpoint", checkpoint_path, "--all", "--config", fast_config, "--output-dir", str(out)],
                      capsys)
    assert rc == 0, err
    for name in ("circuits/operator_heads.json", "circuits/position_heads.json", "circuits/delimiter_heads.json",
                 "circuits/specialized_neurons.json", "circuits/head_specialization.png",
                 "interventions/layer_importance.png", "patching/findings.json",
                 "attention/example_0_layer_1_all_heads.png"):
        assert (out / name).is_file(), name
    rc = main(["render", str(out), "--out", str(tmp_path / "site"), "--no-pdf"])
    assert rc == 0 and (tmp_path / "site" / "index.html").is_file()


def test_failure_while_writing_keeps_the_previous_output(checkpoint_path, previous_output, fast_config, capsys,
                                                         monkeypatch):
    from reportgen.cli import analyze

    def broken(root, *args):
        (root / "half.txt").write_text("half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze, "write_outputs", broken)
    rc, _, err = _run(["--checkpoint", checkpoint_path, "--logit-lens", "--config", fast_config,
                       "--output-dir", str(previous_output)], capsys)
    assert rc == 130 and "interrupted" in err
    assert sorted(p.name for p in previous_output.iterdir()) == [MANIFEST, "examples.json"]
    assert sorted(p.name for p in previous_output.parent.iterdir()) == ["interpretability"]


def test_an_example_longer_than_the_training_range_gets_a_note(checkpoint_path, fast_config, tmp_path, capsys):
    """Allowed (a length-generalisation test), but said: the model saw 1-3 digit operands only."""
    rc, _, err = _run(["--checkpoint", checkpoint_path, "--logit-lens", "--config", fast_config, "--examples",
                       "1234 + 5678", "12 + 34", "--output-dir", str(tmp_path / "out")], capsys)
    assert rc == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert notes == ["reportgen: note: 1234 + 5678 has operands of 4 and 4 digits, outside the 1-3 digits the "
                     "model was trained on"]
