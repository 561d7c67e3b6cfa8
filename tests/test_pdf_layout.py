"""The PDF of the demo report is laid out for a paper: pages are filled, except the last page of
a chapter. Measured on a real build of the two demo checkpoints, from each page rendered by
pdftoppm: a page's fill is how far down its body (inside the @page margins) the last ink reaches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pypdf = pytest.importorskip("pypdf")
Image = pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.slow  # a build of both demo models with their PDF: about a minute

ROOT = Path(__file__).resolve().parents[1]
MARGIN_TOP_MM, MARGIN_BOTTOM_MM, A4_HEIGHT_MM = 22, 20, 297  # templates/static/print.css @page
LOW_FILL, MAX_LOW_SHARE = 0.4, 0.10


def page_fills(pdf: Path, out: Path, dpi: int = 20) -> list[float]:
    """Per page, the share of the body's height above its lowest inked row."""
    subprocess.run(["pdftoppm", "-r", str(dpi), "-gray", "-png", str(pdf), str(out / "p")], check=True, timeout=300)
    fills = []
    for png in sorted(out.glob("p-*.png"), key=lambda p: int(p.stem.split("-")[1])):
        page = np.asarray(Image.open(png).convert("L"), dtype=float)
        top = int(page.shape[0] * MARGIN_TOP_MM / A4_HEIGHT_MM)
        bottom = int(page.shape[0] * (A4_HEIGHT_MM - MARGIN_BOTTOM_MM) / A4_HEIGHT_MM)
        inked = np.nonzero((page[top:bottom] < 200).any(axis=1))[0]
        fills.append(0.0 if inked.size == 0 else (inked[-1] + 1) / (bottom - top))
    return fills


def chapter_ends(pdf: Path) -> set[int]:
    """0-based indices of the last page of every chapter (top-level bookmark) and the title page."""
    reader = pypdf.PdfReader(pdf)
    starts = {reader.get_destination_page_number(item) for item in reader.outline if not isinstance(item, list)}
    return {s - 1 for s in starts if s > 0} | {len(reader.pages) - 1, 0}


@pytest.fixture(scope="module")
def demo_pdf(tmp_path_factory) -> Path:
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    d = tmp_path_factory.mktemp("demo-pdf")
    (d / "config.yaml").write_text((ROOT / "configs" / "interpretability.yaml").read_text()
                                   .replace("n_example_pages: 8", "n_example_pages: 4"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1700000000"}
    proc = subprocess.run([sys.executable, "-m", "reportgen", "build",
                           "--checkpoint", str(ROOT / "runs/add3_rev/checkpoint_best.pt"),
                           "--compare", str(ROOT / "runs/add3_steps/checkpoint_best.pt"),
                           "--config", str(d / "config.yaml"), "--out", str(d / "site"), "--no-cache"],
                          cwd=d, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    return d / "site" / "report.pdf"


def test_at_most_a_tenth_of_the_pages_are_less_than_40_percent_filled(demo_pdf, tmp_path):
    fills = page_fills(demo_pdf, tmp_path)
    ends = chapter_ends(demo_pdf)
    assert len(fills) == len(pypdf.PdfReader(demo_pdf).pages)
    low = [i + 1 for i, fill in enumerate(fills) if fill < LOW_FILL and i not in ends]
    assert len(low) <= MAX_LOW_SHARE * len(fills), f"pages under 40% filled: {low} of {len(fills)}"


def test_no_page_ends_in_a_heading(demo_pdf):
    """A heading is kept with its content: the last text line of no page is a section heading."""
    reader = pypdf.PdfReader(demo_pdf)
    headings = {item.title for item in _walk(reader.outline)}
    for number, page in enumerate(reader.pages, 1):
        lines = [line.strip() for line in page.extract_text().splitlines() if line.strip()]
        body = [line for line in lines if not line.startswith("Page ")]
        assert body and body[-1] not in headings or number == 1, f"page {number} ends in the heading {body[-1]!r}"


def _walk(items):
    for item in items:
        if isinstance(item, list):
            yield from _walk(item)
        else:
            yield item
