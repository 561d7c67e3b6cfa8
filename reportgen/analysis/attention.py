"""Attention patterns (DESIGN §4.1): per-head statistics and role scores at the answer-predicting
positions, each with a bootstrap interval over examples and the same head of an untrained twin.

Per-head statistics of the query row A[h, q, :] at each position q that predicts an answer digit:
entropy / log(q + 1) (the q + 1 visible keys; rows with one visible key are excluded), attention
to the previous token, to BOS (the sink), to '=' and to the operator token. Role scores are the
attention mass from the position predicting answer column n to the operand digits of column n
("column"), of column n-1 ("carry_source") and to the operator ("operator"). Column n of an
operand is its n-th digit from the right; an operand without that digit contributes nothing, and
a query whose role has no key at all (column 0's carry source, the leading carry digit's column)
is left out of that role's mean. Every value is first averaged over an example's answer digits,
so the bootstrap resamples examples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from reportgen.analysis import stats
from reportgen.analysis.api import check_layers, pyplot, save_figure, task_of, text_batch, token_labels
from reportgen.analysis.engine import run_with_cache, untrained_twin
from reportgen.analysis.examples import ExampleBatch
from reportgen.analysis.findings import AttentionFindings, HeadStats, RoleScore
from reportgen.data.arithmetic import predicting_positions
from reportgen.data.tokenizer import Tokenizer
from reportgen.model.transformer import Transformer

STATS = ("entropy", "prev_token", "sink", "equals", "operator")
ROLES = ("column", "carry_source", "operator")


@dataclass
class QueryLayout:
    """Where each answer-predicting query looks: its position and the key positions of each role."""

    pred_pos: torch.Tensor  # [B, A] token index predicting each written answer digit
    mask: torch.Tensor  # [B, A] real answer digits
    role_keys: torch.Tensor  # [B, A, R, P] bool: key positions of each role (ROLES order)
    equals_pos: torch.Tensor  # [B]
    operator_pos: torch.Tensor  # [B]


def prompt_positions(record: dict) -> tuple[int, int, dict[int, int], dict[int, int]]:
    """Token indices of the operator, '=', and the digits of a and b by column n.

    The prompt is '<a><op><b>='; character c is token c + 1.
    """
    prompt, labels = record["prompt"], record["labels"]
    op_char = prompt.index(record["op"])
    eq_char = len(prompt) - 1
    a_pos = {n: op_char - n for n in range(labels["len_a"])}
    b_pos = {n: eq_char - n for n in range(labels["len_b"])}
    return op_char + 1, eq_char + 1, a_pos, b_pos


def query_layout(records: list[dict], n_pos: int, device="cpu") -> QueryLayout:
    """Role key masks for the answer-predicting positions of each record (padded to n_pos)."""
    A = max(len(predicting_positions(r)) for r in records)
    pred_pos = torch.zeros(len(records), A, dtype=torch.long)
    mask = torch.zeros(len(records), A, dtype=torch.bool)
    keys = torch.zeros(len(records), A, len(ROLES), n_pos, dtype=torch.bool)
    eq_pos = torch.zeros(len(records), dtype=torch.long)
    op_pos = torch.zeros(len(records), dtype=torch.long)
    for i, r in enumerate(records):
        op_pos[i], eq_pos[i], a_pos, b_pos = prompt_positions(r)
        for j, (q, n) in enumerate(predicting_positions(r)):
            pred_pos[i, j], mask[i, j] = q, True
            for col, role in ((n, 0), (n - 1, 1)):
                for pos in (a_pos.get(col), b_pos.get(col)):
                    if pos is not None:
                        keys[i, j, role, pos] = True
            keys[i, j, 2, op_pos[i]] = True
    return QueryLayout(*(t.to(device) for t in (pred_pos, mask, keys, eq_pos, op_pos)))


def layout_for_batch(batch: ExampleBatch) -> QueryLayout:
    return query_layout(batch.records, batch.tokens.shape[1], batch.tokens.device)


def stacked_patterns(cache: dict[str, torch.Tensor], n_layers: int) -> torch.Tensor:
    """Attention patterns of every layer from a cache: [L, B, H, P, P]."""
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(n_layers)])


@dataclass
class AttentionArrays:
    """Per-example means over answer digits (NaN where an example has no valid query)."""

    stats: dict[str, torch.Tensor]  # name -> [B, L, H]
    roles: torch.Tensor  # [B, L, H, R]
    chance: torch.Tensor  # [B, R] mass a uniform head would put on each role's keys


def attention_arrays(patterns: torch.Tensor, layout: QueryLayout) -> AttentionArrays:
    """Statistics and role scores of `patterns` [L, B, H, P, P] at the layout's queries."""
    B = patterns.shape[1]
    rows = patterns.permute(1, 3, 0, 2, 4)[torch.arange(B, device=patterns.device)[:, None], layout.pred_pos]
    # rows: [B, A, L, H, P(keys)]
    q = layout.pred_pos[:, :, None, None]
    valid = layout.mask[:, :, None, None].expand(rows.shape[:-1])

    def at(pos: torch.Tensor) -> torch.Tensor:
        return rows.gather(-1, pos.expand(*rows.shape[:-1], 1)).squeeze(-1)

    visible = (q + 1).to(rows.dtype)
    entropy = -torch.special.xlogy(rows, rows).sum(-1) / visible.log()
    values = {
        "entropy": entropy.masked_fill(~valid | (q < 1), float("nan")),
        "prev_token": at((q - 1).clamp(min=0)[..., None]).masked_fill(~valid | (q < 1), float("nan")),
        "sink": at(torch.zeros_like(q)[..., None]),
        "equals": at(layout.equals_pos[:, None, None, None, None]),
        "operator": at(layout.operator_pos[:, None, None, None, None]),
    }
    per_example = {k: _example_mean(v.masked_fill(~valid, float("nan"))) for k, v in values.items()}

    keys = layout.role_keys.to(rows.dtype)  # [B, A, R, P]
    mass = torch.einsum("balhp,barp->balhr", rows, keys)
    has_keys = (layout.role_keys.any(-1) & layout.mask[..., None])  # [B, A, R]
    mass = mass.masked_fill(~has_keys[:, :, None, None, :], float("nan"))
    chance = (keys.sum(-1) / visible[:, :, 0]).masked_fill(~has_keys, float("nan"))
    return AttentionArrays(per_example, _example_mean(mass), _example_mean(chance))


