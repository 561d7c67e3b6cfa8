"""Progress on stderr: a bar on a terminal, plain lines without carriage returns elsewhere (CI logs),
for `reportgen train`, `analyze` and `build`, run as a user runs them."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import tty
from pathlib import Path

import pytest

from reportgen.parallel import cpus
from reportgen.progress import LineProgress, progress
from test_build_cli import make_checkpoint
from test_train import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[1]
ANALYZE_CONFIG = "n_examples: 24\nn_example_pages: 1\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_lines():
    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        bar = progress(4000, "train", stream=stream)
        for step in range(4000):
            bar.update()
            if step % 200 == 199:
                bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.close()
    assert "\r" in tty.getvalue()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 10 <= len(lines) <= 11  # a line per tenth, and the end
    assert lines[0].startswith("reportgen: train: 400/4000 steps (10%), loss=0.005")  # the loss last set
    assert "4000/4000 steps (100%)" in lines[-1] and "done in" in lines[-1]


def test_short_runs_log_a_line_per_named_stage():
    log = io.StringIO()
    bar = progress(3, "analyze", stream=log)
    for stage in ("forward pass", "attention", "examples"):
        bar.set_postfix_str(stage)
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert [line.split(", ")[1] for line in lines] == ["forward pass", "attention", "examples", "examples"]
    assert lines[0].startswith("reportgen: analyze: 0/3 steps (0%)")
    silent = Terminal()
    quiet = progress(3, "analyze", enabled=False, stream=silent)
    assert isinstance(quiet, LineProgress)
    quiet.set_postfix_str("x")
    quiet.update(3)
    quiet.close()
    assert silent.getvalue() == ""


def run(argv: list[str], cwd: Path, terminal: bool) -> str:
    """`reportgen ARGV`'s stderr, with stderr on a pseudo-terminal or on a pipe."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "reportgen", *argv]
    if not terminal:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    main, child = pty.openpty()
    tty.setraw(child)  # no newline translation: every '\r' in the output is the program's
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a bar needs a width
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait() == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


@pytest.mark.parametrize("terminal", [True, False])
def test_train_progress(tmp_path, terminal):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(max_steps=60))
    err = run(["train", "--config", config, "--output-dir", str(tmp_path / "run")], tmp_path, terminal)
    if terminal:
        assert "\r" in err and "train:" in err and "%|" in err  # a bar, redrawn in place
    else:
        lines = [line for line in err.splitlines() if line.startswith("reportgen: train: ")]
        assert "\r" not in err and 10 <= len(lines) <= 11, err
        assert lines[-1].startswith("reportgen: train: 60/60 steps (100%)")


@pytest.mark.parametrize("terminal", [True, False])
def test_analyze_progress(tmp_path, terminal):
    checkpoint = make_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint_best.pt")
    (tmp_path / "fast.yaml").write_text(ANALYZE_CONFIG)
    err = run(["analyze", "--checkpoint", str(checkpoint), "--attention", "--logit-lens", "--config", "fast.yaml",
               "--output-dir", "out"], tmp_path, terminal)
    if terminal:
        assert "\r" in err and "analyze:" in err and "%|" in err
    else:
        assert "\r" not in err
        stages = [line.split(", ")[1] for line in err.splitlines() if line.startswith("reportgen: analyze: ")]
        assert stages == ["forward pass", "attention", "logit_lens", "examples", "examples"], err


@pytest.mark.slow
def test_build_progress_in_a_log(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint_best.pt")
    (tmp_path / "fast.yaml").write_text(ANALYZE_CONFIG)
    err = run(["build", "--checkpoint", str(checkpoint), "--config", "fast.yaml", "--no-pdf", "--out", "site"],
              tmp_path, terminal=False)
    assert "\r" not in err
    lines = err.splitlines()
    assert all(line.startswith("reportgen: ") for line in lines), err
    if cpus() > 1:  # the analyses run as parallel jobs: a line as each ends, no bars interleaved
        jobs = [line for line in lines if " done (" in line and " jobs)" in line]
        assert len(jobs) == 3 and not any(line.startswith("reportgen: analyze: ") for line in lines), err
        assert "attention, circuits, logit_lens done" in err and "patching done" in err
    else:
        assert any(line.startswith("reportgen: analyze: ") for line in lines)
    assert any("rendering" in line for line in lines) and lines[-1].startswith("reportgen: wrote ")
