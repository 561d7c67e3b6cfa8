"""Training: outputs and metadata, loss on answer tokens only, exact resume, interrupts, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import records
from reportgen.cli import main
from reportgen.configfile import to_dict
from reportgen.data.arithmetic import STRATA
from reportgen.data.dataset import DataSpec, load_dataset, write_dataset
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import Interrupted, ReportgenError
from reportgen.model.checkpoint import load_checkpoint, read_checkpoint_payload
from reportgen.model.transformer import ModelConfig, Transformer
from reportgen.train.config import DataConfig, OptimConfig, TrainConfig, load_train_config
from reportgen.train.splits import training_questions
from reportgen.train.trainer import Trainer, lr_at, tokenize_records

ROOT = Path(__file__).resolve().parents[1]
TWO_DIGIT_ADD = {"task": "add", "max_digits": 2, "min_digits": 1, "with_steps": False, "answer_order": "plain"}


def tiny_config(max_steps: int = 300, **model) -> TrainConfig:
    """1-2 digit addition, a 1-layer d_model 32 model: a few seconds for a few hundred steps."""
    shape = {**dict(n_layers=1, n_heads=2, d_model=32, d_mlp=64, n_ctx=16), **model}
    return TrainConfig(
        data=DataConfig(task="add", instances=2000, max_digits=2, min_digits=1),
        model=ModelConfig(**shape),
        optim=OptimConfig(lr=3e-3, batch_size=64, warmup_steps=20, max_steps=max_steps),
        eval_every=100, eval_instances=200, seed=0,
    )


def write_config(path: Path, cfg: TrainConfig) -> str:
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return str(path)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint_payload(a)["state_dict"], read_checkpoint_payload(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_times(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "elapsed_s"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 300-step run: (output dir, metrics)."""
    out = tmp_path_factory.mktemp("train") / "run"
    return out, Trainer(tiny_config(), out).run()


# ----------------------------------------------------------------------------- outputs


def test_training_writes_every_output(trained):
    out, metrics = trained
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "metrics.jsonl", "metrics.json", "training_curve.png"):
        assert (out / name).is_file(), name
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == 300


def test_loss_decreases(trained):
    out, _ = trained
    best = load_checkpoint(out / "checkpoint_best.pt")
    train = load_dataset(out / "data")[1]["train"][:512]
    tokens, mask = tokenize_records(train, Tokenizer())

    def answer_loss(model: Transformer) -> float:
        with torch.no_grad():
            logits = model(tokens)[:, :-1]
        return F.cross_entropy(logits[mask], tokens[:, 1:][mask]).item()

    torch.manual_seed(0)
    untrained = Transformer(best.model.cfg).eval()
    assert answer_loss(best.model) < 0.6 * answer_loss(untrained)
    history = best.meta["history"]["train_loss"]
    assert history[-1] < history[0]


def test_checkpoint_metadata(trained):
    out, metrics = trained
    ckpt = load_checkpoint(out / "checkpoint_best.pt")
    meta = ckpt.meta
    assert ckpt.task == TWO_DIGIT_ADD
    assert meta["train_config"] == to_dict(tiny_config())
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert meta["data_manifest_hash"] == manifest["content_hash"]
    assert set(meta["versions"]) >= {"python", "torch", "numpy"}
    assert meta["metrics"] == metrics
    for split in ("val", "test"):
        m = metrics[split]
        assert m["n"] == manifest["counts"][split] == sum(s["n"] for s in m["by_stratum"].values())
        assert set(m["by_stratum"]) <= set(STRATA)
        assert m["lo"] <= m["exact_match"] <= m["hi"]
    history = meta["history"]
    assert history["step"] == [100, 200, 300]
    assert metrics["best_step"] == meta["step"] == history["step"][history["val_exact_match"].index(max(history["val_exact_match"]))]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [dict(zip(history, vals)) for vals in zip(*history.values())]
    last = read_checkpoint_payload(out / "checkpoint_last.pt")
    assert last["step"] == 300 and "optimizer" in last and "rng_state" in last


def test_loss_mask_covers_exactly_the_target_and_eos():
    tok = Tokenizer()
    recs = records((7, "+", 5), (123, "+", 45), (99, "-", 9)) + records((57, "+", 68), with_steps=True)
    tokens, mask = tokenize_records(recs, tok)
    for i, r in enumerate(recs):
        on = mask[i].nonzero().flatten().tolist()
        assert on == list(range(len(r["prompt"]), len(r["prompt"]) + len(r["target"]) + 1))
        predicted = tokens[i, 1:][mask[i]]  # position j predicts token j + 1
        assert tok.decode(predicted, stop_at_eos=False) == r["target"]
        assert predicted[-1] == tok.eos_id


