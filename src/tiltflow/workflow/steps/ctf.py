"""Step ``ctf``: per-tilt CTF estimation on any tilt-series set (e.g. stacks brought in with
``import-tilt-series``); the same outputs as the CTF half of ``motion-ctf``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import CtfSeriesSet, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, register
from tiltflow.workflow.steps.checks_data import check_ctf
from tiltflow.workflow.steps.citations import CTFFIND4, WARP
from tiltflow.workflow.steps.ctf_common import (
    CtfOptions,
    TiltCtf,
    ctf_params,
    ctf_series_from_results,
    ctf_set,
    fit_tilt_ctf,
    note_ctf_verdict,
    smooth_grids_in_time,
    write_series_ctf_files,
)
from tiltflow.workflow.steps.views import require_stacks, stack_refs
from tiltflow.workflow.tasks import ItemResult, ItemTask


class CtfStepParams(CtfOptions):
    pass


@dataclass(frozen=True)
class CtfView:
    """One view of a stack: its acquisition order, file, index and tilt angle."""

    order: int
    file: str
    index: int
    tilt_angle_deg: float


@dataclass(frozen=True, kw_only=True)
class CtfSeriesTask(ItemTask):
    """Every view of one series to fit (``key``: its tsId)."""

    views: list[CtfView]
    params: CtfStepParams
    pixel_size_a: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    tilt_axis_deg: float
    out_dir: str
    device: str


@dataclass(frozen=True)
class CtfSeriesResult(ItemResult):
    tilts: dict[int, TiltCtf]  # per acquisition order

    def to_record(self) -> dict[str, Any]:
        return {str(order): t.to_record() for order, t in self.tilts.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        return cls({int(k): TiltCtf.from_record(v) for k, v in record.items()})


def ctf_series_task(task: CtfSeriesTask) -> CtfSeriesResult:
    """Fit every view of one series, then the series pass."""
    import numpy as np
    import torch

    from tiltflow.io.mrc import read_section
    from tiltflow.workflow.steps.ctf_series_pass import refine_series_results

    p = task.params
    params = ctf_params(
        p,
        pixel_size_a=task.pixel_size_a,
        voltage_kv=task.voltage_kv,
        cs_mm=task.cs_mm,
        amplitude_contrast=task.amplitude_contrast,
    )
    grid = (p.defocus_grid[0], p.defocus_grid[1]) if p.defocus_grid else None
    where = {v.order: v for v in task.views}

    def images_of(order: int) -> list:
        v = where[order]
        return [torch.from_numpy(np.ascontiguousarray(read_section(v.file, v.index))).to(task.device)]

    out = {}
    for v in task.views:
        out[v.order] = fit_tilt_ctf(
            images_of(v.order),
            params,
            tilt_angle_deg=v.tilt_angle_deg,
            tilt_axis_deg=task.tilt_axis_deg,
            grid_xy=grid,
            out_png=Path(task.out_dir) / "ctf" / f"{task.key}_{v.order:03d}.png",
        )
    # series pass: tilts that disagree with the series' defocus trend / astigmatism are re-fitted
    refine_series_results(
        out,
        images_of,
        params,
        tilt_angles_deg={v.order: v.tilt_angle_deg for v in task.views},
        tilt_axis_deg=task.tilt_axis_deg,
        grid_xy=grid,
    )
    return CtfSeriesResult(out)


def run_ctf(ctx: StepContext[CtfStepParams]) -> dict[str, CtfSeriesSet]:
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    check_ctf(p, source)
    device = resolve_device(ctx.options.device)
    tasks = []
    for ts in source.items:
        require_stacks(ts, ctx.input_pointers["input"])
        a = ts.acquisition
        tasks.append(
            CtfSeriesTask(
                key=ts.ts_id,
                views=[
                    CtfView(im.acquisition_order, f, i, im.tilt_angle_deg)
                    for im, (f, i) in zip(ts.images, stack_refs(ts.images, halves=False)["file"], strict=True)
                ],
                params=p,
                pixel_size_a=a.pixel_size_a,
                voltage_kv=a.voltage_kv,
                cs_mm=a.cs_mm,
                amplitude_contrast=a.amplitude_contrast,
                tilt_axis_deg=a.tilt_axis_deg,
                out_dir=str(ctx.run_dir),
                device=device,
            )
        )
    results = run_items_or_fail(ctx, ctf_series_task, tasks, CtfSeriesResult)
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
        per_tilt = dict(results[ts.ts_id].tilts)
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
