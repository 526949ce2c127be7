"""A full disk, reported as one line and survived (issue 13 item 3).

- :func:`as_disk_full` recognises a full disk in whatever form it surfaces: ``OSError`` ENOSPC /
  EDQUOT, SQLite's ``database or disk is full``, SQLite's ``disk I/O error`` when the disk is in
  fact full (it cannot create the ``-shm`` file), and per-item failures that quote them.
- :func:`guard` is what the runner wraps a step in: a small reserve file is kept beside the run
  folders (``runs/.disk-reserve-PID``) while it works; when the disk fills, the reserve and the run's
  half-written temporary files (``.NAME.tmp``…) are given back, so the run can still be marked failed
  and the project read, and the error becomes :class:`~tiltflow.workflow.errors.DiskFull`
  (``disk full at PATH (N MB free) — …``). Files a continue needs are never removed.
- :func:`read_only_connection` lets readers (``show``, ``view``, ``subset``, ``export``) open a
  project whose disk is full (SQLite cannot create its ``-shm`` file there): the database is
  opened immutable when no write-ahead log is pending, else a snapshot is read into memory.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tiltflow.workflow.errors import DiskFull

RESERVE_NAME = ".disk-reserve"
RESERVE_BYTES = 1 << 20  # room to mark the run failed and to open the database afterwards
NEARLY_FULL_MB = 1.0  # an I/O error with less free than this is a full disk
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_TEXTS = (
    "no space left on device",
    "database or disk is full",
    "disk quota exceeded",
    "[errno 28]",
    "[errno 122]",
)
_SQLITE_FULL = 13
_QUOTED_PATH = re.compile(r"(?:No space left on device|Disk quota exceeded): '([^']+)'")


def free_mb(path: Path | str) -> float:
    """Free space (MB) on the file system holding ``path`` (its nearest existing folder)."""
    here = Path(path).absolute()
    for folder in (here, *here.parents):
        try:
            return shutil.disk_usage(folder).free / 1e6
        except OSError:
            continue
    return 0.0


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_full(err: BaseException, where: Path) -> bool:
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return True
    if isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", None) == _SQLITE_FULL:
        return True
    text = str(err).lower()
    if any(t in text for t in _FULL_TEXTS):
        return True
    # SQLite reports a -shm/-wal file it cannot grow as an I/O error; tifffile/torch lose errno
    io_error = (isinstance(err, sqlite3.OperationalError) and "disk i/o error" in text) or (
        isinstance(err, (OSError, RuntimeError)) and "write" in text and "fail" in text
    )
    return io_error and free_mb(where) < NEARLY_FULL_MB


def as_disk_full(err: BaseException, where: Path | str, hint: str = "") -> DiskFull | None:
    """``err`` (or an error it was raised from) as a :class:`DiskFull` naming the file it was writing,
    else ``where``; None when it is not about a full disk."""
    where = Path(where)
    for e in _chain(err):
        if isinstance(e, DiskFull):
            return e if e.hint or not hint else DiskFull(e.path, e.free_mb, hint)
        if _is_full(e, where):
            quoted = _QUOTED_PATH.search(str(e))  # a per-item failure quotes the OSError
            path = (
                Path(e.filename)
                if isinstance(e, OSError) and e.filename
                else Path(quoted.group(1))
                if quoted
                else where
            )
            return DiskFull(path, free_mb(path), hint)
    return None


def remove_temporaries(folder: Path) -> None:
    """Half-written files of ``folder`` (``.NAME.tmp``, ``NAME.png.tmp``, ``.NAME.tmp.npy``): never a
    file that counts (files are written to a temporary name and renamed when complete)."""
    for path in folder.rglob("*"):
        name = path.name
        if (name.endswith(".tmp") or (name.startswith(".") and ".tmp." in name)) and path.is_file():
            path.unlink(missing_ok=True)


def _make_reserve(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return
    try:
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except (AttributeError, OSError):
            os.write(fd, b"\0" * RESERVE_BYTES)
    except OSError:  # already full: nothing to keep
        os.close(fd)
        path.unlink(missing_ok=True)
        return
    os.close(fd)


def _reserve_path(run_dir: Path) -> Path:
    """The reserve sits beside the run folders (never in one: a folder holds only the run's files)."""
    return run_dir.parent / f"{RESERVE_NAME}-{os.getpid()}"


def _remove_stale_reserves(folder: Path) -> None:
    """Reserves of processes that are gone (killed while they ran)."""
    for path in folder.glob(f"{RESERVE_NAME}-*"):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # alive (another user's): leave it


def release(run_dir: Path) -> None:
    """Give back the reserve and the half-written temporary files of ``run_dir``."""
    _reserve_path(run_dir).unlink(missing_ok=True)
    try:
        remove_temporaries(run_dir)
    except OSError:
        pass


@contextmanager
def guard(run_dir: Path | str, hint: str = "") -> Iterator[None]:
    """Around a run's work: a full disk gives back the reserve and temporary files and is raised as
    :class:`DiskFull` (``hint`` says how to go on); the reserve is removed whatever happens."""
    run_dir = Path(run_dir)
    reserve = _reserve_path(run_dir)
    try:
        _remove_stale_reserves(run_dir.parent)
    except OSError:
        pass
    _make_reserve(reserve)
    try:
        yield
    except BaseException as err:
        full = as_disk_full(err, run_dir, hint) if isinstance(err, Exception) else None
        if full is None:
            raise
        release(run_dir)
        raise full from err
    finally:
        reserve.unlink(missing_ok=True)


# -- reading a project on a full disk ------------------------------------------------------------
def read_only_connection(db_path: Path | str, err: BaseException) -> sqlite3.Connection:
    """A connection that reads ``db_path`` although its disk is full (re-raises ``err`` unless the
    disk is full): immutable when no write-ahead log is pending, else a snapshot in memory."""
    db_path = Path(db_path)
    if as_disk_full(err, db_path.parent) is None:
        raise err
    wal = db_path.with_name(db_path.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        con = sqlite3.connect(
            f"{db_path.absolute().as_uri()}?mode=ro&immutable=1",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
    else:
        con = _snapshot(db_path, wal)
    con.row_factory = sqlite3.Row
    return con


def _snapshot(db_path: Path, wal: Path) -> sqlite3.Connection:
    """The database with its pending log, copied into memory through a folder on another disk."""
    with tempfile.TemporaryDirectory(prefix="tiltflow-read-") as tmp:
        try:
            copy = Path(tmp) / db_path.name
            shutil.copyfile(db_path, copy)
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            src = sqlite3.connect(copy)
        except OSError as copy_err:
            raise DiskFull(
                db_path.parent,
                free_mb(db_path),
                f"the project cannot be read until there is space (copying it aside failed: {copy_err.strerror})",
            ) from None
        try:
            con = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            src.backup(con)
        finally:
            src.close()
    return con
