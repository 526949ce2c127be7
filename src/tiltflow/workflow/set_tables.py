"""Map the set dataclasses (``workflow.sets``) to plain SQLite tables and back."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiltflow.workflow.sets import (
    Acquisition,
    AnySet,
    CtfSeriesSet,
    CtfTomo,
    CtfTomoSeries,
    TiltImage,
    TiltSeries,
    TiltSeriesSet,
    Tomogram,
    TomogramSet,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tilt_series_sets (
    output_id INTEGER PRIMARY KEY REFERENCES outputs(id) ON DELETE CASCADE,
    odd_even INTEGER NOT NULL DEFAULT 0, gain_file TEXT, dark_file TEXT);
CREATE TABLE IF NOT EXISTS tilt_series (
    id INTEGER PRIMARY KEY, output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, ts_id TEXT NOT NULL, enabled INTEGER NOT NULL,
    size_x INTEGER, size_y INTEGER, acquisition TEXT NOT NULL, attrs TEXT,
    alignment TEXT, motion_star_dir TEXT,
    UNIQUE(output_id, ts_id));
CREATE TABLE IF NOT EXISTS tilt_images (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES tilt_series(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, tilt_angle_deg REAL NOT NULL, acquisition_order INTEGER NOT NULL,
    dose_prior_e_a2 REAL, dose_e_a2 REAL, dose_accumulated_e_a2 REAL, file TEXT NOT NULL,
    idx INTEGER, frames INTEGER, enabled INTEGER NOT NULL, odd_file TEXT, even_file TEXT,
    transform TEXT, attrs TEXT,
    movie TEXT, total_motion_px REAL, defocus_u_a REAL, defocus_v_a REAL, refined_tilt_angle_deg REAL,
    residual_px REAL, projection_matching_error REAL);
CREATE TABLE IF NOT EXISTS ctf_series (
    id INTEGER PRIMARY KEY, output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, ts_id TEXT NOT NULL, enabled INTEGER NOT NULL, attrs TEXT,
    verdict TEXT, ctffind_file TEXT, defocus_file TEXT);
CREATE TABLE IF NOT EXISTS ctf_items (
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES ctf_series(id) ON DELETE CASCADE,
    acquisition_order INTEGER NOT NULL, tilt_angle_deg REAL, defocus_u_a REAL, defocus_v_a REAL,
    astigmatism_angle_deg REAL, phase_shift_rad REAL, fit_resolution_a REAL, score REAL,
    enabled INTEGER NOT NULL, attrs TEXT, spectrum_file TEXT, ring_strength REAL);
CREATE TABLE IF NOT EXISTS tomograms (
    id INTEGER PRIMARY KEY, output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, ts_id TEXT NOT NULL, file TEXT NOT NULL, voxel_size_a REAL,
    nz INTEGER, ny INTEGER, nx INTEGER, attrs TEXT,
    method TEXT, binning INTEGER, source TEXT, ctf TEXT, odd_file TEXT, even_file TEXT);
CREATE INDEX IF NOT EXISTS tilt_images_series ON tilt_images(series_id);
CREATE INDEX IF NOT EXISTS ctf_items_series ON ctf_items(series_id);
"""
# The typed fields of each table beyond its version-1 columns (``workflow.migrations`` fills them
# from the version-1 attrs); paths among them are stored as attrs paths are (``workflow.paths``).
IMAGE_FIELDS = (
    "movie",
    "total_motion_px",
    "defocus_u_a",
    "defocus_v_a",
    "refined_tilt_angle_deg",
    "residual_px",
    "projection_matching_error",
)
SERIES_FIELDS = ("alignment", "motion_star_dir")
CTF_FIELDS = ("spectrum_file", "ring_strength")
CTF_SERIES_FIELDS = ("verdict", "ctffind_file", "defocus_file")
TOMOGRAM_FIELDS = ("method", "binning", "source", "ctf", "odd_file", "even_file")
JSON_FIELDS = frozenset({"alignment", "verdict"})

Rel = Callable[[Path | str], str]
Abs = Callable[[str], Path]


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _columns(obj: Any, names: tuple[str, ...]) -> tuple:
    """The values of ``obj``'s typed fields ``names`` as stored (dicts as JSON)."""
    return tuple(_j(getattr(obj, n)) if n in JSON_FIELDS else getattr(obj, n) for n in names)


