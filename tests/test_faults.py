"""Faults done for real, and the hostile inputs of issue #11 (its table's rows are named below).

kill -9 at random and at chosen instants (training, `reportgen data`, a render's figure workers,
the site swap), a full disk, a read-only directory, NaN weights, a results.json nested 100,000
deep, a YAML alias bomb, standard output on /dev/full. Each test asserts a one-line error and no
traceback, nothing of the user's lost or half-written, and that the next run recovers.

Full disk: a small tmpfs mounted for the test where the process may mount (root with
CAP_SYS_ADMIN, as in CI containers); otherwise the file size limit (RLIMIT_FSIZE), with which the
kernel fails a write past the limit (EFBIG) the way a full disk fails it (ENOSPC): the same code
path, since reportgen handles every OSError of a write alike. Read-only: a tmpfs mounted
read-only; without mount rights, a directory without write permission (root ignores that, so
then the test is skipped).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ADD_TASK, TOKENIZER, random_model
from reportgen import atomic, parallel
from reportgen.atomic import OwnedFiles, recover, replace_dir, unchanged
from reportgen.atomic import check_out_dir
from reportgen.cli import main
from reportgen.model.checkpoint import checkpoint_bytes, load_checkpoint, read_checkpoint_payload, save_checkpoint
from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE, load_results, save_results
from reportgen.train.trainer import OUTPUTS, Trainer

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY_TRAIN = {  # 1-2 digit addition on a 1-layer d_model 32 model: a few seconds
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64, "n_ctx": 16},
    "optim": {"lr": 3e-3, "batch_size": 64, "warmup_steps": 20, "max_steps": 250},
    "eval_every": 50, "eval_instances": 200, "seed": 0,
}


# ---------------------------------------------------------------- helpers
def one_line_error(err: str, *needles: str) -> str:
    """The one error line that ends a refused command's stderr (after any progress lines); no traceback."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("reportgen: error: "), err[-2000:]
    assert all(line.startswith("reportgen: ") and "error" not in line for line in lines[:-1]), err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(d: Path) -> list[str]:
    """Hidden temporary files or directories reportgen may leave while it writes (it must not after)."""
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name
                  or ".trash-" in p.name or ".probe-" in p.name)


