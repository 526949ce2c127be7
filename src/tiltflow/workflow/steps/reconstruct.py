"""Step ``reconstruct``: tomograms by weighted back-projection (IMOD-like radial filter, optional
SIRT-like filter) or SIRT, from the enabled views of a tilt-series set, aligned by their ``.xf``
transforms (or, when unaligned, rotated by the tilt axis only). Even/odd tomograms from the
half-sum stacks. Output MRC: z = beam/thickness axis, voxel size in the header.

Per view, in this order: binning, alignment (``.xf``), optional CTF phase flipping in strips
parallel to the tilt axis (IMOD ``ctfphaseflip`` on the aligned stack; the CTF of ``--ctf`` matched
to the views by acquisition order and carried to the aligned frame by the ``.xf``), optional dose
weighting (Grant & Grigorieff exposure filter at the view's mid-exposure), then WBP or SIRT."""

from __future__ import annotations

from typing import Literal

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import (
    CtfSeriesSet,
    TiltSeries,
    TiltSeriesSet,
    Tomogram,
    TomogramSet,
    alignment_verdict,
)
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.steps.checks_data import MAX_THICKNESS_NM, check_reconstruct
from tiltflow.workflow.steps.citations import CTFPHASEFLIP, EXPOSURE_FILTER, IMOD, SIRT, TOMO3D, WBP
from tiltflow.workflow.steps.reconstruct_tasks import (
    Corrections,
    Optics,
    ReconstructResult,
    ReconstructTask,
    ViewsCtf,
    reconstruct_series_task,
)
from tiltflow.workflow.steps.series_loop import SeriesViews, enabled_series
from tiltflow.workflow.steps.views import stack_refs


class ReconstructParams(CheckedParams):
    method: Literal["wbp", "sirt"] = param("wbp", "Weighted back-projection or SIRT.", cli="--method")
    binning: int = param(
        4, "Bin the views by this factor (Fourier cropping) before reconstructing.", cli="--binning", ge=1
    )
    thickness_nm: float = param(200.0, "Tomogram thickness, nm.", cli="--thickness-nm", gt=0, le=MAX_THICKNESS_NM)
    thickness_px: int | None = param(
        None, "Tomogram thickness in pixels of the binned views (overrides --thickness-nm).", cli="--thickness-px", ge=1
    )
    z_offset_nm: float = param(
        0.0,
        "Specimen z at the volume centre, nm (IMOD SHIFT z = -offset).",
        cli="--z-offset-nm",
        ge=-MAX_THICKNESS_NM,
        le=MAX_THICKNESS_NM,
    )
    x_offset_nm: float = param(0.0, "Specimen x at the volume centre, nm.", cli="--x-offset-nm")
    radial_cutoff: float = param(
        0.35,
        "Radial filter cut-off, cycles/px of the binned views (IMOD RADIAL).",
        cli="--radial-cutoff",
        gt=0,
        le=0.5,
        condition=("method", "wbp"),
        group="wbp",
    )
    radial_falloff: float = param(
        0.035,
        "Radial filter fall-off (Gaussian sigma), cycles/px.",
        cli="--radial-falloff",
        gt=0,
        condition=("method", "wbp"),
        group="wbp",
        expert=True,
    )
    fake_sirt_iterations: int | None = param(
        None,
        "WBP with IMOD's SIRT-like filter of N iterations.",
        cli="--fake-sirt",
        ge=1,
        condition=("method", "wbp"),
        group="wbp",
    )
    hamming_start: float | None = param(
        None,
        "tomo3d's Hamming window on the ramp from this frequency, cycles/px of the binned views (0: the "
        "whole range, tomo3d's default; 0.5: none); replaces --radial-cutoff/--radial-falloff.",
        cli="--hamming",
        ge=0,
        le=0.5,
        condition=("method", "wbp"),
        group="wbp",
        expert=True,
    )
    sirt_iterations: int = param(
        20, "SIRT iterations.", cli="--sirt-iterations", ge=1, condition=("method", "sirt"), group="sirt"
    )
    positivity: bool = param(
        False,
        "Clamp negative densities (after inverting to bright protein).",
        cli="--positivity",
        condition=("method", "sirt"),
        group="sirt",
    )
    even_odd: bool = param(False, "Also reconstruct even/odd tomograms from the half-sum stacks.", cli="--even-odd")
    invert: bool = param(False, "Invert contrast (bright protein).", cli="--invert")
    ctf_correct: Literal["none", "phaseflip"] = param(
        "none",
        "CTF correction: phaseflip = strip-based phase flipping of the aligned views (needs --ctf).",
        cli="--ctf-correct",
        group="correction",
    )
    ctf_defocus_tol_nm: float | None = param(
        None,
        "Defocus change allowed within a phase-flipping strip, nm (IMOD DefocusTol; default: the change "
        "that moves the CTF phase by pi/4 at the binned views' Nyquist).",
        cli="--ctf-defocus-tol-nm",
        gt=0,
        condition=("ctf_correct", "phaseflip"),
        group="correction",
        expert=True,
    )
    dose_weight: bool = param(
        False,
        "Filter each view by its exposure (Grant & Grigorieff); not with views already dose-weighted by "
        "motion-ctf --dose-weighting.",
        cli="--dose-weight",
        group="correction",
    )

    def problems(self) -> list[str]:
        if self.hamming_start is not None and self.method != "wbp":
            return [
                (
                    f"--hamming {self.hamming_start:g}: a filter of weighted back-projection — pass --method "
                    "wbp or leave out --hamming"
                )
            ]
        return []


