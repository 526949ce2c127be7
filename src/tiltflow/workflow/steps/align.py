"""Step ``align``: tilt-series alignment, fiducial-based (IMOD-like: beads, tracking, bundle
adjustment) or feature-based (AreTomo-like projection matching). Works on the enabled views of any
tilt-series set; writes per series ``.xf`` (unbinned stack pixels), ``.tlt`` (refined angles),
``.rawtlt``, and for beads an IMOD fiducial model (``.fid``) and 3-D positions.

Inspection (etomo's step-by-step view, until the viewer shows it): per series PNG plots in the run
folder — residual vs tilt angle and bead tracks over the 0° view (fiducial), projection-matching
error vs tilt angle (patch) — registered under the series' ``alignment["plots"]``; per-view and
per-bead residual tables printed under the run (the numbers stored in the views' fields and
the series' ``alignment``)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltImage, TiltSeries, TiltSeriesSet, verdict_text
from tiltflow.workflow.steps.align_tasks import AlignResult, AlignTask, FiducialStats, PatchStats, align_series_task
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.steps.checks_data import check_align
from tiltflow.workflow.steps.citations import ARETOMO, IMOD, IMOD_AUTOMATED
from tiltflow.workflow.steps.series_loop import enabled_series
from tiltflow.workflow.steps.views import stack_refs


class AlignParams(CheckedParams):
    method: Literal["fiducial", "patch"] = param(
        "fiducial", "fiducial (gold beads) or patch (projection matching).", cli="--method"
    )
    binning: int = param(4, "Align views binned by this factor.", cli="--binning", ge=1)
    bead_diameter_nm: float = param(
        10.0,
        "Gold bead diameter, nm.",
        cli="--bead-diameter-nm",
        gt=0,
        condition=("method", "fiducial"),
        group="fiducial",
    )
    solve_magnification: bool = param(
        True,
        "Solve a magnification per view.",
        cli="--solve-magnification",
        condition=("method", "fiducial"),
        group="fiducial",
        expert=True,
    )
    solve_tilt_angles: bool = param(
        True,
        "Grouped tilt-angle corrections.",
        cli="--solve-tilt-angles",
        condition=("method", "fiducial"),
        group="fiducial",
        expert=True,
    )
    align_z_nm: float = param(
        150.0,
        "Slab thickness of the intermediate reconstructions, nm (at most 3/4 of the aligned field's width).",
        cli="--align-z-nm",
        gt=0,
        condition=("method", "patch"),
        group="patch",
    )
    iterations: int = param(
        5, "Projection-matching iterations.", cli="--iterations", ge=1, condition=("method", "patch"), group="patch"
    )
    refine_tilt_axis: bool = param(True, "Refine the tilt-axis angle.", cli="--refine-tilt-axis", group="geometry")
    refine_tilt_offset: bool = param(True, "Refine a tilt-angle offset.", cli="--refine-tilt-offset", group="geometry")
    exclude_dark: bool = param(
        True,
        "Detect dark views and leave them out of the alignment.",
        cli="--exclude-dark",
        condition=("method", "patch"),
        group="patch",
    )
    resolve: bool = param(
        False,
        "Re-solve the input's bead model (no coarse alignment, no tracking) after "
        "dropping beads (--drop-beads) or views (excluded in the input, e.g. by `subset`): "
        "etomo's fix-and-re-solve.",
        cli="--resolve",
        condition=("method", "fiducial"),
        group="fiducial",
    )
    drop_beads: list[str] = param(
        [],
        "Beads to leave out, TS:N,N (1-based, as numbered in the per-bead residual table and the .fid contours).",
        cli="--drop-beads",
        condition=("resolve", True),
        group="fiducial",
    )


def run_align(ctx: StepContext[AlignParams]) -> dict[str, TiltSeriesSet]:
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    check_align(p, source)
    device = resolve_device(ctx.options.device)
    if p.resolve and p.method != "fiducial":
        raise InputError("--resolve re-solves a bead model: it needs --method fiducial")
    if p.drop_beads and not p.resolve:
        raise InputError("--drop-beads needs --resolve (it edits the input's bead model)")
    drops = _parse_drops(p.drop_beads, {ts.ts_id for ts in source.items})
    pointer = ctx.input_pointers["input"]
    tasks = [
        AlignTask(
            key=sv.series.ts_id,
            refs=stack_refs(sv.views, halves=False)["file"],
            angles=[im.tilt_angle_deg for im in sv.views],
            params=p,
            tilt_axis_deg=sv.series.acquisition.tilt_axis_deg,
            pixel_size_a=sv.series.acquisition.pixel_size_a,
            out_dir=str(ctx.run_dir),
            device=device,
            model_px=_input_model(sv.series, sv.views, drops.pop(sv.series.ts_id, set()), pointer)
            if p.resolve
            else None,
        )
        for sv in enabled_series(source, pointer, min_views=5, purpose="alignment")
    ]
    results = run_items_or_fail(ctx, align_series_task, tasks, AlignResult)
    failed = {k: r.verdict for k, r in results.items() if r.failed}
    if len(failed) == len(results):
        raise InputError(
            "no tilt series aligned: " + "; ".join(f"{k}: {'; '.join(v.reasons)}" for k, v in sorted(failed.items()))
        )
    items = []
    for ts in source.items:
        if ts.ts_id not in results:
            items.append(ts)
            continue
        r = results[ts.ts_id]
        if r.failed:
            items.append(_failed_series(ts, p.method, r))
            _log_verdict(ctx, ts.ts_id, r, "")
            continue
        items.append(_aligned_series(ts, r, p))
        _log_verdict(ctx, ts.ts_id, r, _log_summary(ctx, ts, r))
    if not ctx.options.verbose:
        where = (
            ctx.run_dir.relative_to(ctx.project_root) if ctx.run_dir.is_relative_to(ctx.project_root) else ctx.run_dir
        )
        ctx.report.note(f"per-view tables in {where / 'run.log'} (-v prints them), plots (PNG) in the same folder")
    attrs = dict(source.attrs, aligned=p.method)
    return {"TiltSeries": replace(source, kind="TiltSeries", items=items, attrs=attrs)}


def _aligned_series(ts: TiltSeries, r: AlignResult, p: AlignParams) -> TiltSeries:
    """The series with its views' transforms, refined angles and residuals, and the alignment's summary."""
    if r.xf is None or r.refined_tilt_angles_deg is None or r.tilt_axis_deg is None:
        raise ValueError(f"{ts.ts_id}: an alignment that did not fail has no .xf")
    rows = iter(zip(r.xf, r.refined_tilt_angles_deg, r.per_view, strict=False))
    images = []
    for im in ts.images:
        new = replace(im, attrs=dict(im.attrs), residual_px=None, projection_matching_error=None)
        if im.enabled:
            row, angle, value = next(rows)
            new.transform = row
            new.refined_tilt_angle_deg = angle
            key = "residual_px" if p.method == "fiducial" else "projection_matching_error"
            setattr(new, key, None if value is None or math.isnan(value) else value)
        else:
            new.transform = None
        images.append(new)
    acq = replace(ts.acquisition, tilt_axis_deg=r.tilt_axis_deg)
    summary: dict[str, Any] = {}
    fid = r.fiducial
    if fid is not None:
        summary.update(mean_residual_px=fid.mean_residual_px, n_beads=fid.n_beads)
    if r.tilt_offset_deg is not None:
        summary["tilt_offset_deg"] = r.tilt_offset_deg
    if fid is not None:
        summary.update(flagged_beads=fid.flagged_beads, flagged_views=fid.flagged_views)
    summary.update(verdict=r.verdict.to_dict(), fixed=r.fixed)
    summary["view_orders"] = [im.acquisition_order for im in ts.images if im.enabled]  # the .fid's z
    if p.method == "fiducial":
        summary["bead_diameter_nm"] = p.bead_diameter_nm  # the bead model's size (erase-beads reads it)
    if fid is not None:
        summary["per_bead_residual_px"] = [None if math.isnan(v) else v for v in fid.per_bead_residual_px]
    return replace(
        ts,
        acquisition=acq,
        images=images,
        attrs=dict(ts.attrs),
        alignment={"method": p.method, **summary, **r.files, "plots": r.plots},
    )


def _failed_series(ts: TiltSeries, method: str, r: AlignResult) -> TiltSeries:
    """The input series without transforms, carrying the failed verdict (reconstruct refuses it)."""
    images = [replace(im, transform=None, attrs=dict(im.attrs)) for im in ts.images]
    return replace(
        ts,
        images=images,
        attrs=dict(ts.attrs),
        alignment={"method": method, "verdict": r.verdict.to_dict(), "fixed": r.fixed},
    )


def _log_verdict(ctx: StepContext, ts_id: str, r: AlignResult, summary: str) -> None:
    """One line per series on the terminal: its verdict (with reasons) and the solution's summary."""
    line = f"{ts_id}: verdict {verdict_text(r.verdict.to_dict())}" + (f"; {summary}" if summary else "")
    ctx.log.info(line)
    ctx.report.note(line)