def popen(*argv, code: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", code, *map(str, argv)] if code else [sys.executable, "-m", "reportgen", *map(str, argv)]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def wait_for(predicate, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended before the expected instant: {(proc.communicate()[1] or '')[-2000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs on `path` (root with mount rights only; REPORTGEN_TEST_NO_MOUNT=1 tries the fallbacks)."""
    if os.geteuid() != 0 or os.environ.get("REPORTGEN_TEST_NO_MOUNT"):
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "reportgen-test", str(path)], capture_output=True)
    return proc.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class FullDisk:
    """A directory whose disk can be filled up and freed again: a 4 MB tmpfs filled with a ballast
    file, or (without mount rights) the process's file size limit lowered to 4 KB."""

    def __init__(self, directory: Path, tmpfs: bool):
        self.dir, self.tmpfs = directory, tmpfs
        self._limit = resource.getrlimit(resource.RLIMIT_FSIZE)

    def fill(self) -> None:
        if not self.tmpfs:
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, self._limit[1]))
            return
        with open(self.dir / "ballast", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass

    def free(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)
        (self.dir / "ballast").unlink(missing_ok=True)


@pytest.fixture
def full_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    tmpfs = mount_tmpfs(d, "size=4m")
    disk = FullDisk(d, tmpfs)
    yield disk
    disk.free()
    if tmpfs:
        unmount(d)


@pytest.fixture
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if mount_tmpfs(d, "size=1m,ro"):
        yield d
        unmount(d)
        return
    d.chmod(0o555)
    if os.access(d, os.W_OK):
        d.chmod(0o755)
        pytest.skip("needs a read-only directory: mount rights, or a user that file permissions apply to")
    yield d
    d.chmod(0o755)


@pytest.fixture
def rng() -> random.Random:
    """The random instants of the kill tests; a failure shows the seed (set REPORTGEN_FAULT_SEED to reuse it)."""
    seed = int(os.environ.get("REPORTGEN_FAULT_SEED", time.time_ns() % 2**32))
    print(f"REPORTGEN_FAULT_SEED={seed}")
    return random.Random(seed)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A `reportgen data` directory of 1-2 digit additions, kept apart from the run directories."""
    d = tmp_path_factory.mktemp("data") / "add2"
    assert main(["data", "--task", "add", "--instances", "2000", "--max-digits", "2", "--out", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_TRAIN))
    return path


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """results.json + arrays.npz of a synthetic two-model report."""
    from render_fixtures import make_report

    d = tmp_path_factory.mktemp("results")
    save_results(make_report(2), d)
    return d


def train_argv(out: Path, data: Path, config: Path, *extra) -> list:
    return ["train", "--config", config, "--output-dir", out, "--data", data, *extra]


def assert_complete_run(out: Path) -> None:
    """A finished run: every output present and recorded as written by reportgen, no temporary
    files, the best checkpoint loadable and named by metrics.json, each evaluation logged once."""
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert OwnedFiles(out).foreign(list(OUTPUTS)) == []
    assert leftovers(out) == []
    metrics = json.loads((out / "metrics.json").read_text())
    best = load_checkpoint(out / "checkpoint_best.pt")
    assert best.meta["step"] == metrics["best_step"]
    steps = read_checkpoint_payload(out / "checkpoint_last.pt")["history"]["step"]
    assert steps == sorted(set(steps)) and steps[-1] == metrics["steps"]
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == steps


# ---------------------------------------------------------------- row 1: the user's files in a run directory
def test_row1_train_never_overwrites_files_it_did_not_write(tmp_path, data_dir, tiny_yaml, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.json", "metrics.jsonl", "training_curve.png"):
        (out / name).write_text(f"the user's own {name}")
    before = snapshot(out)
    rc, err = cli(capsys, *train_argv(out, data_dir, tiny_yaml))
    assert rc == 2
    one_line_error(err, "metrics.json", "metrics.jsonl", "training_curve.png", "reportgen did not write")
    assert snapshot(out) == before


# ---------------------------------------------------------------- rows 3, 12: kill -9 and full disk in training
KILL_AFTER_WRITING = r"""
import os, signal, sys
from reportgen import atomic, parallel
from reportgen.cli import main

target = sys.argv[1]
write = atomic.OwnedFiles.write

def write_then_die(self, name, data):
    write(self, name, data)
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)

atomic.OwnedFiles.write = write_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["checkpoint_last.pt", "checkpoint_best.pt"])
def test_row3_killed_right_after_the_first_checkpoint_the_run_resumes(target, tmp_path, data_dir, tiny_yaml, capsys):
    out = tmp_path / "run"
    proc = popen(target, *train_argv(out, data_dir, tiny_yaml), code=KILL_AFTER_WRITING)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoint_last.pt").is_file()  # saved first, so a kill never leaves a run without it
    rc, err = cli(capsys, *train_argv(out, data_dir, tiny_yaml))
    assert rc == 2
    one_line_error(err, "--resume")
    assert cli(capsys, *train_argv(out, data_dir, tiny_yaml, "--resume"))[0] == 0
    assert_complete_run(out)


