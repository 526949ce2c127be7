"""Exports for RELION 5, Warp and AreTomo (``tiltflow export --format relion|warp|aretomo``).

Each writes every view of a series in tilt-angle order as one stack, and the alignment in the
tool's own terms (:mod:`tiltflow.core.transforms`, :mod:`tiltflow.core.alignment_convert`); every
per-view list (STAR rows, XML per-tilt values, ``.tlt``/``.xf``/``.aln`` lines, doses, CTF matched
by acquisition order) follows the views of that stack:

- ``relion``: ``DIR/tomograms.star`` (``data_global``: optics, ``rlnTomoHand``, pixel size,
  tomogram size, ``rlnTomoTiltSeriesStarFile``) and ``DIR/tilt_series/<tsId>.star`` with one row
  per enabled view: ``rlnMicrographName`` = ``<section>@<tsId>/<tsId>.mrcs`` (1-based, RELION's
  stack notation), ``rlnMicrographPreExposure``, defocus when a CTF set is found, and
  ``rlnTomoXTilt/YTilt/ZRot/XShiftAngst/YShiftAngst``. Paths are relative to DIR: run RELION there.
  ``rlnTomoHand = -1``: our defocus falls with height z' above the specimen centre (DESIGN.md §2,
  ``core/geometry.py``), RELION adds ``hand * pixel * z'`` to the defocus.
- ``warp``: ``DIR/warp_tiltseries/<tsId>.xml`` (``Angles`` refined, ``Dose`` before each tilt,
  ``UseTilt``, ``AxisAngle``, ``AxisOffsetX/Y`` in Å, ``MoviePath``, ``FOVFraction``, the whole
  ``<CTF>``, per-tilt ``GridCTF/DefocusDelta/DefocusAngle/Phase`` and the other grids WarpTools
  writes), ``DIR/tomostar/<tsId>.tomostar``, ``DIR/warp_tiltseries/tiltstack/<tsId>/`` with the
  stack, ``.rawtlt``, ``.tlt`` and ``.xf`` that WarpTools ``ts_import_alignments`` reads, and the
  frame series each ``MoviePath`` points to: ``DIR/warp_frameseries/<movie>.xml`` and averages
  (:mod:`tiltflow.workflow.export_warp_frames`), where WarpTools takes each tilt's image from.
- ``aretomo``: ``DIR/<tsId>/<tsId>.mrc``, ``.tlt`` (angles as stored, for ``-AngFile``) and
  ``.aln`` (for ``-AlnFile``; excluded views as dark frames; more decimals than AreTomo prints).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import torch

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.export import (
    DEFAULT_THICKNESS_A,
    TLT_FORMAT,
    copy_file,
    ctf_rows,
    pre_exposure_e_a2,
    series_alignment,
    write_stack,
)
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, TiltSeries, TiltSeriesSet, Tomogram, TomogramSet

RELION_HAND = -1.0


def _series(tilt_series: TiltSeriesSet, tomograms: TomogramSet | None) -> list[TiltSeries]:
    wanted = {t.ts_id for t in tomograms.items} if tomograms is not None else None
    items = [ts for ts in tilt_series.items if ts.enabled and (wanted is None or ts.ts_id in wanted)]
    if not items:
        raise InputError("nothing to export: every tilt series is excluded")
    return items


def _note_dropped(ts: TiltSeries, al, tool: str, notes: list[str]) -> None:
    """A note when the .xf has a magnification/skew the tool cannot hold (moves views by > 0.05 px)."""
    from tiltflow.core.alignment_convert import xf_point_difference_px
    from tiltflow.core.transforms import geometry_to_xf, xf_to_geometry

    keep = al.enabled
    if not bool(keep.any()):
        return
    geo = xf_to_geometry(al.xf[keep])
    moved = (
        xf_point_difference_px(al.xf[keep], geometry_to_xf(geo.tilt_axis_deg, geo.shifts_px), (ts.size[1], ts.size[0]))
        .max()
        .item()
    )
    if moved > 0.05:
        notes.append(
            f"{ts.ts_id}: {tool} has no per-view magnification; dropping it moves view corners by up to {moved:.2f} px"
        )


def _tomogram_size(ts: TiltSeries, tomograms: TomogramSet | None) -> tuple[list[int], float, Tomogram | None]:
    """Unbinned (x, y, z) tomogram size, binning, and the tomogram (or None)."""
    tomo = next((t for t in (tomograms.items if tomograms else []) if t.ts_id == ts.ts_id), None)
    nx, ny = ts.size
    if tomo is None:
        return [nx, ny, round(DEFAULT_THICKNESS_A / ts.acquisition.pixel_size_a)], 1.0, None
    binning = tomo.voxel_size_a / ts.acquisition.pixel_size_a
    nz = tomo.shape[0]
    return [nx, ny, round(nz * binning)], binning, tomo


# ---- RELION 5 ------------------------------------------------------------------------------------


def _relion_table(ts: TiltSeries, ctf_rows, stacks: dict[str, str], notes: list[str]) -> pd.DataFrame:
    from tiltflow.core.transforms import xf_to_relion

    a = ts.acquisition
    al = series_alignment(ts)
    _note_dropped(ts, al, "RELION", notes)
    keep = [i for i, im in enumerate(ts.images) if im.enabled]
    cols = xf_to_relion(
        al.xf[keep], al.tilt_angles_deg[keep], pixel_size_a=a.pixel_size_a, image_shape=(ts.size[1], ts.size[0])
    )
    images = [ts.images[i] for i in keep]
    dose = pre_exposure_e_a2(ts)
    table: dict[str, list] = {}
    if all(im.movie is not None for im in images):
        table["rlnMicrographMovieName"] = [str(im.movie) for im in images]
    table["rlnTomoNominalStageTiltAngle"] = [im.tilt_angle_deg for im in images]
    table["rlnTomoNominalTiltAxisAngle"] = [a.tilt_axis_deg] * len(images)
    table["rlnMicrographPreExposure"] = [dose[i] for i in keep]
    for key, label in (
        ("even_file", "rlnMicrographNameEven"),
        ("odd_file", "rlnMicrographNameOdd"),
        ("file", "rlnMicrographName"),
    ):
        if key in stacks:
            table[label] = [f"{i + 1}@{stacks[key]}" for i in keep]
    if ctf_rows is not None:
        rows = [ctf_rows[i] for i in keep]
        table["rlnDefocusU"] = [c.defocus_u_a for c in rows]
        table["rlnDefocusV"] = [c.defocus_v_a for c in rows]
        table["rlnDefocusAngle"] = [c.astigmatism_angle_deg for c in rows]
        table["rlnPhaseShift"] = [math.degrees(c.phase_shift_rad) for c in rows]  # RELION: degrees
        if all(c.fit_resolution_a is not None for c in rows):
            table["rlnCtfMaxResolution"] = [c.fit_resolution_a for c in rows]
    for name, values in cols.items():
        table[name] = values.tolist()
    table["rlnCtfScalefactor"] = [math.cos(math.radians(t)) for t in table["rlnTomoYTilt"]]
    return pd.DataFrame(table)


def export_relion(
    tilt_series: TiltSeriesSet,
    ctf: CtfSeriesSet | None,
    out_dir: Path,
    *,
    tomograms: TomogramSet | None = None,
    notes: list[str],
) -> list[Path]:
    from tiltflow.io.relion import (
        TiltSeriesStar,
        TomogramsStar,
        write_tilt_series_star,
        write_tomograms_star,
    )

    written: list[Path] = []
    rows = []
    for ts in _series(tilt_series, tomograms):
        stacks = {"file": f"{ts.ts_id}/{ts.ts_id}.mrcs"}
        if all(im.odd_file and im.even_file for im in ts.images):
            stacks.update(odd_file=f"{ts.ts_id}/{ts.ts_id}_odd.mrcs", even_file=f"{ts.ts_id}/{ts.ts_id}_even.mrcs")
        for key, rel in stacks.items():
            write_stack(ts, out_dir / rel, key)
            written.append(out_dir / rel)
        star_rel = f"tilt_series/{ts.ts_id}.star"
        (out_dir / "tilt_series").mkdir(exist_ok=True)
        write_tilt_series_star(
            out_dir / star_rel, TiltSeriesStar(ts.ts_id, _relion_table(ts, ctf_rows(ts, ctf, notes), stacks, notes))
        )
        written.append(out_dir / star_rel)
        a = ts.acquisition
        size, binning, tomo = _tomogram_size(ts, tomograms)
        row = {
            "rlnTomoName": ts.ts_id,
            "rlnVoltage": a.voltage_kv,
            "rlnSphericalAberration": a.cs_mm,
            "rlnAmplitudeContrast": a.amplitude_contrast,
            "rlnMicrographOriginalPixelSize": a.pixel_size_a,
            "rlnTomoHand": RELION_HAND,
            "rlnOpticsGroupName": "opticsGroup1",
            "rlnTomoTiltSeriesPixelSize": a.pixel_size_a,
            "rlnTomoTiltSeriesStarFile": star_rel,
            "rlnTomoTomogramBinning": binning,
            "rlnTomoSizeX": size[0],
            "rlnTomoSizeY": size[1],
            "rlnTomoSizeZ": size[2],
        }
        if tomo is not None:
            rel = f"tomograms/rec_{ts.ts_id}.mrc"
            (out_dir / "tomograms").mkdir(exist_ok=True)
            written.append(copy_file(tomo.file, out_dir / rel))
            row["rlnTomoReconstructedTomogram"] = rel
        rows.append(row)
    write_tomograms_star(out_dir / "tomograms.star", TomogramsStar(pd.DataFrame(rows)))
    return [out_dir / "tomograms.star", *written]


# ---- Warp ----------------------------------------------------------------------------------------


def _warp_ctf(ts: TiltSeries, rows: list[CtfTomo] | None, order: list[str], params: dict, other: list) -> None:
    """``<CTF>`` (all of WarpTools' parameters), the per-tilt CTF grids (zeros without a CTF) and the
    neutral grids WarpTools writes, in its order."""
    from tiltflow.io.warp import DEFAULT_GRIDS, ctf_param_values, grid_element, volume_warp_element

    a = ts.acquisition
    um = 1e-4  # Å -> µm
    ctf = {
        "pixel_size_a": a.pixel_size_a,
        "voltage_kv": a.voltage_kv,
        "cs_mm": a.cs_mm,
        "amplitude": a.amplitude_contrast,
    }
    grids = {"GridCTF": [0.0], "GridCTFDefocusDelta": [0.0], "GridCTFDefocusAngle": [0.0], "GridCTFPhase": [0.0]}
    if rows is not None:
        used = [c for c, im in zip(rows, ts.images, strict=False) if im.enabled] or rows
        central = min(zip(rows, ts.images, strict=False), key=lambda p: abs(p[1].tilt_angle_deg))[0]
        ctf.update(
            defocus_um=sum(c.defocus_mean_a for c in used) / len(used) * um,
            defocus_delta_um=(central.defocus_u_a - central.defocus_v_a) * um,
            defocus_angle_deg=central.astigmatism_angle_deg,
            phase_shift_pi=central.phase_shift_rad / math.pi,
        )
        grids = {
            "GridCTF": [c.defocus_mean_a * um for c in rows],
            "GridCTFDefocusDelta": [(c.defocus_u_a - c.defocus_v_a) * um for c in rows],
            "GridCTFDefocusAngle": [c.astigmatism_angle_deg for c in rows],
            "GridCTFPhase": [c.phase_shift_rad / math.pi for c in rows],
        }
    params["CTF"] = ctf_param_values(**ctf)
    order.append("CTF")
    elements = [grid_element(tag, values) for tag, values in grids.items()]
    elements += [grid_element("GridMovementX", [0.0]), grid_element("GridMovementY", [0.0])]
    elements += [volume_warp_element(f"GridVolumeWarp{axis}") for axis in "XYZ"]
    elements += [grid_element(tag, [value]) for tag, value in DEFAULT_GRIDS.items()]
    for el in elements:
        other.append(el)
        order.append(el.tag)


def _resolution_estimate(ts: TiltSeries, rows: list[CtfTomo] | None) -> str:
    """WarpTools' ``CTFResolutionEstimate``: the median fit resolution of the used tilts, Å (0: none)."""
    fits = sorted(
        c.fit_resolution_a for c, im in zip(rows or [], ts.images, strict=False) if im.enabled and c.fit_resolution_a
    )
    return f"{fits[len(fits) // 2]:.3g}" if fits else "0"


def export_warp(
    tilt_series: TiltSeriesSet,
    ctf: CtfSeriesSet | None,
    out_dir: Path,
    *,
    tomograms: TomogramSet | None = None,
    notes: list[str],
) -> list[Path]:
    from tiltflow.core.alignment_convert import xf_to_warp
    from tiltflow.io.imod import write_tlt, write_xf
    from tiltflow.io.warp import WarpTiltSeries, write_tomostar, write_warp_xml
    from tiltflow.workflow.export_warp_frames import FRAMES_DIR, movie_names, write_frame_series

    written: list[Path] = []
    (out_dir / "tomostar").mkdir(exist_ok=True)
    for ts in _series(tilt_series, tomograms):
        a = ts.acquisition
        al = series_alignment(ts)
        stack_dir = out_dir / "warp_tiltseries" / "tiltstack" / ts.ts_id
        stack_dir.mkdir(parents=True, exist_ok=True)
        write_stack(ts, stack_dir / f"{ts.ts_id}.st")
        write_tlt(
            stack_dir / f"{ts.ts_id}.rawtlt", torch.tensor([im.tilt_angle_deg for im in ts.images]), fmt=TLT_FORMAT
        )
        write_tlt(stack_dir / f"{ts.ts_id}.tlt", al.tilt_angles_deg, fmt=TLT_FORMAT)
        write_xf(stack_dir / f"{ts.ts_id}.xf", al.xf)
        written += [stack_dir / f"{ts.ts_id}{s}" for s in (".st", ".rawtlt", ".tlt", ".xf")]
        _note_dropped(ts, al, "Warp", notes)
        geo = xf_to_warp(al.xf, pixel_size_a=a.pixel_size_a)
        movies, dose = [f"../{FRAMES_DIR}/{n}" for n in movie_names(ts)], pre_exposure_e_a2(ts)
        per_tilt = {
            "Angles": al.tilt_angles_deg.tolist(),
            "Dose": dose,
            "UseTilt": [im.enabled for im in ts.images],
            "AxisAngle": geo.axis_angle_deg.tolist(),
            "AxisOffsetX": geo.offsets_a[:, 0].tolist(),
            "AxisOffsetY": geo.offsets_a[:, 1].tolist(),
            "MoviePath": movies,
            "FOVFraction": [1.0] * len(ts.images),
        }
        rows = ctf_rows(ts, ctf, notes)
        attributes = {
            "DataDirectory": str((out_dir / "tomostar").absolute()),
            "AreAnglesInverted": "False",
            "PlaneNormal": "0, 0, 1",
            "Bfactor": "0",
            "Weight": "1",
            "MagnificationCorrection": "1, 0, 0, 1",
            "UnselectFilter": "False",
            "UnselectManual": "",
            "CTFResolutionEstimate": _resolution_estimate(ts, rows),
        }
        order = list(per_tilt)
        params: dict[str, dict[str, str]] = {}
        other: list[ET.Element] = []
        _warp_ctf(ts, rows, order, params, other)
        written += write_frame_series(ts, rows, out_dir, notes)
        xml = out_dir / "warp_tiltseries" / f"{ts.ts_id}.xml"
        write_warp_xml(xml, WarpTiltSeries(attributes, per_tilt, params, other, order))
        tomostar = out_dir / "tomostar" / f"{ts.ts_id}.tomostar"
        write_tomostar(
            tomostar,
            pd.DataFrame(
                {
                    "wrpMovieName": movies,
                    "wrpAngleTilt": [im.tilt_angle_deg for im in ts.images],
                    "wrpAxisAngle": [a.tilt_axis_deg] * len(ts.images),
                    "wrpAxisOffsetX": [0.0] * len(ts.images),
                    "wrpAxisOffsetY": [0.0] * len(ts.images),
                    "wrpDose": dose,
                }
            ),
        )
        written += [xml, tomostar]
    return written


# ---- AreTomo -------------------------------------------------------------------------------------


def export_aretomo(
    tilt_series: TiltSeriesSet,
    ctf: CtfSeriesSet | None,
    out_dir: Path,
    *,
    tomograms: TomogramSet | None = None,
    notes: list[str],
) -> list[Path]:
    from tiltflow.core.alignment_convert import series_to_aln_rows
    from tiltflow.io.aretomo import GLOBAL_COLUMNS, AlnFile, write_aln
    from tiltflow.io.imod import write_tlt

    written: list[Path] = []
    for ts in _series(tilt_series, tomograms):
        d = out_dir / ts.ts_id
        d.mkdir(parents=True, exist_ok=True)
        write_stack(ts, d / f"{ts.ts_id}.mrc")
        write_tlt(d / f"{ts.ts_id}.tlt", torch.tensor([im.tilt_angle_deg for im in ts.images]), fmt=TLT_FORMAT)
        rows = series_to_aln_rows(series_alignment(ts))
        k = rows.raw_indices.shape[0]
        table = pd.DataFrame(
            {
                "SEC": list(range(1, k + 1)),
                "ROT": rows.rot_deg.tolist(),
                "GMAG": rows.gmag.tolist(),
                "TX": rows.shifts_px[:, 0].tolist(),
                "TY": rows.shifts_px[:, 1].tolist(),
                "SMEAN": [1.0] * k,
                "SFIT": [1.0] * k,
                "SCALE": [1.0] * k,
                "BASE": [0.0] * k,
                "TILT": rows.tilt_deg.tolist(),
            },
            columns=list(GLOBAL_COLUMNS),
        )
        dark = [(i, i, im.tilt_angle_deg) for i, im in enumerate(ts.images) if not im.enabled]
        size, _, tomo = _tomogram_size(ts, tomograms)
        aln = AlnFile(
            (ts.size[0], ts.size[1], len(ts.images)),
            0,
            table,
            DarkFrame=dark,
            Thickness=size[2] if tomo is not None else None,
        )
        write_aln(d / f"{ts.ts_id}.aln", aln, precise=True)
        written += [d / f"{ts.ts_id}.mrc", d / f"{ts.ts_id}.tlt", d / f"{ts.ts_id}.aln"]
    return written
