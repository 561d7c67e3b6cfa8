"""Circuit discovery: planted mechanisms are found, an untrained model yields no carry head, and
the statistics (AUROC, Benjamini-Hochberg, permutation null) give their known answers."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import planted_carry
from conftest import TOKENIZER, batch_for, operator_head_model, random_model
from reportgen.analysis import circuits, engine
from reportgen.analysis.config import CircuitConfig
from reportgen.analysis.circuits import (
    CircuitDiscovery, auroc_test, benjamini_hochberg, run_circuits,
)
from reportgen.configfile import from_dict
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError
from test_patching import strong_model


def circuits_of(model, recs, seed=0, n_twins=3, **cfg):
    batch = batch_for(model, recs)
    _, cache = engine.run_with_cache(model, batch)
    twins = engine.untrained_twins(model, n_twins, seed)
    twin_caches = [engine.run_with_cache(t, batch)[1] for t in twins]
    config = CircuitConfig(**cfg)
    screens = [circuits.neuron_screen(c, batch, model.cfg.n_layers, config, seed) for c in [cache, *twin_caches]]
    return run_circuits(model, TOKENIZER, batch, cache, None, twins, twin_caches, config, seed, screens=screens)


def confirmed(f, kind):
    return sorted((c.layer, c.index, c.column, c.target) for c in f.components if c.kind == kind and c.confirmed)


def test_planted_carry_head_is_found_at_its_columns_and_the_column_head_is_not():
    """Head 1 reads column n-1 (the carry source), head 0 column n (needed for every digit)."""
    f = circuits_of(planted_carry.carry_circuit_model(), planted_carry.problems(200))
    assert confirmed(f, "carry_head") == [(0, 1, 1, "answer"), (0, 1, 2, "answer")]
    rows = {(r.component, r.column): r for r in f.recoveries if r.component.startswith("L0H")}
    for n in (1, 2):
        carry, column = rows["L0H1", n], rows["L0H0", n]
        assert carry.recovery.mean == pytest.approx(1.0, abs=0.01) and abs(carry.control.mean) < 0.01
        assert abs(column.recovery.mean) < 0.01 and column.control.mean > 0.05 and not column.confirmed
        assert carry.damage.mean == pytest.approx(1.0, abs=0.01)  # noising destroys it as well
    (null,) = [n for n in f.nulls if n.test == "carry_head"]
    assert null.confirmed == 2 and null.twin_confirmed == [0, 0, 0] and null.passed


def test_planted_carry_neuron_is_confirmed_and_its_distractors_are_not():
    """Distractor neurons vary with the operand digits and correlate with the carry (so the
    correlational screen lists them) but write nothing: the causal test must reject them."""
    f = circuits_of(planted_carry.carry_circuit_model(), planted_carry.problems(200))
    neurons = {c.index: c for c in f.components if c.kind == "neuron"}
    distractors = set(range(1, 1 + planted_carry.DISTRACTORS))
    assert 0 in neurons and neurons[0].confirmed and neurons[0].causal_effect > 0.9
    assert distractors & set(neurons), "the screen should list distractors as correlational candidates"
    assert not any(neurons[i].confirmed for i in distractors & set(neurons))
    assert all(neurons[i].causal_effect == 0 for i in distractors & set(neurons))
    assert confirmed(f, "neuron") == [(0, 0, 1, "answer"), (0, 0, 2, "answer")] or confirmed(f, "neuron")[0][:2] == (0, 0)
    (null,) = [n for n in f.nulls if n.test == "neuron"]
    assert null.twin_confirmed == [0, 0, 0] and null.passed


def test_position_heads_and_their_null_checks_come_from_the_attention_test():
    """Both heads of the planted carry circuit keep one key group at every column (column n, and
    column n - 1): position heads, tested by the attention test with its two null checks."""
    f = circuits_of(planted_carry.carry_circuit_model(), planted_carry.problems(120))
    heads = {(c.layer, c.index): c for c in f.components if c.kind == "position_head"}
    assert set(heads) == {(0, 0), (0, 1)} and all(c.confirmed and c.score > 0.99 for c in heads.values())
    assert "n at columns 0, 1, 2" in heads[0, 0].note and "n-1 at columns 1, 2, 3" in heads[0, 1].note
    checks = {c.test: c for c in f.nulls}
    assert checks["position_head"].confirmed == 2 and checks["delimiter_head"].confirmed == 0
    assert all(checks[t].twin_confirmed == [0, 0, 0] for t in ("position_head", "delimiter_head"))


@pytest.mark.parametrize("with_steps", [False, True])
def test_untrained_models_confirm_no_more_than_the_error_rate(with_steps):
    """The null itself: untrained models, each judged against its own three twins. At a 5%
    family-wise error rate, two or more of six confirming anything has probability 3%."""
    recs = stratified_examples("add", 120, 2, 1, 0, with_steps, "plain")
    hits = 0
    for seed in range(6):
        f = circuits_of(random_model(seed, n_ctx=48), recs, seed=seed + 10, n_pairs=64)
        hits += bool(confirmed(f, "carry_head") or confirmed(f, "neuron"))
        assert all(n.twin_tested and len(n.twin_confirmed) == 3 for n in f.nulls)
    assert hits <= 1


def test_the_twin_comparison_is_what_keeps_untrained_scratchpad_heads_out(monkeypatch):
    """Without conditions (c) and (d), untrained heads that move the written carry at scratchpad
    targets (which have no sum-flip control) are confirmed: the twin comparison bites. (Neurons,
    judged with reference None, keep their random-neuron threshold.)"""
    recs = stratified_examples("add", 150, 3, 1, 0, True, "plain")
    model = random_model(0, n_heads=4, d_model=64, d_mlp=128, n_ctx=64)
    real_judge = circuits.judge
    monkeypatch.setattr(circuits, "judge", lambda rec, control, reference, threshold, *a:
                        real_judge(rec, control, None, None if reference is not None else threshold, *a))
    f = circuits_of(model, recs, seed=10, n_pairs=64)
    assert confirmed(f, "carry_head")


def test_prediction_bound_covers_one_more_untrained_head_at_its_level():
    """Known answer: for normal recoveries, a new head exceeds the bound of 12 others (3 twins x 4
    heads) with probability alpha, whatever their mean and spread."""
    rng = np.random.default_rng(0)
    trials, alpha = 20000, 0.05
    heads = rng.normal(0.1, 0.07, (trials, 13))
    layer_of = np.zeros(4, dtype=int)
    exceeded = 0
    for row in heads:
        others = [circuits.Pooled(row[4 * k:4 * k + 4], np.zeros((1, 4))) for k in range(3)]
        exceeded += row[12] > circuits.prediction_bound(others, layer_of, alpha)[0]
    assert exceeded / trials == pytest.approx(alpha, abs=0.006)


def test_a_head_above_every_twin_head_but_within_their_spread_is_not_confirmed():
    """The heavy tail of untrained heads: one at 0.42 beats the largest of 12 twin heads (0.30)
    on every bootstrap resample, yet twins' heads spread so widely that an untrained head reaches
    0.42 often enough; without the prediction bound it would be confirmed."""
    rng = np.random.default_rng(1)
    twin_points = np.array([[0.02, 0.30, -0.10, 0.05], [0.25, 0.0, 0.12, -0.05], [0.28, -0.12, 0.1, 0.03]])
    layer_of = np.zeros(4, dtype=int)
    others = [circuits.Pooled(p, p + rng.normal(0, 0.01, (500, 4))) for p in twin_points]
    subject = circuits.Pooled(np.array([0.42, 0.0, 0.0, 0.0]), np.array([0.42, 0, 0, 0]) + rng.normal(0, 0.02, (500, 4)))
    reference, bound = circuits.layer_max(others, layer_of), circuits.prediction_bound(others, layer_of, 0.01)
    assert 0.42 < bound[0] < 0.6
    assert not circuits.judge(subject, None, reference, bound, 0.1, 0.01).confirmed.any()
    assert circuits.judge(subject, None, reference, None, 0.1, 0.01).confirmed.tolist() == [True, False, False, False]
    strong = circuits.Pooled(np.array([0.95, 0, 0, 0]), np.array([0.95, 0, 0, 0]) + rng.normal(0, 0.02, (500, 4)))
    assert circuits.judge(strong, None, reference, bound, 0.1, 0.01).confirmed.tolist() == [True, False, False, False]


def test_operator_head_is_confirmed_only_where_the_operator_flows():
    model = strong_model(0)
    with torch.no_grad():  # only head L0H1 can move information between positions
        for l in range(2):
            for h in range(2):
                if (l, h) != (0, 1):
                    model.blocks[l].attn.W_O[h] = 0.0
            model.blocks[l].mlp.W_out.zero_()
            model.blocks[l].mlp.b_out.zero_()
    f = circuits_of(model, stratified_examples("addsub", 120, 3, 1, 0, False, "plain"), operator_pairs=64)
    ops = [r for r in f.recoveries if r.kind == "operator_flip"]
    assert {r.column for r in ops if r.confirmed and (r.layer, r.index) == (0, 1)} >= {0, 1}
    assert all(r.recovery.mean == 0 and not r.confirmed for r in ops if (r.layer, r.index) != (0, 1))
    assert [n.test for n in f.nulls][:2] == ["carry_head", "operator_head"]


def test_auroc_matches_sklearn_and_the_null_is_calibrated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 50))
    y = rng.random(300) < 0.4
    x[:, 0] += 1.5 * y
    groups = rng.integers(0, 3, 300)
    auroc, p, null = auroc_test(x, y, groups, 100, 0)
    assert auroc == pytest.approx([roc_auc_score(y, x[:, j]) for j in range(50)])
    assert p[0] < 1e-10 and np.mean(p[1:] < 0.05) < 0.15 and np.all(np.abs(null - 0.5) < 0.03)
    for got, want in zip(auroc_test(x.astype(np.float32), y, groups, 100, 0, chunk=7), (auroc, p, null)):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)  # ranked 7 features at a time, from float32


def test_within_column_null_absorbs_a_column_confound():
    """A neuron that only tracks the column looks selective to a plain AUROC, not to the null."""
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1], 200)
    y = np.concatenate([rng.random(200) < 0.2, rng.random(200) < 0.8])
    x = (groups + 0.01 * rng.normal(size=400))[:, None]
    auroc, p, null = auroc_test(x, y, groups, 200, 0)
    assert auroc[0] > 0.75 and p[0] > 0.01 and null[0] > 0.7


def test_benjamini_hochberg():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 8
    assert benjamini_hochberg(np.array([0.01, 0.02, 0.03]), 0.05).tolist() == [True, True, True]
    assert not benjamini_hochberg(np.array([0.5, 0.9]), 0.05).any()
    rng = np.random.default_rng(0)  # the step-up rule written out, on p-values with ties and strong signals
    for _ in range(200):
        p = np.round(np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=rng.integers(0, 10))]), 3)
        order = np.argsort(p, kind="stable")
        below = np.nonzero(p[order] <= 0.05 * np.arange(1, p.size + 1) / p.size)[0]
        expected = np.zeros(p.size, dtype=bool)
        expected[order[: below[-1] + 1] if below.size else []] = True
        assert benjamini_hochberg(p, 0.05).tolist() == expected.tolist()


def test_circuit_discovery_api():
    model = planted_carry.carry_circuit_model()
    task = {"task": "add", "max_digits": 3, "min_digits": 3, "with_steps": False, "answer_order": "reversed"}
    cd = CircuitDiscovery(model, TOKENIZER, task=task)
    texts = [f"{r['a']} + {r['b']}" for r in planted_carry.problems(60)]
    heads = cd.find_carry_detection_heads([(t, [0, 1]) for t in texts])
    assert heads[0]["head"] == 1 and heads[0]["confirmed"] and heads[0]["column"] in (1, 2)
    assert heads == cd.find_carry_detection_heads(texts)
    with pytest.raises(ReportgenError, match="too few carry-flip and sum-flip pairs"):
        cd.find_carry_detection_heads(["100 + 200"])

    op_model = operator_head_model(layer=0, head=1)
    task = {"task": "addsub", "max_digits": 3, "min_digits": 1, "with_steps": False, "answer_order": "plain"}
    out = CircuitDiscovery(op_model, TOKENIZER, task=task).find_operator_attention_heads(
        ["12 + 34", "56 - 7", "90 + 9", "34 - 12"], ["+", "-"])
    assert (out[0]["layer"], out[0]["head"]) == (0, 1)
    assert min(out[0]["operator_attention"].values()) > 0.99
    assert out[0]["operator_flip_recovery"] is None or np.isfinite(out[0]["operator_flip_recovery"])


def test_config_loads_from_yaml_dict():
    cfg = from_dict(CircuitConfig, {"min_recovery": 0.2, "fdr": 0.1}, "test")
    assert cfg.min_recovery == 0.2 and cfg.fdr == 0.1
    with pytest.raises(ReportgenError):
        from_dict(CircuitConfig, {"method": "zero"}, "test")
    with pytest.raises(ReportgenError, match="n_pairs must be >= 1"):
        CircuitConfig(n_pairs=0)


@pytest.mark.parametrize("grouped", [False, True])
def test_batched_neuron_patching_equals_each_neuron_patched_alone_in_a_whole_forward_pass(grouped, monkeypatch):
    """The neuron test's chunked, resumed patching of many neurons per pass gives what patching
    one neuron at every position of a whole forward pass gives, pair by pair (grouped: each
    group run from its pairs' first differing token, after the cached keys and values)."""
    from test_patching import add_records
    from reportgen.analysis import patching
    from reportgen.analysis.patching import PairRun, logit_diff

    if grouped:
        monkeypatch.setattr(patching, "GROUP_ROWS", 1)

    model = strong_model(2)
    ps = circuits.pair_set(add_records(120), "carry_flip", "answer", 40, 0, TOKENIZER, model.device)
    pb = ps.batch
    neurons = {0: np.array([1, 5, 9]), 1: np.array([0, 3])}
    pairs = np.array([0, 2, 3, 7, 11])
    run = PairRun(model, pb, ("neuron",), 0.0, max_rows=4)  # several chunks per layer
    e = circuits.neuron_effects(run, "denoise", neurons, pairs)
    args = (pb.pred_pos, pb.correct, pb.counterfactual)
    with torch.no_grad():
        _, clean = model.run_with_cache(pb.clean)
        ld_clean, ld_corrupt = logit_diff(model(pb.clean), *args), logit_diff(model(pb.corrupt), *args)
        expected = np.zeros((len(pairs), 5))
        for c, (l, i) in enumerate((l, int(i)) for l, idx in neurons.items() for i in idx):
            name = f"blocks.{l}.mlp.hook_post"

            def patch(act, _name, i=i, name=name):
                act = act.clone()
                act[..., i] = clean[name][..., i]
                return act

            ld = logit_diff(model(pb.corrupt, hooks={name: patch}), *args)
            expected[:, c] = ((ld - ld_corrupt) / (ld_clean - ld_corrupt))[pairs].numpy()
    assert np.abs(expected).max() > 0.01  # the neurons move the logits
    np.testing.assert_allclose(e.ratio, expected, atol=1e-4)
    np.testing.assert_allclose(e.weight, (ld_clean - ld_corrupt).abs()[pairs].numpy(), rtol=1e-5)


@pytest.mark.slow
def test_add3_steps_carry_is_written_and_read_by_the_heads_the_report_names():
    """The demo's known answer, with the default untrained twins: L0H1 writes the carry into column
    1 at the carry-out token of the step before, L0H0 copies it into the carry-in of column 1 (its
    ablation breaks free generation, test_interventions), and no twin confirms a carry head. With
    3 twins the prediction bound was too wide for the reader (0.97 against its 0.87)."""
    from pathlib import Path

    from reportgen.analysis.config import AnalysisConfig
    from reportgen.analysis.plan import prepare
    from reportgen.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(Path(__file__).resolve().parents[1] / "runs/add3_steps/checkpoint_best.pt")
    cfg = AnalysisConfig()
    records = prepare(ckpt, cfg, enabled=["circuits"]).batch.records
    twins = engine.untrained_twins(ckpt.model, cfg.untrained_twins, cfg.seed)
    rows, _, null = circuits.patched_head_tests(ckpt.model, twins, TOKENIZER, records, "carry_flip",
                                                cfg.circuits.n_pairs, cfg.circuits, cfg.seed)
    found = {(r.layer, r.index, r.column, r.target) for r in rows if r.confirmed}
    assert {(0, 1, 1, "carry_out"), (0, 0, 1, "carry_in")} <= found
    assert null.passed and null.twin_confirmed == [0] * cfg.untrained_twins


@pytest.mark.slow
def test_the_null_rate_benchmark_runs_every_confirming_circuits_test_on_an_untrained_model(monkeypatch):
    """benchmarks/null_rates.py (where the README's error rates come from) wires the cached runs,
    the neuron screens and run_circuits as run_plan does; it once called them with a config missing."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("null_rates", root / "benchmarks" / "null_rates.py")
    null_rates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(null_rates)
    monkeypatch.chdir(root)
    counts, _ = null_rates.rates("add3_rev", 1, 2, ["circuits"])
    assert set(counts) >= {"carry_head", "position_head", "delimiter_head", "neuron"}
    assert all(len(v) == 1 for v in counts.values())