@pytest.mark.slow
def test_train_killed_at_random_instants_always_resumes(tmp_path, data_dir, tiny_yaml, rng, capsys):
    out = tmp_path / "run"
    last = out / "checkpoint_last.pt"
    for _ in range(2):
        extra = ["--resume"] if last.exists() else []
        proc = popen(*train_argv(out, data_dir, tiny_yaml, *extra))
        start = last.stat().st_mtime_ns if extra else 0
        wait_for(lambda: proc.poll() is not None or (last.exists() and last.stat().st_mtime_ns != start))
        time.sleep(rng.uniform(0, 1.0))
        if proc.poll() is not None:  # a kill during the final scoring left nothing to train: it finished
            assert proc.returncode == 0, proc.communicate()[1][-2000:]
            break
        kill9(proc)
    rc, err = cli(capsys, *train_argv(out, data_dir, tiny_yaml, "--resume"))
    assert rc == 0, err
    assert_complete_run(out)


@pytest.mark.slow
def test_row12_full_disk_in_training_stops_with_one_line_and_resumes(full_disk, data_dir, tiny_yaml, capsys):
    out = full_disk.dir / "run"
    filled = threading.Event()

    def fill_after_the_first_save():
        while not (out / "checkpoint_last.pt").exists():
            time.sleep(0.005)
        full_disk.fill()
        filled.set()

    filler = threading.Thread(target=fill_after_the_first_save, daemon=True)
    filler.start()
    try:
        rc, err = cli(capsys, *train_argv(out, data_dir, tiny_yaml))
    finally:
        filler.join(timeout=60)
        full_disk.free()
    assert filled.is_set() and rc == 2
    one_line_error(err, "could not write", "--resume")
    assert leftovers(out) == []
    read_checkpoint_payload(out / "checkpoint_last.pt")  # whole, not cut short
    rc, err = cli(capsys, *train_argv(out, data_dir, tiny_yaml, "--resume"))
    assert rc == 0, err
    assert_complete_run(out)


# ---------------------------------------------------------------- rows 5, 6: non-finite weights and learning rates
def nan_checkpoint(path: Path) -> Path:
    model = random_model()
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] = float("nan")
    path.write_bytes(checkpoint_bytes(model, TOKENIZER, data=dict(ADD_TASK)))
    return path


@pytest.mark.parametrize("command", [["eval"], ["build", "--no-pdf"], ["analyze", "--all"]])
def test_row5_a_checkpoint_with_nan_weights_is_refused(command, tmp_path, capsys):
    path = nan_checkpoint(tmp_path / "nan.pt")
    out_flag = {"build": ["--out", tmp_path / "site"], "analyze": ["--output-dir", tmp_path / "a"]}.get(command[0], [])
    rc, err = cli(capsys, command[0], "--checkpoint", path, *command[1:], *out_flag)
    assert rc == 2
    one_line_error(err, "non-finite weights", "blocks.0.attn.W_Q")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pt"]


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_row6_a_non_finite_learning_rate_is_refused(value, tmp_path, data_dir, tiny_yaml, capsys):
    rc, err = cli(capsys, *train_argv(tmp_path / "run", data_dir, tiny_yaml, "--set", f"optim.lr={value}"))
    assert rc == 2
    one_line_error(err, "optim.lr must be")
    assert not (tmp_path / "run").exists()


def test_row6_training_that_diverges_stops_and_keeps_the_last_finite_checkpoint(tmp_path, data_dir, tiny_yaml, capsys):
    out = tmp_path / "run"
    assert cli(capsys, *train_argv(out, data_dir, tiny_yaml, "--max-steps", "100"))[0] == 0
    kept = snapshot(out)
    rc, err = cli(capsys, *train_argv(out, data_dir, tiny_yaml, "--resume", "--max-steps", "200",
                                      "--set", "optim.lr=1.0e+30"))
    assert rc == 2
    one_line_error(err, "training diverged at step 10", "lower optim.lr", "last finite weights (step 100)")
    assert snapshot(out) == kept
    assert load_checkpoint(out / "checkpoint_last.pt").meta["step"] == 100


