"""Key findings: sentences stated only from tests that passed their null, with their numbers,
what was tested and not found, and the differences between models that their intervals support."""

from __future__ import annotations

import dataclasses

from render_fixtures import make_model, make_report

from reportgen.findings import Estimate
from reportgen.results.claims import comparison_claims, model_claims


def texts(claims) -> str:
    return "\n".join(c.text for c in claims)


def test_a_confirmed_carry_head_is_stated_with_its_numbers_and_null():
    m = make_model("m", "model m", 2)
    claims = model_claims(m)
    heads = [c for c in claims.found if c.section == "circuits" and "L0H1" in c.text]
    assert len(heads) == 1
    r = next(r for r in m.findings.circuits.recoveries if r.confirmed)
    assert f"{r.recovery.mean:.2f} [{r.recovery.lo:.2f}, {r.recovery.hi:.2f}]" in heads[0].text
    assert "into answer column 1" in heads[0].text and "their prediction bound 0.11" in heads[0].text
    assert heads[0].null.startswith("the same test confirmed 0, 0, 0 on 3 untrained twins")
    assert heads[0].item == "head-recovery"
    # column 2 has no confirmed head: said among what was tested and not found
    assert "No head was confirmed to carry the carry into answer column 2" in texts(claims.not_found)
    assert "their prediction bound 0.11 at the test's Bonferroni level" in texts(claims.not_found)


def test_a_test_that_fails_its_null_states_none_of_its_findings():
    m = make_model("m", "model m", 2)
    claims = model_claims(m)
    # the fixture's neuron test confirms on two of three twins: broken
    assert "neuron" not in texts(claims.found).lower()
    assert "The neuron test confirms components on untrained twins" in texts(claims.not_found)
    circ = m.findings.circuits
    heads_broken = dataclasses.replace(circ, nulls=[dataclasses.replace(n, twin_confirmed=[1, 1, 0], passed=False)
                                                    if n.test == "carry_head" else n for n in circ.nulls])
    m2 = dataclasses.replace(m, findings=dataclasses.replace(m.findings, circuits=heads_broken))
    assert not [c for c in model_claims(m2).found if c.section == "circuits"]


def test_accuracy_at_ceiling_points_to_the_margin():
    m = make_model("m", "model m", 2)
    top = Estimate(1.0, 0.993, 1.0, 512)
    acc = dataclasses.replace(m.accuracy, exact_match=top, by_stratum={s: top for s in m.accuracy.by_stratum})
    claims = model_claims(dataclasses.replace(m, accuracy=acc))
    assert "answers 100.0% [99.3, 100.0] of 1000 held-out questions" in claims.found[0].text
    ceiling = [c for c in claims.found if "at ceiling" in c.text]
    margin = m.findings.interventions.clean.margin
    assert ceiling and f"{margin.mean:.2f} [{margin.lo:.2f}, {margin.hi:.2f}]" in ceiling[0].text


def test_a_scratchpad_digit_is_readable_only_beyond_always_guessing_its_most_common_value():
    m = make_model("m", "model m", 2)
    lens = m.findings.logit_lens
    layers = len(lens.prob_correct)
    series = {"carry_out": [Estimate(0.56, 0.54, 0.59, 300)] * layers,  # a carry: 0 or 1, mostly 0
              "sum_digit": [Estimate(0.2, 0.18, 0.22, 300)] + [Estimate(0.97, 0.96, 0.98, 300)] * (layers - 1)}
    steps = dataclasses.replace(lens, prob_by_role=series, majority_by_role={"carry_out": 0.56, "sum_digit": 0.13})
    claims = model_claims(dataclasses.replace(m, findings=dataclasses.replace(m.findings, logit_lens=steps)))
    assert "the sum digit is readable after block 0 (0.97 [0.96, 0.98], against 0.13" in texts(claims.found)
    assert "carry out" not in texts(claims.found)
    assert "never reads the carry out better than always guessing its most common digit (0.56)" in \
        texts(claims.not_found)


def test_the_summary_is_the_first_findings():
    claims = model_claims(make_model("m", "model m", 2))
    assert claims.summary.startswith(claims.found[0].text) and claims.found[1].text in claims.summary


def test_differences_are_stated_only_where_intervals_do_not_overlap():
    report = make_report(2)
    a, b = report.models
    high, low = Estimate(0.99, 0.98, 1.0, 500), Estimate(0.80, 0.76, 0.84, 500)
    a2 = dataclasses.replace(a, accuracy=dataclasses.replace(a.accuracy, exact_match=high))
    b2 = dataclasses.replace(b, accuracy=dataclasses.replace(b.accuracy, exact_match=low))
    found = texts(comparison_claims(dataclasses.replace(report, models=[a2, b2])))
    assert f"{a2.label} has a higher exact match than {b2.label}: 0.99 [0.98, 1.00] against 0.80 [0.76, 0.84]" in found
    close = dataclasses.replace(b2, accuracy=dataclasses.replace(b.accuracy, exact_match=Estimate(0.985, 0.97, 0.995, 500)))
    assert "exact match" not in texts(comparison_claims(dataclasses.replace(report, models=[a2, close])))