def _example_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the answer-digit axis (1), ignoring NaNs; all-NaN stays NaN."""
    return torch.nanmean(x, dim=1)


def summarize(arrays: AttentionArrays, twin: AttentionArrays, layers: list[int], seed: int) -> AttentionFindings:
    """AttentionFindings for `layers` from the per-example arrays of the model and its twin."""
    n_heads = arrays.roles.shape[2]
    chance = torch.nanmean(arrays.chance, dim=0).cpu().numpy()
    head_stats, role_scores = [], []
    for l in layers:
        for h in range(n_heads):
            est = {k: stats.estimate(_np(v[:, l, h]), seed) for k, v in arrays.stats.items()}
            head_stats.append(HeadStats(layer=l, head=h, **est))
            for r, role in enumerate(ROLES):
                role_scores.append(RoleScore(
                    layer=l, head=h, role=role,
                    score=stats.estimate(_np(arrays.roles[:, l, h, r]), seed),
                    expected=1.0,
                    untrained=stats.estimate(_np(twin.roles[:, l, h, r]), seed),
                    chance=float(chance[r]),
                ))
    return AttentionFindings(head_stats=head_stats, role_scores=role_scores)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def analyze_attention(
    batch: ExampleBatch, cache: dict, twin_cache: dict, n_layers: int, layers: list[int], seed: int
) -> AttentionFindings:
    """DESIGN §4.1 over a batch, from the cached patterns of the model and of its untrained twin."""
    layout = layout_for_batch(batch)
    arrays = attention_arrays(stacked_patterns(cache, n_layers), layout)
    twin = attention_arrays(stacked_patterns(twin_cache, n_layers), layout)
    return summarize(arrays, twin, layers, seed)


def example_stats(attention: np.ndarray, record: dict, layers: list[int]) -> list[dict]:
    """Per-head statistics and role scores of one example from its attention [L, H, n, n]."""
    patterns = torch.as_tensor(attention, dtype=torch.float32)[:, None]
    arrays = attention_arrays(patterns, query_layout([record], attention.shape[-1]))
    out = []
    for l in layers:
        for h in range(attention.shape[1]):
            row = {"layer": l, "head": h}
            row.update({k: _float(v[0, l, h]) for k, v in arrays.stats.items()})
            row.update({f"role_{role}": _float(arrays.roles[0, l, h, r]) for r, role in enumerate(ROLES)})
            out.append(row)
    return out


def _float(x: torch.Tensor) -> Optional[float]:
    """JSON-safe float: None for NaN (a statistic with no valid query)."""
    v = float(x)
    return None if np.isnan(v) else v


def write_example_stats(path, attention: np.ndarray, record: dict, tokens: list[str], layers: list[int]) -> None:
    """`example_{i}_stats.json`: the example, its answer positions and per-head statistics."""
    data = {
        "prompt": record["prompt"],
        "target": record["target"],
        "tokens": tokens,
        "answer_positions": [q for q, _ in predicting_positions(record)],
        "definitions": {
            "entropy": "row entropy / log(number of visible keys), mean over answer-predicting positions",
            "prev_token": "attention to the previous token", "sink": "attention to BOS",
            "equals": "attention to '='", "operator": "attention to the operator token",
            "role_column": "mass on the operand digits of the column being predicted",
            "role_carry_source": "mass on the operand digits of the column below (carry source)",
            "role_operator": "mass on the operator token",
        },
        "heads": example_stats(attention, record, layers),
    }
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def plot_layer_heads(attention: np.ndarray, tokens: list[str], layer: int, save_path=None, title: str = "") -> None:
    """All heads of one layer side by side; `attention` is [H, n, n] (query rows, key columns)."""
    with ExampleFigures(tokens, attention.shape[0]) as figs:
        figs.save(attention, layer, save_path, title=title)


def plot_head(attention: np.ndarray, tokens: list[str], layer: int, head: int, save_path=None) -> None:
    """One head's pattern [n, n] with token labels on both axes."""
    with ExampleFigures(tokens, 1) as figs:
        figs.save(attention[None], layer, None, [save_path], heads=[head])