# ---------------------------------------------------------------- rows 7-10: legitimate but large
def test_row7_a_model_too_large_to_train_is_refused_before_allocating(tmp_path, data_dir, tiny_yaml, capsys):
    rc, err = cli(capsys, *train_argv(tmp_path / "run", data_dir, tiny_yaml, "--set", "model.d_model=100000"))
    assert rc == 2
    one_line_error(err, "parameters", "at most 100,000,000")


@pytest.mark.parametrize("command", ["build", "analyze"])
def test_row8_ten_thousand_examples_are_refused_up_front(command, checkpoint_path, tmp_path, capsys):
    problems = [f"{i % 1000}+{i // 10}" for i in range(10_000)]
    out = ["--out", tmp_path / "site"] if command == "build" else ["--output-dir", tmp_path / "a"]
    rc, err = cli(capsys, command, "--checkpoint", checkpoint_path, "--examples", *problems, *out)
    assert rc == 2
    one_line_error(err, "--examples asks to show 10000 examples", "at most 100 ")
    assert list(tmp_path.iterdir()) == []



CUDA_OOM = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.80 GiB"


@pytest.mark.parametrize("fault, needle", [("cpu", "ran out of memory;"), ("cuda", "ran out of GPU memory;")])
def test_torch_running_out_of_memory_is_one_line(fault, needle, checkpoint_path, tmp_path, capsys, monkeypatch):
    """torch's allocators raise RuntimeError, not MemoryError: on the CPU a real allocation larger
    than the machine, on a GPU torch.OutOfMemoryError (raised as is: no GPU here). Any other
    RuntimeError is a bug and keeps its traceback."""
    def exhausted(*args, **kwargs):
        if fault == "cpu":
            torch.empty(1 << 60, dtype=torch.uint8)
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr("reportgen.build.compute_model_results", exhausted)
    rc, err = cli(capsys, "analyze", "--checkpoint", checkpoint_path, "--all", "--output-dir", tmp_path / "a")
    assert rc == 2
    one_line_error(err, needle, "memory_budget_mb")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("reportgen.build.compute_model_results", lambda *a, **k: torch.ones(2) @ torch.ones(3))
    with pytest.raises(RuntimeError, match="size mismatch|shapes cannot be multiplied|inconsistent"):
        cli(capsys, "analyze", "--checkpoint", checkpoint_path, "--all", "--output-dir", tmp_path / "a")


@pytest.mark.parametrize("fault", ["cpu", "cuda"])
def test_training_out_of_memory_is_one_line_and_keeps_the_checkpoint(fault, tmp_path, data_dir, tiny_yaml, capsys,
                                                                      monkeypatch):
    """Training catches torch's allocation failures itself, to say what was saved; a RuntimeError
    that merely mentions memory is a bug and keeps its traceback."""
    step = Trainer._train_step

    def exhausted_at_60(self, *args, **kwargs):
        if self.step == 60:
            if fault == "cpu":
                torch.empty(1 << 60, dtype=torch.uint8)
            raise torch.OutOfMemoryError(CUDA_OOM)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", exhausted_at_60)
    rc, err = cli(capsys, *train_argv(tmp_path / "run", data_dir, tiny_yaml))
    assert rc == 2
    one_line_error(err, "ran out of memory at step 60", "holds step 50", "--resume")
    def bug(*args, **kwargs):
        raise RuntimeError("an unsupported memory format")

    monkeypatch.setattr(Trainer, "_train_step", bug)
    with pytest.raises(RuntimeError, match="unsupported memory format"):
        cli(capsys, *train_argv(tmp_path / "other", data_dir, tiny_yaml))

def test_row9_two_hundred_digit_operands(tmp_path, capsys):
    out = tmp_path / "d"
    rc, err = cli(capsys, "data", "--task", "add", "--max-digits", "200", "--instances", "100", "--out", out)
    assert rc == 0, err
    longest = max(len(str(json.loads(line)["a"])) for line in (out / "train.jsonl").read_text().splitlines())
    assert longest > 160  # float arithmetic overflowed from about 155 digits


