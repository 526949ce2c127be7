"""Step ``ctf``: per-tilt CTF estimation on any tilt-series set (e.g. stacks brought in with
``import-tilt-series``); the same outputs as the CTF half of ``motion-ctf``."""

from __future__ import annotations

from pathlib import Path

from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, register
from tiltflow.workflow.steps.checks_data import check_ctf
from tiltflow.workflow.steps.citations import CTFFIND4, WARP
from tiltflow.workflow.steps.ctf_common import (
    CtfOptions,
    ctf_params,
    ctf_series_from_results,
    ctf_set,
    fit_tilt_ctf,
    note_ctf_verdict,
    smooth_grids_in_time,
    write_series_ctf_files,
)
from tiltflow.workflow.steps.views import require_stacks


class CtfStepParams(CtfOptions):
    pass


def ctf_series_task(
    refs: list[tuple[int, str, int, float]],
    p: dict,
    optics: dict,
    tilt_axis_deg: float,
    out_dir: str,
    ts_id: str,
    device: str,
) -> dict:
    """Fit every view of one series; ``refs``: (acquisition order, file, index, tilt angle)."""
    import numpy as np
    import torch

    from tiltflow.io.mrc import read_section
    from tiltflow.workflow.steps.ctf_series_pass import refine_series_results

    params = ctf_params(CtfOptions(**p), **optics)
    grid = tuple(p["defocus_grid"][:2]) if p["defocus_grid"] else None
    where = {order: (file, index) for order, file, index, _ in refs}

    def images_of(order: int) -> list:
        return [torch.from_numpy(np.ascontiguousarray(read_section(*where[order]))).to(device)]

    out = {}
    for order, _, _, angle in refs:
        out[order] = fit_tilt_ctf(
            images_of(order),
            params,
            tilt_angle_deg=angle,
            tilt_axis_deg=tilt_axis_deg,
            grid_xy=grid,
            out_png=Path(out_dir) / "ctf" / f"{ts_id}_{order:03d}.png",
        )
    # series pass: tilts that disagree with the series' defocus trend / astigmatism are re-fitted
    refine_series_results(
        out, images_of, params, tilt_angles_deg={r[0]: r[3] for r in refs}, tilt_axis_deg=tilt_axis_deg, grid_xy=grid
    )
    return {str(order): r for order, r in out.items()}


def run_ctf(ctx: StepContext):
    from tiltflow.workflow.device import resolve_device

    p: CtfStepParams = ctx.params
    source: TiltSeriesSet = ctx.inputs["input"]
    check_ctf(p, source)
    device = resolve_device(ctx.options.get("device"))
    tasks = []
    for ts in source.items:
        require_stacks(ts, ctx.input_pointers["input"])
        a = ts.acquisition
        optics = {
            "pixel_size_a": a.pixel_size_a,
            "voltage_kv": a.voltage_kv,
            "cs_mm": a.cs_mm,
            "amplitude_contrast": a.amplitude_contrast,
        }
        refs = [(im.acquisition_order, im.file, im.index, im.tilt_angle_deg) for im in ts.images]
        tasks.append((ts.ts_id, (refs, p.model_dump(), optics, a.tilt_axis_deg, str(ctx.run_dir), ts.ts_id, device)))
    results = run_items_or_fail(ctx, ctf_series_task, tasks)
    series = []
    for ts in source.items:
        a = ts.acquisition
        params = ctf_params(
            p,
            pixel_size_a=a.pixel_size_a,
            voltage_kv=a.voltage_kv,
            cs_mm=a.cs_mm,
            amplitude_contrast=a.amplitude_contrast,
        )
        per_tilt = {int(k): dict(v) for k, v in results[ts.ts_id].items()}
        if p.defocus_grid:
            smooth_grids_in_time(per_tilt, p.defocus_grid[2])
        s = ctf_series_from_results(ts, per_tilt, params)
        note_ctf_verdict(ctx, s)
        series.append(write_series_ctf_files(s, params, ctx.run_dir))
    return {"CTFTomoSeries": ctf_set(series)}


register(
    Step(
        id="ctf",
        title="CTF estimation (tilt series)",
        params=CtfStepParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (stacks)"),),
        outputs={"CTFTomoSeries": "CTFTomoSeries"},
        run=run_ctf,
        scipion_class="ProtTsCtffind",
        checks=check_ctf,
        methods=(CTFFIND4, WARP),
        help="Per-tilt CTF estimation on any tilt-series set (tilt-aware periodograms, astigmatism, optional phase).",
    )
)
