"""Replace an output directory as a whole: write a sibling temporary directory, then swap it in.

A failed or interrupted write leaves the previous directory exactly as it was; readers never
see a half-written one. Every directory written this way records its files and their sha256 in
`.reportgen-files.json`, and `check_replaceable` lets a later run replace only a directory that
holds exactly those files, unchanged: a file a user added or edited there is never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from reportgen.errors import ReportgenError

MANIFEST = ".reportgen-files.json"
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # written by file browsers, never by users


def replace_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on an empty directory beside `out`, record its files, then put it in
    `out`'s place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; outputs are meant to be shared
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"files": file_hashes(tmp)}, indent=1, sort_keys=True) + "\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_hashes(d: Path) -> dict[str, str]:
    """sha256 of every file under `d` (but the manifest and file-browser clutter), by relative path."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST and p.name not in OS_CLUTTER}


def unchanged(d: Path) -> bool:
    """True when `d` holds exactly the files its manifest records, byte for byte."""
    recorded = _recorded(d)
    try:
        return recorded is not None and recorded == file_hashes(d)
    except OSError:
        return False


def check_replaceable(out: Path, flag: str, what: str) -> None:
    """Refuse (one line naming the first few files) to replace a directory holding anything a
    reportgen run did not write there or that was changed since; an empty one is fine."""
    if not out.is_dir() or not any(p.name not in OS_CLUTTER for p in out.iterdir()):
        return
    foreign = _foreign(out)
    if foreign is None:
        raise ReportgenError(f"{flag} {out} holds files reportgen did not write (no {MANIFEST}); "
                             f"choose another {flag} or empty it")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ReportgenError(f"{flag} {out} holds files added or changed since reportgen wrote {what} there "
                             f"({shown}); move them out or choose another {flag}")


def _foreign(d: Path) -> Optional[list[str]]:
    """Files of `d` that are not in its manifest as written: added or changed (None: no readable
    manifest). A recorded file since deleted loses nothing when `d` is replaced."""
    recorded = _recorded(d)
    if recorded is None:
        return None
    try:
        current = file_hashes(d)
    except OSError:
        return None
    return sorted(p for p, h in current.items() if recorded.get(p) != h)


def _recorded(d: Path) -> Optional[dict]:
    try:
        recorded = json.loads((d / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _swap_in(new: Path, out: Path) -> None:
    """Replace `out` by `new` with two renames; on failure the old `out` is put back."""
    old = new.with_name(new.name + ".old")
    moved = False
    try:
        if out.exists():
            os.rename(out, old)
            moved = True
        os.rename(new, out)
    except BaseException:
        if moved and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