@pytest.mark.parametrize("argv, needles", [
    (["--max-digits", "9", "--instances", "20000000"], ["at most 1000000"]),
    (["--task", "mul", "--max-digits", "200", "--with-steps"], ["at most 1527 instances", "up to 418867 bytes"]),
])
def test_row10_a_data_set_too_large_for_memory_is_refused_up_front(argv, needles, tmp_path, capsys):
    argv = argv if "--task" in argv else ["--task", "add", *argv]
    rc, err = cli(capsys, "data", *argv, "--out", tmp_path / "d")
    assert rc == 2
    one_line_error(err, *needles)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- rows 11, 14, 16: hostile files
ALIAS_BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"


@pytest.mark.parametrize("text, needle", [
    (ALIAS_BOMB, "expands to more than 100000 values"),
    ("optim:\n  lr: " + "[" * 100_000 + "\n", "nested too deeply"),
    ("optim:\n  lr: [&a [x, x, x, x, x, x, x, x], [*a, *a, *a, *a, *a, *a, *a, *a]]\n", "lr must be float"),
])
def test_row11_hostile_yaml_gets_a_short_line(text, needle, tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(text)
    rc, err = cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "run")
    assert rc == 2
    assert len(one_line_error(err, needle)) < 400


def test_row14_a_results_json_nested_100000_deep_is_refused(results_dir, tmp_path, capsys):
    bad = tmp_path / "deep"
    bad.mkdir()
    (bad / RESULTS_FILE).write_text('{"schema_version": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (bad / ARRAYS_FILE).write_bytes((results_dir / ARRAYS_FILE).read_bytes())
    rc, err = cli(capsys, "render", bad, "--out", tmp_path / "site", "--no-pdf")
    assert rc == 2
    one_line_error(err, "nested more than 64 levels")


def array_refs(value, path=""):
    """(path, marker) of every array reference in results.json data."""
    if isinstance(value, dict):
        if "$array" in value:
            yield path, value
            return
        for k, v in value.items():
            yield from array_refs(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from array_refs(v, f"{path}.{i}")


@pytest.mark.parametrize("tamper", ["swap-names", "swap-references", "edit-an-array", "arrays-of-another-report"])
def test_row16_results_whose_arrays_do_not_match_are_refused(tamper, results_dir, tmp_path, capsys):
    """The attack of row 16 (an attention figure drawn from logit-lens data), and its variants."""
    import io

    import numpy as np

    d = tmp_path / "res"
    d.mkdir()
    data = json.loads((results_dir / RESULTS_FILE).read_text())
    npz = (results_dir / ARRAYS_FILE).read_bytes()
    example = data["models"][0]["findings"]["examples"][0]
    attention, lens = example["attention"], example["lens_prob"]
    if tamper == "swap-names":
        attention["$array"], lens["$array"] = lens["$array"], attention["$array"]
    elif tamper == "swap-references":  # with their hashes
        example["attention"], example["lens_prob"] = lens, attention
    elif tamper == "edit-an-array":
        with zipfile.ZipFile(results_dir / ARRAYS_FILE) as z:
            members = {n: z.read(n) for n in z.namelist()}
        name = lens["$array"] + ".npy"
        edited = io.BytesIO()
        np.lib.format.write_array(edited, np.lib.format.read_array(io.BytesIO(members[name])) * 0.5)
        members[name] = edited.getvalue()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n, b in members.items():
                z.writestr(n, b)
        npz = buf.getvalue()
    else:
        from render_fixtures import make_model, make_report

        other = make_report(2)
        other.models[0] = make_model("tiny-1l", "other", 1, 2, seed=7)
        save_results(other, tmp_path / "other")
        npz = (tmp_path / "other" / ARRAYS_FILE).read_bytes()
    (d / RESULTS_FILE).write_text(json.dumps(data))
    (d / ARRAYS_FILE).write_bytes(npz)
    rc, err = cli(capsys, "render", d, "--out", tmp_path / "site", "--no-pdf")
    assert rc == 2
    one_line_error(err, f"{ARRAYS_FILE} does not match", "is not the one saved there")
    assert not (tmp_path / "site").exists()


# ---------------------------------------------------------------- rows 13, 15: read-only and /dev/full
def test_row13_outputs_on_a_read_only_file_system(read_only_dir, data_dir, tiny_yaml, checkpoint_path, capsys):
    rc, err = cli(capsys, *train_argv(read_only_dir / "run", data_dir, tiny_yaml))
    assert rc == 2
    one_line_error(err, "cannot write to --output-dir")
    rc, err = cli(capsys, "build", "--checkpoint", checkpoint_path, "--out", read_only_dir / "site", "--no-pdf")
    assert rc == 2
    one_line_error(err, "cannot write the site")
    rc, err = cli(capsys, "data", "--task", "add", "--instances", "100", "--max-digits", "2",
                  "--out", read_only_dir / "d")
    assert rc == 2
    one_line_error(err, "could not write the data set")
    assert list(read_only_dir.iterdir()) == []


def test_row15_standard_output_on_a_full_device(tmp_path):
    out = tmp_path / "d"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "reportgen", "data", "--task", "add", "--instances", "100",
                               "--max-digits", "2", "--out", str(out)], env=ENV, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "cannot write to standard output")
    assert (out / "manifest.json").is_file()


