"""Evaluation: batched greedy decoding against a one-at-a-time reference, scoring, `reportgen eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TOKENIZER, random_model, records, save_model
from reportgen.analysis import examples as examples_module
from reportgen.analysis.examples import generated_records, unseen_records
from reportgen.cli import main
from reportgen.data.arithmetic import STRATA
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import load_checkpoint
from reportgen.train import evaluate as evaluate_module
from reportgen.train.evaluate import evaluate, final_answer, greedy_decode, wilson_interval
from reportgen.train.splits import training_questions

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["1+2=", "99+1=", "123+4567=", "5=", "12*34=", "0+0=", "9999+9999=", "7-3=", "", "314+15="]


@torch.no_grad()
def reference_decode(model, prompt: str, max_new_tokens: int) -> str:
    """One prompt, one token per forward pass, no padding: slow but obviously right."""
    ids = TOKENIZER.encode(prompt)
    out = []
    while len(out) < max_new_tokens and len(ids) < model.cfg.n_ctx:
        nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(nxt)
        if nxt == TOKENIZER.eos_id:
            break
        out.append(nxt)
    return TOKENIZER.decode(out, keep_specials=True)


def eos_biased_model(seed: int, n_ctx: int):
    """A random model that ends some outputs early (EOS logit raised), so rows finish at different times."""
    model = random_model(seed=seed, n_ctx=n_ctx)
    with torch.no_grad():
        model.b_U[TOKENIZER.eos_id] += 0.04 * (seed % 4)
    return model


@pytest.mark.parametrize("n_ctx", [48, 16, 12])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_size", [3, 512])
def test_batched_greedy_decode_equals_one_at_a_time_decoding(seed, n_ctx, batch_size):
    model = eos_biased_model(seed, n_ctx)
    want = [reference_decode(model, p, 8) for p in PROMPTS]
    assert greedy_decode(model, TOKENIZER, PROMPTS, 8, batch_size=batch_size) == want


def test_decode_stops_at_the_token_budget_and_the_context():
    model = random_model(seed=1, n_ctx=12)
    with torch.no_grad():  # never stops by itself, and writes only visible characters
        model.b_U[[TOKENIZER.eos_id, TOKENIZER.bos_id, TOKENIZER.pad_id]] = -100.0
    out = greedy_decode(model, TOKENIZER, ["1+2=", "123+4567="], 5)
    assert [len(o) for o in out] == [5, 12 - len(TOKENIZER.encode("123+4567="))]
    assert greedy_decode(model, TOKENIZER, ["1+2="], 0) == [""]


def test_decode_rejects_a_prompt_longer_than_the_context():
    model = random_model(n_ctx=8)
    with pytest.raises(ReportgenError, match="longer than the model's context"):
        greedy_decode(model, TOKENIZER, ["1+2=", "1234+5678="], 4)


def test_evaluate_restores_the_training_mode():
    model = random_model().train()
    evaluate(model, TOKENIZER, records((1, "+", 2)))
    assert model.training


def fake_decoder(answers: dict[str, str]):
    """A stand-in for greedy_decode that writes the given text after each prompt."""
    return lambda model, tokenizer, prompts, max_new, batch_size=512: [answers[p] for p in prompts]


def test_scoring_with_a_known_decoder(monkeypatch):
    recs = stratified_examples("add", 40, 3, seed=5)
    right = {r["prompt"] for i, r in enumerate(recs) if i % 3 == 0}
    answers = {r["prompt"]: r["target"] if r["prompt"] in right else r["target"][:-1] + "x" for r in recs}
    monkeypatch.setattr(evaluate_module, "greedy_decode", fake_decoder(answers))
    res = evaluate(random_model(), TOKENIZER, recs)
    assert res.n == 40 and res.exact_match == len(right) / 40
    expected_digits = sum(1.0 if r["prompt"] in right else (len(r["target"]) - 1) / len(r["target"]) for r in recs) / 40
    assert res.digit_accuracy == pytest.approx(expected_digits)
    for stratum, s in res.by_stratum.items():
        group = [r for r in recs if r["labels"]["stratum"] == stratum]
        assert s["n"] == len(group)
        assert s["exact_match"] == sum(r["prompt"] in right for r in group) / len(group)
    assert set(res.by_stratum) == set(STRATA)


def test_steps_are_scored_on_the_final_answer(monkeypatch):
    recs = records((57, "+", 68), (5, "+", 4), with_steps=True)
    answers = {recs[0]["prompt"]: "wrong;steps|125", recs[1]["prompt"]: recs[1]["target"] + "0"}
    monkeypatch.setattr(evaluate_module, "greedy_decode", fake_decoder(answers))
    res = evaluate(random_model(), TOKENIZER, recs)
    assert res.exact_match == 0.5
    assert final_answer("1+2=3c0|125") == "125" and final_answer("125") == "125"


@pytest.mark.parametrize("seed", [0, 1])
def test_real_evaluation_counts_are_consistent(seed):
    recs = stratified_examples("add", 60, 2, seed=seed)
    model = random_model(seed=seed)
    with torch.no_grad():  # bias the model toward digits and EOS so some answers come out right
        model.b_U[TOKENIZER.digit_ids[1]] += 1.0
    res = evaluate(model, TOKENIZER, recs, batch_size=7)
    preds = greedy_decode(model, TOKENIZER, [r["prompt"] for r in recs], max(len(r["target"]) for r in recs) + 1)
    hits = [final_answer(p) == r["target"] for p, r in zip(preds, recs)]
    assert res.n == 60 and res.exact_match == sum(hits) / 60
    assert sum(s["n"] for s in res.by_stratum.values()) == res.n
    assert sum(s["exact_match"] * s["n"] for s in res.by_stratum.values()) == pytest.approx(sum(hits))
    for s in [res.to_dict(), *res.by_stratum.values()]:
        assert 0.0 <= s["lo"] <= s["exact_match"] <= s["hi"] <= 1.0
    assert 0.0 <= res.digit_accuracy <= 1.0


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (8, 10), (1, 1), (0, 1), (37, 200), (199, 200)])
def test_wilson_interval(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    mirror_lo, mirror_hi = wilson_interval(n - k, n)
    assert lo == pytest.approx(1 - mirror_hi) and hi == pytest.approx(1 - mirror_lo)
    if k == 0:
        assert lo == 0.0 and hi > 0.0
    if k == n:
        assert hi == 1.0 and lo < 1.0


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(8, 10)  # textbook 95% Wilson interval for 8/10
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)


# ----------------------------------------------------------------------------- reportgen eval


def test_eval_prints_a_json_object_on_the_last_line(checkpoint_path, capsys):
    assert main(["eval", "--checkpoint", checkpoint_path, "--instances", "64", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["n"] == 64 and 0.0 <= result["exact_match"] <= 1.0
    assert sum(s["n"] for s in result["by_stratum"].values()) == 64
    assert set(result["by_stratum"]) == set(STRATA)
    assert result["task"]["task"] == "add" and result["checkpoint"] == checkpoint_path
    assert len(result["sha256"]) == 64
    assert "exact match" in "\n".join(lines[:-1])


def test_eval_is_reproducible_for_a_seed(checkpoint_path, capsys):
    runs = []
    for _ in range(2):
        main(["eval", "--checkpoint", checkpoint_path, "--instances", "16", "--seed", "3", "--json"])
        runs.append(capsys.readouterr().out.strip().splitlines()[-1])
    assert runs[0] == runs[1]


def assert_eval_error(argv, capsys, match):
    capsys.readouterr()
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reportgen: error: ") and err.count("\n") == 1, err
    assert match in err, err


def test_eval_missing_checkpoint(tmp_path, capsys):
    assert_eval_error(["--checkpoint", str(tmp_path / "none.pt")], capsys, "not found")


def test_eval_foreign_checkpoint(tmp_path, capsys):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    assert_eval_error(["--checkpoint", str(path)], capsys, "not a reportgen checkpoint")


def test_eval_bad_instances(checkpoint_path, capsys):
    assert_eval_error(["--checkpoint", checkpoint_path, "--instances", "0"], capsys, "--instances")
    assert_eval_error(["--checkpoint", checkpoint_path, "--instances", "100000000"], capsys, "between 1 and 100000")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_cuda_without_a_gpu(checkpoint_path, capsys):
    assert_eval_error(["--checkpoint", checkpoint_path, "--device", "cuda"], capsys, "no CUDA GPU")


def test_eval_with_steps_checkpoint(tmp_path, capsys):
    task = {"task": "add", "max_digits": 2, "min_digits": 1, "with_steps": True, "answer_order": "plain"}
    path = save_model(tmp_path / "steps.pt", random_model(seed=2, n_ctx=48), task)
    assert main(["eval", "--checkpoint", path, "--instances", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 12 and result["task"]["with_steps"] is True


def test_eval_subprocess_missing_checkpoint_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reportgen", "eval", "--checkpoint", str(tmp_path / "x.pt")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("reportgen: error: checkpoint not found")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["add3_rev", "add3_steps"])
def test_shipped_demo_checkpoints_reach_99_percent_on_fresh_stratified_questions(run, capsys):
    """The demo models the README builds its report from: at least 99% exact match overall and
    in every stratum (cascades included) on 800 freshly generated stratified questions."""
    assert main(["eval", "--checkpoint", str(ROOT / "runs" / run / "checkpoint_best.pt"), "--instances", "800",
                 "--seed", "7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["unseen"] is True  # none of the questions is in the data the model was trained on
    assert result["n"] == 800 and result["exact_match"] >= 0.99
    assert set(result["by_stratum"]) == set(STRATA)
    assert all(s["exact_match"] >= 0.99 for s in result["by_stratum"].values()), result["by_stratum"]


# ----------------------------------------------------------------------------- unseen test questions
def test_test_questions_leave_out_the_models_training_data():
    """The demo checkpoint's data set is regenerated from its training config (its hash checked)
    and none of its train, val or test questions is used to test it."""
    ckpt = load_checkpoint(ROOT / "runs" / "add3_rev" / "checkpoint_best.pt")
    splits = training_questions(ckpt.meta)
    seen = splits["train"] | splits["val"] | splits["test"]
    assert len(seen) == ckpt.meta["train_config"]["data"]["instances"]
    recs, unseen = unseen_records(ckpt, 512, 1234)
    assert unseen and len(recs) == 512 and not {(r["a"], r["op"], r["b"]) for r in recs} & seen
    assert len(seen & {(r["a"], r["op"], r["b"]) for r in generated_records(ckpt, 512, 1234)}) > 50  # what it was


def test_training_data_that_cannot_be_recovered_is_said(checkpoint_path, capsys):
    """A checkpoint without its training config (or whose data hash no longer matches) is tested
    on generated questions, and eval says they may include training questions."""
    ckpt = load_checkpoint(checkpoint_path)
    assert training_questions(ckpt.meta) is None
    assert training_questions({**ckpt.meta, "train_config": load_checkpoint(
        ROOT / "runs" / "add3_rev" / "checkpoint_best.pt").meta["train_config"], "data_manifest_hash": "0" * 64}) is None
    assert main(["eval", "--checkpoint", checkpoint_path, "--instances", "16", "--json"]) == 0
    out = capsys.readouterr().out
    assert "may be training questions" in out and json.loads(out.strip().splitlines()[-1])["unseen"] is False


def test_a_task_the_data_set_nearly_exhausts(tmp_path, monkeypatch):
    """One-digit addition has 100 questions. Trained on 80, with 10 each for val and test: there
    are not 64 questions outside all three splits, so the test set is the 20 outside the training
    split; trained on all 100, it is 64 generated ones, which cannot be unseen."""
    task = {"task": "add", "max_digits": 1, "min_digits": 1, "with_steps": False, "answer_order": "plain"}
    ckpt = load_checkpoint(save_model(tmp_path / "one.pt", random_model(), task))
    every = [(a, "+", b) for a in range(10) for b in range(10)]
    split = {"train": set(every[:80]), "val": set(every[80:90]), "test": set(every[90:])}
    monkeypatch.setattr(examples_module, "training_questions", lambda meta: split)
    recs, unseen = unseen_records(ckpt, 64, 0)
    assert unseen and sorted((r["a"], r["op"], r["b"]) for r in recs) == every[80:]
    split["train"] = set(every[:70])  # now every[70:80] lie outside every split
    recs, unseen = unseen_records(ckpt, 5, 0)
    assert unseen and len(recs) == 5 and {(r["a"], r["op"], r["b"]) for r in recs} <= set(every[70:80])
    split["train"] = set(every[:80])
    monkeypatch.setattr(examples_module, "training_questions", lambda meta: {"train": set(every), "val": set(),
                                                                             "test": set()})
    recs, unseen = unseen_records(ckpt, 64, 0)
    assert not unseen and len(recs) == 64


def test_a_huge_training_set_is_not_regenerated(monkeypatch):
    """A checkpoint's config decides the size; past MAX_REGENERATED the data set is not rebuilt."""
    from reportgen.train import splits

    meta = load_checkpoint(ROOT / "runs" / "add3_rev" / "checkpoint_best.pt").meta
    monkeypatch.setattr(splits, "generate", lambda spec: pytest.fail("regenerated"))
    huge = {**meta["train_config"], "data": {**meta["train_config"]["data"], "instances": splits.MAX_REGENERATED + 1}}
    assert training_questions({**meta, "train_config": huge}) is None


def test_an_answer_with_padding_or_bos_inside_is_not_a_clean_answer(monkeypatch):
    """'1 3 <pad> <bos> 2' decodes to '13<pad><bos>2' in evaluation, never to the right '132'."""
    ids = [TOKENIZER.vocab.index(t) for t in ("1", "3", "<pad>", "<bos>", "2", "<eos>", "7")]
    assert TOKENIZER.decode(ids) == "132"  # display text of an input
    assert TOKENIZER.decode(ids, keep_specials=True) == "13<pad><bos>2"
    model = random_model(seed=3)
    with torch.no_grad():  # writes only <pad>: the decoded answer shows it (it was an empty string)
        model.b_U[:] = -100.0
        model.b_U[TOKENIZER.pad_id] = 100.0
    out = greedy_decode(model, TOKENIZER, ["1+2="], 2)
    assert out == ["<pad><pad>"]
    assert evaluate(model, TOKENIZER, records((1, "+", 2))).exact_match == 0.0
