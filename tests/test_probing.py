"""Probing: the probe protocol on features with known information content, and on real caches."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TOKENIZER, batch_for, random_model, zero_model
from reportgen.analysis import engine, probing
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError

RNG = np.random.default_rng(0)


def _types_and_labels(n=400, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 10, n), rng.integers(0, 10, n)
    types = list(zip(a.tolist(), b.tolist()))
    return a, b, types, (a + b >= 13).astype(int)  # p = 0.21: unbalanced classes


def split(n, fraction, seed):
    return probing.holdout_split(list(range(n)), fraction, seed)


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


def test_repeated_problems_do_not_let_a_probe_memorise_random_labels():
    """One random label per problem: nothing to decode. With copies split apart, a probe would
    memorise them; split by problem, it stays near chance."""
    model = random_model(seed=6)
    recs = stratified_examples("add", 50, 3, 1, seed=4)
    texts = [r["prompt"] for r in recs] * 4
    labels = list(np.random.default_rng(0).integers(0, 2, 50)) * 4
    res = probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts, labels, "noise")
    assert max(res["accuracy"]) < 0.75
    with pytest.raises(ReportgenError, match="two distinct problems"):
        probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts[:1] * 4, [0, 1, 0, 1], "x")


def test_operand_baseline_decodes_carries_that_depend_on_every_lower_column():
    """The carry out of the hundreds column is a + b >= 1000: linear in the one-hot digits of all
    columns (weights d * 10^c), not in those of columns 2 and 1 alone."""
    recs = stratified_examples("add", 600, 3, 3, seed=0)
    y = np.array([r["labels"]["columns"][2]["carry_out"] for r in recs])
    is_test = split(len(recs), 0.3, 0)
    acc = probing.fit_score(probing.operand_features(recs), y, is_test, probing.is_unbalanced(y), 500, 100.0)
    assert acc > 0.99  # columns 2 and 1 alone: 0.97 on these problems


def test_features_without_information_give_chance_and_zero_selectivity():
    _, _, types, y = _types_and_labels()
    X = RNG.normal(size=(len(y), 32))
    is_test = split(len(y), 0.3, 0)
    bal = probing.is_unbalanced(y)
    acc = probing.fit_score(X, y, is_test, bal, 200, 1.0)
    control = probing.fit_score(X, probing.control_labels(types, y, 0), is_test, bal, 200, 1.0)
    assert bal and acc == pytest.approx(0.5, abs=0.1) and control == pytest.approx(0.5, abs=0.1)
    assert abs(acc - control) < 0.12
    assert probing.majority_score(y, is_test, bal) == 0.5  # balanced accuracy of a constant guess


def test_input_identity_features_make_control_as_learnable_as_the_label():
    """Hewitt & Liang: a representation that is just the input type supports any function of
    the type, so carry (a function of (a, b)) and the control task score alike: selectivity ~ 0."""
    a, b, types, y = _types_and_labels(n=2000)
    X = np.zeros((len(y), 100))
    X[np.arange(len(y)), 10 * a + b] = 1.0
    is_test = split(len(y), 0.3, 0)
    bal = probing.is_unbalanced(y)
    acc = probing.fit_score(X, y, is_test, bal, 500, 10.0)
    control = probing.fit_score(X, probing.control_labels(types, y, 1), is_test, bal, 500, 10.0)
    assert acc > 0.97 and control > 0.9 and acc - control < 0.1


def test_control_labels_are_one_per_type_with_the_real_marginal():
    _, _, types, y = _types_and_labels(n=3000)
    c = probing.control_labels(types, y, 3)
    by_type = {}
    for t, v in zip(types, c):
        assert by_type.setdefault(t, v) == v
    assert abs(c.mean() - y.mean()) < 0.15 and set(c) <= set(y)


def test_score_balances_only_when_asked():
    y, pred = np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])
    assert probing.score(y, pred, balanced=False) == 0.75
    assert probing.score(y, pred, balanced=True) == 0.5


def _probe(model, recs, cfg, layers, seed=0):
    batch = batch_for(model, recs)
    _, cache = engine.run_with_cache(model, batch)
    _, twin = engine.run_with_cache(engine.untrained_twin(model, seed), batch)
    return probing.analyze_probing(batch, cache, twin, cfg, layers, seed)


def test_probes_on_a_random_model_report_every_baseline():
    recs = stratified_examples("add", 160, 3, 1, seed=0)
    cfg = probing.ProbingConfig(n_examples=150, hooks=["hook_resid_post"], labels=["carry_out", "a_digit", "operator"])
    f = _probe(random_model(seed=5), recs, cfg, [1])
    assert f.probes and {p.label for p in f.probes} == {"carry_out", "a_digit"}  # one operator only: skipped
    # column 3 (the leading carry digit) has constant carry_out and a_digit: no probe there
    assert {p.position for p in f.probes} == {f"predicts column {n}" for n in range(3)}
    for p in f.probes:
        assert p.hook == "blocks.1.hook_resid_post" and p.layer == 1
        assert 0 <= p.accuracy <= 1 and p.selectivity == pytest.approx(p.accuracy - p.control)
        assert p.n_train + p.n_test <= 150
        if p.label == "a_digit":  # a's digit is exactly one of the one-hot operand features
            assert p.operand_baseline == 1.0
    for label in ("carry_out", "a_digit"):  # one metric per label, at every column
        assert len({p.balanced for p in f.probes if p.label == label}) == 1


def test_blank_model_carries_no_information():
    """Constant activations (a zero model): every probe scores its majority baseline, selectivity ~ 0."""
    recs = stratified_examples("add", 120, 3, 1, seed=1)
    cfg = probing.ProbingConfig(n_examples=120, hooks=["hook_resid_post"], labels=["carry_out", "carry_in", "digit"])
    f = _probe(zero_model(), recs, cfg, [0, 1])
    assert f.probes
    for p in f.probes:
        assert p.accuracy == pytest.approx(p.majority, abs=0.05)
        assert abs(p.selectivity) < 0.2


def test_probe_across_layers_api():
    model = random_model(seed=6)
    recs = stratified_examples("add", 60, 3, 1, seed=4)
    texts = [r["prompt"] for r in recs]
    labels = [r["labels"]["n_carries"] > 0 for r in recs]
    res = probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts, labels, "any_carry")
    assert res["layer_labels"] == ["embed", "L0", "L1"]
    assert len(res["accuracy"]) == len(res["untrained"]) == 3
    assert res["n_train"] + res["n_test"] == 60 and 0 <= res["majority"] <= 1
    with pytest.raises(ReportgenError, match="labels"):
        probing.ProbingClassifier(model, TOKENIZER).probe_across_layers(texts, labels[:-1], "x")


def test_plot_probe_writes_a_figure(tmp_path):
    recs = stratified_examples("add", 60, 3, 1, seed=0)
    cfg = probing.ProbingConfig(n_examples=60, hooks=["hook_resid_pre", "hook_resid_post"], labels=["carry_out"])
    f = _probe(random_model(), recs, cfg, [0, 1])
    probing.plot_probe(f, "carry_out", tmp_path / "carry_out_results.png")
    assert (tmp_path / "carry_out_results.png").stat().st_size > 0


def test_config_is_validated():
    with pytest.raises(ReportgenError, match="test_fraction"):
        probing.ProbingConfig(test_fraction=1.5)
