"""The project store: ``project.sqlite`` (WAL) beside ``runs/<id>_<step>/``.

Plain tables: runs, outputs, and the items of sets (tilt series, tilt images, CTF, tomograms).
Only the coordinating process writes. A run's outputs are registered in one transaction, so
readers (the viewer) never see a half-registered output.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tiltflow import __version__
from tiltflow.workflow import diskspace, migrations, run_liveness, set_tables
from tiltflow.workflow.errors import DiskFull, ProjectError
from tiltflow.workflow.migrations import SCHEMA_VERSION
from tiltflow.workflow.paths import ProjectPaths, map_attrs, map_set, rebase
from tiltflow.workflow.pointers import resolve_pointer
from tiltflow.workflow.records import OutputRecord, RunRecord
from tiltflow.workflow.records import run_from_row as _run_from_row
from tiltflow.workflow.sets import AnySet
from tiltflow.workflow.tasks import ItemResult

DB_NAME = "project.sqlite"
R = TypeVar("R", bound=ItemResult)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, step TEXT NOT NULL, label TEXT, params TEXT NOT NULL,
    inputs TEXT NOT NULL, status TEXT NOT NULL, created REAL, started REAL, ended REAL,
    code_version TEXT, error TEXT, run_dir TEXT);
CREATE TABLE IF NOT EXISTS outputs (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL, type TEXT NOT NULL, summary TEXT, attrs TEXT, created REAL,
    UNIQUE(run_id, name));
CREATE TABLE IF NOT EXISTS item_progress (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, item TEXT NOT NULL,
    result TEXT, finished REAL, PRIMARY KEY (run_id, item));
"""
    + set_tables.SCHEMA
    + run_liveness.SCHEMA
)


