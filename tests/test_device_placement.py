"""`--device cuda` with its device placement checked on a machine without a GPU (fake_cuda.py):
training with a resume, evaluation, every analysis and the examples shown, where a tensor left on
the CPU meeting one on the GPU would stop a real GPU run. The checker's own known answers come
first: each operation a GPU refuses is caught, each one it allows is not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fake_cuda import FakeCuda
from reportgen.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _index_put(x):
    x[torch.arange(4), 0] = torch.ones(4)


def _slice_copy(x):
    x[:, 0] = torch.ones(4)


def _moved_model(x):
    torch.nn.Linear(3, 2).to(x.device)(x.requires_grad_()).sum().backward()
    return x.grad.cpu().numpy()


REFUSED = {
    "elementwise": lambda x: x * torch.ones(3),
    "where with a CPU mask": lambda x: torch.where(torch.ones(4, 3, dtype=torch.bool), x, 0),
    "cat": lambda x: torch.cat([x, torch.zeros(1, 3)]),
    "gather at CPU indices": lambda x: x.gather(0, torch.zeros(1, 3, dtype=torch.long)),
    "a CPU tensor read at GPU indices": lambda x: torch.ones(3)[torch.arange(2, device=x.device)],
    "CPU values put at indices": _index_put,
    "numpy": lambda x: x.numpy(),
    "a CPU generator": lambda x: torch.randn(3, device="cuda", generator=torch.Generator()),
    "a model left on the CPU": lambda x: torch.nn.Linear(3, 2)(x),
}
ALLOWED = {
    "scalars": lambda x: x * 2 + torch.tensor(2.0),
    "a GPU tensor read at CPU indices": lambda x: x[torch.arange(4)],
    "CPU and GPU indices together": lambda x: x[torch.arange(4)[:, None], torch.arange(3, device=x.device)],
    "a copy into a slice": _slice_copy,
    "a factory on the tensor's device": lambda x: torch.zeros(3, device=x.device) + x,
    "a moved model, its gradients, back to numpy": _moved_model,
}


@pytest.mark.parametrize("name", REFUSED)
def test_fake_cuda_catches_what_a_gpu_refuses(name):
    with FakeCuda() as gpu:
        x = torch.zeros(4, 3, device="cuda")
        assert x.device.type == "cuda" and torch.cuda.is_available()
        REFUSED[name](x)
    assert len(gpu.violations) == 1, gpu.violations


@pytest.mark.parametrize("name", ALLOWED)
def test_fake_cuda_lets_through_what_a_gpu_allows(name):
    with FakeCuda() as gpu:
        ALLOWED[name](torch.zeros(4, 3, device="cuda"))
    assert gpu.violations == []
    assert torch.zeros(1).device.type == "cpu"  # nothing stays marked after the block


ANALYSIS = {"n_examples": 96, "untrained_twins": 2, "n_example_pages": 2,
            "patching": {"n_pairs": 16}, "circuits": {"n_pairs": 32, "neuron_permutations": 10},
            "interventions": {"reference_size": 4}, "probing": {"n_examples": 60}}
TRAIN = {"data": {"task": "addsub", "instances": 1500, "max_digits": 2, "with_steps": True},
         "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64, "n_ctx": 48},
         "optim": {"batch_size": 64, "warmup_steps": 5, "max_steps": 20}, "eval_every": 10, "eval_instances": 60}


@pytest.mark.slow
def test_train_resume_eval_and_analyze_all_on_cuda_keep_every_tensor_on_its_device(tmp_path, capsys):
    (tmp_path / "analysis.yaml").write_text(yaml.safe_dump(ANALYSIS))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    run, steps = tmp_path / "run", ROOT / "runs/add3_steps/checkpoint_best.pt"
    with FakeCuda() as gpu:
        assert main(["train", "--config", str(tmp_path / "train.yaml"), "--output-dir", str(run), "--device", "cuda"]) == 0
        assert main(["train", "--config", str(tmp_path / "train.yaml"), "--output-dir", str(run), "--device", "cuda",
                     "--resume", "--max-steps", "30"]) == 0
        assert main(["eval", "--checkpoint", str(steps), "--device", "cuda"]) == 0
        for i, checkpoint in enumerate((steps, run / "checkpoint_best.pt")):  # the second one mixes '+' and '-'
            assert main(["analyze", "--checkpoint", str(checkpoint), "--device", "cuda", "--all", "--quiet",
                         "--config", str(tmp_path / "analysis.yaml"), "--output-dir", str(tmp_path / f"analysis{i}"),
                         "--examples", "59 + 73", "12 + 34"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert gpu.violations == [], "\n".join(sorted(set(gpu.violations))[:10])