class ExampleFigures:
    """The attention figures of one example, for every layer: each head alone, and all heads of a
    layer side by side under a title.

    One head figure (pattern, token labels, colour bar, title) is drawn once per example; each
    head then redraws only its image, frame and title over that saved background, since the
    token labels are most of the drawing cost. A layer's figure tiles its heads' figures.
    """

    DPI = 110
    LEFT, RIGHT, BOTTOM, TOP, BAND = 0.75, 0.8, 0.75, 0.4, 0.45  # inches around a pattern; title band

    def __init__(self, tokens: list[str], n_heads: int):
        plt = pyplot()
        side = max(2.6, 0.13 * len(tokens))  # room for a 7 pt tick label per token
        width, height = self.LEFT + side + self.RIGHT, self.BOTTOM + side + self.TOP
        fig = plt.figure(figsize=(width, height), dpi=self.DPI)
        self.ax = fig.add_axes((self.LEFT / width, self.BOTTOM / height, side / width, side / height))
        self.im = _draw(self.ax, np.zeros((len(tokens), len(tokens))), tokens, "")
        cax = fig.add_axes(((self.LEFT + side + 0.12) / width, self.BOTTOM / height, 0.12 / width, side / height))
        fig.colorbar(self.im, cax=cax)
        self.head = _Blitter(fig, [self.im, *self.ax.spines.values(), self.ax.title], self.DPI)
        self.cols = min(n_heads, 4)
        self.band = None  # the layer title's figure, made at the first layer figure

    def save(self, attention: np.ndarray, layer: int, layer_path=None, head_paths=None, title: str = "",
             heads=None) -> None:
        """Patterns `attention` [H, n, n] of `layer`: each head's figure to `head_paths[h]` and
        all of them to `layer_path` (None skips a file)."""
        heads = list(range(len(attention))) if heads is None else heads
        head_paths = head_paths or [None] * len(attention)
        tiles = []
        for pattern, h, path in zip(attention, heads, head_paths):
            self.im.set_data(pattern)
            self.ax.set_title(f"Layer {layer}, head {h}", fontsize=9)
            tile = self.head.draw().copy()
            tiles.append(tile)
            if path is not None:
                _write_png(tile, path)
        if layer_path is not None:
            _write_png(self._layer_pixels(tiles, title or f"Layer {layer}: all heads"), layer_path)

    def _layer_pixels(self, tiles: list[np.ndarray], title: str) -> np.ndarray:
        th, tw = tiles[0].shape[:2]
        rows = -(-len(tiles) // self.cols)
        grid = np.full((rows * th, self.cols * tw, 4), 255, dtype=np.uint8)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, self.cols)
            grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
        if self.band is None:
            fig = pyplot().figure(figsize=(self.cols * tw / self.DPI, self.BAND), dpi=self.DPI)
            text = fig.text(0.5, 0.5, "", ha="center", va="center", fontsize=12)
            self.band = (_Blitter(fig, [text], self.DPI), text)
        blitter, text = self.band
        text.set_text(title)
        band = blitter.draw()[:, : grid.shape[1]]
        return np.concatenate([band, grid])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        save_figure(self.head.fig, None)
        if self.band is not None:
            save_figure(self.band[0].fig, None)