def test_balanced_lengths_give_every_operand_length_pair_equal_mass(tmp_path):
    cfg = dataclasses.replace(tiny_config(max_steps=1), data=DataConfig(task="add", instances=2000, max_digits=2,
                                                                       balance_lengths=True))
    trainer = Trainer(cfg, tmp_path / "run")
    train = trainer.data.splits["train"]
    pairs = [(len(str(r["a"])), len(str(r["b"]))) for r in train]
    assert pairs.count((1, 1)) < len(train) / 10  # only 100 one-digit questions exist
    mass = {}
    for pair, w in zip(pairs, trainer.data.length_weights.tolist()):
        mass[pair] = mass.get(pair, 0.0) + w
    assert sorted(mass) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(m == pytest.approx(1.0) for m in mass.values())
    drawn = [pairs[i] for i in torch.multinomial(trainer.data.length_weights, 4000, replacement=True).tolist()]
    assert drawn.count((1, 1)) == pytest.approx(1000, rel=0.15)


def test_learning_rate_warms_up_then_decays_to_min_lr():
    cfg = tiny_config(max_steps=300)
    o = cfg.optim
    assert lr_at(0, cfg) == pytest.approx(o.lr / o.warmup_steps)
    assert lr_at(o.warmup_steps - 1, cfg) == pytest.approx(o.lr)
    assert lr_at(o.warmup_steps, cfg) == pytest.approx(o.lr)
    decay = [lr_at(s, cfg) for s in range(o.warmup_steps, o.max_steps + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_at(o.max_steps, cfg) == pytest.approx(o.min_lr)


# ----------------------------------------------------------------------------- resume and interrupts


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(trained, tmp_path):
    """Ctrl-C arriving inside a step (between the batch draw and the weight update) stops after it."""
    reference, ref_metrics = trained
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(), out)
    update = trainer.opt.step

    def update_with_ctrl_c(*args, **kwargs):
        if trainer.step == 149:
            signal.raise_signal(signal.SIGINT)
        return update(*args, **kwargs)

    trainer.opt.step = update_with_ctrl_c
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="at step 150.*--resume"):
        trainer.run()
    assert signal.getsignal(signal.SIGINT) is handler
    assert read_checkpoint_payload(out / "checkpoint_last.pt")["step"] == 150

    metrics = Trainer(tiny_config(), out, resume=True).run()
    assert metrics["steps"] == 300
    assert same_weights(out / "checkpoint_last.pt", reference / "checkpoint_last.pt")
    assert same_weights(out / "checkpoint_best.pt", reference / "checkpoint_best.pt")
    assert without_times(load_checkpoint(out / "checkpoint_best.pt").meta["history"]) == without_times(
        load_checkpoint(reference / "checkpoint_best.pt").meta["history"])
    assert {k: metrics[k] for k in ("val", "test", "best_step")} == {k: ref_metrics[k] for k in ("val", "test", "best_step")}


