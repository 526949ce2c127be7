"""Export a set for other tools.

- ``imod`` (DESIGN.md §4): ``DIR/<tsId>/<tsId>.st`` (every view, tilt-angle order), ``.rawtlt``
  (angles as stored), ``.tlt`` (refined when aligned), ``.xf`` when aligned, the fiducial model
  ``.fid`` and ``fid.xyz`` of a fiducial alignment, ``_ctffind.txt`` and ``.defocus`` when CTF
  exists, ``_rec.mrc`` for tomograms, and ``newst.com`` / ``tilt.com`` (excluded views in
  ``EXCLUDELIST``).
- ``ctffind``: the CTFFIND4 text files alone.
- ``relion``, ``warp``, ``aretomo``: see :mod:`tiltflow.workflow.export_formats`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, TiltSeries, TiltSeriesSet, TomogramSet
from tiltflow.workflow.store import OutputRecord, ProjectStore

FORMATS = ("imod", "ctffind", "relion", "warp", "aretomo")
TLT_FORMAT = "{:10.4f}"  # IMOD reads free format; 4 decimals keep refined angles (IMOD prints f7.2)


def ctf_for(store: ProjectStore, out: OutputRecord, ctf_pointer: str | None) -> CtfSeriesSet | None:
    """The CTF set given, else one of the same run or of the runs upstream of it."""
    if ctf_pointer:
        value = store.load(store.resolve(ctf_pointer, ("CTFTomoSeries",)))
        return value  # type: ignore[return-value]
    run_id, seen = out.run_id, set()
    while run_id is not None and run_id not in seen:
        seen.add(run_id)
        ctf = [o for o in store.outputs(run_id) if o.type == "CTFTomoSeries"]
        if ctf:
            return store.load(ctf[0])  # type: ignore[return-value]
        inputs = store.run(run_id).inputs
        run_id = int(next(iter(inputs.values())).split(".")[0]) if inputs else None
    return None


def ctf_by_order(ctf: CtfSeriesSet | None, ts_id: str) -> dict[int, CtfTomo]:
    """Per-tilt CTF of one series keyed by acquisition order (empty when there is none)."""
    series = next((s for s in (ctf.items if ctf else []) if s.ts_id == ts_id), None)
    return {c.acquisition_order: c for c in series.items} if series is not None else {}


def write_stack(ts: TiltSeries, path: Path, key: str = "file") -> None:
    """Every view of ``ts`` in tilt-angle order as an MRC stack (``key``: file, odd_file, even_file)."""
    from tiltflow.io.mrc import read_section, write_mrc

    if any(im.index is None for im in ts.images):
        raise InputError(f"{ts.ts_id}: a set of movies has no stacks to export — export the motion-corrected set")
    files = [getattr(im, key) for im in ts.images]
    if len(set(files)) == 1 and [im.index for im in ts.images] == list(range(len(ts.images))):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[0], path)          # already every view in tilt order
        return
    data = np.stack([read_section(f, im.index) for f, im in zip(files, ts.images)])
    write_mrc(path, data, voxel_size_a=ts.acquisition.pixel_size_a)


def series_alignment(ts: TiltSeries):
    """The series' :class:`~tiltflow.core.alignment_convert.SeriesAlignment`: every view's ``.xf``
    (views without one get the rotation that makes the tilt axis vertical), angles to reconstruct
    with (refined when aligned) and the enabled flags."""
    import torch

    from tiltflow.core.alignment_convert import SeriesAlignment
    from tiltflow.core.geometry import xf_from_geometry

    rot = xf_from_geometry(ts.acquisition.tilt_axis_deg, torch.zeros(1, 2))[0].tolist()
    xf = torch.tensor([im.transform if im.transform is not None else rot for im in ts.images], dtype=torch.float64)
    tilts = torch.tensor([im.attrs.get("refined_tilt_angle_deg", im.tilt_angle_deg) for im in ts.images],
                         dtype=torch.float64)
    return SeriesAlignment(xf, tilts, torch.tensor([im.enabled for im in ts.images]))


def pre_exposure_e_a2(ts: TiltSeries) -> list[float]:
    """Dose each view received before it (e/Å²); from the dose per tilt and acquisition order
    when the set has no per-view dose, 0 when it has neither."""
    a = ts.acquisition
    out = []
    for im in ts.images:
        if im.dose_prior_e_a2 is not None:
            out.append(float(im.dose_prior_e_a2))
        else:
            out.append(a.initial_dose_e_a2 + (im.acquisition_order - 1) * (a.dose_per_tilt_e_a2 or 0.0))
    return out


def tilt_series_of(store: ProjectStore, out: OutputRecord, value) -> tuple[TiltSeriesSet, OutputRecord, TomogramSet | None]:
    """The tilt-series set to export: the set itself, or the one a tomogram set was made from."""
    if isinstance(value, TiltSeriesSet):
        return value, out, None
    if isinstance(value, TomogramSet) and value.items and value.items[0].attrs.get("source"):
        src = store.resolve(value.items[0].attrs["source"], ("TiltSeries",))
        return store.load(src), src, value  # type: ignore[return-value]
    raise InputError(f"{out.pointer}: a {out.type} holds no tilt series to export — give a tilt-series set")


def _fiducial_files(ts: TiltSeries, d: Path) -> list[Path]:
    """The alignment's ``.fid`` (z renumbered from enabled views to sections of the full stack) and ``fid.xyz``."""
    import torch

    from tiltflow.io.imod import read_mod, write_mod

    files = ts.attrs.get("alignment", {})
    written = []
    if files.get("fid") and Path(files["fid"]).is_file():
        model = read_mod(files["fid"])
        sections = torch.tensor([i for i, im in enumerate(ts.images) if im.transform is not None])
        for obj in model.objects:                 # the views aligned are those given a transform
            for c in obj.contours:
                z = c.points[:, 2].round().long().clamp(0, len(sections) - 1)
                c.points[:, 2] = sections[z].to(c.points.dtype)
        model.header["zmax"] = len(ts.images)
        write_mod(d / f"{ts.ts_id}.fid", model)
        written.append(d / f"{ts.ts_id}.fid")
    if files.get("fid_xyz") and Path(files["fid_xyz"]).is_file():
        shutil.copyfile(files["fid_xyz"], d / f"{ts.ts_id}fid.xyz")
        written.append(d / f"{ts.ts_id}fid.xyz")
    return written