class _Blitter:
    """Draws a figure once with the `changing` artists hidden, keeps that background, and from
    then on redraws only those artists over it."""

    def __init__(self, fig, changing: list, dpi: float):
        self.fig, self.changing, self.dpi = fig, changing, dpi
        self.background = None

    def draw(self) -> np.ndarray:
        """The figure's pixels [rows from the top, columns, RGBA] with the artists' current state
        (a view of the canvas, valid until the next draw)."""
        fig, canvas = self.fig, self.fig.canvas
        if self.background is None:
            fig.set_dpi(self.dpi)
            for artist in self.changing:
                artist.set_visible(False)
            canvas.draw()
            self.background = canvas.copy_from_bbox(fig.bbox)
            for artist in self.changing:
                artist.set_visible(True)
        canvas.restore_region(self.background)
        for artist in self.changing:
            fig.draw_artist(artist)
        return np.asarray(canvas.buffer_rgba())


def _write_png(rgba: np.ndarray, path) -> None:
    """An opaque figure's pixels as an RGB PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(path, compress_level=1)  # encoding was the cost


def _draw(ax, pattern: np.ndarray, tokens: list[str], title: str):
    im = ax.imshow(pattern, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tokens)), tokens, fontsize=7, rotation=90)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    return im


class AttentionAnalyzer:
    """Attention patterns of a model on problems given as text ('59 + 73').

    `task` is the checkpoint's data spec (`Checkpoint.task`); without it, `api.task_of` decides.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)

    def patterns(self, text: str) -> tuple[list[str], np.ndarray]:
        """Token labels and attention [L, H, n, n] of the model's full input for one problem."""
        batch = text_batch(self.model, self.tokenizer, [text], self.task)
        _, cache = run_with_cache(self.model, batch, names=lambda n: n.endswith("hook_pattern"))
        n = int(batch.lengths[0])
        att = _np(stacked_patterns(cache, self.model.cfg.n_layers)[:, 0, :, :n, :n])
        return token_labels(self.tokenizer, batch.tokens[0, :n]), att

    def plot_attention_heads(self, text: str, layer_idx: int, save_path=None) -> np.ndarray:
        """Plot every head of layer `layer_idx` for one problem; returns that layer's [H, n, n]."""
        (layer,) = check_layers([layer_idx], self.model.cfg.n_layers)
        tokens, att = self.patterns(text)
        plot_layer_heads(att[layer], tokens, layer, save_path, title=f"{text}: layer {layer}")
        return att[layer]

    def plot_head(self, text: str, layer_idx: int, head_idx: int, save_path=None) -> np.ndarray:
        """Plot one head for one problem; returns its [n, n] pattern."""
        (layer,) = check_layers([layer_idx], self.model.cfg.n_layers)
        tokens, att = self.patterns(text)
        plot_head(att[layer, head_idx], tokens, layer, head_idx, save_path)
        return att[layer, head_idx]

    def head_statistics(self, texts: list[str], layers: Optional[list[int]] = None, seed: int = 0) -> AttentionFindings:
        """DESIGN §4.1 statistics and role scores over `texts`, against an untrained twin."""
        n_layers = self.model.cfg.n_layers
        layers = check_layers(range(n_layers) if layers is None else layers, n_layers)
        batch = text_batch(self.model, self.tokenizer, texts, self.task)
        only = lambda n: n.endswith("hook_pattern")  # noqa: E731
        _, cache = run_with_cache(self.model, batch, names=only)
        _, twin_cache = run_with_cache(untrained_twin(self.model, seed), batch, names=only)
        return analyze_attention(batch, cache, twin_cache, n_layers, layers, seed)