def _parse_drops(specs: list[str], ts_ids: set[str]) -> dict[str, set[int]]:
    """``TS:3,7`` -> {TS: {3, 7}} (1-based bead numbers)."""
    drops: dict[str, set[int]] = {}
    for spec in specs:
        ts_id, sep, nums = spec.rpartition(":")
        try:
            beads = {int(v) for v in nums.split(",") if v.strip()}
        except ValueError:
            beads = set()
        if not sep or not beads or min(beads) < 1:
            raise InputError(f"--drop-beads {spec!r}: expected TS:N,N with 1-based bead numbers")
        if ts_id not in ts_ids:
            raise InputError(f"--drop-beads {spec!r}: no tilt series {ts_id!r} in the input")
        drops.setdefault(ts_id, set()).update(beads)
    return drops


def _input_model(ts: TiltSeries, enabled: list[TiltImage], drop: set[int], pointer: str) -> list:
    """The input alignment's bead model as (beads, enabled views, 2) unbinned raw px (NaN absent),
    without the dropped beads; the .fid's sections are the views aligned then (``view_orders``)."""
    from tiltflow.io.imod import read_mod

    alignment = ts.alignment or {}
    fid, orders = alignment.get("fid"), alignment.get("view_orders")
    if not fid or orders is None:
        raise InputError(f"{pointer}: {ts.ts_id} has no fiducial model to re-solve; run align --method fiducial first")
    if not Path(fid).exists():
        raise InputError(f"{fid}: the fiducial model of {ts.ts_id} is missing; align it again")
    model = read_mod(fid)
    contours = [c.points for obj in model.objects for c in obj.contours]
    if drop and max(drop) > len(contours):
        raise InputError(f"--drop-beads {ts.ts_id}: bead {max(drop)} does not exist ({len(contours)} beads in {fid})")
    column = {order: i for i, order in enumerate(im.acquisition_order for im in enabled)}
    positions = [[[math.nan, math.nan] for _ in enabled] for _ in contours]
    kept = []
    for j, pts in enumerate(contours):
        if j + 1 in drop:
            continue
        for x, y, z in pts.tolist():
            k = round(z)
            if 0 <= k < len(orders) and orders[k] in column:
                positions[j][column[orders[k]]] = [x, y]
        kept.append(positions[j])
    if len(kept) < 3:
        raise InputError(f"{ts.ts_id}: {len(kept)} beads left after --drop-beads; the solve needs at least 3")
    return kept


