"""Digests of reportgen's own code and of library versions, so that cached results and rendered
sites are made again when the code that made them changes (the package version alone does not
move between development commits)."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

PACKAGE = Path(__file__).resolve().parent
# The stages in the order data flows through them (DESIGN): no module imports from a later stage.
STAGES = (("data",), ("model", "train"), ("analysis",), ("results",), ("render",))


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


def code_digest(libraries: Iterable[str], upto: Optional[str] = None) -> str:
    """sha256 over reportgen's Python sources and the installed versions of `libraries`.

    Every source file of the package counts, as found on disk (so a new module cannot be left
    out), but those of the stages after stage `upto` (a subpackage named in STAGES; None: none
    left out): those cannot change what `upto` makes. Shared modules outside the stages (atomic,
    parallel, the commands, ...) always count."""
    h = hashlib.sha256()
    feed_files(h, PACKAGE, source_files(upto))
    for lib in libraries:
        feed(h, f"{lib}={library_version(lib)}".encode())
    return h.hexdigest()


def source_files(upto: Optional[str] = None) -> list[Path]:
    """The package's Python files, but those of the stages after `upto`, in a fixed order."""
    later: set[str] = set()
    if upto is not None:
        (at,) = [i for i, stage in enumerate(STAGES) if upto in stage]
        later = {name for stage in STAGES[at + 1:] for name in stage}
    return sorted((p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in later),
                  key=lambda p: p.relative_to(PACKAGE).as_posix())


def library_version(lib: str) -> Optional[str]:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None
