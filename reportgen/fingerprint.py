"""Digests of reportgen's own code and of library versions, so that cached results and rendered
sites are made again when the code that made them changes (the package version alone does not
move between development commits)."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

PACKAGE = Path(__file__).resolve().parent


def feed(h, data: bytes) -> None:
    """Length-prefixed, so that different splits of the same bytes hash differently."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def feed_files(h, root: Path, paths: Iterable[Path]) -> None:
    """Each file's path relative to `root` and its bytes, in the given order."""
    for path in paths:
        if path.is_file():
            feed(h, str(path.relative_to(root)).encode())
            feed(h, path.read_bytes())


def code_digest(parts: Iterable[str], libraries: Iterable[str]) -> str:
    """sha256 over reportgen's Python sources in `parts` (subpackages or single modules, relative
    to the package) and the installed versions of `libraries`."""
    h = hashlib.sha256()
    paths = [PACKAGE / part for part in parts]
    feed_files(h, PACKAGE, [f for p in paths for f in (sorted(p.glob("*.py")) if p.is_dir() else [p])])
    for lib in libraries:
        feed(h, f"{lib}={library_version(lib)}".encode())
    return h.hexdigest()


def library_version(lib: str) -> Optional[str]:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None