def _log_summary(ctx: StepContext, ts: TiltSeries, r: AlignResult) -> str:
    """The per-view tables and plot names to run.log (and, with ``-v``, under the run); returns the
    one-line summary of the solution."""
    px = ts.acquisition.pixel_size_a
    axis = f"axis {_num(r.tilt_axis_deg, '.2f')}°, offset {_num(r.tilt_offset_deg, '.2f')}°"
    if r.fiducial is not None:
        fid = r.fiducial
        line = (
            f"{fid.n_beads} beads, mean residual {fid.mean_residual_px:.2f} px"
            f" ({fid.mean_residual_px * px / 10:.2f} nm), {axis}"
        )
    else:
        pm = r.patch
        errs = [e for e in (pm.per_view_error if pm else []) if not math.isnan(e)]
        line = (
            f"projection-matching error {sum(errs) / max(len(errs), 1):.3f} (1 - NCC),"
            f" {sum(pm.dark_views) if pm else 0} dark views, {axis}" + _slab_note(pm)
        )
    tables = residual_tables(ts, r)
    plots = f"{ts.ts_id}: plots in the run folder: {', '.join(Path(f).name for f in r.plots.values())}"
    for text in (f"{ts.ts_id}: {line}", *tables, plots):
        ctx.log.info("%s", text)
    if ctx.options.verbose:
        ctx.report.note_all([*tables, plots])
    return line


