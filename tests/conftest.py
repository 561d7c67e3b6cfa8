"""Shared fixtures: small random models and checkpoints, and hand-built models with planted
mechanisms whose analysis results are known exactly."""

from __future__ import annotations

import os

# Tiny models run fastest on one thread, and tests spawn processes that would otherwise
# oversubscribe the cores; set before torch is imported so subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # also where OMP_NUM_THREADS was set otherwise

from reportgen.analysis.examples import build_batch  # noqa: E402
from reportgen.data.arithmetic import make_record  # noqa: E402
from reportgen.data.tokenizer import Tokenizer  # noqa: E402
from reportgen.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from reportgen.model.transformer import ModelConfig, Transformer  # noqa: E402

ADD_TASK = {"task": "add", "max_digits": 3, "min_digits": 1, "with_steps": False, "answer_order": "plain"}
TOKENIZER = Tokenizer()


def small_config(**overrides) -> ModelConfig:
    """A tiny model shape (2 layers, 2 heads, d_model 32) that fits 3-digit addition."""
    shape = dict(n_layers=2, n_heads=2, d_model=32, d_mlp=64, n_ctx=24, d_vocab=len(TOKENIZER))
    return ModelConfig(**{**shape, **overrides})


def random_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_config(**overrides)).eval()


def zero_model(**overrides) -> Transformer:
    """Every weight zero, LayerNorms identity-scaled: a blank slate to plant mechanisms in."""
    model = random_model(**overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.fill_(1.0)
    return model


def operator_head_model(layer: int = 0, head: int = 1, strength: float = 20.0) -> Transformer:
    """Head (layer, head) attends to the operator token ('+', '-', '*'); every other head is uniform.

    Embeddings are one-hot per token (no positions) and nothing writes to the residual stream,
    so every layer sees the embeddings. The planted head's query is a constant bias and its key
    reads the operator tokens' embedding dimensions.
    """
    model = zero_model()
    ops = [TOKENIZER.vocab.index(op) for op in "+-*"]
    with torch.no_grad():
        model.W_E[:, : len(TOKENIZER)] = torch.eye(len(TOKENIZER))
        attn = model.blocks[layer].attn
        attn.b_Q[head, 0] = strength
        attn.W_K[head, ops, 0] = 1.0
    return model


def attention_model(targets, n_ctx: int = 16, strength: float = 5.0) -> Transformer:
    """1 layer whose head h, at query position q, attends (nearly all its mass, evenly) to the key
    positions targets[h](q), and uniformly to every visible key where that list is empty.

    Positions are embedded as e_p - e_{n_ctx + p} (tokens embed to zero), so the LayerNorm leaves
    them at a fixed scale c = sqrt(d_model / 2); head h's query is c e_q in its first n_ctx dims and
    its key is c M_h[:, k], so its score is c^2 M_h[q, k] / sqrt(d_head) with M_h = strength on the
    target keys and 0 elsewhere."""
    d_head = n_ctx
    model = zero_model(n_layers=1, n_heads=len(targets), d_model=d_head * len(targets), d_mlp=8, n_ctx=n_ctx)
    assert model.cfg.d_model >= 2 * n_ctx, "positions need 2 * n_ctx dimensions"
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.W_pos[:, :n_ctx] = torch.eye(n_ctx)
        model.W_pos[:, n_ctx : 2 * n_ctx] = -torch.eye(n_ctx)
        for h, keys_of in enumerate(targets):
            attn.W_Q[h, :n_ctx, :n_ctx] = torch.eye(n_ctx)
            for q in range(n_ctx):
                for k in keys_of(q):
                    if k <= q:
                        attn.W_K[h, k, q] = strength
    return model


def answer_writer_model(write_layer: int, n_layers: int = 3, early: int = 3, late: int = 7) -> Transformer:
    """The embedding makes digit `early` top-1; block `write_layer`'s MLP writes digit `late`.

    The logit lens therefore shows `early` up to index write_layer and `late` from index
    write_layer + 1 (after block write_layer) on: convergence exactly at that block.
    Residual after the write: e1 - e2 + 10 (e3 - e4); W_U reads e1 as `early`, e3 as `late`.
    """
    model = zero_model(n_layers=n_layers)
    digit = lambda d: TOKENIZER.vocab.index(str(d))  # noqa: E731
    with torch.no_grad():
        model.W_E[:, 1], model.W_E[:, 2] = 1.0, -1.0
        model.blocks[write_layer].mlp.b_out[3], model.blocks[write_layer].mlp.b_out[4] = 10.0, -10.0
        model.W_U[1, digit(early)] = 1.0
        model.W_U[3, digit(late)] = 1.0
    return model


def records(*problems: tuple[int, str, int], with_steps: bool = False, answer_order: str = "plain") -> list[dict]:
    return [make_record(a, b, op, with_steps, answer_order) for a, op, b in problems]


def batch_for(model: Transformer, recs: list[dict]):
    return build_batch(recs, TOKENIZER, model.cfg.n_ctx, device=model.device)


def save_model(path, model: Transformer, task: dict = ADD_TASK) -> str:
    save_checkpoint(path, model, TOKENIZER, data=dict(task))
    return str(path)


@pytest.fixture
def tokenizer() -> Tokenizer:
    return TOKENIZER


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory) -> str:
    """A random 2-layer model of 1-3 digit addition saved as a checkpoint."""
    return save_model(tmp_path_factory.mktemp("ckpt") / "checkpoint_best.pt", random_model(seed=0))


@pytest.fixture(scope="session")
def ckpt(checkpoint_path):
    return load_checkpoint(checkpoint_path)