# ---------------------------------------------------------------- row 17: messages that say what to do
def test_row17_messages_name_the_problem(tmp_path, checkpoint_path, capsys):
    (tmp_path / "a.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("notes.txt", "not a checkpoint")
    payload = torch.load(checkpoint_path, weights_only=True)
    del payload["model_config"]
    torch.save(payload, tmp_path / "no-config.pt")
    payload = torch.load(checkpoint_path, weights_only=True)
    payload["model_config"]["d_model"] = 64  # its weights are d_model 32
    torch.save(payload, tmp_path / "shape.pt")
    for path, needles in [(tmp_path / "a.zip", ["zip archive but not a torch checkpoint"]),
                          (tmp_path / "no-config.pt", ["has no model config", "reportgen train"]),
                          (tmp_path / "shape.pt", ["size mismatch", "re-create it with `reportgen train`"]),
                          ("/dev/null", ["is a device"])]:
        rc, err = cli(capsys, "eval", "--checkpoint", path)
        assert rc == 2
        one_line_error(err, *needles)
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    os.symlink(tmp_path / "nowhere.yaml", tmp_path / "dangling.yaml")
    for config, needle in [(tmp_path / "loop1", "symbolic link loop"), ("/dev/null", "is a device"),
                           (tmp_path, "is a directory"), (tmp_path / "dangling.yaml", "which does not exist")]:
        rc, err = cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "run")
        assert rc == 2
        one_line_error(err, needle)


# ---------------------------------------------------------------- row 2: the site swap, killed at any instant
SWAP = r"""
import os, sys, time
from pathlib import Path
from reportgen import atomic, parallel

out, version, pause, note = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def write(d):
    for i in range(20):
        (d / f"page{i}.html").write_text(version)
    if note:
        (out / "NOTES.md").write_text(note)  # the user saves a note while the new site is written

def hold():
    print("swapping", flush=True)
    time.sleep(300)

if pause == "exchange":
    exchange = atomic._exchange
    atomic._exchange = lambda a, b: exchange(a, b) and (hold() or True)
elif pause == "mkdtemp":  # killed before the new directory is marked as being written
    mkdtemp = atomic.tempfile.mkdtemp
    def mkdtemp_and_hold(**kw):
        mkdtemp(**kw)
        hold()
    atomic.tempfile.mkdtemp = mkdtemp_and_hold
elif pause == "renames":  # a file system that cannot exchange: two renames, killed between them
    atomic._exchange = lambda a, b: False
    rename = os.rename
    def rename_and_hold(a, b):
        rename(a, b)
        if Path(a) == out:
            hold()
    os.rename = rename_and_hold
while True:
    atomic.replace_dir(out, write)
    if pause != "loop":
        break
    if version == sys.argv[2]:
        print("looping", flush=True)  # one swap done: the kill lands in the loop, whatever the start-up took
    version = str(int(version) + 1)
print("done", flush=True)
"""