def series_ctf(ts: TiltSeries, ctf_set: CtfSeriesSet, pointer: str) -> ViewsCtf:
    """Per enabled view (tilt order) the CTF of the same acquisition order; one-line errors otherwise."""
    series = next((c for c in ctf_set.items if c.ts_id == ts.ts_id), None)
    if series is None:
        raise InputError(
            f"{pointer}: no CTF for tilt series {ts.ts_id} — estimate it (ctf --input ...) "
            "or reconstruct without --ctf-correct"
        )
    by_order = {c.acquisition_order: c for c in series.items}
    out: dict[str, list[float]] = {
        k: [] for k in ("defocus_u_a", "defocus_v_a", "astigmatism_angle_deg", "phase_shift_rad")
    }
    for im in ts.enabled_images:
        c = by_order.get(im.acquisition_order)
        where = f"{pointer}: {ts.ts_id} view at {im.tilt_angle_deg:.1f}° (acquisition order {im.acquisition_order})"
        if c is None:
            raise InputError(f"{where} has no CTF — exclude that view or re-estimate the CTF of this set")
        if abs(c.tilt_angle_deg - im.tilt_angle_deg) > 1.0:
            raise InputError(
                f"{where}: the CTF is of a view at {c.tilt_angle_deg:.1f}° — is --ctf from another tilt series?"
            )
        if not c.enabled:
            raise InputError(f"{where}: its CTF is excluded — exclude the view too (subset) or re-enable it")
        for k, values in out.items():
            values.append(float(getattr(c, k)))
    return ViewsCtf(**out)


def series_exposure(ts: TiltSeries, pointer: str) -> list[float]:
    """Mid-exposure (e/Å²) of each enabled view: prior dose + half its own (``core.dose``)."""
    out = []
    for im in ts.enabled_images:
        dose, prior = im.dose_e_a2, im.dose_prior_e_a2
        if prior is None and im.dose_accumulated_e_a2 is not None and dose is not None:
            prior = im.dose_accumulated_e_a2 - dose
        if dose is None or prior is None:
            raise InputError(
                f"{pointer}: {ts.ts_id} view at {im.tilt_angle_deg:.1f}° has no dose — --dose-weight "
                "needs the dose per tilt (import with --dose)"
            )
        out.append(prior + 0.5 * dose)
    return out


def series_xf(ts: TiltSeries) -> list[list[float]]:
    """The .xf rows of the enabled views; unaligned views get the rotation that makes the axis vertical."""
    import torch

    from tiltflow.core.geometry import xf_from_geometry

    enabled = ts.enabled_images
    transforms = [im.transform for im in enabled if im.transform is not None]
    if len(transforms) == len(enabled):
        return [list(t) for t in transforms]
    rows = xf_from_geometry(ts.acquisition.tilt_axis_deg, torch.zeros(len(enabled), 2))
    return rows.tolist()


def _failed_alignments(ctx: StepContext, source: TiltSeriesSet) -> set[str]:
    """Series whose alignment verdict is 'failed': refused with one line, or (``--skip-bad``, and
    within a workflow) skipped with a note per series."""
    verdicts = {ts.ts_id: alignment_verdict(ts) for ts in source.items if ts.enabled}
    failed = {k: v["reasons"] for k, v in verdicts.items() if v["status"] == "failed"}
    if not failed:
        return set()
    if not (ctx.skip_bad or ctx.options.within_workflow):
        ts_id, reasons = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more series)" if len(failed) > 1 else ""
        raise InputError(
            f"{ctx.input_pointers['input']}: {ts_id} failed to align ({'; '.join(reasons)}){more}; "
            f"exclude it (subset --exclude {ts_id}), align it again, or pass --skip-bad"
        )
    for ts_id, reasons in failed.items():
        ctx.report.note(f"{ts_id}: not reconstructed, its alignment failed ({'; '.join(reasons)})")
    return set(failed)


