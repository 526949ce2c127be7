"""Schema migrations of ``project.sqlite``: a project written by an older tiltflow is brought to
:data:`SCHEMA_VERSION` when it is opened.

``MIGRATIONS[i]`` takes a database from version ``i + 1`` to ``i + 2``. Each is a plain function
of a connection, written against the tables as they were then (never against ``set_tables``, which
follows the newest version). They run in one transaction, after a copy of the database is written
beside it (``project.sqlite.v<N>.bak``): a migration that fails leaves the project as it was. A
project newer than this code is refused with one line.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tiltflow import __version__
from tiltflow.workflow.errors import ProjectError

# version 1 -> 2: values the steps kept in the items' attrs JSON become typed columns.
# table -> [(attrs key, column, SQL type)]; a key may feed a column of another name
_V2_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "tilt_images": [
        ("movie", "movie", "TEXT"),
        ("total_motion_px", "total_motion_px", "REAL"),
        ("defocus_u_a", "defocus_u_a", "REAL"),
        ("defocus_v_a", "defocus_v_a", "REAL"),
        ("refined_tilt_angle_deg", "refined_tilt_angle_deg", "REAL"),
        ("residual_px", "residual_px", "REAL"),
        ("projection_matching_error", "projection_matching_error", "REAL"),
    ],
    "tilt_series": [("alignment", "alignment", "TEXT"), ("motion_star_dir", "motion_star_dir", "TEXT")],
    "ctf_items": [("spectrum_file", "spectrum_file", "TEXT"), ("ring_strength", "ring_strength", "REAL")],
    "ctf_series": [
        ("ctf_verdict", "verdict", "TEXT"),
        ("ctffind", "ctffind_file", "TEXT"),
        ("defocus", "defocus_file", "TEXT"),
    ],
    "tomograms": [
        ("method", "method", "TEXT"),
        ("binning", "binning", "INTEGER"),
        ("source", "source", "TEXT"),
        ("ctf", "ctf", "TEXT"),
        ("odd_file", "odd_file", "TEXT"),
        ("even_file", "even_file", "TEXT"),
    ],
}
_V2_JSON = frozenset({"alignment", "verdict"})
_V2_SET_KEYS = ("odd_even", "gain_file", "dark_file")  # a tilt-series set's attrs -> tilt_series_sets


def _to_v2(con: sqlite3.Connection) -> None:
    """Version 1 -> 2: typed columns for the values in the attrs JSON of items and tilt-series sets."""
    for table, columns in _V2_COLUMNS.items():
        for _, column, kind in columns:
            con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        updates = []
        for row in con.execute(f"SELECT id, attrs FROM {table} WHERE attrs IS NOT NULL").fetchall():
            attrs = json.loads(row[1] or "{}")
            if table == "tilt_images" and "defocus_a" in attrs:  # older motion-ctf: one defocus per view
                value = attrs.pop("defocus_a")
                attrs.setdefault("defocus_u_a", value)
                attrs.setdefault("defocus_v_a", attrs["defocus_u_a"])
            if not any(key in attrs for key, _, _ in columns):
                continue
            values = [attrs.pop(key, None) for key, _, _ in columns]
            values = [
                json.dumps(v) if v is not None and col in _V2_JSON else v
                for v, (_, col, _) in zip(values, columns, strict=False)
            ]
            updates.append((*values, json.dumps(attrs), row[0]))
        assignments = ", ".join(f"{column} = ?" for _, column, _ in columns)
        con.executemany(f"UPDATE {table} SET {assignments}, attrs = ? WHERE id = ?", updates)
    con.execute("""CREATE TABLE tilt_series_sets (
        output_id INTEGER PRIMARY KEY REFERENCES outputs(id) ON DELETE CASCADE,
        odd_even INTEGER NOT NULL DEFAULT 0, gain_file TEXT, dark_file TEXT)""")
    rows = con.execute("SELECT id, attrs FROM outputs WHERE type IN ('TiltSeriesM', 'TiltSeries')").fetchall()
    for output_id, text in rows:
        attrs = json.loads(text or "{}")
        odd_even, gain, dark = (attrs.pop(key, None) for key in _V2_SET_KEYS)
        con.execute("INSERT INTO tilt_series_sets VALUES (?, ?, ?, ?)", (output_id, int(bool(odd_even)), gain, dark))
        con.execute("UPDATE outputs SET attrs = ? WHERE id = ?", (json.dumps(attrs), output_id))


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_v2]
SCHEMA_VERSION = 1 + len(MIGRATIONS)


def stored_version(con: sqlite3.Connection) -> int | None:
    """The schema version a database records (None for a new, empty one)."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
        return None
    row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else None


def refuse_newer(version: int | None, db_path: Path) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise ProjectError(
            f"{db_path.parent}: the project was written by a newer tiltflow (schema {version}; "
            f"tiltflow {__version__} reads up to {SCHEMA_VERSION}) — upgrade tiltflow to open it"
        )


def check_readable(con: sqlite3.Connection, db_path: Path) -> None:
    """A project opened read-only (full disk) cannot be migrated: an older one is refused with one line."""
    version = stored_version(con)
    if version is not None and version != SCHEMA_VERSION:
        con.close()
        refuse_newer(version, db_path)
        raise ProjectError(
            f"{db_path.parent}: the project (schema {version}) must be migrated to schema "
            f"{SCHEMA_VERSION}, which needs free disk space there"
        )


def upgrade(con: sqlite3.Connection, db_path: Path) -> None:
    """Bring the database of ``con`` (autocommit) to :data:`SCHEMA_VERSION`; a copy of it as it was is
    left in ``<db>.v<N>.bak``. Concurrent openers wait, then find it migrated."""
    found = stored_version(con)
    refuse_newer(found, db_path)
    if found is None or found == SCHEMA_VERSION:
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        found = stored_version(con) or SCHEMA_VERSION  # another process may have migrated meanwhile
        if found < SCHEMA_VERSION:
            backup = _backup(db_path, found)
            _apply(con, found, db_path, backup)
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def _backup(db_path: Path, version: int) -> Path:
    """The committed database (a reader beside the migrating writer, which has changed nothing yet)
    copied to ``<db>.v<version>.bak``."""
    backup = db_path.with_name(f"{db_path.name}.v{version}.bak")
    try:
        backup.unlink(missing_ok=True)
        source, copy = sqlite3.connect(db_path), sqlite3.connect(backup)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
    except (OSError, sqlite3.Error) as err:
        raise ProjectError(
            f"{db_path.parent}: cannot copy the project database before migrating it to schema "
            f"{SCHEMA_VERSION} ({err}) — free disk space there and open it again"
        ) from None
    return backup


def _apply(con: sqlite3.Connection, found: int, db_path: Path, backup: Path) -> None:
    version = found
    try:
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version - 1](con)
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    except Exception as err:
        raise ProjectError(
            f"{db_path.parent}: migrating the project from schema {version} to {version + 1} failed "
            f"({type(err).__name__}: {err}); it is unchanged (a copy is in {backup.name})"
        ) from err
