"""The plotting home (reportgen.plots): figures from plain data, drawn without pyplot, and
matplotlib imported only when something is drawn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from reportgen.plots.toolkit import ExampleFigures


def test_importing_draws_nothing_and_drawing_leaves_pyplot_alone(tmp_path):
    """Reading a config or importing the plots costs no matplotlib; the API's figures do not switch
    a caller's pyplot backend (a notebook's): they never import pyplot."""
    code = ("import sys, numpy as np; import reportgen.analysis.config, reportgen.plots.report, "
            "reportgen.plots.toolkit as t; print('matplotlib' in sys.modules); "
            "png = t.training_curve_png([100, 200], [1.0, 0.5], [0.2, 0.9]); "
            "t.lens_predictions(np.full((2, 3), 0.5), np.zeros((2, 3)), ['embed', 'L0'], list('abc'), sys.argv[1]); "
            "print(png[:4] == b'\\x89PNG', 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "True", "False"]
    assert Image.open(tmp_path / "p.png").size[0] > 100


def test_attention_figures_redrawn_over_a_saved_background_match_a_full_redraw(tmp_path):
    """ExampleFigures draws the token labels once per example and then only each head's image,
    frame and title; what it writes must be what a full redraw shows, and a layer's figure must
    tile its heads' figures under the title."""
    tokens = ["BOS", "5", "9", "+", "7", "3", "=", "1", "3", "2", "EOS"]
    att = np.random.default_rng(0).random((2, 4, len(tokens), len(tokens)))
    figs = ExampleFigures(tokens, 4)
    figs.save(att[0], 0, tmp_path / "layer0.png", [tmp_path / f"l0h{h}.png" for h in range(4)])
    figs.save(att[1], 1, tmp_path / "layer1.png", [tmp_path / f"l1h{h}.png" for h in range(4)], "59+73=132")
    blitted = figs.head.draw().astype(int)  # state after the last head: layer 1, head 3
    figs.head.fig.canvas.draw()
    redrawn = np.asarray(figs.head.fig.canvas.buffer_rgba()).astype(int)
    assert figs.ax.get_title() == "Layer 1, head 3"
    assert np.abs(blitted - redrawn).max() <= 1

    def png(name):
        return np.asarray(Image.open(tmp_path / name)).astype(int)

    assert np.array_equal(png("l1h3.png"), redrawn[..., :3])
    heads = [png(f"l1h{h}.png") for h in range(4)]
    assert np.abs(heads[0] - png("l0h0.png")).max() > 50  # each layer shows its own data
    layer = png("layer1.png")
    th, tw = heads[0].shape[:2]
    assert layer.shape[1] == 4 * tw and layer.shape[0] > th
    assert all(np.array_equal(layer[-th:, h * tw : (h + 1) * tw], heads[h]) for h in range(4))
    assert (layer[: layer.shape[0] - th] < 128).any()  # the title band has text
