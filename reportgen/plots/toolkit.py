"""The PNG figures of `reportgen train` (training_curve.png), of `reportgen analyze` (per analysis)
and of the Python API classes (their `save_path`): the original toolkit's files, drawn from plain
data that the trainer, the analyses and the command hand over.

Each function writes its figure to `save_path` when one is given (110 dpi, cropped to what it
draws) and keeps nothing open. Figures are made with matplotlib's object API on the Agg renderer:
no pyplot, so no display is needed and a caller's own pyplot state (a notebook's backend) is left
alone.
"""

from __future__ import annotations

import io

import numpy as np


def import_writers() -> None:
    """Import matplotlib's figure and PNG writer now: called before forking the workers that draw,
    so that each does not import them again."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def _figure(w: float, h: float, dpi: float | None = None):
    """A figure `w` x `h` inches drawn by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, save_path) -> None:
    if save_path is not None:
        fig.savefig(save_path, dpi=110, bbox_inches="tight")


# ---------------------------------------------------------------- reportgen train
def training_curve_png(steps, train_loss, val_exact_match) -> bytes:
    """training_curve.png: train loss (log scale, left axis) and validation exact match (right axis)
    per evaluation step."""
    fig = _figure(6, 3.5)
    ax1 = fig.subplots()
    ax1.plot(steps, train_loss, color="tab:blue", label="train loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("train loss (answer tokens)")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(steps, val_exact_match, color="tab:orange", label="val exact match")
    ax2.set_ylabel("validation exact match")
    ax2.set_ylim(0, 1.02)
    fig.legend(loc="center right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


# ---------------------------------------------------------------- attention
def attention_heads(attention: np.ndarray, tokens: list[str], layer: int, save_path=None, title: str = "") -> None:
    """All heads of one layer side by side; `attention` is [H, n, n] (query rows, key columns)."""
    ExampleFigures(tokens, attention.shape[0]).save(attention, layer, save_path, title=title)


def attention_head(pattern: np.ndarray, tokens: list[str], layer: int, head: int, save_path=None) -> None:
    """One head's pattern [n, n] with token labels on both axes."""
    ExampleFigures(tokens, 1).save(pattern[None], layer, None, [save_path], heads=[head])


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
        side = max(2.6, 0.13 * len(tokens))  # room for a 7 pt tick label per token
        width, height = self.LEFT + side + self.RIGHT, self.BOTTOM + side + self.TOP
        fig = _figure(width, height, self.DPI)
        self.ax = fig.add_axes((self.LEFT / width, self.BOTTOM / height, side / width, side / height))
        self.im = _pattern(self.ax, np.zeros((len(tokens), len(tokens))), tokens, "")
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
            fig = _figure(self.cols * tw / self.DPI, self.BAND, self.DPI)
            text = fig.text(0.5, 0.5, "", ha="center", va="center", fontsize=12)
            self.band = (_Blitter(fig, [text], self.DPI), text)
        blitter, text = self.band
        text.set_text(title)
        band = blitter.draw()[:, : grid.shape[1]]
        return np.concatenate([band, grid])


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


def _pattern(ax, pattern: np.ndarray, tokens: list[str], title: str):
    im = ax.imshow(pattern, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tokens)), tokens, fontsize=7, rotation=90)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9)
    return im


# ---------------------------------------------------------------- logit lens
def lens_evolution(prob: np.ndarray, layer_labels: list[str], digit_labels: list[str], title: str,
                   save_path=None) -> None:
    """Probability of the correct digit [lens index, answer digit] at each lens index, a line per
    answer digit."""
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    for j, name in enumerate(digit_labels):
        ax.plot(range(len(layer_labels)), prob[:, j], marker="o", label=f"predicts {name}")
    ax.set_xticks(range(len(layer_labels)), layer_labels)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("residual stream after")
    ax.set_ylabel("P(correct digit | digits)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, save_path)


def lens_predictions(prob: np.ndarray, top: np.ndarray, layer_labels: list[str], digit_labels: list[str],
                     save_path=None) -> None:
    """Heatmap of P(correct digit) [lens index, answer digit], annotated with the top-1 digit."""
    fig = _figure(1.2 + 0.9 * prob.shape[1], 1.0 + 0.5 * len(layer_labels))
    ax = fig.subplots()
    im = ax.imshow(prob, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(top.shape[0]):
        for j in range(top.shape[1]):
            ax.text(j, i, str(int(top[i, j])), ha="center", va="center",
                    color="white" if prob[i, j] < 0.5 else "black", fontsize=9)
    ax.set_yticks(range(len(layer_labels)), layer_labels)
    ax.set_xticks(range(prob.shape[1]), digit_labels, fontsize=7)
    ax.set_title("top-1 digit (text), P(correct) (colour)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, save_path)


def digit_distribution(probs: np.ndarray, layer_labels: list[str], correct: int, title: str, save_path=None) -> None:
    """Heatmap of the digit distribution [lens index, digit] at one position."""
    fig = _figure(6, 1.0 + 0.45 * len(layer_labels))
    ax = fig.subplots()
    im = ax.imshow(probs, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(layer_labels)), layer_labels)
    ax.set_xticks(range(10), [str(d) for d in range(10)])
    ax.set_xlabel(f"digit (correct: {correct})")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, save_path)


# ---------------------------------------------------------------- probing, circuits, ablations
def probe_selectivity(panels: list[dict], ylabels: list[str], title: str, save_path=None) -> None:
    """Heatmaps of probe selectivity [site, position], one per panel (a layout) under each other;
    a panel: `matrix`, `xlabels`, `title`, `marked` ((row, column) cells drawn with '*')."""
    n_rows = len(ylabels)
    fig = _figure(10, 1.2 + 0.45 * n_rows * len(panels) + 0.9 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for i, j in panel["marked"]:
            ax.text(j, i, "*", ha="center", va="center", fontsize=9)
        im = ax.imshow(panel["matrix"], cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_yticks(range(n_rows), ylabels, fontsize=7)
        ax.set_xticks(range(len(panel["xlabels"])), panel["xlabels"], rotation=90, fontsize=7)
        ax.set_title(panel["title"], fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.03, label="selectivity")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, save_path)


def head_specialization(spec: np.ndarray, roles: list[str], save_path=None) -> None:
    """Role scores [layer, head, role] as one heatmap, a row per head."""
    L, H, R = spec.shape
    fig = _figure(1.5 + 1.1 * R, 1.0 + 0.35 * L * H)
    ax = fig.subplots()
    im = ax.imshow(spec.reshape(L * H, R), cmap="viridis", aspect="auto")
    ax.set_yticks(range(L * H), [f"L{l}H{h}" for l in range(L) for h in range(H)], fontsize=7)
    ax.set_xticks(range(R), roles, rotation=30, fontsize=8)
    ax.set_title("Head specialisation (role scores)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, save_path)


def layer_importance(components: list[str], drops: list[float], errors: list[list[float]], method: str,
                     save_path=None) -> None:
    """Bars of the exact-match drop when each component is ablated, with `errors` [below, above]."""
    fig = _figure(1.5 + 0.8 * len(components), 3.4)
    ax = fig.subplots()
    ax.bar(range(len(components)), drops, yerr=errors, capsize=3)
    ax.set_xticks(range(len(components)), components)
    ax.set_ylabel("exact-match drop vs clean")
    ax.set_title(f"Layer importance ({method} ablation)", fontsize=9)
    _save(fig, save_path)
