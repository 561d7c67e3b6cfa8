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
LEGACY_MANIFEST = ".reportgen-site.json"  # sites written before MANIFEST recorded their files here
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # written by file browsers, never by users


def replace_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on an empty directory beside `out`, record its files, then put it in
    `out`'s place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; outputs are as shared as the user's files
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"files": file_hashes(tmp)}, indent=1, sort_keys=True) + "\n")
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_hashes(d: Path) -> dict[str, str]:
    """sha256 of every file under `d` (but its manifest and file-browser clutter), by relative path."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p != d / MANIFEST and p.name not in OS_CLUTTER}


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
    problem = _unreplaceable(out)
    if problem:
        raise ReportgenError(f"{flag} {out} {problem}; move them out or choose another {flag}")


def _unreplaceable(d: Path) -> Optional[str]:
    """Why `d` must not be replaced (it holds files no manifest records, or files added or changed
    since), or None."""
    if not d.is_dir() or not any(p.name not in OS_CLUTTER for p in d.iterdir()):
        return None
    foreign = _foreign(d)
    if foreign is None:
        return (f"holds files that no reportgen manifest ({MANIFEST}) records: not reportgen's output, or written "
                "by a reportgen older than this check")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"holds files added or changed since reportgen wrote it ({shown})"
    return None


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
    """The files `d`'s manifest records (or, for an older site, its stamp), or None."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        try:
            raw = (d / name).read_bytes()
            recorded = json.loads(raw)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(recorded, dict):  # an old stamp did not list itself
            return recorded if name == MANIFEST else {**recorded, name: hashlib.sha256(raw).hexdigest()}
    return None


def _swap_in(new: Path, out: Path) -> None:
    """Replace `out` by `new` with two renames; on failure the old `out` is put back. `out` is
    checked again once moved aside: a file added to it while the new one was written is kept."""
    old = new.with_name(new.name + ".old")
    moved = False
    try:
        if out.exists():
            os.rename(out, old)
            moved = True
            problem = _unreplaceable(old)
            if problem:
                raise ReportgenError(f"{out} {problem} while reportgen was writing it; nothing was replaced: "
                                     "move those files out and run again")
        os.rename(new, out)
    except BaseException:
        if moved and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