def site_version(out: Path) -> str:
    """The one version every page of a whole site shows."""
    assert unchanged(out), sorted(p.name for p in out.iterdir())
    versions = {p.read_text() for p in out.glob("page*.html")}
    assert len(versions) == 1 and len(list(out.glob("page*.html"))) == 20, versions
    return versions.pop()


@pytest.fixture
def site(tmp_path) -> Path:
    out = tmp_path / "site"
    replace_dir(out, lambda d: [(d / f"page{i}.html").write_text("1") for i in range(20)])
    return out


def kill_while_swapping(out: Path, pause: str, note: str = "") -> None:
    proc = popen(out, "2", pause, note, code=SWAP)
    assert proc.stdout.readline() == "swapping\n", proc.communicate()[1]
    kill9(proc)


def test_row2_killed_mid_exchange_the_site_is_whole_and_leftovers_are_cleaned(site):
    kill_while_swapping(site, "exchange")
    assert site_version(site) == "2" and leftovers(site.parent)  # the old site, set aside
    recover(site)
    assert site_version(site) == "2" and leftovers(site.parent) == []


def test_row2_killed_between_two_renames_the_next_run_puts_the_site_back(site):
    kill_while_swapping(site, "renames")
    assert not site.exists()  # only where the file system cannot exchange directories
    replace_dir(site, lambda d: [(d / f"page{i}.html").write_text("3") for i in range(20)])
    assert site_version(site) == "3" and leftovers(site.parent) == []
    kill_while_swapping(site, "renames")
    recover(site)  # what every build does first
    assert site_version(site) == "3" and leftovers(site.parent) == []


def test_row2_killed_before_its_new_directory_is_marked_the_next_run_cleans_it(site):
    kill_while_swapping(site, "mkdtemp")
    assert site_version(site) == "1" and leftovers(site.parent)  # an empty directory, not yet marked
    recover(site)
    assert site_version(site) == "1" and leftovers(site.parent) == []


def test_row2_a_note_saved_during_a_killed_swap_is_put_back(site, capsys):
    kill_while_swapping(site, "exchange", note="precious")
    recover(site)
    assert (site / "NOTES.md").read_text() == "precious" and leftovers(site.parent) == []
    before = snapshot(site)
    with pytest.raises(atomic.ReportgenError, match="NOTES.md"):
        atomic.check_replaceable(site, "--out", "the site")
    assert snapshot(site) == before


def test_row2_kill_at_random_instants_of_repeated_swaps(site, rng):
    last = 1
    for _ in range(8):
        proc = popen(site, str(last + 1), "loop", "", code=SWAP)
        assert proc.stdout.readline() == "looping\n", proc.communicate()[1]
        time.sleep(rng.uniform(0.0, 0.5))
        kill9(proc)
        version = int(site_version(site))
        assert version >= last
        recover(site)
        assert leftovers(site.parent) == [] and int(site_version(site)) == version
        last = version
    assert last > 1


# ---------------------------------------------------------------- row 4: workers end with their parent
def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _stat(int(p.name))[1:2] == [str(pid)]]


def running(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"], ["X"])  # a killed child may stay a zombie until it is reaped


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or parallel.cpus() < 2,
                    reason="reads child processes from /proc; figures are drawn in workers only on 2 CPUs or more")
