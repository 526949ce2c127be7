"""Step ``import-alignment``: alignments made elsewhere, IMOD ``.xf`` (+ ``.tlt``) or AreTomo
``.aln``, put on a tilt-series set (Scipion's "import transformation matrix"). The output is an
aligned set like ``align``'s: per-view ``.xf`` transforms, refined tilt angles and excluded views,
ready for ``reconstruct`` and ``export``.

Files are matched to series by ``{TS}`` in ``--pattern``. A file covers either every view of its
series in tilt-angle order (as IMOD and AreTomo see our stacks) or only the enabled ones.

- IMOD: ``<name>.xf``; angles from ``<name>.tlt`` beside it (else the set's angles are kept);
  excluded views from the ``EXCLUDELIST`` of a ``tilt.com`` beside it whose ``TILTFILE`` is that
  ``.tlt``. ``--binning`` scales the shifts when the ``.xf`` was made on a binned stack.
- AreTomo: ``<name>.aln``; its dark frames become excluded views, ``TILT`` the refined angles,
  ``RawSize`` gives the binning of its stack. ``A = GMAG R(-ROT)``, ``D = -A (TX, TY)`` (DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from pydantic import field_validator

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams, absolute_path
from tiltflow.workflow.steps.citations import ARETOMO, IMOD
from tiltflow.workflow.steps.common import find_files, report_bad_series, ts_id_from_pattern

ORDER_TOLERANCE_DEG = 5.0  # file angles further than this from the set's (after a common offset): wrong order


class ImportAlignmentParams(CheckedParams):
    files: str = param(..., "Folder holding the alignment files.", cli="--files")
    pattern: str = param(
        "{TS}.xf",
        "Glob pattern of the files; {TS} marks the tilt-series id ('{TS}/{TS}.xf', "
        "'{TS}.aln'). .xf files are read as IMOD, .aln as AreTomo.",
        cli="--pattern",
    )
    binning: float = param(
        1.0,
        "IMOD .xf only: the stack it was made on was binned by this factor relative to the "
        "input set (.aln files give their stack size).",
        cli="--binning",
        gt=0,
    )

    @field_validator("files")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return absolute_path(v)


def _covered(path: Path, n_file: int, ts: TiltSeries) -> list[int]:
    """Indices (tilt order) of the views a file with ``n_file`` views describes."""
    if n_file == len(ts.images):
        return list(range(len(ts.images)))
    enabled = [i for i, im in enumerate(ts.images) if im.enabled]
    if n_file == len(enabled):
        return enabled
    raise InputError(
        f"{path}: {n_file} views, but {ts.ts_id} has {len(ts.images)} views ({len(enabled)} enabled)"
        " — the file belongs to another stack"
    )


def _check_order(path: Path, angles: torch.Tensor, ts: TiltSeries, views: list[int]) -> None:
    nominal = torch.tensor([ts.images[i].tilt_angle_deg for i in views], dtype=torch.float64)
    diff = angles - nominal
    worst = (diff - diff.median()).abs().max().item() if len(views) else 0.0
    if worst > ORDER_TOLERANCE_DEG:
        raise InputError(
            f"{path}: its tilt angles differ from {ts.ts_id}'s by up to {worst:.1f}° (beyond a common "
            "offset) — was its stack in another order?"
        )


def _excludelist(xf_path: Path, tlt: Path | None) -> list[int]:
    """1-based views in ``EXCLUDELIST`` of a ``tilt.com`` beside the ``.xf`` that reads this ``.tlt``."""
    from tiltflow.io.imod import parse_imod_list, read_com

    com = xf_path.parent / "tilt.com"
    if tlt is None or not com.is_file():
        return []
    tilt = next((prog for prog in read_com(com, strict=False) if prog.program == "tilt"), None)
    if tilt is None or Path(tilt.options.get("TILTFILE", "")).name != tlt.name:
        return []
    try:
        return parse_imod_list(tilt.options.get("EXCLUDELIST", ""))
    except ValueError as err:
        raise InputError(f"{com}: EXCLUDELIST: {err}") from None


def _read_imod(path: Path, ts: TiltSeries, p: ImportAlignmentParams) -> dict:
    from tiltflow.io.imod import read_tlt, read_xf

    xf = read_xf(path)
    views = _covered(path, xf.shape[0], ts)
    xf[:, 4:] *= p.binning  # shifts in pixels of our (unbinned) stack
    beside = path.with_suffix(".tlt")
    tlt: Path | None = None
    angles = None
    if beside.is_file():
        tlt = beside
        angles = read_tlt(beside)
        if angles.shape[0] != xf.shape[0]:
            raise InputError(f"{beside}: {angles.shape[0]} tilt angles for {xf.shape[0]} views in {path.name}")
        _check_order(beside, angles, ts, views)
    excluded = _excludelist(path, tlt) if len(views) == len(ts.images) else []
    bad = [v for v in excluded if not 1 <= v <= len(views)]
    if bad:
        raise InputError(f"{path.parent / 'tilt.com'}: EXCLUDELIST views {bad} are outside 1..{len(views)}")
    enabled = torch.ones(len(views), dtype=torch.bool)
    enabled[[v - 1 for v in excluded]] = False
    return {
        "format": "imod",
        "views": views,
        "xf": xf,
        "angles": angles,
        "enabled": enabled,
        "files": [str(path)] + ([str(tlt)] if tlt else []),
    }


def _read_aretomo(path: Path, ts: TiltSeries) -> dict:
    from tiltflow.core.alignment_convert import AlnRows, aln_rows_to_series
    from tiltflow.io.aretomo import read_aln

    aln = read_aln(path)
    nx, ny, n = aln.RawSize
    views = _covered(path, n, ts)
    sx, sy = ts.size[0] / nx, ts.size[1] / ny
    if abs(sx - sy) > 0.01 * sx:
        raise InputError(f"{path}: RawSize {nx} x {ny} does not scale to {ts.ts_id}'s {ts.size[0]} x {ts.size[1]}")
    rows = AlnRows(
        aln.column("ROT"),
        aln.column("GMAG"),
        torch.stack([aln.column("TX"), aln.column("TY")], 1),
        aln.column("TILT"),
        aln.raw_indices(),
    )
    raw = torch.tensor([ts.images[i].tilt_angle_deg for i in views], dtype=torch.float64)
    try:
        al = aln_rows_to_series(rows, n_views=len(views), raw_tilt_angles_deg=raw, shift_scale=sx)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    _check_order(path, al.tilt_angles_deg[al.enabled], ts, [views[i] for i in rows.raw_indices.tolist()])
    return {
        "format": "aretomo",
        "views": views,
        "xf": al.xf,
        "angles": al.tilt_angles_deg,
        "enabled": al.enabled,
        "files": [str(path)],
    }


def _read_one(path: Path, ts: TiltSeries, p: ImportAlignmentParams) -> dict:
    from tiltflow.io.aretomo import AlnFormatError
    from tiltflow.io.imod import ImodFormatError

    suffix = path.suffix.lower()
    try:
        if suffix == ".xf":
            return _read_imod(path, ts, p)
        if suffix == ".aln":
            return _read_aretomo(path, ts)
    except (ImodFormatError, AlnFormatError, OSError) as err:
        raise InputError(str(err)) from None
    raise InputError(f"{path}: unknown alignment file type '{suffix}' — give IMOD .xf or AreTomo .aln files")


def _apply(ts: TiltSeries, r: dict, ctx: StepContext[ImportAlignmentParams]) -> TiltSeries:
    from tiltflow.core.transforms import xf_to_geometry
    from tiltflow.io.imod import write_tlt, write_xf

    pos = {v: k for k, v in enumerate(r["views"])}
    images = []
    for i, im in enumerate(ts.images):
        new = replace(im, attrs=dict(im.attrs))
        k = pos.get(i)
        new.transform = None if k is None else [float(v) for v in r["xf"][k].tolist()]
        if k is not None and r["angles"] is not None:
            new.refined_tilt_angle_deg = float(r["angles"][k])
        new.enabled = im.enabled and k is not None and bool(r["enabled"][k])
        images.append(new)
    aligned = [im for im in images if im.enabled]
    if len(aligned) < 3:
        raise InputError(
            f"{r['files'][0]}: leaves {ts.ts_id} with {len(aligned)} enabled views — at least 3 are needed"
        )
    geo = xf_to_geometry(torch.tensor([im.transform for im in aligned], dtype=torch.float64))
    rad = torch.deg2rad(geo.tilt_axis_deg)  # circular mean of the per-view axes
    axis = math.degrees(math.atan2(rad.sin().mean().item(), rad.cos().mean().item()))
    acq = ts.acquisition.__class__(**{**ts.acquisition.__dict__, "tilt_axis_deg": axis})
    out = Path(ctx.run_dir)
    write_xf(out / f"{ts.ts_id}.xf", torch.tensor([im.transform or [1.0, 0, 0, 1.0, 0, 0] for im in images]))
    write_tlt(out / f"{ts.ts_id}.tlt", torch.tensor([im.best_tilt_angle_deg for im in images]), fmt="{:10.4f}")
    alignment = {
        "method": "import",
        "format": r["format"],
        "source": r["files"],
        "xf": str(out / f"{ts.ts_id}.xf"),
        "tlt": str(out / f"{ts.ts_id}.tlt"),
    }
    excluded = sum(1 for a, b in zip(ts.images, images, strict=False) if a.enabled and not b.enabled)
    line = (
        f"{ts.ts_id}: {r['format']} {Path(r['files'][0]).name}: {len(aligned)} views aligned"
        f"{f', {excluded} more excluded' if excluded else ''}, axis {axis:.2f}°"
        f"{'' if r['angles'] is not None else ', tilt angles kept (no .tlt)'}"
    )
    ctx.log.info(line)
    ctx.report.note(line)
    return replace(ts, acquisition=acq, images=images, attrs=dict(ts.attrs), alignment=alignment)


def run_import_alignment(ctx: StepContext[ImportAlignmentParams]) -> dict[str, TiltSeriesSet]:
    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    found: dict[str, list[Path]] = {}
    for path in find_files(Path(p.files), p.pattern):
        ts_id = ts_id_from_pattern(path, p.pattern) or path.name.split(".")[0]
        found.setdefault(ts_id, []).append(path)
    wanted = [ts for ts in source.items if ts.enabled]
    problems: dict[str, list[str]] = {}
    results: dict[str, dict] = {}
    for ts in wanted:
        paths = found.get(ts.ts_id, [])
        if not paths:
            problems[ts.ts_id] = [f"{ts.ts_id}: no file in {p.files} matches --pattern '{p.pattern}' for it"]
        elif len(paths) > 1:
            problems[ts.ts_id] = [f"{ts.ts_id}: several files match: {', '.join(map(str, paths))} — narrow --pattern"]
        else:
            try:
                results[ts.ts_id] = _read_one(paths[0], ts, p)
            except InputError as err:
                problems[ts.ts_id] = err.problems
    report_bad_series(ctx, problems, total=len(wanted))
    unused = sorted(set(found) - {ts.ts_id for ts in source.items})
    if unused:
        ctx.report.warn(f"files for series not in the set were ignored: {unused}")
    items = []
    for ts in source.items:
        if ts.ts_id in results:
            items.append(_apply(ts, results[ts.ts_id], ctx))
        elif not ts.enabled:
            items.append(ts)
    return {"TiltSeries": replace(source, kind="TiltSeries", items=items, attrs=dict(source.attrs, aligned="import"))}


register(
    Step(
        id="import-alignment",
        title="Import alignment",
        params=ImportAlignmentParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series the alignments were made for"),),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_import_alignment,
        scipion_class="ProtImodImportTransformationMatrix",
        methods=(IMOD, ARETOMO),
        help="Put alignments made elsewhere (IMOD .xf + .tlt, AreTomo .aln) on a tilt-series set.",
    )
)
