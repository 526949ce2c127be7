"""Map the set dataclasses (``workflow.sets``) to plain SQLite tables and back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Callable

from tiltflow.workflow.sets import (
    Acquisition, AnySet, CtfSeriesSet, CtfTomo, CtfTomoSeries, TiltImage, TiltSeries,
    TiltSeriesSet, Tomogram, TomogramSet,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tilt_series (
    id INTEGER PRIMARY KEY, output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, ts_id TEXT NOT NULL, enabled INTEGER NOT NULL,
    size_x INTEGER, size_y INTEGER, acquisition TEXT NOT NULL, attrs TEXT,
    UNIQUE(output_id, ts_id));
CREATE TABLE IF NOT EXISTS tilt_images (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES tilt_series(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, tilt_angle_deg REAL NOT NULL, acquisition_order INTEGER NOT NULL,
    dose_prior_e_a2 REAL, dose_e_a2 REAL, dose_accumulated_e_a2 REAL, file TEXT NOT NULL,
    idx INTEGER, frames INTEGER, enabled INTEGER NOT NULL, odd_file TEXT, even_file TEXT,
    transform TEXT, attrs TEXT);
CREATE TABLE IF NOT EXISTS ctf_series (
    id INTEGER PRIMARY KEY, output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, ts_id TEXT NOT NULL, enabled INTEGER NOT NULL, attrs TEXT);
CREATE TABLE IF NOT EXISTS ctf_items (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES ctf_series(id) ON DELETE CASCADE,
    acquisition_order INTEGER NOT NULL, tilt_angle_deg REAL, defocus_u_a REAL, defocus_v_a REAL,
    astigmatism_angle_deg REAL, phase_shift_rad REAL, fit_resolution_a REAL, score REAL,
    enabled INTEGER NOT NULL, attrs TEXT);
CREATE TABLE IF NOT EXISTS tomograms (
    id INTEGER PRIMARY KEY, output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, ts_id TEXT NOT NULL, file TEXT NOT NULL, voxel_size_a REAL,
    nz INTEGER, ny INTEGER, nx INTEGER, attrs TEXT);
CREATE INDEX IF NOT EXISTS tilt_images_series ON tilt_images(series_id);
CREATE INDEX IF NOT EXISTS ctf_items_series ON ctf_items(series_id);
"""

Rel = Callable[[Path | str], str]
Abs = Callable[[str], Path]


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def insert_set(con: sqlite3.Connection, output_id: int, value: AnySet, rel: Rel) -> None:
    if isinstance(value, TiltSeriesSet):
        _insert_tilt_series(con, output_id, value, rel)
    elif isinstance(value, CtfSeriesSet):
        _insert_ctf(con, output_id, value)
    elif isinstance(value, TomogramSet):
        for pos, tomo in enumerate(value.items):
            nz, ny, nx = tomo.shape
            con.execute("INSERT INTO tomograms (output_id, position, ts_id, file, voxel_size_a, nz, ny, nx, attrs)"
                        " VALUES (?,?,?,?,?,?,?,?,?)",
                        (output_id, pos, tomo.ts_id, rel(tomo.file), tomo.voxel_size_a, nz, ny, nx, _j(tomo.attrs)))
    else:  # pragma: no cover - programming error
        raise TypeError(f"cannot store {type(value).__name__}")


def _insert_tilt_series(con: sqlite3.Connection, output_id: int, value: TiltSeriesSet, rel: Rel) -> None:
    for pos, ts in enumerate(value.items):
        cur = con.execute(
            "INSERT INTO tilt_series (output_id, position, ts_id, enabled, size_x, size_y, acquisition, attrs)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (output_id, pos, ts.ts_id, int(ts.enabled), ts.size[0], ts.size[1],
             json.dumps(ts.acquisition.__dict__), _j(ts.attrs)))
        sid = cur.lastrowid
        con.executemany(
            "INSERT INTO tilt_images (series_id, position, tilt_angle_deg, acquisition_order, dose_prior_e_a2,"
            " dose_e_a2, dose_accumulated_e_a2, file, idx, frames, enabled, odd_file, even_file, transform, attrs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(sid, i, im.tilt_angle_deg, im.acquisition_order, im.dose_prior_e_a2, im.dose_e_a2,
              im.dose_accumulated_e_a2, rel(im.file), im.index, im.frames, int(im.enabled),
              rel(im.odd_file) if im.odd_file else None, rel(im.even_file) if im.even_file else None,
              _j(im.transform), _j(im.attrs)) for i, im in enumerate(ts.images)])


