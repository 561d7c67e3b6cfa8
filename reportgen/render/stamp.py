"""Build stamps: skip re-rendering a site whose inputs have not changed.

A site's stamp (`.reportgen-site.json` inside it) records a fingerprint of everything that
determines its bytes (the results, the PDF switch, the templates, the render code and the
versions of the libraries that draw and typeset). A site is current only when the fingerprint
matches and its files are exactly those the directory's manifest records (`reportgen.atomic`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reportgen.atomic import unchanged
from reportgen.fingerprint import code_digest, feed, feed_files
from reportgen.render.site import RENDER_LIBRARIES, TEMPLATES

STAMP_FILE = ".reportgen-site.json"


def fingerprint(json_bytes: bytes, npz_bytes: bytes, pdf: bool, summary: bool = False) -> str:
    """sha256 over the results, the PDF switch, the templates, reportgen's code (all of it: render
    is the last stage) and library versions."""
    h = hashlib.sha256()
    for part in (json_bytes, npz_bytes, (b"summary-pdf" if summary else b"pdf") if pdf else b"no-pdf"):
        feed(h, part)
    feed_files(h, TEMPLATES, sorted(TEMPLATES.rglob("*")))
    feed(h, code_digest(RENDER_LIBRARIES, upto="render").encode())
    return h.hexdigest()


def write_stamp(site: Path, fingerprint_: str) -> None:
    (site / STAMP_FILE).write_text(json.dumps({"fingerprint": fingerprint_}, indent=1) + "\n")


def is_current(site: Path, fingerprint_: str) -> bool:
    """True when `site` was rendered from the same inputs and no file has changed since."""
    try:
        stamp = json.loads((site / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("fingerprint") == fingerprint_ and unchanged(site)
