"""Disk full (issue 13 row 12, item 3): a step that runs out of space fails with one line, ``disk full at
PATH (N MB free)``, its run is marked failed with nothing registered, and ``show``, ``view``,
``subset`` and ``export`` keep working read-only while the disk stays full; once there is space,
``--continue`` finishes the run.

On a real small file system — a tmpfs mounted by the test where it may (root, or CAP_SYS_ADMIN) —
and, everywhere, on an emulation: writes that raise ENOSPC part-way, SQLite's 'database or disk
is full' and 'disk I/O error' with no space left."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tiltflow.workflow import diskspace
from tiltflow.workflow.errors import DiskFull
from tiltflow.workflow.store import ProjectStore

from ._cli import invoke, project_state_readonly

MOTION = ["motion-ctf", "--input", "1", "--no-estimate-ctf", "--window", "64", "--motion-grid", "1", "1", "1"]
TOKEN = "disk-full-token-0123456789abcdef"


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def one_disk_full_line(result, *needles: str) -> str:
    """Exit code 2, exactly one ``error: disk full at PATH (N MB free)`` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Logging error" not in result.output, result.output
    (line,) = error_lines(result)
    assert "disk full at " in line and " MB free)" in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def fill(path: Path) -> None:
    """Fill the file system holding ``path`` to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)


def integrity(root: Path) -> str:
    con = sqlite3.connect(f"{(root / 'project.sqlite').as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# -- a real small file system ----------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path) -> Path:
    """An 8 MB tmpfs, unmounted after the test; skipped where this process may not mount one."""
    where = tmp_path / "disk"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command: cannot make a small file system (the emulated tests below still run)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(where)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or 'needs root or CAP_SYS_ADMIN'}); "
            "the emulated disk-full tests below still run"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def test_motion_ctf_on_a_full_tmpfs(tmpfs, movie_data, pristine_project):
    """Run 1 movies, run 2 stacks (the badinput project), motion-ctf (run 3) on an 8 MB tmpfs."""
    root = Path(shutil.copytree(pristine_project, tmpfs / "p"))
    # leave the reserve and a third of what motion-ctf writes: it fills the disk part-way
    ballast = tmpfs / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    os.posix_fallocate(fd, 0, shutil.disk_usage(tmpfs).free - diskspace.RESERVE_BYTES - 300_000)
    os.close(fd)

    result = invoke([*MOTION[:1], "-p", root, *MOTION[1:]])
    one_disk_full_line(result, str(root), "--continue 3")
    store = ProjectStore(root)
    run = store.run(3)
    assert run.status == "failed" and "disk full at" in run.error
    assert store.outputs(3) == []  # nothing registered
    assert integrity(root) == "ok"
    assert not list((root / "runs").rglob("*.tmp*")) and not list((root / "runs").rglob(diskspace.RESERVE_NAME + "*"))

    fill(tmpfs / "ballast2")  # and now not a byte left
    assert shutil.disk_usage(tmpfs).free == 0
    before = project_state_readonly(root)

    shown = invoke(["show", "-p", root])
    assert shown.exit_code == 0 and "failed" in shown.output, shown.output
    detail = invoke(["show", "-p", root, "3"])
    assert detail.exit_code == 0 and "disk full at" in detail.output, detail.output

    one_disk_full_line(invoke(["subset", "-p", root, "--input", "1", "--exclude-views", "TS_01:1"]), str(root))
    one_disk_full_line(
        invoke(["subset", "-p", root, "--input", "1", "--exclude-views", "TS_01:2", "--restack"]), str(root)
    )
    one_disk_full_line(invoke([*MOTION[:1], "-p", root, *MOTION[1:]]), str(root))  # a new run: refused

    out = tmpfs.parent / "exported"
    exported = invoke(["export", "2", "-p", root, "--format", "imod", "--out", out])
    assert exported.exit_code == 0 and "Traceback" not in exported.output, exported.output

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tiltflow.web.app import TOKEN_HEADER, create_app

    client = TestClient(
        create_app(ProjectStore(root), TOKEN, cache_dir=tmpfs.parent / "thumbs"), headers={TOKEN_HEADER: TOKEN}
    )
    assert client.get("/api/project").status_code == 200
    series = client.get("/api/outputs/1.TiltSeriesM/series")
    assert series.status_code == 200, series.text
    assert project_state_readonly(root) == before, "a command changed the project while its disk was full"

    ballast.unlink()
    (tmpfs / "ballast2").unlink()
    resumed = invoke([*MOTION[:1], "-p", root, *MOTION[1:], "--continue", "3"])
    assert resumed.exit_code == 0, resumed.output
    assert ProjectStore(root).run(3).status == "finished" and integrity(root) == "ok"


# -- emulated: the same outcomes wherever the test may not mount --------------------------------
def _enospc_after(limit: int):
    """A ``write_mrc`` that writes ``limit`` bytes of its temporary file, then finds the disk full."""

    def write_mrc(path, data, **_kw):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(b"\0" * limit)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    return write_mrc


def test_a_write_that_finds_the_disk_full_is_one_line(project, monkeypatch):
    monkeypatch.setattr("tiltflow.io.mrc.write_mrc", _enospc_after(4096))
    result = invoke(["xray-erase", "-p", project, "--input", "2"])
    line = one_disk_full_line(result, "TS_A", "--continue 3")
    assert "No space left" not in line and "OSError" not in line
    store = ProjectStore(project)
    assert store.run(3).status == "failed" and store.outputs(3) == []
    run_dir = project / store.run(3).run_dir
    assert not list(run_dir.rglob("*.tmp")), "the half-written file was left"
    assert not list(run_dir.parent.glob(diskspace.RESERVE_NAME + "*"))


def test_sqlite_database_or_disk_is_full_is_the_same_line(project, monkeypatch):
    def full(*_a, **_k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ProjectStore, "finish_run", full)
    result = invoke(["xray-erase", "-p", project, "--input", "2"])
    one_disk_full_line(result, str(project), "--continue 3")
    monkeypatch.undo()
    store = ProjectStore(project)
    assert store.run(3).status == "failed" and store.outputs(3) == []


def test_a_disk_full_item_failure_is_the_same_line(project, monkeypatch):
    """Per-item failures quote the error text (errno lost): still recognised."""
    from tiltflow.workflow.executor import ItemFailures

    def failing(*_a, **_k):
        raise ItemFailures(["TS_A: OSError: [Errno 28] No space left on device"], what="series", total=1)

    monkeypatch.setattr("tiltflow.workflow.steps.xray_erase.run_items_or_fail", failing)
    one_disk_full_line(invoke(["xray-erase", "-p", project, "--input", "2"]), "--continue 3")
    assert ProjectStore(project).run(3).status == "failed"


@pytest.fixture
def full_disk(project, monkeypatch):
    """The project's disk emulated full: SQLite cannot open it for writing ('disk I/O error', as when
    it cannot create its -shm file), and no space is left."""
    real_open = ProjectStore._open
    db = str(project / "project.sqlite")

    def _open(path):
        if str(path) == db:
            raise sqlite3.OperationalError("disk I/O error")
        return real_open(path)

    monkeypatch.setattr(ProjectStore, "_open", staticmethod(_open))
    monkeypatch.setattr(diskspace, "free_mb", lambda path: 0.0)
    return project


def test_readers_work_while_the_disk_is_full(full_disk, tmp_path):
    root = full_disk
    before = project_state_readonly(root)
    shown = invoke(["show", "-p", root])
    assert shown.exit_code == 0 and "import-tilt-series" in shown.output, shown.output
    assert invoke(["show", "-p", root, "2"]).exit_code == 0
    exported = invoke(["export", "2", "-p", root, "--format", "imod", "--out", tmp_path / "out"])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / "TS_A" / "TS_A.st").exists()
    one_disk_full_line(invoke(["subset", "-p", root, "--input", "2", "--exclude-views", "TS_A:1"]), "0.0 MB free")
    one_disk_full_line(invoke(["subset", "-p", root, "--input", "2", "--exclude-views", "TS_A:1", "--restack"]))
    one_disk_full_line(invoke(["xray-erase", "-p", root, "--input", "2"]), str(root))
    assert project_state_readonly(root) == before


def test_the_viewer_reads_while_the_disk_is_full(full_disk, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tiltflow.web.app import TOKEN_HEADER, create_app

    client = TestClient(
        create_app(ProjectStore(full_disk), TOKEN, cache_dir=tmp_path / "thumbs"), headers={TOKEN_HEADER: TOKEN}
    )
    assert client.get("/api/project").status_code == 200
    listing = client.get("/api/outputs/2.TiltSeries/series")
    assert listing.status_code == 200 and "TS_A" in listing.text
    assert client.get("/api/outputs/2.TiltSeries/series/TS_A/views/1/thumbnail.png").status_code == 200


def test_a_pending_log_is_read_from_a_snapshot(project, tmp_path):
    """A write-ahead log not yet checkpointed (a writer still open, or killed) is read too."""
    writer = sqlite3.connect(project / "project.sqlite")
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("UPDATE runs SET label='from the log' WHERE id=1")
        writer.commit()
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in ("project.sqlite", "project.sqlite-wal"):
            shutil.copyfile(project / name, copy / name)
    finally:
        writer.close()
    assert (copy / "project.sqlite-wal").stat().st_size > 0
    read = diskspace.read_only_connection(copy / "project.sqlite", DiskFull(copy, 0.0))
    assert read.execute("SELECT label FROM runs WHERE id=1").fetchone()[0] == "from the log"
    immutable = sqlite3.connect(f"{(copy / 'project.sqlite').as_uri()}?mode=ro&immutable=1", uri=True)
    assert immutable.execute("SELECT label FROM runs WHERE id=1").fetchone()[0] is None  # the file alone


def test_what_is_not_a_full_disk_is_left_alone(tmp_path, monkeypatch):
    assert diskspace.as_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert diskspace.as_disk_full(ValueError("disk full of cats"), tmp_path) is None
    io_error = sqlite3.OperationalError("disk I/O error")
    assert diskspace.as_disk_full(io_error, tmp_path) is None  # space left: a real I/O error
    with pytest.raises(sqlite3.OperationalError):
        diskspace.read_only_connection(tmp_path / "x.sqlite", io_error)
    monkeypatch.setattr(diskspace, "free_mb", lambda path: 0.2)
    full = diskspace.as_disk_full(io_error, tmp_path, "free space")
    assert str(full) == f"disk full at {tmp_path} (0.2 MB free) — free space"
    try:
        raise RuntimeError("wrapped") from OSError(errno.ENOSPC, "No space left on device", "/x/y.mrc")
    except RuntimeError as err:
        assert str(diskspace.as_disk_full(err, tmp_path)).startswith("disk full at /x/y.mrc (")


def test_a_restack_that_finds_the_disk_full_saves_nothing(project, monkeypatch):
    from ._cli import project_state

    monkeypatch.setattr("tiltflow.io.mrc.write_mrc", _enospc_after(8192))
    before = project_state(project)
    result = invoke(["subset", "-p", project, "--input", "2", "--exclude-views", "TS_A:1", "--restack"])
    one_disk_full_line(result, "TS_A.mrc", "nothing was saved")
    assert project_state(project) == before


def test_export_to_a_full_tmpfs_names_the_destination(tmpfs, project):
    """``export --out`` on a full file system: the one line names the destination, not the stack
    being copied, and no half-copied stack is left (tests/badinput/test_export_disk_full.py emulates it)."""
    out = tmpfs / "exported"
    out.mkdir()
    fill(tmpfs / "ballast")
    result = invoke(["export", "2", "-p", project, "--format", "imod", "--out", out])
    line = one_disk_full_line(result, str(out))
    assert "stacks" not in line, f"the line names the source, not the destination: {line}"
    left = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert not [n for n in left if ".tmp" in n or n == "TS_A.st"], left
