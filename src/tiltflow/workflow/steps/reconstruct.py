"""Step ``reconstruct``: tomograms by weighted back-projection (IMOD-like radial filter, optional
SIRT-like filter) or SIRT, from the enabled views of a tilt-series set, aligned by their ``.xf``
transforms (or, when unaligned, rotated by the tilt axis only). Even/odd tomograms from the
half-sum stacks. Output MRC: z = beam/thickness axis, voxel size in the header.

Per view, in this order: binning, alignment (``.xf``), optional CTF phase flipping in strips
parallel to the tilt axis (IMOD ``ctfphaseflip`` on the aligned stack; the CTF of ``--ctf`` matched
to the views by acquisition order and carried to the aligned frame by the ``.xf``), optional dose
weighting (Grant & Grigorieff exposure filter at the view's mid-exposure), then WBP or SIRT."""

from __future__ import annotations

from pathlib import Path
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
from tiltflow.workflow.steps.views import load_binned_views, require_stacks


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


def reconstruct_series_task(
    refs: dict[str, list[tuple[str, int]]],
    xf: list[list[float]],
    angles: list[float],
    p: dict,
    thickness_px: int,
    z_offset_px: float,
    x_offset_px: float,
    out_dir: str,
    ts_id: str,
    voxel_size_a: float,
    device: str,
    ctf: dict | None = None,
    exposure_e_a2: list[float] | None = None,
    optics: dict | None = None,
) -> dict:
    """Reconstruct one tilt series (and its halves); module level so a Dask worker can run it.

    ``ctf``: per view ``defocus_u_a``, ``defocus_v_a``, ``astigmatism_angle_deg`` (raw frame),
    ``phase_shift_rad``; ``exposure_e_a2``: per view mid-exposure; ``optics``: ``voltage_kv``,
    ``cs_mm``, ``amplitude_contrast``.
    """
    import torch

    from tiltflow.core.reconstruct import aligned_shape, apply_xf, sirt, wbp
    from tiltflow.io.mrc import write_mrc
    from tiltflow.io.snapshots import write_slice_snapshots

    binning = p["binning"]
    xf_b = torch.tensor(xf, dtype=torch.float64)
    xf_b[:, 4:] /= binning  # shifts are in pixels of the stack they apply to
    angles_t = torch.tensor(angles, dtype=torch.float64)
    files = {}
    shape = None
    for key, view_refs in refs.items():
        raw = load_binned_views(view_refs, binning, device)
        raw_shape = (raw.shape[-2], raw.shape[-1])
        views = apply_xf(raw, xf_b.to(device), aligned_shape(raw_shape, xf_b))
        del raw
        views = correct_views(
            views,
            xf_b,
            angles_t,
            raw_shape=raw_shape,
            pixel_size_a=voxel_size_a,
            ctf=ctf,
            exposure_e_a2=exposure_e_a2,
            optics=optics,
            defocus_tol_nm=p.get("ctf_defocus_tol_nm"),
        )
        views = views - views.mean(dim=(-2, -1), keepdim=True)
        if p["invert"]:
            views = -views
        if p["method"] == "wbp":
            cutoff = p["radial_cutoff"]
            if p.get("hamming_start") is not None:  # tomo3d: ramp x Hamming (core.wbp_window)
                from tiltflow.core.wbp_window import hamming_filter_views

                views, cutoff = hamming_filter_views(views, p["hamming_start"]), 0.5
            vol = wbp(
                views,
                angles_t,
                thickness_px=thickness_px,
                radial_cutoff=cutoff,
                radial_falloff=p["radial_falloff"],
                fake_sirt_iterations=p["fake_sirt_iterations"],
                z_offset_px=z_offset_px,
                x_offset_px=x_offset_px,
            )
        else:
            vol = sirt(
                views,
                angles_t,
                thickness_px=thickness_px,
                iterations=p["sirt_iterations"],
                positivity=p["positivity"],
                z_offset_px=z_offset_px,
                x_offset_px=x_offset_px,
            )
        del views
        suffix = "" if key == "file" else f"_{key.split('_')[0]}"
        files[key] = str(
            write_mrc(
                Path(out_dir) / f"{ts_id}_rec{suffix}.mrc", vol.cpu().numpy(), voxel_size_a=voxel_size_a, is_volume=True
            )
        )
        if key == "file":  # PNGs of the central slices beside the tomogram, for the terminal user
            write_slice_snapshots(vol, files[key])
        shape = list(vol.shape)
        del vol
    return {"files": files, "shape": shape}


