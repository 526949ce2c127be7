"""Export a set for other tools (``tiltflow export ID --format ...``).

Every per-view file of an export describes exactly the views of the stack written beside it, in
the same (tilt-angle) order: a re-stacked subset's CTF, alignment and dose lists are those of its
views, matched by acquisition order, never the parent set's. Every MRC written carries a header
label naming tiltflow, its version and the run exported.

- ``imod``: :mod:`tiltflow.workflow.export_imod`.
- ``relion``, ``warp``, ``aretomo``: :mod:`tiltflow.workflow.export_formats`.
- ``ctffind``: CTFFIND4 text per series (a CTF set's files, or a tilt-series set's views).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries, TiltSeries, TiltSeriesSet, TomogramSet
from tiltflow.workflow.store import OutputRecord, ProjectStore

FORMATS = ("imod", "ctffind", "relion", "warp", "aretomo")
TLT_FORMAT = "{:10.4f}"  # IMOD reads free format; 4 decimals keep refined angles (IMOD prints f7.2)
DEFAULT_THICKNESS_A = 2000.0  # tomogram z size written when no tomogram is exported (reconstruct's 200 nm)
MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".ali", ".rec")


def copy_file(src: Path | str, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` through a temporary name (renamed when complete): a copy that fails
    leaves no half-written ``dest``, and its error names ``dest`` (``shutil`` names the source)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(dest)) from err
    return dest


def ctf_for(store: ProjectStore, out: OutputRecord, ctf_pointer: str | None) -> CtfSeriesSet | None:
    """The CTF set given, else one of the same run or of the runs upstream of it."""
    if ctf_pointer:
        value = store.load(store.resolve(ctf_pointer, ("CTFTomoSeries",)))
        return value  # type: ignore[return-value]
    run_id: int | None = out.run_id
    seen: set[int] = set()
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


def ctf_rows(ts: TiltSeries, ctf: CtfSeriesSet | None, notes: list[str]) -> list[CtfTomo] | None:
    """The CTF of every view of ``ts`` (its stack's views, tilt order), matched by acquisition order;
    None (with a note) when the series has none. A view left out of the CTF set must be excluded:
    it gets the series' mean defocus so per-view files keep one line per section."""
    by_order = ctf_by_order(ctf, ts.ts_id)
    if not by_order:
        notes.append(f"{ts.ts_id}: no CTF found (give --ctf): no defocus written")
        return None
    missing = [i + 1 for i, im in enumerate(ts.images) if im.enabled and im.acquisition_order not in by_order]
    if missing:
        raise InputError(
            f"{ts.ts_id}: the CTF set has no values for views {missing} (tilt order) — "
            "estimate CTF on this set or exclude those views"
        )
    mean = sum(c.defocus_mean_a for c in by_order.values()) / len(by_order)
    return [
        by_order.get(im.acquisition_order) or CtfTomo(im.acquisition_order, im.tilt_angle_deg, mean, mean, 0.0)
        for im in ts.images
    ]


def stack_ctf_series(ts: TiltSeries, rows: list[CtfTomo]) -> CtfTomoSeries:
    """The CTF series of the stack's views, with the stack's tilt angles (for the per-view files)."""
    items = [
        CtfTomo(**{**c.__dict__, "tilt_angle_deg": im.tilt_angle_deg}) for c, im in zip(rows, ts.images, strict=False)
    ]
    return CtfTomoSeries(ts.ts_id, items)


def write_ctf_files(ts: TiltSeries, rows: list[CtfTomo], out_dir: Path) -> list[Path]:
    """``<tsId>_ctffind.txt`` and ``<tsId>.defocus`` with one line per view of the stack."""
    from tiltflow.core.ctf_fit import CtfParams
    from tiltflow.workflow.steps.ctf_common import write_series_ctf_files

    a = ts.acquisition
    params = CtfParams(
        pixel_size_a=a.pixel_size_a,
        voltage_kv=a.voltage_kv,
        cs_mm=a.cs_mm,
        amplitude_contrast=a.amplitude_contrast,
        resolution_range_a=(30.0, max(8.0, 2.01 * a.pixel_size_a)),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_series_ctf_files(stack_ctf_series(ts, rows), params, out_dir)
    return [Path(str(files.ctffind_file)), Path(str(files.defocus_file))]


def write_stack(ts: TiltSeries, path: Path, key: str = "file") -> None:
    """Every view of ``ts`` in tilt-angle order as an MRC stack (``key``: file, odd_file, even_file)."""
    from tiltflow.io.mrc import StackError, read_section, write_mrc

    if any(im.index is None for im in ts.images):
        raise InputError(f"{ts.ts_id}: a set of movies has no stacks to export — export the motion-corrected set")
    files = [getattr(im, key) for im in ts.images]
    try:
        if len(set(files)) == 1 and [im.index for im in ts.images] == list(range(len(ts.images))):
            from tiltflow.io.mrc import read_stack_header

            if read_stack_header(files[0]).n_sections == len(ts.images):
                path.parent.mkdir(parents=True, exist_ok=True)
                copy_file(files[0], path)  # already every view in tilt order
                return
        data = np.stack([read_section(f, im.section) for f, im in zip(files, ts.images, strict=False)])
    except StackError as err:
        raise InputError(str(err)) from None
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
    tilts = torch.tensor([im.best_tilt_angle_deg for im in ts.images], dtype=torch.float64)
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


def tilt_series_of(
    store: ProjectStore, out: OutputRecord, value
) -> tuple[TiltSeriesSet, OutputRecord, TomogramSet | None]:
    """The tilt-series set to export: the set itself, or the one a tomogram set was made from."""
    if isinstance(value, TiltSeriesSet):
        return value, out, None
    if isinstance(value, TomogramSet) and value.items and value.items[0].source:
        src = store.resolve(value.items[0].source, ("TiltSeries",))
        return store.load(src), src, value  # type: ignore[return-value]
    raise InputError(f"{out.pointer}: a {out.type} holds no tilt series to export — give a tilt-series set")


def export_label(store: ProjectStore, out: OutputRecord) -> str:
    """The MRC header label of an export: ``tiltflow <version> export of run <id> <step> (<pointer>) <date>``."""
    from tiltflow import __version__

    step = store.run(out.run_id).step
    date = time.strftime("%d-%b-%y %H:%M:%S")
    head = f"tiltflow {__version__}: export of run {out.run_id} {step} "
    tail = f" {date}"
    pointer = f"({out.pointer})"[: max(8, 80 - len(head) - len(tail))]
    return (head + pointer + tail)[:80]


def _label_mrcs(paths: list[Path], label: str) -> None:
    from tiltflow.io.mrc import add_label

    for path in dict.fromkeys(paths):
        if path.suffix.lower() in MRC_SUFFIXES and path.is_file():
            add_label(path, label)


def _export_ctffind(value, ctf: CtfSeriesSet | None, out: OutputRecord, out_dir: Path, notes: list[str]) -> list[Path]:
    if ctf is None:
        raise InputError(f"{out.pointer}: no CTF estimated for this set — run motion-ctf or ctf first")
    written: list[Path] = []
    if isinstance(value, TiltSeriesSet):  # the views of this set, as its stacks hold them
        by_id = {s.ts_id: s for s in ctf.items}
        for ts in value.items:
            rows = ctf_rows(ts, ctf, notes) if ts.enabled else None
            if rows is None:
                continue
            src = by_id[ts.ts_id].ctffind_file
            same = [c.acquisition_order for c in by_id[ts.ts_id].items] == [im.acquisition_order for im in ts.images]
            if src and same:
                written.append(out_dir / Path(src).name)  # the estimate's own file describes these views
                copy_file(src, written[-1])
                continue
            written.append(write_ctf_files(ts, rows, out_dir)[0])
            (out_dir / f"{ts.ts_id}.defocus").unlink(missing_ok=True)
        return written
    for series in ctf.items:
        src = series.ctffind_file
        if src:
            dest = out_dir / Path(src).name
            written.append(copy_file(src, dest))
    return written


def export_set(
    store: ProjectStore,
    pointer: str,
    fmt: str,
    out_dir: Path,
    *,
    ctf_pointer: str | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Write the set behind ``pointer`` in format ``fmt`` under ``out_dir``; returns the files written.

    ``notes`` (when given) collects one-line remarks for the user (e.g. "no CTF: no defocus columns").
    A full disk raises :class:`~tiltflow.workflow.errors.DiskFull` naming the file (or ``out_dir``) it
    was writing, after the half-written temporary files under ``out_dir`` are removed."""
    from tiltflow.workflow import diskspace

    out = store.resolve(pointer)
    value = store.load(out)
    notes = [] if notes is None else notes
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: unknown (one of {', '.join(FORMATS)})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = _write_format(store, out, value, fmt, out_dir, ctf_pointer=ctf_pointer, notes=notes)
        _label_mrcs(written, export_label(store, out))
    except Exception as err:
        full = diskspace.as_disk_full(err, out_dir, "free space there (or choose another --out) and export again")
        if full is None:
            raise
        diskspace.remove_temporaries(out_dir)
        raise full from err
    return written


def _write_format(
    store: ProjectStore, out: OutputRecord, value, fmt: str, out_dir: Path, *, ctf_pointer: str | None, notes: list[str]
) -> list[Path]:
    if fmt in ("relion", "warp", "aretomo"):
        from tiltflow.workflow import export_formats

        tilt_series, ts_out, tomograms = tilt_series_of(store, out, value)
        ctf = ctf_for(store, ts_out, ctf_pointer)
        writer = {
            "relion": export_formats.export_relion,
            "warp": export_formats.export_warp,
            "aretomo": export_formats.export_aretomo,
        }[fmt]
        written = writer(tilt_series, ctf, out_dir, tomograms=tomograms, notes=notes)
    elif fmt == "imod":
        from tiltflow.workflow.export_imod import export_imod

        written = export_imod(store, out, value, out_dir, ctf_pointer=ctf_pointer, notes=notes)
    else:
        ctf = value if isinstance(value, CtfSeriesSet) else ctf_for(store, out, ctf_pointer)
        written = _export_ctffind(value, ctf, out, out_dir, notes)
    return written
