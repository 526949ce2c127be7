"""Step ``align``: tilt-series alignment, fiducial-based (IMOD-like: beads, tracking, bundle
adjustment) or feature-based (AreTomo-like projection matching). Works on the enabled views of any
tilt-series set; writes per series ``.xf`` (unbinned stack pixels), ``.tlt`` (refined angles),
``.rawtlt``, residual tables, and for beads an IMOD fiducial model (``.fid``) and 3-D positions."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.views import load_binned_views, require_stacks
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, StepParams, param, register


_FORWARD_AD_LOCK = threading.Lock()


class AlignParams(StepParams):
    method: Literal["fiducial", "patch"] = param("fiducial", "fiducial (gold beads) or patch (projection matching).",
                                                 cli="--method")
    binning: int = param(4, "Align views binned by this factor.", cli="--binning", ge=1)
    bead_diameter_nm: float = param(10.0, "Fiducial: gold bead diameter, nm.", cli="--bead-diameter-nm", gt=0)
    solve_magnification: bool = param(True, "Fiducial: solve a magnification per view.", cli="--solve-magnification")
    solve_tilt_angles: bool = param(True, "Fiducial: grouped tilt-angle corrections.", cli="--solve-tilt-angles")
    align_z_nm: float = param(150.0, "Patch: slab thickness of the intermediate reconstruction, nm.", cli="--align-z-nm",
                              gt=0)
    iterations: int = param(5, "Patch: projection-matching iterations.", cli="--iterations", ge=1)
    refine_tilt_axis: bool = param(True, "Refine the tilt-axis angle.", cli="--refine-tilt-axis")
    refine_tilt_offset: bool = param(True, "Refine a tilt-angle offset.", cli="--refine-tilt-offset")
    exclude_dark: bool = param(True, "Patch: detect dark views and leave them out of the alignment.", cli="--exclude-dark")


def align_series_task(refs: list[tuple[str, int]], angles: list[float], p: dict, tilt_axis_deg: float,
                      pixel_size_a: float, out_dir: str, ts_id: str, device: str) -> dict:
    """Align one series (enabled views in tilt order); module level so a Dask worker can run it."""
    import torch

    from tiltflow.io.imod import FidXyz, fiducial_model, write_fid_xyz, write_mod, write_tlt, write_xf

    b = p["binning"]
    views = load_binned_views(refs, b, device)
    angles_t = torch.tensor(angles, dtype=torch.float64)
    out = Path(out_dir)
    result: dict = {}
    if p["method"] == "fiducial":
        from tiltflow.core.align import align_fiducial

        with _FORWARD_AD_LOCK:       # torch's forward-mode AD levels are process-global: one solve at a time
            fid = align_fiducial(views, angles_t, tilt_axis_deg=tilt_axis_deg,
                                 bead_diameter_px=p["bead_diameter_nm"] * 10.0 / (pixel_size_a * b),
                                 solve_magnification=p["solve_magnification"],
                                 solve_tilt_angles=p["solve_tilt_angles"], solve_tilt_offset=p["refine_tilt_offset"])
        sol = fid.solution
        xf, refined, axis, offset = sol.xf.clone(), sol.tilt_angles_deg, sol.tilt_axis_deg, sol.tilt_offset_deg
        result.update(mean_residual_px=sol.mean_residual_px * b,
                      per_view_residual_px=(sol.per_view_residual_px * b).tolist(),
                      per_bead_residual_px=(sol.per_bead_residual_px * b).tolist(),
                      flagged_beads=sol.flagged_beads.tolist(), flagged_views=sol.flagged_views.tolist(),
                      n_beads=int(sol.bead_xyz_px.shape[0]))
        pos = fid.tracks.positions_px * b
        contours = [torch.cat([pos[i][ok], torch.nonzero(ok).to(pos.dtype)], 1)
                    for i in range(pos.shape[0]) if (ok := torch.isfinite(pos[i]).all(-1)).any()]
        h, w = views.shape[-2] * b, views.shape[-1] * b
        write_mod(out / f"{ts_id}.fid", fiducial_model(contours, image_shape=(h, w), n_views=len(angles),
                                                       pixel_size_a=pixel_size_a, name=f"{ts_id} fiducials"))
        n = sol.bead_xyz_px.shape[0]
        write_fid_xyz(out / f"{ts_id}fid.xyz", FidXyz(point=torch.arange(1, n + 1), xyz=sol.bead_xyz_px * b,
                                                      object=torch.ones(n), contour=torch.arange(1, n + 1),
                                                      pixel_size_a=pixel_size_a, image_size=(w, h)))
        result["files"] = {"fid": str(out / f"{ts_id}.fid"), "fid_xyz": str(out / f"{ts_id}fid.xyz")}
    else:
        from tiltflow.core.align.projection_matching import projection_matching_align

        pm = projection_matching_align(views, angles_t, tilt_axis_deg=tilt_axis_deg,
                                       align_z_px=p["align_z_nm"] * 10.0 / (pixel_size_a * b), binning=1,
                                       iterations=p["iterations"], refine_tilt_axis=p["refine_tilt_axis"],
                                       refine_tilt_offset=p["refine_tilt_offset"], exclude_dark=p["exclude_dark"])
        xf, refined, axis, offset = pm.xf.clone(), pm.tilt_angles_deg, pm.tilt_axis_deg, pm.tilt_offset_deg
        err = torch.nan_to_num(pm.per_view_error, nan=float("nan"))
        result.update(per_view_error=err.tolist(), dark_views=pm.dark_views.tolist(), files={})
    xf[:, 4:] *= b                                  # .xf shifts in pixels of the unbinned stack
    write_xf(out / f"{ts_id}.xf", xf)
    write_tlt(out / f"{ts_id}.tlt", refined)
    write_tlt(out / f"{ts_id}.rawtlt", angles_t)
    result["files"].update(xf=str(out / f"{ts_id}.xf"), tlt=str(out / f"{ts_id}.tlt"))
    result.update(xf=xf.tolist(), refined_tilt_angles_deg=refined.tolist(), tilt_axis_deg=float(axis),
                  tilt_offset_deg=float(offset))
    return result


def run_align(ctx: StepContext):
    from tiltflow.workflow.device import resolve_device

    p: AlignParams = ctx.params
    source: TiltSeriesSet = ctx.inputs["input"]
    device = resolve_device(ctx.options.get("device"))
    tasks = []
    for ts in source.items:
        if not ts.enabled:
            continue
        enabled = ts.enabled_images
        require_stacks(ts, ctx.input_pointers['input'], enabled)
        if len(enabled) < 5:
            raise InputError(f"{ts.ts_id}: {len(enabled)} enabled views — alignment needs at least 5")
        a = ts.acquisition
        tasks.append((ts.ts_id, ([(im.file, im.index) for im in enabled], [im.tilt_angle_deg for im in enabled],
                                 p.model_dump(), a.tilt_axis_deg, a.pixel_size_a, str(ctx.run_dir), ts.ts_id, device)))
    if not tasks:
        raise InputError(f"{ctx.input_pointers['input']}: every tilt series is excluded")
    results = run_items_or_fail(ctx, align_series_task, tasks)
    items = []
    for ts in source.items:
        if ts.ts_id not in results:
            items.append(ts)
            continue
        r = results[ts.ts_id]
        rows = iter(zip(r["xf"], r["refined_tilt_angles_deg"]))
        images = []
        for im in ts.images:
            new = TiltImage(**{**im.__dict__, "attrs": dict(im.attrs)})
            if im.enabled:
                row, angle = next(rows)
                new.transform = row
                new.attrs["refined_tilt_angle_deg"] = angle
            else:
                new.transform = None
            images.append(new)
        acq = ts.acquisition.__class__(**{**ts.acquisition.__dict__, "tilt_axis_deg": r["tilt_axis_deg"]})
        summary = {k: r[k] for k in ("mean_residual_px", "n_beads", "tilt_offset_deg") if k in r}
        items.append(TiltSeries(ts.ts_id, acq, images, ts.size, ts.enabled,
                                dict(ts.attrs, alignment={"method": p.method, **summary, **r["files"]})))
        _log_summary(ctx, ts, r, p.method)
    return {"TiltSeries": TiltSeriesSet("TiltSeries", items, dict(source.attrs, aligned=p.method))}


def _log_summary(ctx: StepContext, ts: TiltSeries, r: dict, method: str) -> None:
    px = ts.acquisition.pixel_size_a
    if method == "fiducial":
        line = (f"{ts.ts_id}: {r['n_beads']} beads, mean residual {r['mean_residual_px']:.2f} px"
                f" ({r['mean_residual_px'] * px / 10:.2f} nm), axis {r['tilt_axis_deg']:.2f}°,"
                f" offset {r['tilt_offset_deg']:.2f}°")
    else:
        import math

        errs = [e for e in r["per_view_error"] if not math.isnan(e)]
        line = (f"{ts.ts_id}: projection-matching error {sum(errs) / max(len(errs), 1):.3f} (1 - NCC),"
                f" {sum(r['dark_views'])} dark views, axis {r['tilt_axis_deg']:.2f}°, offset {r['tilt_offset_deg']:.2f}°")
    ctx.log.info(line)
    ctx.options.setdefault("notes", []).append(line)   # printed by the CLI under the run


register(Step(
    id="align", title="Tilt-series alignment", params=AlignParams,
    inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (stacks)"),),
    outputs={"TiltSeries": "TiltSeries"}, run=run_align, scipion_class="ProtImodAutomaticAlign",
    help="Align tilt series: fiducial (gold beads, bundle adjustment) or patch (projection matching)."))