def _fields(row: sqlite3.Row, names: tuple[str, ...]) -> dict[str, Any]:
    """A row's typed fields ``names`` as keyword arguments (JSON read back)."""
    return {n: (json.loads(row[n]) if row[n] else None) if n in JSON_FIELDS else row[n] for n in names}


def _sql(table: str, names: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


def insert_set(con: sqlite3.Connection, output_id: int, value: AnySet, rel: Rel) -> None:
    if isinstance(value, TiltSeriesSet):
        con.execute(
            _sql("tilt_series_sets", ("output_id", "odd_even", "gain_file", "dark_file")),
            (output_id, int(value.odd_even), value.gain_file, value.dark_file),
        )
        _insert_tilt_series(con, output_id, value, rel)
    elif isinstance(value, CtfSeriesSet):
        _insert_ctf(con, output_id, value)
    elif isinstance(value, TomogramSet):
        names = ("output_id", "position", "ts_id", "file", "voxel_size_a", "nz", "ny", "nx", "attrs") + TOMOGRAM_FIELDS
        for pos, tomo in enumerate(value.items):
            con.execute(
                _sql("tomograms", names),
                (output_id, pos, tomo.ts_id, rel(tomo.file), tomo.voxel_size_a, *tomo.shape, _j(tomo.attrs))
                + _columns(tomo, TOMOGRAM_FIELDS),
            )
    else:  # pragma: no cover - programming error
        raise TypeError(f"cannot store {type(value).__name__}")


_SERIES = ("output_id", "position", "ts_id", "enabled", "size_x", "size_y", "acquisition", "attrs") + SERIES_FIELDS
_IMAGES = (
    "series_id",
    "position",
    "tilt_angle_deg",
    "acquisition_order",
    "dose_prior_e_a2",
    "dose_e_a2",
    "dose_accumulated_e_a2",
    "file",
    "idx",
    "frames",
    "enabled",
    "odd_file",
    "even_file",
    "transform",
    "attrs",
) + IMAGE_FIELDS


def _insert_tilt_series(con: sqlite3.Connection, output_id: int, value: TiltSeriesSet, rel: Rel) -> None:
    for pos, ts in enumerate(value.items):
        sid = con.execute(
            _sql("tilt_series", _SERIES),
            (
                output_id,
                pos,
                ts.ts_id,
                int(ts.enabled),
                ts.size[0],
                ts.size[1],
                json.dumps(ts.acquisition.__dict__),
                _j(ts.attrs),
            )
            + _columns(ts, SERIES_FIELDS),
        ).lastrowid
        con.executemany(
            _sql("tilt_images", _IMAGES),
            [
                (
                    sid,
                    i,
                    im.tilt_angle_deg,
                    im.acquisition_order,
                    im.dose_prior_e_a2,
                    im.dose_e_a2,
                    im.dose_accumulated_e_a2,
                    rel(im.file),
                    im.index,
                    im.frames,
                    int(im.enabled),
                    rel(im.odd_file) if im.odd_file else None,
                    rel(im.even_file) if im.even_file else None,
                    _j(im.transform),
                    _j(im.attrs),
                )
                + _columns(im, IMAGE_FIELDS)
                for i, im in enumerate(ts.images)
            ],
        )


_CTF_SERIES = ("output_id", "position", "ts_id", "enabled", "attrs") + CTF_SERIES_FIELDS
_CTF = (
    "series_id",
    "acquisition_order",
    "tilt_angle_deg",
    "defocus_u_a",
    "defocus_v_a",
    "astigmatism_angle_deg",
    "phase_shift_rad",
    "fit_resolution_a",
    "score",
    "enabled",
    "attrs",
) + CTF_FIELDS


def _insert_ctf(con: sqlite3.Connection, output_id: int, value: CtfSeriesSet) -> None:
    for pos, series in enumerate(value.items):
        row = (output_id, pos, series.ts_id, int(series.enabled), _j(series.attrs))
        sid = con.execute(_sql("ctf_series", _CTF_SERIES), row + _columns(series, CTF_SERIES_FIELDS)).lastrowid
        con.executemany(
            _sql("ctf_items", _CTF),
            [
                (
                    sid,
                    c.acquisition_order,
                    c.tilt_angle_deg,
                    c.defocus_u_a,
                    c.defocus_v_a,
                    c.astigmatism_angle_deg,
                    c.phase_shift_rad,
                    c.fit_resolution_a,
                    c.score,
                    int(c.enabled),
                    _j(c.attrs),
                )
                + _columns(c, CTF_FIELDS)
                for c in series.items
            ],
        )


def load_set(con: sqlite3.Connection, output_id: int, kind: str, attrs: dict, absp: Abs) -> AnySet:
    if kind in ("TiltSeriesM", "TiltSeries"):
        return _load_tilt_series(con, output_id, kind, attrs, absp)
    if kind == "CTFTomoSeries":
        return _load_ctf(con, output_id, attrs)
    if kind == "Tomograms":
        rows = con.execute("SELECT * FROM tomograms WHERE output_id=? ORDER BY position", (output_id,))
        return TomogramSet(
            [
                Tomogram(
                    r["ts_id"],
                    str(absp(r["file"])),
                    r["voxel_size_a"],
                    (r["nz"], r["ny"], r["nx"]),
                    json.loads(r["attrs"] or "{}"),
                    **_fields(r, TOMOGRAM_FIELDS),
                )
                for r in rows
            ],
            attrs,
        )
    raise TypeError(f"unknown output type {kind}")


def _load_tilt_series(con, output_id, kind, attrs, absp) -> TiltSeriesSet:
    series = con.execute("SELECT * FROM tilt_series WHERE output_id=? ORDER BY position", (output_id,)).fetchall()
    items = []
    for s in series:
        rows = con.execute("SELECT * FROM tilt_images WHERE series_id=? ORDER BY position", (s["id"],))
        images = [
            TiltImage(
                tilt_angle_deg=r["tilt_angle_deg"],
                acquisition_order=r["acquisition_order"],
                dose_prior_e_a2=r["dose_prior_e_a2"],
                dose_e_a2=r["dose_e_a2"],
                dose_accumulated_e_a2=r["dose_accumulated_e_a2"],
                file=str(absp(r["file"])),
                index=r["idx"],
                frames=r["frames"],
                enabled=bool(r["enabled"]),
                odd_file=str(absp(r["odd_file"])) if r["odd_file"] else None,
                even_file=str(absp(r["even_file"])) if r["even_file"] else None,
                transform=json.loads(r["transform"]) if r["transform"] else None,
                attrs=json.loads(r["attrs"] or "{}"),
                **_fields(r, IMAGE_FIELDS),
            )
            for r in rows
        ]
        items.append(
            TiltSeries(
                ts_id=s["ts_id"],
                acquisition=Acquisition(**json.loads(s["acquisition"])),
                images=images,
                size=(s["size_x"], s["size_y"]),
                enabled=bool(s["enabled"]),
                attrs=json.loads(s["attrs"] or "{}"),
                **_fields(s, SERIES_FIELDS),
            )
        )
    row = con.execute("SELECT * FROM tilt_series_sets WHERE output_id=?", (output_id,)).fetchone()
    fields = _fields(row, ("gain_file", "dark_file")) if row else {}
    return TiltSeriesSet(kind=kind, items=items, attrs=attrs, odd_even=bool(row and row["odd_even"]), **fields)


def _load_ctf(con, output_id, attrs) -> CtfSeriesSet:
    series = con.execute("SELECT * FROM ctf_series WHERE output_id=? ORDER BY position", (output_id,)).fetchall()
    items = []
    for s in series:
        rows = con.execute(
            "SELECT * FROM ctf_items WHERE series_id=? ORDER BY tilt_angle_deg, acquisition_order", (s["id"],)
        )
        items.append(
            CtfTomoSeries(
                s["ts_id"],
                [
                    CtfTomo(
                        acquisition_order=r["acquisition_order"],
                        tilt_angle_deg=r["tilt_angle_deg"],
                        defocus_u_a=r["defocus_u_a"],
                        defocus_v_a=r["defocus_v_a"],
                        astigmatism_angle_deg=r["astigmatism_angle_deg"],
                        phase_shift_rad=r["phase_shift_rad"],
                        fit_resolution_a=r["fit_resolution_a"],
                        score=r["score"],
                        enabled=bool(r["enabled"]),
                        attrs=json.loads(r["attrs"] or "{}"),
                        **_fields(r, CTF_FIELDS),
                    )
                    for r in rows
                ],
                bool(s["enabled"]),
                json.loads(s["attrs"] or "{}"),
                **_fields(s, CTF_SERIES_FIELDS),
            )
        )
    return CtfSeriesSet(items=items, attrs=attrs)