def test_keyboard_interrupt_saves_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    step = Trainer._train_step

    def interrupted_at_5(self):
        if self.step == 5:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_at_5)
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    assert main(["train", "--config", config, "--output-dir", str(out)]) == 130  # as every command on Ctrl-C
    err = capsys.readouterr().err
    assert err.startswith("reportgen: interrupted: at step 5") and "--resume" in err and err.count("\n") == 1
    last = read_checkpoint_payload(out / "checkpoint_last.pt")
    assert last["step"] == 5 and not (out / "checkpoint_best.pt").exists()
    # A fresh run must not overwrite it.
    before = snapshot(out)
    assert main(["train", "--config", config, "--output-dir", str(out)]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert snapshot(out) == before


def test_cli_resume_with_a_larger_budget_continues_from_the_saved_step(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    assert main(["train", "--config", config, "--output-dir", str(out), "--resume", "--max-steps", "400"]) == 0
    assert "trained 400 steps" in capsys.readouterr().out
    history = load_checkpoint(out / "checkpoint_last.pt").meta["history"]
    assert history["step"] == [100, 200, 300, 400]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 400


def test_resume_with_nothing_to_resume(tmp_path, busy_output_dir, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    run_cli_error(["train", "--config", config, "--output-dir", str(busy_output_dir), "--resume"], capsys,
                  busy_output_dir, "nothing to resume")


def test_resume_refuses_a_different_model_shape(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    with pytest.raises(ReportgenError, match="model config differs"):
        Trainer(tiny_config(d_model=64), out, resume=True)


def test_resume_from_a_truncated_last_checkpoint_says_what_to_do(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    last = out / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ReportgenError, match="cannot resume: .*truncated.*without --resume"):
        Trainer(tiny_config(), out, resume=True)


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    (tmp_path / "afile.txt").write_text("mine")
    assert main(["train", "--config", config, "--output-dir", str(tmp_path / "afile.txt")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "afile.txt").read_text() == "mine"


def test_a_bad_set_override_is_blamed_on_the_override(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    assert main(["train", "--config", config, "--output-dir", str(tmp_path / "run"), "--set", "model.n_layers=abc"]) == 2
    err = capsys.readouterr().err
    assert "with model.n_layers=abc" in err and "n_layers" in err and err.count("\n") == 1, err


def test_existing_data_of_another_config_is_not_silently_reused(tmp_path):
    out = tmp_path / "run"
    write_dataset(DataSpec(task="add", instances=2000, max_digits=3), out / "data", "test")
    with pytest.raises(ReportgenError, match="different data config"):
        Trainer(tiny_config(), out)


def test_context_too_short_for_the_data(tmp_path):
    with pytest.raises(ReportgenError, match="raise model.n_ctx"):
        Trainer(tiny_config(n_ctx=8), tmp_path / "run")


# ----------------------------------------------------------------------------- command line


def test_train_on_a_reportgen_data_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = Path("D")  # relative, as a user types it
    assert main(["data", "--task", "add", "--instances", "2000", "--max-digits", "2", "--seed", "1",
                 "--out", str(data)]) == 0
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--config", config, "--output-dir", str(out), "--data", str(data),
                 "--max-steps", "100", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "trained 100 steps" in printed and "test exact match" in printed
    ckpt = load_checkpoint(out / "checkpoint_best.pt")
    manifest = json.loads((data / "manifest.json").read_text())
    assert ckpt.meta["data_manifest_hash"] == manifest["content_hash"]
    assert ckpt.task == TWO_DIGIT_ADD
    assert ckpt.meta["train_config"]["data"]["dir"] == str(data)
    monkeypatch.chdir(tmp_path / "run")  # its data set is found from anywhere, to leave out of test questions
    split = training_questions(ckpt.meta)
    assert split is not None and len(split["train"]) == 1600
    assert ckpt.meta["seed"] == 3 and ckpt.meta["metrics"]["steps"] == 100
    assert not (out / "data").exists()


BAD_CONFIGS = {
    "malformed-yaml": ("optim:\n  lr: [0.1, 2\n", "malformed YAML"),
    "unknown-key": ("optim:\n  learning_rate: 0.1\n", "learning_rate"),
    "unknown-section": ("optimiser:\n  lr: 0.1\n", "optimiser"),
    "bad-type": ("optim:\n  lr: fast\n", "lr must be float"),
    "bad-literal": ("data:\n  task: div\n", "task must be one of"),
    "zero-batch": ("optim:\n  batch_size: 0\n", "batch_size must be positive"),
    "zero-eval-every": ("eval_every: 0\n", "eval_every must be positive"),
    "bad-model": ("model:\n  d_model: 30\n  n_heads: 4\n", "divisible"),
    "not-a-mapping": ("- 1\n- 2\n", "mapping"),
}


@pytest.fixture
def busy_output_dir(tmp_path):
    """An output dir that already holds a user's file."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    return out


def run_cli_error(argv, capsys, out: Path, match: str) -> None:
    """The command exits 2 with one line on stderr naming the problem and leaves `out` untouched."""
    before = snapshot(out)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reportgen: error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert snapshot(out) == before


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_files(case, tmp_path, busy_output_dir, capsys):
    text, match = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    run_cli_error(["train", "--config", str(config), "--output-dir", str(busy_output_dir)], capsys,
                  busy_output_dir, match)


@pytest.mark.parametrize("extra, match", [
    (["--set", "optim.lr"], "section.key=value"),
    (["--set", "optim.lr=fast"], "lr must be float"),
    (["--set", "seed.x=1"], "not a section"),
    (["--max-steps", "-5"], "max_steps must be positive"),
    (["--data", "no/such/dir"], "not found"),
    (["--set", "data.instances=4"], "no val or test examples"),
])
def test_bad_command_line_values(extra, match, tmp_path, busy_output_dir, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    run_cli_error(["train", "--config", config, "--output-dir", str(busy_output_dir), *extra], capsys,
                  busy_output_dir, match)


def test_missing_config_file(busy_output_dir, capsys):
    run_cli_error(["train", "--config", "no/such.yaml", "--output-dir", str(busy_output_dir)], capsys,
                  busy_output_dir, "config file not found")


def test_output_dir_that_already_holds_a_model(trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    run_cli_error(["train", "--config", config, "--output-dir", str(out)], capsys, out, "--resume")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_a_gpu(tmp_path, busy_output_dir, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_config())
    run_cli_error(["train", "--config", config, "--output-dir", str(busy_output_dir), "--device", "cuda"],
                  capsys, busy_output_dir, "no CUDA GPU")


def test_cli_error_in_a_subprocess_has_no_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lr: [0.1, 2\n")
    proc = subprocess.run([sys.executable, "-m", "reportgen", "train", "--config", str(config),
                           "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("reportgen: error: malformed YAML")
    assert not (tmp_path / "run").exists()


def test_the_shipped_config_is_valid():
    cfg = load_train_config(str(ROOT / "configs" / "train.yaml"))
    assert isinstance(cfg, TrainConfig) and dataclasses.is_dataclass(cfg.model)