class ProjectStore:
    """A project folder. ``ProjectStore(path)`` opens it; with ``create`` a missing project is
    created on the first write (the first run), so a rejected first import leaves no folder."""

    def __init__(self, root: Path | str, *, create: bool = True):
        self.root = Path(root).absolute()
        self.db_path = self.root / DB_NAME
        self.paths = ProjectPaths(self.root)
        self._made: list[Path] | None = None  # set when this instance created the project: its new folders
        self._pending = not self.db_path.exists()
        if self._pending:
            if not create:
                raise ProjectError(
                    f"{self.root}: no tiltflow project here ({DB_NAME} missing) — "
                    "check -p, or import data there first to create one"
                )
            if self.root.exists() and not self.root.is_dir():
                raise ProjectError(f"{self.root}: exists and is not a folder — choose another -p")
            return
        self._init_schema()

    def _init_schema(self) -> None:
        try:
            con = self._open(self.db_path)
        except sqlite3.OperationalError as err:  # a full disk: read-only (workflow/diskspace.py)
            con = diskspace.read_only_connection(self.db_path, err)
            migrations.check_readable(con, self.db_path)
            row = con.execute("SELECT value FROM meta WHERE key='root'").fetchone()
            self.paths = ProjectPaths(self.root, row[0] if row else None)
            con.close()
            return
        try:
            migrations.upgrade(con, self.db_path)  # an older project: migrated (a copy kept beside it)
            con.executescript(_SCHEMA)
            if con.execute("SELECT 1 FROM meta WHERE key='schema_version'").fetchone() is None:
                con.execute("INSERT OR IGNORE INTO meta VALUES ('root', ?)", (str(self.root),))  # a new project
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            row = con.execute("SELECT value FROM meta WHERE key='root'").fetchone()
            self.paths = ProjectPaths(self.root, row[0] if row else None)
        finally:
            con.close()

    def _materialize(self) -> None:
        """Create the folder and database of a project opened with ``create`` (first write)."""
        missing = [p for p in (self.root / "runs", self.root, *self.root.parents) if not p.exists()]
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ProjectError(
                f"{self.root}: cannot create the project folder ({err.strerror}) — choose a writable -p"
            ) from None
        self._made, self._pending = missing, False  # innermost first
        self._init_schema()

    def _discard(self) -> None:
        """Undo :meth:`_materialize` when its only run was removed: the disk is as before."""
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            (self.root / name).unlink(missing_ok=True)
        for folder in self._made or []:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
        self._made, self._pending = None, True

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        if self._pending:
            self._materialize()
        try:
            return self._open(self.db_path)
        except sqlite3.OperationalError as err:
            full = diskspace.as_disk_full(err, self.root)
            if full is None:
                raise
            raise full from err

    @staticmethod
    def _open(path: Path | str) -> sqlite3.Connection:
        con = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException as err:
            if con.in_transaction:
                con.execute("ROLLBACK")
            full = diskspace.as_disk_full(err, self.root) if isinstance(err, sqlite3.OperationalError) else None
            if full is None:
                raise
            raise full from err
        finally:
            con.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for readers (one read transaction); an empty project before the
        first write."""
        if self._pending:
            con = self._open(":memory:")
            con.executescript(_SCHEMA)
        else:
            try:
                con = self.connect()
            except DiskFull as err:  # readers go on while the disk is full
                con = diskspace.read_only_connection(self.db_path, err)
        try:
            con.execute("BEGIN")
            yield con
            con.execute("COMMIT")
        finally:
            con.close()

    # -- paths ------------------------------------------------------------------------------
    def relpath(self, path: Path | str) -> str:
        """Paths inside the project are stored relative to it; others absolute."""
        return self.paths.rel(path)

    def abspath(self, stored: str) -> Path:
        """A stored path in the project's current folder (see ``workflow.paths``)."""
        return self.paths.abs(stored)

    # -- runs -------------------------------------------------------------------------------
    def create_run(
        self, step: str, params: dict[str, Any], inputs: dict[str, str], label: str | None = None
    ) -> RunRecord:
        now = time.time()
        with self.transaction() as con:
            cur = con.execute(
                "INSERT INTO runs (step, label, params, inputs, status, created, started, code_version)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (step, label, json.dumps(params), json.dumps(inputs), now, now, __version__),
            )
            run_id = _inserted_id(cur)
            run_dir = f"runs/{run_id:03d}_{step}"
            con.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (run_dir, run_id))
            run_liveness.record_process(con, run_id)
        (self.root / run_dir).mkdir(parents=True, exist_ok=True)
        return self.run(run_id)

    def run(self, run_id: int) -> RunRecord:
        """One run; a 'running' run whose process is gone reads as 'interrupted' (with a hint)."""
        if self._pending:
            raise ProjectError(
                f"{self.root}: no tiltflow project here ({DB_NAME} missing) — check -p, or import data there first"
            )
        with self.reading() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise ProjectError(f"{self.root}: no run {run_id} — `tiltflow show -p {self.root}` lists the runs")
            return run_liveness.as_reported(con, [_run_from_row(row)], self.root)[0]

    def runs(self) -> list[RunRecord]:
        with self.reading() as con:
            runs = [_run_from_row(r) for r in con.execute("SELECT * FROM runs ORDER BY id")]
            return run_liveness.as_reported(con, runs, self.root)

    def run_dir(self, run_id: int) -> Path:
        rd = self.run(run_id).run_dir
        assert rd is not None
        return self.root / rd

    def finish_run(self, run_id: int, outputs: dict[str, AnySet]) -> None:
        """Register all outputs and mark the run finished, in one transaction."""
        with self.transaction() as con:
            for name, value in outputs.items():
                self._insert_output(con, run_id, name, value)
            con.execute("UPDATE runs SET status='finished', ended=?, error=NULL WHERE id=?", (time.time(), run_id))

    def fail_run(self, run_id: int, error: str, status: str = "failed") -> None:
        with self.transaction() as con:
            con.execute("UPDATE runs SET status=?, ended=?, error=? WHERE id=?", (status, time.time(), error, run_id))

    def set_status(self, run_id: int, status: str) -> None:
        with self.transaction() as con:
            con.execute("UPDATE runs SET status=?, error=NULL, ended=NULL WHERE id=?", (status, run_id))
            if status == "running":
                run_liveness.record_process(con, run_id)

    def delete_run(self, run_id: int) -> None:
        """Remove a run that never got going (bad input): the project is as before — a project this
        store created for it is removed again."""
        run = self.run(run_id)
        with self.transaction() as con:
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            left = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        if run.run_dir:
            shutil.rmtree(self.root / run.run_dir, ignore_errors=True)
        if self._made is not None and not left:
            self._discard()

    # -- per-item progress (resume) ---------------------------------------------------------
    def record_item(self, run_id: int, item: str, result: ItemResult) -> None:
        """Record one finished item of a run (its result's record, paths relative to the project)."""
        record = map_attrs(result.to_record(), self.paths.rel_attr)
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO item_progress VALUES (?, ?, ?, ?)",
                (run_id, item, json.dumps(record), time.time()),
            )

    def finished_items(self, run_id: int, result_type: type[R]) -> dict[str, R]:
        """The items of a run recorded finished, their results read back as ``result_type``."""
        with self.reading() as con:
            rows = con.execute("SELECT item, result FROM item_progress WHERE run_id=?", (run_id,)).fetchall()
        return {
            r["item"]: result_type.from_record(map_attrs(json.loads(r["result"]), self.paths.abs_attr)) for r in rows
        }

    # -- outputs ----------------------------------------------------------------------------
    def _insert_output(self, con: sqlite3.Connection, run_id: int, name: str, value: AnySet) -> int:
        value = map_set(value, self.paths.rel_attr, files=False)  # attrs' paths relative too
        cur = con.execute(
            "INSERT INTO outputs (run_id, name, type, summary, attrs, created) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, name, value.kind, value.summary(), json.dumps(value.attrs), time.time()),
        )
        output_id = _inserted_id(cur)
        set_tables.insert_set(con, output_id, value, self.relpath)
        return output_id

    def add_output(self, run_id: int, name: str, value: AnySet) -> OutputRecord:
        """Register one more output on an existing run (the viewer's Save, like Scipion)."""
        self.run(run_id)
        with self.transaction() as con:
            self._insert_output(con, run_id, name, value)
        return self.output(run_id, name)

    def add_output_unique(
        self, run_id: int, name_for: Callable[[int], str], value: AnySet, *, staged: Path | None = None
    ) -> OutputRecord:
        """Register ``value`` as the first free name of ``name_for(2)``, ``name_for(3)``…, chosen in
        the transaction that registers it, so concurrent saves (viewers, CLI) get distinct names.
        ``staged``: a folder of its files, moved to ``<run_dir>/<name>`` in that transaction."""
        run_dir, target = self.run_dir(run_id), None
        try:
            with self.transaction() as con:
                taken = {r[0] for r in con.execute("SELECT name FROM outputs WHERE run_id=?", (run_id,))}
                name = _first_free(name_for, lambda n: n in taken or (staged is not None and (run_dir / n).exists()))
                if staged is not None:
                    target = run_dir / name
                    os.rename(staged, target)
                    value = rebase(value, staged, target)
                self._insert_output(con, run_id, name, value)
        except BaseException:
            if staged is not None and target is not None and target.exists():
                os.rename(target, staged)
            raise
        return self.output(run_id, name)

    def next_output_name(self, run_id: int, base: str) -> str:
        """A hint: ``base_2``, ``base_3``… not taken now (saving picks with :meth:`add_output_unique`)."""
        return self.first_free_name(run_id, lambda n: f"{base}_{n}")

    def first_free_name(self, run_id: int, name_for: Callable[[int], str]) -> str:
        """A hint: the first of ``name_for(2)``, ``name_for(3)``… not taken on ``run_id`` now."""
        names = {o.name for o in self.outputs(run_id)}
        return _first_free(name_for, names.__contains__)

    def outputs(self, run_id: int | None = None) -> list[OutputRecord]:
        sql = "SELECT * FROM outputs" + (" WHERE run_id = ?" if run_id is not None else "") + " ORDER BY run_id, id"
        with self.reading() as con:
            rows = con.execute(sql, (run_id,) if run_id is not None else ()).fetchall()
        return [
            OutputRecord(
                r["id"],
                r["run_id"],
                r["name"],
                r["type"],
                r["summary"],
                map_attrs(json.loads(r["attrs"] or "{}"), self.paths.abs_attr),
            )
            for r in rows
        ]

    def output(self, run_id: int, name: str) -> OutputRecord:
        for o in self.outputs(run_id):
            if o.name == name:
                return o
        raise ProjectError(f"run {run_id} has no output '{name}' — `tiltflow show -p {self.root} {run_id}` lists them")

    def load(self, output: OutputRecord) -> AnySet:
        with self.reading() as con:
            value = set_tables.load_set(con, output.id, output.type, output.attrs, self.abspath)
        return map_set(value, self.paths.abs_attr, files=False, inplace=True)

    def resolve(self, pointer: str, types: tuple[str, ...] = ()) -> OutputRecord:
        """``RUN_ID`` or ``RUN_ID.outputName`` -> the output (of one of ``types`` when given)."""
        return resolve_pointer(self, pointer, types)


def _inserted_id(cur: sqlite3.Cursor) -> int:
    """The id SQLite gave the row an INSERT just made."""
    if cur.lastrowid is None:
        raise RuntimeError("SQLite returned no id for an inserted row")
    return cur.lastrowid


def _first_free(name_for: Callable[[int], str], taken: Callable[[str], bool]) -> str:
    n = 2
    while taken(name_for(n)):
        n += 1
    return name_for(n)
