"""Checkpoints: round trip, refusing code-running pickles, damaged and foreign files, atomic save."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from conftest import ADD_TASK, TOKENIZER, random_model, save_model
from reportgen.errors import ReportgenError
from reportgen.model import checkpoint as checkpoint_module
from reportgen.model.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    model = random_model(seed=11)
    return model, save_model(tmp_path / "model.pt", model)


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, message


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_gives_the_same_model_and_metadata(saved):
    model, path = saved
    ckpt = load_checkpoint(path)
    tokens = torch.tensor([TOKENIZER.encode("123+45=")])
    assert torch.equal(ckpt.model(tokens), model(tokens))
    assert ckpt.model.cfg == model.cfg
    assert not ckpt.model.training
    assert ckpt.tokenizer == TOKENIZER
    assert ckpt.task == ADD_TASK
    assert set(ckpt.meta["versions"]) >= {"python", "torch", "numpy"}
    assert ckpt.sha256 == checkpoint_module.file_sha256(path) and len(ckpt.sha256) == 64


def test_extra_metadata_round_trips_and_optimizer_state_is_not_exposed(tmp_path):
    model = random_model()
    path = tmp_path / "c.pt"
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(path, model, TOKENIZER, data=dict(ADD_TASK), metrics={"val": {"exact_match": 0.5}},
                    history={"step": [1, 2]}, optimizer=opt.state_dict())
    ckpt = load_checkpoint(path)
    assert ckpt.meta["metrics"] == {"val": {"exact_match": 0.5}}
    assert ckpt.meta["history"] == {"step": [1, 2]}
    assert "optimizer" not in ckpt.meta and "state_dict" not in ckpt.meta


@pytest.mark.parametrize("writer", ["torch.save", "pickle", "pickle-protocol-0"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"format": checkpoint_module.FORMAT, "format_version": 1, "x": RunsCode(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=0 if writer.endswith("0") else pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, str(path))
    assert "could run code" in str(excinfo.value) or "not a reportgen checkpoint" in str(excinfo.value)
    assert not marker.exists()
    if writer == "torch.save":  # a torch archive is unpickled, and the unpickler refuses the global
        assert "could run code" in str(excinfo.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(tmp_path / "nope.pt")
    assert_one_line_error(excinfo, "not found", "nope.pt", "reportgen train")


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint(saved, tmp_path, fraction):
    _, path = saved
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(cut)
    assert_one_line_error(excinfo, "cut.pt")
    assert "truncated" in str(excinfo.value) or "not a reportgen checkpoint" in str(excinfo.value)


def test_checkpoint_cut_after_the_zip_signature_is_reported_as_truncated(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(path, "rb").read()[:-10])
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(cut)
    assert_one_line_error(excinfo, "corrupt or truncated", "re-create")


def test_corrupted_bytes_inside_the_archive_are_detected(saved, tmp_path):
    _, path = saved
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(bad)
    assert_one_line_error(excinfo, "corrupt")


def test_foreign_torch_file_without_the_marker(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": random_model().state_dict()}, path)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, "not a reportgen checkpoint", "foreign.pt")


@pytest.mark.parametrize("content", [b"", b"hello world\n", bytes(range(256)) * 8, pickle.dumps({"a": 1})],
                         ids=["empty", "text", "garbage", "plain-pickle"])
def test_garbage_files(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, "not a reportgen checkpoint", "garbage.pt")


def test_marked_checkpoint_that_does_not_fit_the_model(tmp_path):
    model = random_model()
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, model, TOKENIZER, data=dict(ADD_TASK))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop("W_E")
    torch.save(payload, path)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, "does not match")


@pytest.mark.parametrize("change, fragment", [
    (lambda p: p["state_dict"].update(W_E=torch.zeros(3, 5)), "size mismatch for W_E"),
    (lambda p: p.pop("data"), "which task it was trained on"),
    (lambda p: p.update(data="add"), "which task it was trained on"),
    (lambda p: p.update(data={**ADD_TASK, "task": "div"}), "which task it was trained on"),
    (lambda p: p.update(data={**ADD_TASK, "min_digits": 4}), "which task it was trained on"),
    (lambda p: p.update(vocab="abc"), "damaged vocabulary"),
    (lambda p: p.update(vocab=p["vocab"][:-1]), "damaged vocabulary"),
])
def test_marked_checkpoint_with_damaged_metadata_is_one_line(tmp_path, change, fragment):
    """Everything later stages read from a checkpoint is checked when it is loaded, so none of
    them fails with a traceback on it."""
    path = tmp_path / "damaged.pt"
    save_checkpoint(path, random_model(), TOKENIZER, data=dict(ADD_TASK))
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, fragment)


def test_a_directory_given_as_checkpoint_says_so(tmp_path):
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(tmp_path)
    assert_one_line_error(excinfo, "is a directory", "checkpoint_best.pt")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    save_checkpoint(path, random_model(), TOKENIZER, data=dict(ADD_TASK))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, "format version 99")
    payload["format_version"] = "1"  # a string: shown as one, not as the 1 this reportgen reads
    torch.save(payload, path)
    with pytest.raises(ReportgenError) as excinfo:
        load_checkpoint(path)
    assert_one_line_error(excinfo, "format version '1'")


def test_a_crash_mid_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(saved, monkeypatch):
    model, path = saved
    before = open(path, "rb").read()
    directory = os.path.dirname(path)
    listing = sorted(os.listdir(directory))

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, random_model(seed=99), TOKENIZER, data=dict(ADD_TASK))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(directory)) == listing
    tokens = torch.tensor([TOKENIZER.encode("1+1=")])
    assert torch.equal(load_checkpoint(path).model(tokens), model(tokens))


def test_an_interrupt_mid_save_also_cleans_up(saved, monkeypatch):
    _, path = saved
    before = open(path, "rb").read()
    directory = os.path.dirname(path)
    listing = sorted(os.listdir(directory))

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, random_model(seed=99), TOKENIZER, data=dict(ADD_TASK))
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(directory)) == listing


def test_save_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "c.pt"
    save_checkpoint(path, random_model(), TOKENIZER, data=dict(ADD_TASK))
    assert load_checkpoint(path).task == ADD_TASK
    assert os.listdir(path.parent) == ["c.pt"]


def test_checkpoints_are_readable_by_others_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_model(tmp_path / "shared.pt", random_model())
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