def _series_task(
    ctx: StepContext[ReconstructParams], sv: SeriesViews, ctf_set: CtfSeriesSet | None, device: str
) -> ReconstructTask:
    """The task of one series (checked: halves, CTF, doses)."""
    p = ctx.params
    ts, enabled = sv.series, sv.views
    if p.even_odd and not all(im.odd_file and im.even_file for im in enabled):
        raise InputError(f"{ts.ts_id}: --even-odd needs odd/even stacks (motion-ctf --even-odd)")
    a = ts.acquisition
    if p.dose_weight and not 200.0 <= a.voltage_kv <= 300.0:
        raise InputError(f"{ts.ts_id}: --dose-weight knows critical exposures for 200-300 kV, not {a.voltage_kv} kV")
    ctf = None
    if p.ctf_correct == "phaseflip":
        if ctf_set is None:  # run_reconstruct refused this already
            raise InputError("reconstruct: --ctf-correct phaseflip needs --ctf RUN_ID")
        ctf = series_ctf(ts, ctf_set, ctx.input_pointers["ctf"])
    voxel = a.pixel_size_a * p.binning
    return ReconstructTask(
        key=ts.ts_id,
        refs=stack_refs(enabled, halves=p.even_odd),
        xf=series_xf(ts),
        angles=[im.best_tilt_angle_deg for im in enabled],
        params=p,
        thickness_px=p.thickness_px or max(1, round(p.thickness_nm * 10.0 / voxel)),
        z_offset_px=p.z_offset_nm * 10.0 / voxel,
        x_offset_px=p.x_offset_nm * 10.0 / voxel,
        voxel_size_a=voxel,
        out_dir=str(ctx.run_dir),
        device=device,
        corrections=Corrections(
            optics=Optics(a.voltage_kv, a.cs_mm, a.amplitude_contrast),
            ctf=ctf,
            exposure_e_a2=series_exposure(ts, ctx.input_pointers["input"]) if p.dose_weight else None,
            defocus_tol_nm=p.ctf_defocus_tol_nm,
        ),
    )


def run_reconstruct(ctx: StepContext[ReconstructParams]) -> dict[str, TomogramSet]:
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    ctf_set = ctx.input_set("ctf", CtfSeriesSet) if ctx.inputs.get("ctf") is not None else None
    check_reconstruct(p, source)
    if p.ctf_correct == "phaseflip" and ctf_set is None:
        raise InputError(
            "reconstruct: --ctf-correct phaseflip needs --ctf RUN_ID (the CTFTomoSeries of ctf or motion-ctf)"
        )
    if ctf_set is not None and p.ctf_correct == "none":
        ctx.report.warn("--ctf given without --ctf-correct phaseflip: CTF not used")
    if p.dose_weight and source.attrs.get("dose_filtered"):
        ctx.report.warn(
            f"--dose-weight on views already dose-filtered (dose-filter --mode {source.attrs['dose_filtered']}): "
            "weighted twice"
        )
    device = resolve_device(ctx.options.device)
    skip = _failed_alignments(ctx, source)
    tasks = []
    for sv in enabled_series(
        source,
        ctx.input_pointers["input"],
        min_views=3,
        purpose="reconstruction",
        skip=skip,
        why_none=" or failed to align" if skip else "",
    ):
        tasks.append(_series_task(ctx, sv, ctf_set, device))
    results = run_items_or_fail(ctx, reconstruct_series_task, tasks, ReconstructResult)
    items = []
    for task in tasks:
        key, r = task.key, results[task.key]
        attrs = {"ctf_correct": p.ctf_correct, "dose_weight": p.dose_weight}
        items.append(
            Tomogram(
                key,
                r.files["file"],
                task.voxel_size_a,
                (r.shape[0], r.shape[1], r.shape[2]),
                attrs,
                method=p.method,
                binning=p.binning,
                source=ctx.input_pointers["input"],
                ctf=ctx.input_pointers["ctf"] if p.ctf_correct != "none" else None,
                odd_file=r.files.get("odd_file"),
                even_file=r.files.get("even_file"),
            )
        )
    return {"Tomograms": TomogramSet(items, {"method": p.method, "even_odd": p.even_odd})}


register(
    Step(
        id="reconstruct",
        title="Tomogram reconstruction",
        params=ReconstructParams,
        inputs=(
            InputSpec("input", ("TiltSeries",), "Tilt series (aligned, or rotated by the tilt axis only)"),
            InputSpec("ctf", ("CTFTomoSeries",), "Per-tilt CTF for --ctf-correct phaseflip", optional=True),
        ),
        outputs={"Tomograms": "Tomograms"},
        run=run_reconstruct,
        scipion_class="ProtImodTomoReconstruction",
        checks=check_reconstruct,
        methods=(WBP, SIRT, IMOD, TOMO3D, CTFPHASEFLIP, EXPOSURE_FILTER),
        help="Reconstruct tomograms by WBP (IMOD-like radial filter, optional SIRT-like filter) or SIRT.",
    )
)
