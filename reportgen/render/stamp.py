"""Build stamps: skip re-rendering a site whose inputs have not changed.

A site's stamp (`.reportgen-site.json` inside it) records a fingerprint of everything that
determines its bytes (the results, the PDF switch, the templates, the render code and the
versions of the libraries that draw and typeset) and the sha256 of every file written. A site is
current only when the fingerprint matches and its files are exactly those recorded, so a site
edited or damaged by hand is rendered again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reportgen.fingerprint import code_digest, feed, feed_files
from reportgen.render.site import RENDER_LIBRARIES, TEMPLATES

STAMP_FILE = ".reportgen-site.json"


def fingerprint(json_bytes: bytes, npz_bytes: bytes, pdf: bool) -> str:
    """sha256 over the results, the PDF switch, the templates, render code and library versions."""
    h = hashlib.sha256()
    for part in (json_bytes, npz_bytes, b"pdf" if pdf else b"no-pdf"):
        feed(h, part)
    feed_files(h, TEMPLATES, sorted(TEMPLATES.rglob("*")))
    feed(h, code_digest(("render", "results"), RENDER_LIBRARIES).encode())
    return h.hexdigest()


def write_stamp(site: Path, fingerprint_: str) -> None:
    """Record the fingerprint and every file's sha256 (call last, after all files are written)."""
    stamp = {"fingerprint": fingerprint_, "files": _file_hashes(site)}
    (site / STAMP_FILE).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def is_current(site: Path, fingerprint_: str) -> bool:
    """True when `site` was rendered from the same inputs and no file has changed since."""
    try:
        stamp = json.loads((site / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("fingerprint") != fingerprint_:
        return False
    try:
        return stamp.get("files") == _file_hashes(site)
    except OSError:
        return False


def _file_hashes(site: Path) -> dict[str, str]:
    return {p.relative_to(site).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(site.rglob("*")) if p.is_file() and p.name != STAMP_FILE}

