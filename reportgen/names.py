"""Names derived from text: the one slug rule, file- and URL-safe names, model names.

Used by every stage that names something after user text (a model after its run directory, a
sweep point after its settings, a site page after a model or an example), so that all of them
follow one rule: characters outside [A-Za-z0-9_-] become '-'.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def slug(text: str) -> str:
    """`text` with each run of characters outside [A-Za-z0-9_-] replaced by '-', and no '-' at
    either end (may be empty)."""
    return _UNSAFE.sub("-", str(text)).strip("-")


def safe_name(raw: str) -> str:
    """A file- and URL-safe name for `raw`: its slug (at most 60 characters), and where that
    changed it a short hash of the original, so that two different raw names never collide."""
    name = slug(raw)[:60] or "x"
    if name != raw:
        name = f"{name}-{hashlib.sha256(str(raw).encode()).hexdigest()[:8]}"
    return name


def unique_names(labels: list[str]) -> list[str]:
    """Slugs of [a-z0-9_-] for `labels`, made unique in order by suffixes -2, -3, ..."""
    taken: set[str] = set()
    out = []
    for label in labels:
        base = slug(label.lower()) or "model"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        out.append(name)
    return out


def run_name(path: str) -> str:
    """The run directory's name of a checkpoint (runs/add3_1layer/checkpoint_best.pt -> 'add3_1layer')."""
    p = Path(path).resolve()
    return p.parent.name or p.stem