def _imod_series(ts: TiltSeries, ctf, out_dir: Path) -> list[Path]:
    import torch

    from tiltflow.io.imod import newst_com, tilt_com, write_com, write_tlt, write_xf
    from tiltflow.workflow.steps.ctf_common import write_series_ctf_files

    d = out_dir / ts.ts_id
    d.mkdir(parents=True, exist_ok=True)
    written = [d / f"{ts.ts_id}.st", d / f"{ts.ts_id}.rawtlt", d / f"{ts.ts_id}.tlt"]
    write_stack(ts, written[0])
    al = series_alignment(ts)
    write_tlt(written[1], torch.tensor([im.tilt_angle_deg for im in ts.images]), fmt=TLT_FORMAT)
    write_tlt(written[2], al.tilt_angles_deg, fmt=TLT_FORMAT)
    if any(im.transform is not None for im in ts.images):
        write_xf(d / f"{ts.ts_id}.xf", al.xf)
        written.append(d / f"{ts.ts_id}.xf")
        from tiltflow.core.reconstruct import aligned_shape

        # the aligned stack is swapped for an axis near 90°, as our reconstruction (and etomo) does
        ny, nx = aligned_shape((ts.size[1], ts.size[0]), al.xf)
        swapped = (nx, ny) != tuple(ts.size)
        excluded = [i + 1 for i, im in enumerate(ts.images) if not im.enabled]
        write_com(d / "newst.com", [newst_com(input_file=f"{ts.ts_id}.st", output_file=f"{ts.ts_id}.ali",
                                              transform_file=f"{ts.ts_id}.xf",
                                              size_to_output_xy=(nx, ny) if swapped else None)])
        write_com(d / "tilt.com", [tilt_com(input_projections=f"{ts.ts_id}.ali", output_file=f"{ts.ts_id}_full_rec.mrc",
                                            tilt_file=f"{ts.ts_id}.tlt", thickness_px=min(nx, ny) // 4,
                                            full_image_xy=(nx, ny), exclude_views=excluded)])
        written += [d / "newst.com", d / "tilt.com"]
        written += _fiducial_files(ts, d)
    series = next((s for s in (ctf.items if ctf else []) if s.ts_id == ts.ts_id), None)
    if series is not None and series.items:
        from tiltflow.core.ctf_fit import CtfParams

        a = ts.acquisition
        params = CtfParams(pixel_size_a=a.pixel_size_a, voltage_kv=a.voltage_kv, cs_mm=a.cs_mm,
                           amplitude_contrast=a.amplitude_contrast,
                           resolution_range_a=(30.0, max(8.0, 2.01 * a.pixel_size_a)))
        files = write_series_ctf_files(series, params, d)
        written += [Path(files["ctffind"]), Path(files["defocus"])]
    return written


def export_set(store: ProjectStore, pointer: str, fmt: str, out_dir: Path, *, ctf_pointer: str | None = None,
               notes: list[str] | None = None) -> list[Path]:
    """Write the set behind ``pointer`` in format ``fmt`` under ``out_dir``; returns the files written.

    ``notes`` (when given) collects one-line remarks for the user (e.g. "no CTF: no defocus columns")."""
    out = store.resolve(pointer)
    value = store.load(out)
    notes = [] if notes is None else notes
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unknown (one of {', '.join(FORMATS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if fmt in ("relion", "warp", "aretomo"):
        from tiltflow.workflow import export_formats

        tilt_series, ts_out, tomograms = tilt_series_of(store, out, value)
        ctf = ctf_for(store, ts_out, ctf_pointer)
        writer = {"relion": export_formats.export_relion, "warp": export_formats.export_warp,
                  "aretomo": export_formats.export_aretomo}[fmt]
        return writer(tilt_series, ctf, out_dir, tomograms=tomograms, notes=notes)
    if fmt == "imod":
        if isinstance(value, TomogramSet):
            for tomo in value.items:
                (out_dir / tomo.ts_id).mkdir(exist_ok=True)
                dest = out_dir / tomo.ts_id / f"{tomo.ts_id}_rec.mrc"
                shutil.copyfile(tomo.file, dest)
                written.append(dest)
            return written
        if not isinstance(value, TiltSeriesSet):
            raise InputError(f"{out.pointer}: a {out.type} has no IMOD layout — export tilt series or tomograms")
        ctf = ctf_for(store, out, ctf_pointer)
        for ts in value.items:
            written += _imod_series(ts, ctf, out_dir)
        return written
    ctf = value if isinstance(value, CtfSeriesSet) else ctf_for(store, out, ctf_pointer)
    if ctf is None:
        raise InputError(f"{out.pointer}: no CTF estimated for this set — run motion-ctf or ctf first")
    for series in ctf.items:
        src = series.attrs.get("ctffind")
        if src:
            dest = out_dir / Path(src).name
            shutil.copyfile(src, dest)
            written.append(dest)
    return written
