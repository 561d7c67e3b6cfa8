"""Probing: the probe core on features of known content, the one-layout rule, twins-calibrated
selectivity (~0 on untrained models, confirmed where a planted model writes a label), the null
check (and that it fails when the test is weakened), and the Python API's refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TOKENIZER, random_model, zero_model
from reportgen.analysis import engine, probing
from reportgen.analysis.examples import template
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError
from reportgen import hooks as hp

RNG = np.random.default_rng(0)
FAST = dict(n_examples=150, hooks=["hook_resid_pre", "hook_resid_mid", "hook_resid_post"])


def split(n, fraction, seed):
    return probing.holdout_split(list(range(n)), fraction, seed)


# ---------------------------------------------------------------- the probe core
def test_split_is_by_example_seeded_and_disjoint():
    s1, s2 = split(100, 0.3, 7), split(100, 0.3, 7)
    assert (s1 == s2).all() and s1.sum() == 30
    assert not (s1 == split(100, 0.3, 8)).all()
    assert split(2, 0.01, 0).sum() == 1  # at least one example on each side


def test_copies_of_a_problem_are_on_the_same_side_of_the_split():
    keys = [k for k in range(50) for _ in range(3)]  # every problem three times
    is_test = probing.holdout_split(keys, 0.3, 0)
    assert is_test.sum() == 3 * 15
    for k in range(50):
        assert len(set(is_test[3 * k : 3 * k + 3])) == 1


def test_newton_solver_predicts_as_scikit_learn_does():
    """Same objective (sum of log-losses + ||w||^2 / 2C on standardised features, free intercept),
    one-vs-rest for more than two classes: the same held-out predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    for trial in range(6):
        X = rng.normal(size=(240, 24)) * rng.uniform(0.1, 3, 24)
        y = (X @ rng.normal(size=24) + rng.normal(size=240) * 2 > 0).astype(int) if trial % 2 else rng.integers(0, 4, 240)
        is_test = split(240, 0.4, trial)
        scaler = StandardScaler().fit(X[~is_test])
        base = LogisticRegression(C=1.0, max_iter=1000, tol=1e-10)
        clf = (OneVsRestClassifier(base) if trial % 2 == 0 else base).fit(scaler.transform(X[~is_test]), y[~is_test])
        got = probing.fit_predict(X, y, is_test, 30, 1.0)
        assert (got == clf.predict(scaler.transform(X[is_test]))).all()


