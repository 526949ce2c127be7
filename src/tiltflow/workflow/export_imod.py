"""``tiltflow export --format imod`` (DESIGN.md §4): ``DIR/<tsId>/`` as etomo leaves it.

Per series: ``<tsId>.st`` (every view, tilt-angle order), ``.rawtlt`` (angles as stored), ``.tlt``
(refined when aligned), ``.xf``, the fiducial model ``.fid`` and ``<tsId>fid.xyz`` of a fiducial
alignment, ``_ctffind.txt`` and ``.defocus`` when CTF exists, and ``newst.com`` / ``tilt.com``
(excluded views in ``EXCLUDELIST``). Every per-view file has one line per section of the ``.st``.

A tomogram set exports the series it was made from plus ``_rec.mrc`` and the ``.com`` files of the
reconstruct run: binning (``BinByFactor`` / ``IMAGEBINNED``), thickness, radial filter, offsets,
fake-SIRT iterations, and ``ctfcorrection.com`` when it phase-flipped. ``LOG`` is written only for
stacks of counts (non-negative whole numbers); float images centred on zero have no logarithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.export import (
    DEFAULT_THICKNESS_A,
    TLT_FORMAT,
    copy_file,
    ctf_for,
    ctf_rows,
    series_alignment,
    tilt_series_of,
    write_ctf_files,
    write_stack,
)
from tiltflow.workflow.sets import TiltSeries, TiltSeriesSet, Tomogram, TomogramSet
from tiltflow.workflow.store import OutputRecord, ProjectStore


@dataclass(frozen=True)
class TiltSettings:
    """What ``newst.com`` / ``tilt.com`` reproduce; lengths in unbinned px unless said."""

    binning: int = 1
    thickness_px: int | None = None  # None: 200 nm
    radial: tuple[float, float] = (0.35, 0.035)  # cycles/px of the binned views
    shift_xz_px: tuple[float, float] = (0.0, 0.0)
    fake_sirt_iterations: int | None = None
    invert: bool = False
    phaseflip: bool = False
    defocus_tol_nm: float | None = None


def settings_of_run(params: dict, tomo: Tomogram, pixel_size_a: float) -> TiltSettings:
    """The settings of a reconstruct run (its stored parameters) that made ``tomo``."""
    b = int(params.get("binning", tomo.binning or 1))
    px = pixel_size_a

    def shift(key: str) -> float:
        return -float(params.get(key) or 0.0) * 10.0 / px

    return TiltSettings(
        binning=b,
        thickness_px=tomo.shape[0] * b,
        radial=(float(params.get("radial_cutoff", 0.35)), float(params.get("radial_falloff", 0.035))),
        shift_xz_px=(shift("x_offset_nm"), shift("z_offset_nm")),
        fake_sirt_iterations=params.get("fake_sirt_iterations") if params.get("method", "wbp") == "wbp" else None,
        invert=bool(params.get("invert")),
        phaseflip=params.get("ctf_correct") == "phaseflip",
        defocus_tol_nm=params.get("ctf_defocus_tol_nm"),
    )


def log_offset(stack: Path) -> float | None:
    """tilt's ``LOG`` offset for a stack of counts (0, or 1 when a count is 0); None for other data."""
    import numpy as np

    from tiltflow.io.mrc import read_section, read_stack_header

    n = read_stack_header(stack).n_sections
    sample = np.stack([read_section(stack, i) for i in sorted({0, n // 2, n - 1})])
    if sample.min() < 0 or not np.array_equal(sample, np.round(sample)):
        return None
    return 0.0 if sample.min() > 0 else 1.0


def _renumbered_fid(ts: TiltSeries, alignment: dict, dest: Path) -> None:
    """The alignment's ``.fid`` for the exported stack: z from the views aligned then (acquisition
    orders ``view_orders``) to sections of the ``.st`` (points on views no longer in it dropped);
    x, y to IMOD's model coordinates (pixel centres at index + 0.5)."""
    from tiltflow.io.imod import read_mod, write_mod

    model = read_mod(alignment["fid"])
    orders = alignment.get("view_orders") or [im.acquisition_order for im in ts.images if im.transform is not None]
    section = {im.acquisition_order: i for i, im in enumerate(ts.images)}
    new_z = torch.tensor([float(section.get(o, -1)) for o in orders])
    for obj in model.objects:
        for c in obj.contours:
            z = c.points[:, 2].round().long().clamp(0, len(orders) - 1)
            keep = new_z[z] >= 0
            pts = c.points[keep].clone()
            pts[:, 2] = new_z[z[keep]].to(pts.dtype)
            pts[:, :2] += 0.5
            c.points = pts
            if c.sizes is not None:
                c.sizes = c.sizes[keep]
    model.header["zmax"] = len(ts.images)
    write_mod(dest, model)


def _imod_fid_xyz(ts: TiltSeries, src: str, dest: Path) -> None:
    """``fid.xyz`` in IMOD's convention (corner origin in x, y; :class:`~tiltflow.io.imod.FidXyz`).
    The align step lists beads with their centroid at zero (tiltalign's log); a file already in
    IMOD's convention (centroid far from 0) is copied."""
    from tiltflow.io.imod import FidXyz, read_fid_xyz, write_fid_xyz

    fid = read_fid_xyz(src)
    size = fid.image_size or tuple(ts.size)
    if fid.xyz.shape[0] and bool((fid.xyz[:, :2].mean(0).abs() < 1.0).all()):
        xyz = fid.xyz.clone()
        xyz[:, 0] += size[0] / 2.0
        xyz[:, 1] += size[1] / 2.0
        fid = FidXyz(fid.point, xyz, fid.object, fid.contour, fid.pixel_size_a, (int(size[0]), int(size[1])))
    write_fid_xyz(dest, fid)


def _fiducial_files(ts: TiltSeries, d: Path) -> list[Path]:
    alignment = ts.alignment or {}
    written = []
    if alignment.get("fid") and Path(alignment["fid"]).is_file():
        _renumbered_fid(ts, alignment, d / f"{ts.ts_id}.fid")
        written.append(d / f"{ts.ts_id}.fid")
    if alignment.get("fid_xyz") and Path(alignment["fid_xyz"]).is_file():
        _imod_fid_xyz(ts, alignment["fid_xyz"], d / f"{ts.ts_id}fid.xyz")
        written.append(d / f"{ts.ts_id}fid.xyz")
    return written


def _com_files(ts: TiltSeries, d: Path, al, s: TiltSettings, ctf_written: bool, notes: list[str]) -> list[Path]:
    from tiltflow.core.reconstruct import aligned_shape
    from tiltflow.io.imod import PhaseFlipSettings, TiltComSettings, ctfphaseflip_com, newst_com, tilt_com, write_com

    name, a, b = ts.ts_id, ts.acquisition, s.binning
    ny, nx = aligned_shape((ts.size[1], ts.size[0]), al.xf)  # swapped for an axis near 90°, as etomo does
    swapped = (nx, ny) != tuple(ts.size)
    excluded = [i + 1 for i, im in enumerate(ts.images) if not im.enabled]
    size = (nx // b, ny // b) if (swapped or b > 1) else None  # newstack: binned px
    write_com(
        d / "newst.com",
        [
            newst_com(
                input_file=f"{name}.st",
                output_file=f"{name}.ali",
                transform_file=f"{name}.xf",
                bin_by=b,
                size_to_output_xy=size,
            )
        ],
    )
    written = [d / "newst.com"]
    projections = f"{name}.ali"
    if s.phaseflip and ctf_written:
        from tiltflow.core.ctf_model import electron_wavelength_a

        tol = s.defocus_tol_nm or 0.25 / (electron_wavelength_a(a.voltage_kv) * (0.5 / (a.pixel_size_a * b)) ** 2) / 10
        write_com(
            d / "ctfcorrection.com",
            [
                ctfphaseflip_com(
                    input_stack=projections,
                    output_file=f"{name}_ctfcorr.ali",
                    angle_file=f"{name}.tlt",
                    defocus_file=f"{name}.defocus",
                    transform_file=f"{name}.xf",
                    settings=PhaseFlipSettings(
                        pixel_size_a=a.pixel_size_a * b,
                        voltage_kv=a.voltage_kv,
                        cs_mm=a.cs_mm,
                        amplitude_contrast=a.amplitude_contrast,
                        defocus_tol_nm=tol,
                    ),
                )
            ],
        )
        written.append(d / "ctfcorrection.com")
        projections = f"{name}_ctfcorr.ali"
    elif s.phaseflip:
        notes.append(f"{name}: the run phase-flipped, but no CTF was found for its .defocus: no ctfcorrection.com")
    thickness = s.thickness_px or max(1, round(DEFAULT_THICKNESS_A / a.pixel_size_a))
    write_com(
        d / "tilt.com",
        [
            tilt_com(
                input_projections=projections,
                output_file=f"{name}_full_rec.mrc",
                tilt_file=f"{name}.tlt",
                settings=TiltComSettings(
                    thickness_px=thickness,
                    full_image_xy=(nx, ny),
                    image_binned=b,
                    exclude_views=tuple(excluded),
                    log_offset=log_offset(d / f"{name}.st"),
                    radial=s.radial,
                    shift_xz_px=s.shift_xz_px,
                    scale=(0.0, -1.0 if s.invert else 1.0),
                    fake_sirt_iterations=s.fake_sirt_iterations,
                ),
            )
        ],
    )
    return [*written, d / "tilt.com"]


def imod_series(
    ts: TiltSeries, ctf, out_dir: Path, notes: list[str], settings: TiltSettings | None = None
) -> list[Path]:
    """One series' files under ``out_dir/<tsId>/``; ``settings`` of the reconstruct run exported, if any."""
    from tiltflow.io.imod import write_tlt, write_xf

    d = out_dir / ts.ts_id
    d.mkdir(parents=True, exist_ok=True)
    written = [d / f"{ts.ts_id}.st", d / f"{ts.ts_id}.rawtlt", d / f"{ts.ts_id}.tlt"]
    write_stack(ts, written[0])
    al = series_alignment(ts)
    write_tlt(written[1], torch.tensor([im.tilt_angle_deg for im in ts.images]), fmt=TLT_FORMAT)
    write_tlt(written[2], al.tilt_angles_deg, fmt=TLT_FORMAT)
    rows = ctf_rows(ts, ctf, []) if ctf is not None else None
    if rows is not None:
        written += write_ctf_files(ts, rows, d)
    if settings is not None or any(im.transform is not None for im in ts.images):
        write_xf(d / f"{ts.ts_id}.xf", al.xf)
        written.append(d / f"{ts.ts_id}.xf")
        written += _com_files(ts, d, al, settings or TiltSettings(), rows is not None, notes)
        written += _fiducial_files(ts, d)
    return written


def export_imod(
    store: ProjectStore, out: OutputRecord, value, out_dir: Path, *, ctf_pointer: str | None, notes: list[str]
) -> list[Path]:
    """Tilt series (enabled ones) or tomograms with the series and ``.com`` files that made them."""
    if isinstance(value, TiltSeriesSet):
        ctf = ctf_for(store, out, ctf_pointer)
        written: list[Path] = []
        for ts in value.items:
            if ts.enabled:
                written += imod_series(ts, ctf, out_dir, notes)
            else:
                notes.append(f"{ts.ts_id}: excluded, not exported")
        return written
    if not isinstance(value, TomogramSet):
        raise InputError(f"{out.pointer}: a {out.type} has no IMOD layout — export tilt series or tomograms")
    tilt_series: TiltSeriesSet | None
    ts_out: OutputRecord | None
    try:
        tilt_series, ts_out, _ = tilt_series_of(store, out, value)
    except InputError:
        tilt_series, ts_out = None, None
        notes.append(f"{out.pointer}: the tilt series of these tomograms are unknown: tomograms alone")
    params = store.run(out.run_id).params
    by_id = {ts.ts_id: ts for ts in (tilt_series.items if tilt_series else [])}
    written = []
    for tomo in value.items:
        series = by_id.get(tomo.ts_id)
        if series is not None and ts_out is not None:
            pointer = ctf_pointer or tomo.ctf
            ctf = ctf_for(store, ts_out, pointer)
            settings = settings_of_run(params, tomo, series.acquisition.pixel_size_a)
            written += imod_series(series, ctf, out_dir, notes, settings)
            if params.get("method") == "sirt":
                notes.append(
                    f"{tomo.ts_id}: the run used SIRT ({params.get('sirt_iterations')} iterations); "
                    "tilt.com back-projects — IMOD's sirtsetup makes the SIRT equivalent"
                )
            if params.get("dose_weight"):
                notes.append(f"{tomo.ts_id}: the run dose-weighted its views; tilt.com does not (IMOD: mtffilter)")
        (out_dir / tomo.ts_id).mkdir(parents=True, exist_ok=True)
        dest = out_dir / tomo.ts_id / f"{tomo.ts_id}_rec.mrc"
        written.append(copy_file(tomo.file, dest))
    return written


__all__ = ["TiltSettings", "export_imod", "imod_series", "log_offset", "settings_of_run"]
