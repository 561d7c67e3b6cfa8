"""`reportgen sweep --engine ray` on a real Ray cluster that this test starts on loopback (`ray start
--head --block`) and stops (SIGTERM to that one process, which stops every process it started):
the same tiny sweep as the local engine's test, results back through Ray's object store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_sweep import done_jobs, env, sweep_command, write_sweep

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]' (CI installs it)")

# A single-machine cluster on 127.0.0.1 (Ray's local-only mode), no token to share, no usage report.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(path: str) -> list[str]:
    """Command lines of the processes that name `path` (this cluster's temp dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            found.append(f"{pid}: {cmd[:120]}")
    return found


@pytest.fixture
def ray_head():
    """HOST:PORT of a Ray head this fixture started, and stopped (and checked gone) afterwards."""
    temp = tempfile.mkdtemp(prefix="rg-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         f"--temp-dir={temp}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         "--object-store-memory=100000000", "--disable-usage-stats"],
        env={**env(), **RAY_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 60
        while processes_under(temp) and time.monotonic() < deadline:
            time.sleep(1)
        left = processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def test_tiny_sweep_on_a_local_ray_cluster(tmp_path, ray_head):
    sweep, out = write_sweep(tmp_path / "tiny.yaml"), tmp_path / "study"
    command = sweep_command(sweep, out, "--engine", "ray", "--address", ray_head, "--no-pdf")
    deadline = time.monotonic() + 180
    while True:  # the head takes a while to come up on a busy machine
        result = subprocess.run(command, cwd=ROOT, env={**env(), **RAY_ENV}, capture_output=True, text=True,
                                timeout=900)
        if "cannot connect to a Ray cluster" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert result.returncode == 0, result.stderr
    assert "Ray engine: cluster with 2 CPU(s) and 0 GPU(s)" in result.stderr
    assert sorted(j.split()[0] for j in done_jobs(out)) == ["analyse"] * 12 + ["render"] * 4 + ["train"] * 4
    study = json.loads((out / "report" / "study.json").read_text())
    assert study["engine"] == "ray" and {r["status"] for r in study["runs"]} == {"analysed"}
    assert all((out / "report" / r["chapter"]).is_file() for r in study["runs"])

    local = subprocess.run(sweep_command(sweep, out, "--no-pdf"), cwd=ROOT, env=env(), capture_output=True,
                           text=True, timeout=900)
    assert "jobs: 0 run, 20 already done" in local.stderr  # the same jobs, whichever engine ran them
