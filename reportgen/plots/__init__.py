"""Every figure reportgen draws, from plain data (numbers, numpy arrays, labels): numpy and
matplotlib only, so every stage may draw (the trainer, the analyses, the commands, render).

- `report`: the report's figures (model and study reports), SVG and PDF under a fixed style.
- `toolkit`: the PNG files of `reportgen train`, `reportgen analyze` and the Python API (the
  original toolkit's figures).

Matplotlib is imported inside the functions that draw, never by importing these modules, and
only through its object API on the Agg renderer (no pyplot: no display, no global state).
"""
