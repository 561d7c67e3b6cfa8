"""Replace an output directory as a whole: write a sibling temporary directory, then swap it in.

A failed or interrupted write leaves the previous directory exactly as it was; readers never
see a half-written one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def replace_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on an empty directory beside `out`, then put it in `out`'s place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; outputs are meant to be shared
        write(tmp)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