@pytest.mark.parametrize("width", [24, 400])
def test_newton_solver_reaches_scikit_learns_optimum_with_more_or_fewer_rows_than_features(width):
    """Both ways of solving a Newton step (the d x d Hessian for 144 training rows of 24 features,
    the n x n Woodbury system for 400 features) reach scikit-learn's decision values."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(width)
    for trial in range(3):
        X = rng.normal(size=(240, width)) * rng.uniform(0.1, 3, width)
        y = (X[:, :5] @ rng.normal(size=5) + rng.normal(size=240) > 0) if trial else rng.random(240) < 0.3
        is_test = split(240, 0.4, trial)
        scaler = StandardScaler().fit(X[~is_test])
        clf = LogisticRegression(C=1.0, max_iter=10000, tol=1e-12).fit(scaler.transform(X[~is_test]), y[~is_test])
        got = probing.logistic_decisions(torch.as_tensor(X)[None], torch.as_tensor(y[None], dtype=torch.float64),
                                         torch.tensor([[0, 0]]), torch.as_tensor(~is_test), 1.0, 30)[0].numpy()
        assert got == pytest.approx(clf.decision_function(scaler.transform(X[is_test])), abs=1e-4)


def test_operand_baseline_decodes_carries_that_depend_on_every_lower_column():
    """The carry out of the hundreds column is a + b >= 1000: linear in the one-hot digits of all
    columns (weights d * 10^c), not in those of columns 2 and 1 alone."""
    recs = stratified_examples("add", 600, 3, 3, seed=0)
    y = np.array([r["labels"]["columns"][2]["carry_out"] for r in recs])
    is_test = split(len(recs), 0.3, 0)
    acc = probing.fit_score(probing.operand_features(recs), y, is_test, probing.is_unbalanced(y), 50, 100.0)
    assert acc > 0.99  # columns 2 and 1 alone: 0.97 on these problems


def test_features_without_information_score_chance():
    y = (RNG.integers(0, 10, 400) >= 7).astype(int)  # p = 0.3: unbalanced classes
    X = RNG.normal(size=(len(y), 32))
    is_test = split(len(y), 0.3, 0)
    bal = probing.is_unbalanced(y)
    assert bal and probing.fit_score(X, y, is_test, bal, 30, 1.0) == pytest.approx(0.5, abs=0.1)
    assert probing.majority_score(y, is_test, bal) == 0.5  # balanced accuracy of a constant guess


def test_score_balances_only_when_asked():
    y, pred = np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])
    assert probing.score(y, pred, balanced=False) == 0.75
    assert probing.score(y, pred, balanced=True) == 0.5


def test_resampled_balanced_accuracy_is_recomputed_per_resample():
    """A row of ones is the sample itself; an integer row is a resample with those multiplicities."""
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 0, 2])
    correct = (pred == y).astype(float)[None]
    assert probing.resampled_scores(np.ones((1, 6)), correct, y, True)[0, 0] == pytest.approx(
        probing.score(y, pred, True))
    weights = np.array([[3.0, 0, 0, 1, 0, 2]])  # rows 0 (x3), 3, 5 (x2): every class right
    assert probing.resampled_scores(weights, correct, y, True)[0, 0] == 1.0
    weights = np.array([[0, 2.0, 0, 0, 4, 0]])  # rows 1 (x2), 4 (x4): classes 0 and 1 only, both wrong
    assert probing.resampled_scores(weights, correct, y, True)[0, 0] == 0.0
    assert probing.resampled_scores(weights, correct, y, False)[0, 0] == 0.0


# ---------------------------------------------------------------- layouts
def test_probes_read_problems_of_one_layout_outside_the_training_split(ckpt):
    cfg = probing.ProbingConfig(**FAST)
    layouts, note = probing.held_out_layouts(ckpt, cfg, 0)
    assert [template(rs[0]) for rs in layouts] == ["dddoddd=dddd", "dddoddd=ddd"]  # the two most common
    for rs in layouts:
        assert len(rs) == cfg.n_examples and len({template(r) for r in rs}) == 1
    assert "training split could not be recovered" in note  # the fixture checkpoint records no data set
    with pytest.raises(ReportgenError, match="one layout"):
        probing.probe_layouts(ckpt.model, engine.untrained_twins(ckpt.model, 2, 0), TOKENIZER,
                              [layouts[0][:20] + layouts[1][:20]], cfg, [0], 0)


def test_held_out_layouts_exclude_the_training_questions(ckpt, monkeypatch):
    from reportgen.train import splits

    cfg = probing.ProbingConfig(**FAST)
    drawn = {(r["a"], r["op"], r["b"]) for rs in probing.held_out_layouts(ckpt, cfg, 0)[0] for r in rs}
    seen = set(list(drawn)[:100])
    monkeypatch.setattr(splits, "training_questions", lambda meta: {"train": seen, "val": set(), "test": set()})
    layouts, note = probing.held_out_layouts(ckpt, cfg, 0)
    assert not seen & {(r["a"], r["op"], r["b"]) for rs in layouts for r in rs}
    assert note == "none of the model's training, validation or test questions"


def test_every_target_digit_of_a_scratchpad_is_probed_with_its_role_and_column():
    recs = stratified_examples("add", 300, 3, 3, seed=0, with_steps=True)
    recs = [r for r in recs if template(r) == template(recs[0])]
    model = random_model(n_ctx=64)
    cfg = probing.ProbingConfig(n_examples=len(recs), hooks=["hook_resid_post"], labels=["carry_in", "carry_out"],
                                scratchpad_labels=["carry_out"])
    f = probing.probe_layouts(model, engine.untrained_twins(model, 2, 0), TOKENIZER, [recs], cfg, [1], 0)
    roles = {(p.role, p.column) for p in f.probes}
    assert {("sum_digit", 0), ("carry_out", 0), ("operand_a", 1), ("carry_in", 1)} <= roles
    assert "predicts sum_digit of column 1" in {p.position for p in f.probes}
    assert {p.label for p in f.probes if p.role != "answer"} == {"carry_out"}
    assert all(p.layout == 0 and p.n_train + p.n_test == len(recs) for p in f.probes)


# ---------------------------------------------------------------- calibration and the null
def _analyze(model, ckpt, seed=0, n_twins=3, **cfg):
    config = probing.ProbingConfig(**{**FAST, **cfg})
    layouts, note = probing.held_out_layouts(ckpt, config, seed)
    return probing.probe_layouts(model, engine.untrained_twins(model, n_twins, seed), TOKENIZER, layouts, config,
                                 [0, 1], seed, note)


def test_an_untrained_model_has_selectivity_near_zero_and_nothing_confirmed(ckpt):
    for seed in (1, 2):
        f = _analyze(random_model(seed=100 + seed), ckpt, seed)
        sel = np.array([p.selectivity.mean for p in f.probes])
        assert len(sel) > 40 and abs(sel.mean()) < 0.05
        assert not any(p.confirmed for p in f.probes)
        assert f.null.passed and f.null.twin_confirmed == [0, 0, 0] and f.null.n_tested == len(f.probes)
        assert max(f.twin_max_abs_selectivity) < 0.3 and max(map(abs, f.twin_mean_selectivity)) < 0.05


def planted_model(strength: float = 20.0):
    """Head 0 of layer 0 copies the first token of the problem (a's leading digit) into dims
    22-31 of the residual stream at every later position; nothing else is computed."""
    model = zero_model()
    digits = [TOKENIZER.vocab.index(str(d)) for d in range(10)]
    with torch.no_grad():
        model.W_E[:, : len(TOKENIZER)] = torch.eye(len(TOKENIZER))
        model.W_pos[1, 21] = 1.0  # marks token position 1
        attn = model.blocks[0].attn
        attn.b_Q[0, 0] = strength
        attn.W_K[0, 21, 0] = 1.0
        for d, tok in enumerate(digits):
            attn.W_V[0, tok, d] = 1.0
            attn.W_O[0, d, 22 + d] = 1.0
    return model


def test_a_planted_label_is_confirmed_where_it_is_written_and_nowhere_else(ckpt):
    """a's hundreds digit is linearly present after layer 0's attention, at every position; the
    only probes of it are at the positions predicting column 2 (3-digit operands)."""
    f = _analyze(planted_model(), ckpt, labels=["a_digit", "carry_in", "carry_out"])
    confirmed = {(p.label, p.column, p.hook, p.layout) for p in f.probes if p.confirmed}
    after = [hp.resid_mid(0), hp.resid_post(0), hp.resid_mid(1), hp.resid_post(1)]
    assert confirmed == {("a_digit", 2, hook, layout) for hook in after for layout in (0, 1)}
    embed = [p for p in f.probes if p.label == "a_digit" and p.column == 2 and p.hook == hp.resid_pre(0)]
    assert embed and not any(p.confirmed for p in embed)
    assert f.null.passed


NULL_CHECK = dict(hooks=["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"],
                  labels=["carry_in", "carry_out", "cascade"])  # 117 probes: room for false confirmations


def test_the_null_check_fails_when_the_test_is_weakened(ckpt, monkeypatch):
    """One untrained subject and its twins: the test passes its null. Weakened to a bare per-probe
    bootstrap interval (no Bonferroni correction, no initialisation spread of the twins), or with
    the twins' comparison dropped (accuracy over the majority class), it confirms probes on the
    untrained twins and the null check says the test is broken."""
    subject = random_model(seed=103)
    f = _analyze(subject, ckpt, 3, **NULL_CHECK)
    assert f.null.n_tested > 100 and f.null.passed and f.null.twin_confirmed == [0, 0, 0]
    with monkeypatch.context() as m:
        m.setattr(probing, "bonferroni_z", lambda alpha, n: probing.Z95)
        m.setattr(probing, "init_variance", lambda spread, n_ref: 0.0)
        bare = _analyze(subject, ckpt, 3, **NULL_CHECK)
    assert sum(c > 0 for c in bare.null.twin_confirmed) >= 2 and not bare.null.passed
    with monkeypatch.context() as m:
        def over_majority(scores, k):  # no twins: every subject against the majority class
            majority = scores[..., 1 + k]
            return scores[..., 0] - majority, scores[..., 0] - majority, scores[..., 1:1 + k] - majority[..., None]
        m.setattr(probing, "comparisons", over_majority)
        untwinned = _analyze(subject, ckpt, 3, **NULL_CHECK)
    assert min(untwinned.null.twin_confirmed) > 10 and not untwinned.null.passed


# ---------------------------------------------------------------- the Python API
def test_probe_across_layers_api():
    model = random_model(seed=6)
    recs = [r for r in stratified_examples("add", 200, 3, 3, seed=4) if template(r) == "dddoddd=dddd"][:60]
    texts = [r["prompt"] for r in recs]
    labels = [r["labels"]["columns"][1]["carry_in"] for r in recs]
    res = probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts, labels, "carry")
    assert res["layer_labels"] == ["embed", "L0", "L1"] and res["layout"] == "dddoddd=dddd"
    assert len(res["accuracy"]) == len(res["untrained"]) == 3
    assert res["n_train"] + res["n_test"] == 60 and 0 <= res["majority"] <= 1
    with pytest.raises(ReportgenError, match="labels"):
        probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts, labels[:-1], "x")


def test_probe_api_refuses_too_few_problems_naming_the_minimum():
    model = random_model(seed=6)
    texts = ["123 + 456", "234 + 567", "345 + 321", "111 + 222"] * 8  # 4 distinct problems, 32 rows
    least = probing.min_problems(0.3)
    with pytest.raises(ReportgenError, match=f"at least {least} distinct problems"):
        probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts, [0, 1, 0, 1] * 8, "x")


def test_probe_api_refuses_problems_of_several_layouts():
    model = random_model(seed=6)
    recs = stratified_examples("add", 60, 3, 1, seed=4)
    with pytest.raises(ReportgenError, match="layouts"):
        probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(
            [r["prompt"] for r in recs], [r["labels"]["n_carries"] > 0 for r in recs], "any_carry")


def test_plot_probe_writes_a_figure(tmp_path, ckpt):
    f = _analyze(random_model(seed=3), ckpt, hooks=["hook_resid_post"], labels=["carry_out"])
    probing.plot_probe(f, "carry_out", tmp_path / "carry_out_results.png")
    assert (tmp_path / "carry_out_results.png").stat().st_size > 0


def test_config_is_validated():
    with pytest.raises(ReportgenError, match="test_fraction"):
        probing.ProbingConfig(test_fraction=1.5)
    with pytest.raises(ReportgenError, match=f"at least {probing.min_problems(0.4)}"):
        probing.ProbingConfig(n_examples=10)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["add3_rev", "add3_steps"])
def test_untrained_models_of_the_demo_configs_confirm_no_probe(run):
    """The issue's done-when: untrained models of both demo configs (three initialisation seeds,
    each with its own three twins) have mean probe selectivity within 0.05 of 0, no probe confirmed,
    and a null check that passes."""
    import dataclasses
    from pathlib import Path

    from reportgen.analysis.config import AnalysisConfig
    from reportgen.analysis.plan import prepare
    from reportgen.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(Path(__file__).resolve().parents[1] / "runs" / run / "checkpoint_best.pt")
    cfg = AnalysisConfig()
    plan = prepare(ckpt, cfg)
    layers, questions = plan.probe_layers, plan.questions
    for seed in (1, 2, 3):
        untrained = dataclasses.replace(ckpt, model=engine.untrained_twin(ckpt.model, 500 + seed))
        f = probing.analyze_probing(untrained, engine.untrained_twins(ckpt.model, cfg.untrained_twins, seed),
                                    cfg.probing, layers, seed, questions)
        assert f.held_out == "none of the model's training, validation or test questions"
        assert len(f.probes) > 40 and abs(np.mean([p.selectivity.mean for p in f.probes])) < 0.05
        assert f.null.confirmed == 0 and f.null.passed
