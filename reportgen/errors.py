"""The one error type users see: a one-line message saying what is wrong and what to do."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional


class ReportgenError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits 2."""

    exit_code = 2


class Interrupted(ReportgenError):
    """Ctrl-C, with what was saved and how to go on; the CLI exits 130 (as for SIGINT)."""

    exit_code = 130


def out_of_memory(e: RuntimeError) -> bool:
    """Whether a torch error is an allocation failure, which torch raises as RuntimeError, not
    MemoryError: CUDA's OutOfMemoryError ('CUDA out of memory') or the CPU allocator's ("can't
    allocate memory")."""
    return "out of memory" in str(e) or "can't allocate memory" in str(e)


def os_error_advice(e: OSError) -> str:
    """What to do about a file system error, in a few words."""
    return {
        errno.ENOSPC: "free some disk space (or choose another location) and run again",
        errno.EDQUOT: "your disk quota is used up: free some space and run again",
        errno.EROFS: "the file system is read-only: choose a writable location",
        errno.EACCES: "you lack permission there: choose a directory you can write to",
        errno.EPERM: "the operation is not permitted there: choose a directory you can write to",
        errno.EFBIG: "a file size limit (ulimit -f) stopped the write: raise it and run again",
        errno.ENOTDIR: "a part of the path is a file, not a directory: fix the path",
        errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    }.get(e.errno, "check the path, the disk and permissions and run again")


def file_problem(path: str | Path) -> Optional[str]:
    """Why `path` cannot be read as a file, in words (None when it can): missing, a directory, a
    broken or looping symbolic link, a device, unreadable."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if e.errno == errno.ENOENT:
            return "not found"
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "is a device, not a file"
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):  # a pipe, e.g. <(...), is read as a file
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None
