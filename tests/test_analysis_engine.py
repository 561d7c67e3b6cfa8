"""Engine: cached pass, answer-position gathers, digit restriction, untrained twin, orchestrator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TOKENIZER, answer_writer_model, batch_for, random_model, records
from reportgen.analysis import engine
from reportgen.analysis.config import AnalysisConfig, ProbingConfig, load_analysis_config
from reportgen.errors import ReportgenError
from reportgen import hooks as hp


def test_gather_and_answer_digits_follow_the_predicting_positions():
    model = random_model()
    batch = batch_for(model, records((59, "+", 73), (7, "+", 5)))
    logits, cache = engine.run_with_cache(model, batch)
    # '59+73=132': char c is token c+1, predicted at token c; the answer starts at char 6.
    assert batch.pred_pos[0].tolist() == [6, 7, 8]
    assert engine.answer_digits(batch, TOKENIZER)[0].tolist() == [1, 3, 2]
    assert engine.answer_digits(batch, TOKENIZER)[1].tolist() == [1, 2, 0]  # '7+5=12', one pad slot
    gathered = engine.gather_at_answers(logits, batch)
    assert torch.equal(gathered[0, 1], logits[0, 7])
    assert torch.equal(engine.gather_at_answers(cache[hp.resid_post(1)], batch)[1, 0],
                       cache[hp.resid_post(1)][1, 4])
    logp = engine.digit_log_probs(logits, TOKENIZER)
    assert logp.shape[-1] == 10
    assert torch.allclose(logp.exp().sum(-1), torch.ones(logp.shape[:-1]))


def test_untrained_twin_is_a_fresh_deterministic_init_that_leaves_the_global_rng_alone():
    model = random_model()
    state = torch.get_rng_state()
    a, b, c = engine.untrained_twin(model, 1), engine.untrained_twin(model, 1), engine.untrained_twin(model, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.cfg == model.cfg and not a.training
    assert torch.equal(a.W_E, b.W_E) and not torch.equal(a.W_E, c.W_E)
    assert not torch.equal(a.W_E, model.W_E)


def test_greedy_predictions_are_batched_and_scored_on_the_final_answer():
    model = answer_writer_model(write_layer=0)  # always predicts '7', never EOS
    recs = records((3, "+", 4), (59, "+", 73))
    preds = engine.greedy_predictions(model, TOKENIZER, recs)
    assert preds[0].startswith("77") and set(preds[1]) == {"7"}
    assert not engine.is_correct(recs[0], preds[0])
    assert engine.is_correct(recs[0], "7")


def test_config_file_round_trip_and_errors_name_the_key(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("enabled: [attention, probing]\nprobing:\n  n_examples: 50\n  hooks: [hook_resid_post]\n")
    cfg = load_analysis_config(path)
    assert cfg.enabled == ["attention", "probing"] and cfg.probing == ProbingConfig(n_examples=50, hooks=["hook_resid_post"])
    path.write_text("probing:\n  n_exmples: 50\n")
    with pytest.raises(ReportgenError, match="n_exmples"):
        load_analysis_config(path)
    path.write_text("enabled: [attention, magic]\n")
    with pytest.raises(ReportgenError, match="magic"):
        load_analysis_config(path)
    assert load_analysis_config(None) == AnalysisConfig()


def test_shipped_config_loads():
    cfg = load_analysis_config(Path(__file__).parents[1] / "configs" / "interpretability.yaml")
    assert set(cfg.enabled) == {"attention", "patching", "logit_lens", "circuits", "probing", "interventions"}


def fast_config(**kw) -> AnalysisConfig:
    return AnalysisConfig(n_examples=40, probing=ProbingConfig(n_examples=40, hooks=["hook_resid_post"]), **kw)


def test_analyze_fills_findings_and_one_example_per_distinct_problem(ckpt):
    from reportgen.analysis.run import analyze

    f = analyze(ckpt, fast_config(), ["59 + 73", "59+73=", "12 + 34"], {"attention", "logit_lens", "probing"},
                progress=False)
    assert [e.key for e in f.examples] == ["59plus73", "12plus34"]
    ex = f.examples[0]
    L, H = ckpt.model.cfg.n_layers, ckpt.model.cfg.n_heads
    assert ex.tokens == ["BOS", *"59+73=132", "EOS"] and ex.answer_positions == [6, 7, 8]
    assert ex.attention.shape == (L, H, 11, 11)
    assert np.allclose(ex.attention.sum(-1), 1.0, atol=1e-5)
    assert ex.lens_prob.shape == ex.lens_top.shape == ex.lens_entropy.shape == (L + 1, 3)
    assert len(ex.convergence) == 3 and ex.stratum == "multi_carry"  # 9+3 and 5+7+1 carry
    assert ex.correct == (ex.prediction == "132")
    assert ex.problem == "59 + 73" and ex.answer == "132"
    assert f.attention is not None and f.logit_lens is not None and f.probing is not None
    assert f.patching is None and f.circuits is None and f.interventions is None
    assert 40 <= f.logit_lens.prob_correct[0].n <= 42  # user examples + 40 generated, de-duplicated


def test_examples_store_the_answer_as_a_number(ckpt):
    """The renderer shows `answer` (it holds no arithmetic), not the reversed digits the model writes."""
    from reportgen.analysis.run import example_findings
    from reportgen.data.arithmetic import make_record

    (rev,) = example_findings(ckpt, [make_record(836, 672, "+", answer_order="reversed")])
    assert (rev.target, rev.problem, rev.answer) == ("8051", "836 + 672", "1508")


@pytest.mark.parametrize("examples, cfg_kw, message", [
    (["59 # 73"], {}, "unknown character '#'"),
    (["59 - 73"], {}, "operator '-'"),
    (["9999999 + 9999999"], {}, "needs 26 tokens with its answer, more than the model.s context of 24"),
    ([], {}, "empty"),
    (None, {"attention": {"layers_to_analyze": [5]}}, "attention layer 5 is out of range"),
    (None, {"probing": {"layers": [-3]}}, "probing layer -3 is out of range"),
])
def test_prepare_rejects_bad_input_before_any_forward_pass(ckpt, monkeypatch, examples, cfg_kw, message):
    from reportgen.analysis import run as run_mod
    from reportgen.configfile import from_dict

    monkeypatch.setattr(run_mod, "run_with_cache", lambda *a, **k: pytest.fail("forward pass ran"))
    cfg = from_dict(AnalysisConfig, {"n_examples": 20, **cfg_kw}, "test")
    with pytest.raises(ReportgenError, match=message):
        run_mod.analyze(ckpt, cfg, examples, {"attention"}, progress=False)


def test_result_types_and_analysis_configs_import_neither_torch_nor_scipy():
    """The build and the command line read the config before any analysis runs (a test beside the
    import contracts: it also sees the analysis package's lazy imports)."""
    import subprocess

    code = ("import reportgen.findings, reportgen.catalog, reportgen.analysis.config, sys; "
            "print([m for m in ('torch', 'scipy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_one_list_of_analyses_is_what_the_results_cli_and_build_use():
    import dataclasses

    from reportgen.build import JOB_ANALYSES
    from reportgen.catalog import ANALYSES, ANALYSIS_NAMES
    from reportgen.cli import build_parser
    from reportgen.findings import AnalysisFindings

    fields = [f.name for f in dataclasses.fields(AnalysisFindings) if f.name not in ("examples", "population")]
    assert list(ANALYSIS_NAMES) == fields
    assert sorted(a for group in JOB_ANALYSES for a in group) == sorted(ANALYSIS_NAMES)
    args = build_parser().parse_args(["analyze", "--checkpoint", "c.pt", *(a.flag for a in ANALYSES)])
    assert all(getattr(args, a.name) for a in ANALYSES)
    assert AnalysisConfig().enabled == list(ANALYSIS_NAMES)


def test_config_refuses_more_examples_than_memory_allows():
    from reportgen.analysis.config import MAX_EXAMPLES
    from reportgen.configfile import from_dict

    assert from_dict(AnalysisConfig, {"n_examples": MAX_EXAMPLES}, "test").n_examples == MAX_EXAMPLES
    with pytest.raises(ReportgenError, match=f"n_examples must be at most {MAX_EXAMPLES}"):
        from_dict(AnalysisConfig, {"n_examples": 100_000_000}, "test")