def test_row4_killed_while_figures_are_drawn_its_workers_exit_and_the_next_run_cleans_up(results_dir, tmp_path,
                                                                                          capsys):
    site = tmp_path / "site"
    proc = popen("render", results_dir, "--out", site, "--no-pdf")
    wait_for(lambda: len(children(proc.pid)) >= 2, proc=proc)
    workers = children(proc.pid)
    kill9(proc)
    wait_for(lambda: not any(map(running, workers)), timeout=10)
    assert [n for n in leftovers(tmp_path) if ".tmp-" in n]  # the killed run's temporary site
    check_out_dir(site.resolve())  # what build, render and analyze do first
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file() or parallel.cpus() < 2,
                    reason="reads child processes from /proc; models are analysed in workers only on 2 CPUs or more")
def test_row4_killed_while_models_are_analysed_its_workers_exit(tmp_path):
    site = tmp_path / "site"
    proc = popen("build", "--checkpoint", ROOT / "runs/add3_rev/checkpoint_best.pt", "--compare",
                 ROOT / "runs/add3_steps/checkpoint_best.pt", "--out", site, "--no-pdf", "--no-cache")
    wait_for(lambda: len(children(proc.pid)) >= 3, proc=proc)  # the job processes (and joblib's trackers)
    time.sleep(1.0)
    workers = children(proc.pid)
    kill9(proc)
    wait_for(lambda: not any(map(running, workers)), timeout=10)
    assert not site.exists() and leftovers(tmp_path) == []


def test_data_killed_at_random_instants_leaves_nothing_behind(tmp_path, rng, capsys):
    out = tmp_path / "d"
    argv = ["data", "--task", "add", "--instances", "3000", "--max-digits", "3"]
    for _ in range(3):
        proc = popen(*argv, "--out", out)
        time.sleep(rng.uniform(0.3, 2.0))
        kill9(proc)
        assert not out.exists() or (out / "manifest.json").is_file()
        if out.exists():
            break
    if not out.exists():
        assert cli(capsys, *argv, "--out", out)[0] == 0
    assert leftovers(tmp_path) == []
    assert cli(capsys, *argv, "--out", tmp_path / "d2")[0] == 0
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "d2" / name).read_bytes()


# ---------------------------------------------------------------- the building blocks, with real files
def test_owned_files_are_replaced_only_while_unchanged(tmp_path):
    files = OwnedFiles(tmp_path)
    files.write("metrics.json", b"1")
    files.write("metrics.json", b"2")
    assert files.foreign(["metrics.json"]) == []
    (tmp_path / "metrics.json").write_text("edited")
    assert files.foreign(["metrics.json"]) == ["metrics.json"]
    with pytest.raises(atomic.ReportgenError, match="was not written by reportgen"):
        files.write("metrics.json", b"3")
    assert (tmp_path / "metrics.json").read_text() == "edited"


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_file(full_disk):
    path = full_disk.dir / "model.pt"
    save_checkpoint(path, random_model(seed=1), TOKENIZER, data=dict(ADD_TASK))
    before = path.read_bytes()
    full_disk.fill()
    try:
        with pytest.raises(OSError):
            save_checkpoint(path, random_model(seed=2), TOKENIZER, data=dict(ADD_TASK))
    finally:
        full_disk.free()
    assert path.read_bytes() == before and leftovers(full_disk.dir) == []


def test_row12_full_disk_during_render_keeps_the_previous_site(full_disk, results_dir, capsys):
    site = full_disk.dir / "site"
    replace_dir(site, lambda d: (d / "index.html").write_text("the previous report"))
    before = snapshot(site)
    full_disk.fill()
    try:
        rc, err = cli(capsys, "render", results_dir, "--out", site, "--no-pdf")
    finally:
        full_disk.free()
    assert rc == 2
    one_line_error(err, f"could not write {site}", "was left as it was")
    assert snapshot(site) == before and leftovers(full_disk.dir) == []
    assert load_results(results_dir).title  # the inputs are untouched too
