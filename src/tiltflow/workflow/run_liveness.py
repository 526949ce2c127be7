"""Which process runs a run: a 'running' run whose process is gone reads as 'interrupted'.

A run records the pid, host and (on Linux) the process start time of the coordinating process
that runs it; the start time tells a reused pid from the original process. Readers never write:
the status is corrected as it is read. Runs of another host, or without a record, stay as stored.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS run_process (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    pid INTEGER NOT NULL, host TEXT NOT NULL, proc_start TEXT);
"""


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (state) on; None where there is no such file."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, Linux); None where unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22 of the stat line


def record_process(con: sqlite3.Connection, run_id: int) -> None:
    """Note this process as the one running ``run_id`` (inside the caller's transaction)."""
    pid = os.getpid()
    con.execute(
        "INSERT OR REPLACE INTO run_process VALUES (?, ?, ?, ?)",
        (run_id, pid, socket.gethostname(), process_start(pid)),
    )


def process_gone(pid: int, host: str, proc_start: str | None) -> bool:
    """True when the process is known to have ended on this host (or its pid now names another)."""
    if os.name == "nt" or host != socket.gethostname():
        return False  # cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):
        return True  # killed, not yet reaped
    now = process_start(pid)
    return proc_start is not None and now is not None and now != proc_start


def continue_hint(run: Any, root: Path) -> str:
    """How to continue an interrupted run (items it finished are not recomputed)."""
    return (
        f"continue with the same `tiltflow {run.step}` command plus `--continue {run.id}`, or "
        f"`tiltflow workflow run FILE -p {root} --continue` when it was part of a workflow"
    )


def with_hint(run: Any, root: Path) -> str:
    """An interrupted run's error text, ending with :func:`continue_hint`."""
    hint = continue_hint(run, root)
    return run.error if run.error and hint in run.error else f"{run.error or 'interrupted'} — {hint}"


def as_reported(con: sqlite3.Connection, runs: list[Any], root: Path) -> list[Any]:
    """``runs`` with each 'running' run whose process is gone shown as 'interrupted', with a hint."""
    running = [r.id for r in runs if r.status == "running"]
    if not running:
        return runs
    marks = ",".join("?" * len(running))
    procs = {
        row[0]: row[1:]
        for row in con.execute(
            f"SELECT run_id, pid, host, proc_start FROM run_process WHERE run_id IN ({marks})", running
        )
    }
    out = []
    for r in runs:
        if r.id in procs and process_gone(*procs[r.id]):
            pid, host = procs[r.id][:2]
            r = replace(r, status="interrupted", error=f"interrupted: its process ({pid} on {host}) is gone")
            r.error = with_hint(r, root)
        out.append(r)
    return out
