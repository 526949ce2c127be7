"""Step ``reconstruct``: tomograms by weighted back-projection (IMOD-like radial filter, optional
SIRT-like filter) or SIRT, from the enabled views of a tilt-series set, aligned by their ``.xf``
transforms (or, when unaligned, rotated by the tilt axis only). Even/odd tomograms from the
half-sum stacks. Output MRC: z = beam/thickness axis, voxel size in the header."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltSeries, TiltSeriesSet, Tomogram, TomogramSet
from tiltflow.workflow.steps.views import load_binned_views, require_stacks
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, StepParams, param, register


class ReconstructParams(StepParams):
    method: Literal["wbp", "sirt"] = param("wbp", "Weighted back-projection or SIRT.", cli="--method")
    binning: int = param(4, "Bin the views by this factor (Fourier cropping) before reconstructing.", cli="--binning", ge=1)
    thickness_nm: float = param(200.0, "Tomogram thickness, nm.", cli="--thickness-nm", gt=0)
    thickness_px: int | None = param(None, "Tomogram thickness in pixels of the binned views (overrides --thickness-nm).",
                                     cli="--thickness-px", ge=1)
    z_offset_nm: float = param(0.0, "Specimen z at the volume centre, nm (IMOD SHIFT z = -offset).", cli="--z-offset-nm")
    x_offset_nm: float = param(0.0, "Specimen x at the volume centre, nm.", cli="--x-offset-nm")
    radial_cutoff: float = param(0.35, "Radial filter cut-off, cycles/px of the binned views (IMOD RADIAL).",
                                 cli="--radial-cutoff", gt=0, le=0.5)
    radial_falloff: float = param(0.035, "Radial filter fall-off (Gaussian sigma), cycles/px.", cli="--radial-falloff", gt=0)
    fake_sirt_iterations: int | None = param(None, "WBP with IMOD's SIRT-like filter of N iterations.", cli="--fake-sirt", ge=1)
    sirt_iterations: int = param(20, "SIRT iterations.", cli="--sirt-iterations", ge=1)
    positivity: bool = param(False, "SIRT: clamp negative densities (after inverting to bright protein).", cli="--positivity")
    even_odd: bool = param(False, "Also reconstruct even/odd tomograms from the half-sum stacks.", cli="--even-odd")
    invert: bool = param(False, "Invert contrast (bright protein).", cli="--invert")


def reconstruct_series_task(refs: dict[str, list[tuple[str, int]]], xf: list[list[float]], angles: list[float],
                            p: dict, thickness_px: int, z_offset_px: float, x_offset_px: float, out_dir: str,
                            ts_id: str, voxel_size_a: float, device: str) -> dict:
    """Reconstruct one tilt series (and its halves); module level so a Dask worker can run it."""
    import torch

    from tiltflow.core.reconstruct import apply_xf, sirt, wbp
    from tiltflow.io.mrc import write_mrc

    binning = p["binning"]
    xf_b = torch.tensor(xf, dtype=torch.float64)
    xf_b[:, 4:] /= binning                       # shifts are in pixels of the stack they apply to
    angles_t = torch.tensor(angles, dtype=torch.float64)
    files = {}
    shape = None
    for key, view_refs in refs.items():
        views = apply_xf(load_binned_views(view_refs, binning, device), xf_b.to(device))
        views = views - views.mean(dim=(-2, -1), keepdim=True)
        if p["invert"]:
            views = -views
        if p["method"] == "wbp":
            vol = wbp(views, angles_t, thickness_px=thickness_px, radial_cutoff=p["radial_cutoff"],
                      radial_falloff=p["radial_falloff"], fake_sirt_iterations=p["fake_sirt_iterations"],
                      z_offset_px=z_offset_px, x_offset_px=x_offset_px)
        else:
            vol = sirt(views, angles_t, thickness_px=thickness_px, iterations=p["sirt_iterations"],
                       positivity=p["positivity"], z_offset_px=z_offset_px, x_offset_px=x_offset_px)
        suffix = "" if key == "file" else f"_{key.split('_')[0]}"
        files[key] = str(write_mrc(Path(out_dir) / f"{ts_id}_rec{suffix}.mrc", vol.cpu().numpy(),
                                   voxel_size_a=voxel_size_a, is_volume=True))
        shape = list(vol.shape)
    return {"files": files, "shape": shape}


def series_xf(ts: TiltSeries) -> list[list[float]]:
    """The .xf rows of the enabled views; unaligned views get the rotation that makes the axis vertical."""
    import torch

    from tiltflow.core.geometry import xf_from_geometry

    enabled = ts.enabled_images
    if all(im.transform is not None for im in enabled):
        return [list(im.transform) for im in enabled]
    rows = xf_from_geometry(ts.acquisition.tilt_axis_deg, torch.zeros(len(enabled), 2))
    return rows.tolist()


def run_reconstruct(ctx: StepContext) -> dict[str, TomogramSet]:
    from tiltflow.workflow.device import resolve_device

    p: ReconstructParams = ctx.params
    source: TiltSeriesSet = ctx.inputs["input"]
    device = resolve_device(ctx.options.get("device"))
    tasks, meta = [], {}
    for ts in source.items:
        if not ts.enabled:
            continue
        enabled = ts.enabled_images
        require_stacks(ts, ctx.input_pointers['input'], enabled)
        if len(enabled) < 3:
            raise InputError(f"{ts.ts_id}: only {len(enabled)} enabled views — at least 3 are needed")
        refs = {"file": [(im.file, im.index) for im in enabled]}
        if p.even_odd:
            if not all(im.odd_file and im.even_file for im in enabled):
                raise InputError(f"{ts.ts_id}: --even-odd needs odd/even stacks (motion-ctf --even-odd)")
            refs["odd_file"] = [(im.odd_file, im.index) for im in enabled]
            refs["even_file"] = [(im.even_file, im.index) for im in enabled]
        voxel = ts.acquisition.pixel_size_a * p.binning
        thickness_px = p.thickness_px or max(1, int(round(p.thickness_nm * 10.0 / voxel)))
        angles = [im.attrs.get("refined_tilt_angle_deg", im.tilt_angle_deg) for im in enabled]
        meta[ts.ts_id] = voxel
        tasks.append((ts.ts_id, (refs, series_xf(ts), angles, p.model_dump(), thickness_px,
                                 p.z_offset_nm * 10.0 / voxel, p.x_offset_nm * 10.0 / voxel,
                                 str(ctx.run_dir), ts.ts_id, voxel, device)))
    if not tasks:
        raise InputError(f"{ctx.input_pointers['input']}: every tilt series is excluded")
    results = run_items_or_fail(ctx, reconstruct_series_task, tasks)
    items = []
    for key, _ in tasks:
        r = results[key]
        attrs = {"method": p.method, "binning": p.binning, "source": ctx.input_pointers["input"]}
        if "odd_file" in r["files"]:
            attrs.update(odd_file=r["files"]["odd_file"], even_file=r["files"]["even_file"])
        items.append(Tomogram(key, r["files"]["file"], meta[key], tuple(r["shape"]), attrs))
    return {"Tomograms": TomogramSet(items, {"method": p.method, "even_odd": p.even_odd})}


register(Step(
    id="reconstruct", title="Tomogram reconstruction", params=ReconstructParams,
    inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (aligned, or rotated by the tilt axis only)"),),
    outputs={"Tomograms": "Tomograms"}, run=run_reconstruct, scipion_class="ProtImodTomoReconstruction",
    help="Reconstruct tomograms by WBP (IMOD-like radial filter, optional SIRT-like filter) or SIRT."))
