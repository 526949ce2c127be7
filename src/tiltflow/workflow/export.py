"""Export a set for other tools. IMOD layout (DESIGN.md §4): ``DIR/<tsId>/<tsId>.st`` (every view,
tilt-angle order), ``.rawtlt`` (angles as stored), ``.tlt`` (refined when aligned), ``.xf`` when
aligned, ``_ctffind.txt`` and ``.defocus`` when CTF exists, ``_rec.mrc`` for tomograms, and
``newst.com`` / ``tilt.com`` (excluded views in ``EXCLUDELIST``). CTFFIND4 text alone with
``ctffind``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import CtfSeriesSet, TiltSeries, TiltSeriesSet, TomogramSet
from tiltflow.workflow.store import OutputRecord, ProjectStore


def _ctf_for(store: ProjectStore, out: OutputRecord, ctf_pointer: str | None) -> CtfSeriesSet | None:
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


def _write_stack(ts: TiltSeries, path: Path) -> None:
    from tiltflow.io.mrc import read_section, write_mrc

    files = {im.file for im in ts.images}
    if len(files) == 1 and [im.index for im in ts.images] == list(range(len(ts.images))):
        shutil.copyfile(ts.images[0].file, path)          # already every view in tilt order
        return
    data = np.stack([read_section(im.file, im.index) for im in ts.images])
    write_mrc(path, data, voxel_size_a=ts.acquisition.pixel_size_a)


def _imod_series(ts: TiltSeries, ctf, out_dir: Path) -> list[Path]:
    import torch

    from tiltflow.core.geometry import xf_from_geometry
    from tiltflow.io.imod import newst_com, tilt_com, write_com, write_tlt, write_xf
    from tiltflow.workflow.steps.ctf_common import write_series_ctf_files

    d = out_dir / ts.ts_id
    d.mkdir(parents=True, exist_ok=True)
    written = [d / f"{ts.ts_id}.st", d / f"{ts.ts_id}.rawtlt", d / f"{ts.ts_id}.tlt"]
    if any(im.index is None for im in ts.images):
        raise InputError(f"{ts.ts_id}: a set of movies has no stacks to export — export the motion-corrected set")
    _write_stack(ts, written[0])
    write_tlt(written[1], torch.tensor([im.tilt_angle_deg for im in ts.images]))
    write_tlt(written[2], torch.tensor([im.attrs.get("refined_tilt_angle_deg", im.tilt_angle_deg) for im in ts.images]))
    if any(im.transform is not None for im in ts.images):
        rot = xf_from_geometry(ts.acquisition.tilt_axis_deg, torch.zeros(1, 2))[0].tolist()
        rows = [im.transform if im.transform is not None else rot for im in ts.images]
        write_xf(d / f"{ts.ts_id}.xf", torch.tensor(rows, dtype=torch.float64))
        written.append(d / f"{ts.ts_id}.xf")
        nx, ny = ts.size
        excluded = [i + 1 for i, im in enumerate(ts.images) if not im.enabled]
        write_com(d / "newst.com", [newst_com(input_file=f"{ts.ts_id}.st", output_file=f"{ts.ts_id}.ali",
                                              transform_file=f"{ts.ts_id}.xf")])
        write_com(d / "tilt.com", [tilt_com(input_projections=f"{ts.ts_id}.ali", output_file=f"{ts.ts_id}_full_rec.mrc",
                                            tilt_file=f"{ts.ts_id}.tlt", thickness_px=min(nx, ny) // 4,
                                            full_image_xy=(nx, ny), exclude_views=excluded)])
        written += [d / "newst.com", d / "tilt.com"]
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


def export_set(store: ProjectStore, pointer: str, fmt: str, out_dir: Path, *, ctf_pointer: str | None = None) -> list[Path]:
    out = store.resolve(pointer)
    value = store.load(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
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
        ctf = _ctf_for(store, out, ctf_pointer)
        for ts in value.items:
            written += _imod_series(ts, ctf, out_dir)
        return written
    if fmt == "ctffind":
        ctf = value if isinstance(value, CtfSeriesSet) else _ctf_for(store, out, ctf_pointer)
        if ctf is None:
            raise InputError(f"{out.pointer}: no CTF estimated for this set — run motion-ctf or ctf first")
        for series in ctf.items:
            src = series.attrs.get("ctffind")
            if src:
                dest = out_dir / Path(src).name
                shutil.copyfile(src, dest)
                written.append(dest)
        return written
    raise InputError(f"--format {fmt}: unknown (imod or ctffind)")