def correct_views(
    views,
    xf_b,
    angles_t,
    *,
    raw_shape: tuple[int, int],
    pixel_size_a: float,
    ctf: dict | None,
    exposure_e_a2: list[float] | None,
    optics: dict | None,
    defocus_tol_nm: float | None = None,
):
    """Phase-flip (``ctf``) and dose-weight (``exposure_e_a2``) aligned binned views ``(t, h, w)``."""
    if ctf is not None:
        from tiltflow.core.phase_flip import (
            ctf_phase_flip_strips,
            defocus_in_aligned_views,
            strip_width_for_tolerance,
        )

        local = defocus_in_aligned_views(
            xf_b,
            angles_t,
            defocus_u_a=ctf["defocus_u_a"],
            defocus_v_a=ctf["defocus_v_a"],
            astigmatism_angle_deg=ctf["astigmatism_angle_deg"],
            pixel_size_a=pixel_size_a,
            image_shape=raw_shape,
        )
        widths = strip_width_for_tolerance(
            angles_t,
            pixel_size_a=pixel_size_a,
            width_px=views.shape[-1],
            voltage_kv=optics["voltage_kv"],
            defocus_tol_a=None if defocus_tol_nm is None else defocus_tol_nm * 10.0,
        )
        views = ctf_phase_flip_strips(
            views,
            angles_t,
            defocus_u_a=local.defocus_u_a,
            defocus_v_a=local.defocus_v_a,
            astigmatism_angle_deg=local.astigmatism_angle_deg,
            phase_shift_rad=ctf["phase_shift_rad"],
            pixel_size_a=pixel_size_a,
            voltage_kv=optics["voltage_kv"],
            cs_mm=optics["cs_mm"],
            amplitude_contrast=optics["amplitude_contrast"],
            strip_width_px=widths,
        )
    if exposure_e_a2 is not None:
        from tiltflow.core.dose import dose_weight_views

        views = dose_weight_views(views, exposure_e_a2, pixel_size_a=pixel_size_a, voltage_kv=optics["voltage_kv"])
    return views


def series_ctf(ts: TiltSeries, ctf_set: CtfSeriesSet, pointer: str) -> dict[str, list[float]]:
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
    return out


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
    if all(im.transform is not None for im in enabled):
        return [list(im.transform) for im in enabled]
    rows = xf_from_geometry(ts.acquisition.tilt_axis_deg, torch.zeros(len(enabled), 2))
    return rows.tolist()


def _failed_alignments(ctx: StepContext, source: TiltSeriesSet) -> set[str]:
    """Series whose alignment verdict is 'failed': refused with one line, or (``--skip-bad``, and
    within a workflow) skipped with a note per series."""
    verdicts = {ts.ts_id: alignment_verdict(ts) for ts in source.items if ts.enabled}
    failed = {k: v["reasons"] for k, v in verdicts.items() if v["status"] == "failed"}
    if not failed:
        return set()
    if not (ctx.skip_bad or ctx.options.get("within_workflow")):
        ts_id, reasons = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more series)" if len(failed) > 1 else ""
        raise InputError(
            f"{ctx.input_pointers['input']}: {ts_id} failed to align ({'; '.join(reasons)}){more}; "
            f"exclude it (subset --exclude {ts_id}), align it again, or pass --skip-bad"
        )
    for ts_id, reasons in failed.items():
        ctx.options.setdefault("notes", []).append(
            f"{ts_id}: not reconstructed, its alignment failed ({'; '.join(reasons)})"
        )
    return set(failed)