def _slab_note(pm: PatchStats | None) -> str:
    """``, slab N nm`` and, when narrower than asked, the thickness asked for and why."""
    if pm is None:
        return ""
    used, asked = pm.align_z_nm_used, pm.align_z_nm_asked
    if used >= asked - 0.5:
        return f", slab {used:.0f} nm"
    why = "narrowed to the specimen" if pm.slab_narrowed else "at most 3/4 of the field's width"
    return f", slab {used:.0f} nm (asked {asked:.0f} nm; {why})"


def _num(value: float | None, spec: str) -> str:
    return format(float("nan") if value is None else value, spec)


def residual_tables(ts: TiltSeries, r: AlignResult) -> list[str]:
    """Per-view (and, with beads, per-bead) tables as text, like etomo's alignment log."""
    refined = r.refined_tilt_angles_deg or []
    if r.fiducial is not None:
        return _fiducial_tables(ts, refined, r.fiducial)
    pm = r.patch
    if pm is None:
        return []
    lines = [
        (
            f"{ts.ts_id}: projection-matching error per view (1 - NCC with the leave-one-out reprojection;"
            " dark = left out)"
        ),
        " view   tilt°  refined°     error",
    ]
    for i, im in enumerate(ts.enabled_images):
        dark = " dark" if pm.dark_views[i] else ""
        lines.append(
            f"{ts.images.index(im) + 1:5d} {im.tilt_angle_deg:7.2f} {refined[i]:9.2f}"
            f" {_num(pm.per_view_error[i], '9.4f')}{dark}"
        )
    return ["\n".join(lines)]


def _fiducial_tables(ts: TiltSeries, refined: list[float], fid: FiducialStats) -> list[str]:
    """The residual per view and per bead, with the flagged ones marked."""
    flagged_views = set(fid.flagged_views)
    lines = [
        f"{ts.ts_id}: residual per view (px of the unbinned stack; * = flagged)",
        " view   tilt°  refined°  residual  beads",
    ]
    for i, im in enumerate(ts.enabled_images):
        lines.append(
            f"{ts.images.index(im) + 1:5d} {im.tilt_angle_deg:7.2f} {refined[i]:9.2f}"
            f" {_num(fid.per_view_residual_px[i], '9.3f')} {fid.per_view_beads[i]:6d}"
            f"{' *' if i in flagged_views else ''}"
        )
    flagged_beads = set(fid.flagged_beads)
    per_bead = [
        f"{ts.ts_id}: residual per bead (px; x y z of the 3-D position, px; * = flagged)",
        " bead  views  residual        x        y        z",
    ]
    for j, (res, n, xyz) in enumerate(zip(fid.per_bead_residual_px, fid.per_bead_views, fid.bead_xyz_px, strict=False)):
        per_bead.append(
            f"{j + 1:5d} {n:6d} {_num(res, '9.3f')} {xyz[0]:8.1f} {xyz[1]:8.1f} {xyz[2]:8.1f}"
            f"{' *' if j in flagged_beads else ''}"
        )
    return ["\n".join(lines), "\n".join(per_bead)]


register(
    Step(
        id="align",
        title="Tilt-series alignment",
        params=AlignParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (stacks)"),),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_align,
        scipion_class="ProtImodAutomaticAlign",
        checks=check_align,
        methods=(IMOD_AUTOMATED, IMOD, ARETOMO),
        help="Align tilt series: fiducial (gold beads, bundle adjustment) or patch (projection matching).",
    )
)