def _insert_ctf(con: sqlite3.Connection, output_id: int, value: CtfSeriesSet) -> None:
    for pos, series in enumerate(value.items):
        cur = con.execute("INSERT INTO ctf_series (output_id, position, ts_id, enabled, attrs) VALUES (?,?,?,?,?)",
                          (output_id, pos, series.ts_id, int(series.enabled), _j(series.attrs)))
        sid = cur.lastrowid
        con.executemany(
            "INSERT INTO ctf_items (series_id, acquisition_order, tilt_angle_deg, defocus_u_a, defocus_v_a,"
            " astigmatism_angle_deg, phase_shift_rad, fit_resolution_a, score, enabled, attrs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(sid, c.acquisition_order, c.tilt_angle_deg, c.defocus_u_a, c.defocus_v_a, c.astigmatism_angle_deg,
              c.phase_shift_rad, c.fit_resolution_a, c.score, int(c.enabled), _j(c.attrs)) for c in series.items])


def load_set(con: sqlite3.Connection, output_id: int, kind: str, attrs: dict, absp: Abs) -> AnySet:
    if kind in ("TiltSeriesM", "TiltSeries"):
        return _load_tilt_series(con, output_id, kind, attrs, absp)
    if kind == "CTFTomoSeries":
        return _load_ctf(con, output_id, attrs)
    if kind == "Tomograms":
        rows = con.execute("SELECT * FROM tomograms WHERE output_id=? ORDER BY position", (output_id,))
        return TomogramSet([Tomogram(r["ts_id"], str(absp(r["file"])), r["voxel_size_a"], (r["nz"], r["ny"], r["nx"]),
                                     json.loads(r["attrs"] or "{}")) for r in rows], attrs)
    raise TypeError(f"unknown output type {kind}")


def _load_tilt_series(con, output_id, kind, attrs, absp) -> TiltSeriesSet:
    series = con.execute("SELECT * FROM tilt_series WHERE output_id=? ORDER BY position", (output_id,)).fetchall()
    items = []
    for s in series:
        rows = con.execute("SELECT * FROM tilt_images WHERE series_id=? ORDER BY position", (s["id"],))
        images = [TiltImage(
            tilt_angle_deg=r["tilt_angle_deg"], acquisition_order=r["acquisition_order"],
            dose_prior_e_a2=r["dose_prior_e_a2"], dose_e_a2=r["dose_e_a2"],
            dose_accumulated_e_a2=r["dose_accumulated_e_a2"], file=str(absp(r["file"])), index=r["idx"],
            frames=r["frames"], enabled=bool(r["enabled"]),
            odd_file=str(absp(r["odd_file"])) if r["odd_file"] else None,
            even_file=str(absp(r["even_file"])) if r["even_file"] else None,
            transform=json.loads(r["transform"]) if r["transform"] else None,
            attrs=json.loads(r["attrs"] or "{}")) for r in rows]
        items.append(TiltSeries(ts_id=s["ts_id"], acquisition=Acquisition(**json.loads(s["acquisition"])),
                                images=images, size=(s["size_x"], s["size_y"]), enabled=bool(s["enabled"]),
                                attrs=json.loads(s["attrs"] or "{}")))
    return TiltSeriesSet(kind=kind, items=items, attrs=attrs)


def _load_ctf(con, output_id, attrs) -> CtfSeriesSet:
    series = con.execute("SELECT * FROM ctf_series WHERE output_id=? ORDER BY position", (output_id,)).fetchall()
    items = []
    for s in series:
        rows = con.execute("SELECT * FROM ctf_items WHERE series_id=? ORDER BY tilt_angle_deg, acquisition_order",
                           (s["id"],))
        items.append(CtfTomoSeries(s["ts_id"], [CtfTomo(
            acquisition_order=r["acquisition_order"], tilt_angle_deg=r["tilt_angle_deg"],
            defocus_u_a=r["defocus_u_a"], defocus_v_a=r["defocus_v_a"],
            astigmatism_angle_deg=r["astigmatism_angle_deg"], phase_shift_rad=r["phase_shift_rad"],
            fit_resolution_a=r["fit_resolution_a"], score=r["score"], enabled=bool(r["enabled"]),
            attrs=json.loads(r["attrs"] or "{}")) for r in rows], bool(s["enabled"]), json.loads(s["attrs"] or "{}")))
    return CtfSeriesSet(items=items, attrs=attrs)
