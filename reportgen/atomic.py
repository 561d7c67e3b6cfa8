"""Outputs written whole: single files through a temporary file and a rename, directories by
writing a sibling temporary directory and swapping it in.

A failed, interrupted or killed write leaves the previous file or directory exactly as it was;
readers never see a half-written one. Every directory written this way records its files and their
sha256 in `.reportgen-files.json`, and `check_replaceable` lets a later run replace only a
directory that holds exactly those files, unchanged: a file a user added or edited there is never
deleted. A run killed part way leaves at most a hidden sibling (`.NAME.tmp-*`, `.NAME.trash-*`),
which the next run writing NAME cleans up (or, where it holds the user's files, puts back).
Directories reportgen shares with the user (a training run) get single files written through
`OwnedFiles`, which replaces only files reportgen wrote there itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from reportgen.errors import ReportgenError, os_error_advice

MANIFEST = ".reportgen-files.json"
LEGACY_MANIFEST = ".reportgen-site.json"  # sites written before MANIFEST recorded their files here
PARTIAL = ".reportgen-partial"  # in a directory still being written: which process writes it
RUN_RECORD = ".reportgen-run.json"  # in a training run directory: the sha256 of each file reportgen wrote there
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # written by file browsers, never by users
STALE_S = 60  # an empty or unmarked leftover this old cannot belong to a run that is still starting


# ---------------------------------------------------------------- whole directories
def replace_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on an empty directory beside `out`, record its files, then put it in
    `out`'s place.

    At every instant `out` is the old directory or the new one, whole: the two are exchanged in one
    rename where the file system allows it. A file system error (a full disk, a read-only or
    unwritable directory) is a one-line ReportgenError and leaves `out` as it was.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        recover(out)
        tmp = partial_dir(out)
    except OSError as e:
        raise write_error(out, e) from None
    try:
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"files": file_hashes(tmp)}, indent=1, sort_keys=True) + "\n")
        with _locked(out.parent):  # a concurrent recover() must not take the finished directory for a leftover
            (tmp / PARTIAL).unlink()
            old = _swap_in(tmp, out)
            if old is not None:
                _discard(old)
    except OSError as e:
        raise write_error(out, e) from None
    finally:
        _discard(tmp)


def check_out_dir(out: Path, flag: str = "--out", what: str = "the site") -> None:
    """Refuse an output that is not a directory we may replace (empty, or holding exactly what a
    reportgen run wrote there), or whose parent is not writable. Leftovers of an earlier run that
    was killed while it wrote `out` are cleaned up (or put back) first. `flag` and `what` name it
    in errors."""
    if out.exists() and not out.is_dir():
        raise ReportgenError(f"{flag} {out} is a file; give a directory for {what}")
    recover(out)
    check_replaceable(out, flag, what)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent)).rmdir()
    except OSError as e:
        raise ReportgenError(
            f"cannot write {what} to {out}: {e.strerror or e} ({e.filename}); {os_error_advice(e)}"
        ) from None


def partial_dir(out: Path) -> Path:
    """A new empty directory beside `out`, marked as being written by this process (see recover()).

    Its name names this process too, so a run killed before the marker is written leaves nothing
    recover() cannot attribute.
    """
    me = _this_process()
    host = hashlib.sha256(me["host"].encode()).hexdigest()[:8]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{me['pid']}.{me['start'] or 'x'}.{host}-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; outputs are as shared as the user's files
        (tmp / PARTIAL).write_text(json.dumps(me))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def write_error(out: Path, e: OSError) -> ReportgenError:
    """The one-line error for a file system error while writing `out` (nothing was replaced)."""
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(out) else ""
    return ReportgenError(f"could not write {out}: {e.strerror or e}{where}; {os_error_advice(e)}; "
                          f"{out} was left as it was")


def umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_hashes(d: Path) -> dict[str, str]:
    """sha256 of every file under `d` (but its manifest, its in-progress marker and file-browser
    clutter), by relative path."""
    return {p.relative_to(d).as_posix(): _sha256(p) for p in sorted(d.rglob("*"))
            if p.is_file() and p not in (d / MANIFEST, d / PARTIAL) and p.name not in OS_CLUTTER}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _swap_in(new: Path, out: Path) -> Optional[Path]:
    """Put `new` in `out`'s place and return where the old `out` now is (None if there was none).

    `out` is checked again once set aside: if a file was added to it while the new one was
    written, the old one is put back and nothing is replaced. With an atomic exchange `out` is
    never missing; where the file system cannot exchange, `out` is moved aside and the new one
    renamed in, and a run killed between the two renames leaves the old one for recover().
    """
    if not os.path.lexists(out):
        os.rename(new, out)
        return None
    if _exchange(new, out):
        held, undo = new, lambda: _exchange(new, out)
    else:
        held = new.with_name(new.name + ".old")
        os.rename(out, held)
        undo = lambda: os.rename(held, out)  # noqa: E731
    try:
        problem = _unreplaceable(held)
    except BaseException:
        undo()
        raise
    if problem:
        undo()
        raise ReportgenError(f"{out} {problem} while reportgen was writing it; nothing was replaced: "
                             "move those files out and run again")
    if held is not new:
        try:
            os.rename(new, out)
        except BaseException:
            undo()
            raise
    return held


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl < 1.2.?)
        return None


def _discard(path: Path) -> None:
    """Delete a directory reportgen wrote, first renaming it `.NAME.trash-*` so that a deletion cut
    short is recognised and finished by the next run."""
    if not os.path.isdir(path) or os.path.islink(path):
        return
    stem, sep, tail = path.name.rpartition(".tmp-")
    target = path.with_name(f"{stem}.trash-{tail}") if sep else path
    try:
        os.rename(path, target)
    except OSError:
        target = path
    shutil.rmtree(target, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (flock on the directory itself: no lock file to leave
    behind). Where locks are unavailable, go on without one."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- leftovers of killed runs
def recover(out: Path) -> None:
    """Clean up what a run killed while it wrote `out` left beside it.

    A temporary directory still being written by a live process is left alone. One whose process
    is gone, or that holds exactly what reportgen wrote, is deleted. A directory set aside by a
    swap that was cut short is put back where `out` is missing; if it holds files the user added
    (the swap stopped before it could put it back), it is exchanged back in place of an untouched
    reportgen output, and otherwise left where it is with a note on stderr.
    """
    parent = out.parent
    prefix = f".{out.name}."
    try:
        # a directory set aside by a cut-short swap (.old) first: where `out` is missing it goes back
        names = sorted((n for n in os.listdir(parent) if n.startswith(prefix)), key=lambda n: (not n.endswith(".old"), n))
    except OSError:
        return
    if not names:
        return
    with _locked(parent):
        for name in names:
            path = parent / name
            kind = name[len(prefix):]
            if not path.is_dir() or path.is_symlink():
                continue
            if kind.startswith("trash-"):
                shutil.rmtree(path, ignore_errors=True)
            elif kind.startswith("probe-") and _stale(path):
                with contextlib.suppress(OSError):
                    path.rmdir()
            elif kind.startswith("tmp-"):
                _recover_tmp(path, out)


def _recover_tmp(path: Path, out: Path) -> None:
    if os.path.lexists(path / PARTIAL) or _recorded(path) is None:  # being written, or was
        alive = _writer_alive(path)
        if alive is False:
            _discard(path)
        elif alive is None and _stale(path):  # a writer that cannot be told: only an empty one goes
            with contextlib.suppress(OSError):
                path.rmdir()
        return
    if not os.path.lexists(out):
        os.rename(path, out)  # the old output, set aside by a swap killed before the new one went in
    elif unchanged(path):
        _discard(path)
    elif unchanged(out) and _exchange(path, out):
        _discard(path)  # the user's version is back at `out`; this is the untouched reportgen output
    else:
        print(f"reportgen: note: {path} holds files added to {out} while a reportgen run that was killed "
              f"was replacing it; move them back", file=sys.stderr)


def _stale(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > STALE_S
    except OSError:
        return False


def _this_process() -> dict:
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "host": socket.gethostname()}


def _start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (tells a live process from a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _writer_alive(tmp: Path) -> Optional[bool]:
    """Whether the process writing temporary directory `tmp` still runs, read from its in-progress
    marker or else from its name (see partial_dir); None when neither tells."""
    marker = tmp / PARTIAL
    try:
        info = json.loads(marker.read_text())
        pid, start, same_host = int(info["pid"]), info.get("start"), info.get("host") == socket.gethostname()
    except (OSError, ValueError, KeyError, TypeError):
        named = _TMP_NAME.match(tmp.name.rpartition(".tmp-")[2])
        if named is None:  # a directory of an older reportgen: an unreadable marker is being written now
            return (not _stale(marker)) if os.path.lexists(marker) else None
        pid, start = int(named["pid"]), None if named["start"] == "x" else int(named["start"])
        same_host = named["host"] == hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    if not same_host:
        return True  # a process on another machine sharing this directory: cannot tell
    return pid_alive(pid, start)


_TMP_NAME = re.compile(r"(?P<pid>\d+)\.(?P<start>\d+|x)\.(?P<host>[0-9a-f]{8})-")


def pid_alive(pid: int, start: Optional[int] = None) -> bool:
    """Whether process `pid` runs (and, given its recorded start time, is still that process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    now = _start_time(pid)
    return start is None or now is None or now == start


# ---------------------------------------------------------------- single files
def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole: into a temporary file beside it (synced to disk), then renamed
    over it. A failure or a kill leaves the old file (or none), never part of the new one."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_temp(path: Path, data: bytes) -> Path:
    """A synced temporary file beside `path` holding `data`, as readable as the umask allows."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


class OwnedFiles:
    """Files reportgen writes into a directory it shares with the user (a training run directory).

    Each file is written whole (`write_file`) and only in place of a file reportgen wrote there
    itself, unchanged since. `.reportgen-run.json` records the sha256 of each file's versions; a
    new version's hash is recorded before the file is renamed into place, so a run killed at any
    instant leaves no file of its own unrecognised.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.record_path = self.dir / RUN_RECORD
        self._known: dict[str, tuple[tuple, str]] = {}  # name -> (stat, sha256) of what this process wrote

    def recorded(self) -> dict[str, list[str]]:
        try:
            files = json.loads(self.record_path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        if not isinstance(files, dict):
            return {}
        return {k: [h for h in v if isinstance(h, str)] for k, v in files.items() if isinstance(v, list)}

    def foreign(self, names: list[str]) -> list[str]:
        """Those of `names` present in the directory but not, as they are now, written by reportgen."""
        recorded = self.recorded()
        return [n for n in names if os.path.lexists(self.dir / n) and self._hash(n) not in recorded.get(n, [])]

    def adopt(self, names: list[str]) -> None:
        """Record the present files among `names` as reportgen's (a run directory written before
        this record existed)."""
        recorded = self.recorded()
        for n in names:
            h = self._hash(n)
            if h is not None:
                recorded[n] = [h]
        write_file(self.record_path, self._record_bytes(recorded))

    def write(self, name: str, data: bytes) -> None:
        """Write file `name`; refuses (ReportgenError) to replace a file reportgen did not write."""
        path = self.dir / name
        recorded = self.recorded()
        current = self._hash(name) if os.path.lexists(path) else None
        if os.path.lexists(path) and current not in recorded.get(name, []):
            raise ReportgenError(f"{path} was not written by reportgen (or was changed since); move it out of "
                                 f"{self.dir} or choose another output directory")
        new = hashlib.sha256(data).hexdigest()
        tmp = _write_temp(path, data)
        try:
            recorded[name] = ([current] if current else []) + [new]
            write_file(self.record_path, self._record_bytes(recorded))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._known[name] = (_stat_key(path), new)

    def remove_stale_temporaries(self, names: list[str]) -> None:
        """Delete the temporary files of `names` (and of the record) left by a process killed while
        it wrote them."""
        try:
            present = os.listdir(self.dir)
        except OSError:
            return
        for n in present:
            base, _, rest = n[1:].rpartition(".tmp")[0].rpartition(".")[0].rpartition(".")
            if n.startswith(".") and n.endswith(".tmp") and base in [*names, RUN_RECORD] and rest.isdigit():
                if not pid_alive(int(rest)):
                    with contextlib.suppress(OSError):
                        (self.dir / n).unlink()

    def _hash(self, name: str) -> Optional[str]:
        path = self.dir / name
        known = self._known.get(name)
        if known is not None and known[0] == _stat_key(path):
            return known[1]
        try:
            return _sha256(path)
        except OSError:
            return None

    @staticmethod
    def _record_bytes(recorded: dict) -> bytes:
        note = "sha256 of each file reportgen wrote in this directory; it replaces only files recorded here"
        return (json.dumps({"files": recorded, "note": note}, indent=1, sort_keys=True) + "\n").encode()


def _stat_key(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns)