def run_reconstruct(ctx: StepContext) -> dict[str, TomogramSet]:
    from tiltflow.workflow.device import resolve_device

    p: ReconstructParams = ctx.params
    source: TiltSeriesSet = ctx.inputs["input"]
    ctf_set: CtfSeriesSet | None = ctx.inputs.get("ctf")
    check_reconstruct(p, source)
    if p.ctf_correct == "phaseflip" and ctf_set is None:
        raise InputError(
            "reconstruct: --ctf-correct phaseflip needs --ctf RUN_ID (the CTFTomoSeries of ctf or motion-ctf)"
        )
    if ctf_set is not None and p.ctf_correct == "none":
        ctx.options.setdefault("warnings", []).append("--ctf given without --ctf-correct phaseflip: CTF not used")
    if p.dose_weight and source.attrs.get("dose_filtered"):
        ctx.options.setdefault("warnings", []).append(
            f"--dose-weight on views already dose-filtered (dose-filter --mode {source.attrs['dose_filtered']}): "
            "weighted twice"
        )
    device = resolve_device(ctx.options.get("device"))
    skip = _failed_alignments(ctx, source)
    tasks, meta = [], {}
    for ts in source.items:
        if not ts.enabled or ts.ts_id in skip:
            continue
        enabled = ts.enabled_images
        require_stacks(ts, ctx.input_pointers["input"], enabled)
        if len(enabled) < 3:
            raise InputError(f"{ts.ts_id}: only {len(enabled)} enabled views — at least 3 are needed")
        refs = {"file": [(im.file, im.index) for im in enabled]}
        if p.even_odd:
            if not all(im.odd_file and im.even_file for im in enabled):
                raise InputError(f"{ts.ts_id}: --even-odd needs odd/even stacks (motion-ctf --even-odd)")
            refs["odd_file"] = [(im.odd_file, im.index) for im in enabled]
            refs["even_file"] = [(im.even_file, im.index) for im in enabled]
        voxel = ts.acquisition.pixel_size_a * p.binning
        thickness_px = p.thickness_px or max(1, round(p.thickness_nm * 10.0 / voxel))
        angles = [im.best_tilt_angle_deg for im in enabled]
        meta[ts.ts_id] = voxel
        a = ts.acquisition
        optics = {"voltage_kv": a.voltage_kv, "cs_mm": a.cs_mm, "amplitude_contrast": a.amplitude_contrast}
        ctf = series_ctf(ts, ctf_set, ctx.input_pointers["ctf"]) if p.ctf_correct == "phaseflip" else None
        exposure = series_exposure(ts, ctx.input_pointers["input"]) if p.dose_weight else None
        if p.dose_weight and not 200.0 <= a.voltage_kv <= 300.0:
            raise InputError(
                f"{ts.ts_id}: --dose-weight knows critical exposures for 200-300 kV, not {a.voltage_kv} kV"
            )
        tasks.append(
            (
                ts.ts_id,
                (
                    refs,
                    series_xf(ts),
                    angles,
                    p.model_dump(),
                    thickness_px,
                    p.z_offset_nm * 10.0 / voxel,
                    p.x_offset_nm * 10.0 / voxel,
                    str(ctx.run_dir),
                    ts.ts_id,
                    voxel,
                    device,
                    ctf,
                    exposure,
                    optics,
                ),
            )
        )
    if not tasks:
        raise InputError(
            f"{ctx.input_pointers['input']}: every tilt series is excluded" + (" or failed to align" if skip else "")
        )
    results = run_items_or_fail(ctx, reconstruct_series_task, tasks)
    items = []
    for key, _ in tasks:
        r = results[key]
        attrs = {"ctf_correct": p.ctf_correct, "dose_weight": p.dose_weight}
        items.append(
            Tomogram(
                key,
                r["files"]["file"],
                meta[key],
                tuple(r["shape"]),
                attrs,
                method=p.method,
                binning=p.binning,
                source=ctx.input_pointers["input"],
                ctf=ctx.input_pointers["ctf"] if p.ctf_correct != "none" else None,
                odd_file=r["files"].get("odd_file"),
                even_file=r["files"].get("even_file"),
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
