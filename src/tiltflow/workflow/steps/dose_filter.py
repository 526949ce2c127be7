"""Step ``dose-filter``: the exposure filter of Grant & Grigorieff (2015) applied to every view of a
tilt-series set, as IMOD's ``mtffilter`` does with a dose file (``core.dose``). Each view is low-pass
filtered by ``exp(-N / (2 Ne(k)))`` at its exposure ``N`` (e/Å²): the accumulated dose after it
(``--mode exposure``, mtffilter's choice) or the middle of its own exposure (``--mode mid_exposure``,
what ``reconstruct --dose-weight`` uses). Same size, order and flags out; the odd/even half-sum stacks
are filtered too when present. The views' doses are kept (they describe the acquisition); the set
records ``dose_filtered`` so that ``reconstruct --dose-weight`` warns about weighting twice."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tiltflow.io.mdoc_ranges import RANGES
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.steps.citations import EXPOSURE_FILTER, IMOD
from tiltflow.workflow.steps.views import require_stacks, stack_refs, stacks_set
from tiltflow.workflow.tasks import ItemTask, StackRefs, StacksResult

KNOWN_KV = (200.0, 300.0)  # the voltages the critical exposure was measured between (core.motion_sum)


class DoseFilterParams(CheckedParams):
    dose_per_tilt_e_a2: float | None = param(
        None,
        "Dose per tilt image, e/Å² (empty: the doses stored with each view); a fixed dose gives view k "
        "(acquisition order) the exposure k x dose, as mtffilter -FixedImageDose.",
        cli="--dose",
        gt=0,
        le=RANGES["ExposureDose"][1],
    )
    initial_dose_e_a2: float = param(
        0.0, "Dose before the first tilt, e/Å², added to every view's exposure.", cli="--initial-dose", ge=0, le=1e4
    )
    voltage_kv: float | None = param(
        None, "Acceleration voltage, kV (empty: the set's).", cli="--voltage", ge=KNOWN_KV[0], le=KNOWN_KV[1]
    )
    mode: Literal["exposure", "mid_exposure"] = param(
        "exposure",
        "exposure: filter at the accumulated dose after each view (IMOD mtffilter, unblur); "
        "mid_exposure: at the middle of the view's own exposure.",
        cli="--mode",
    )


def view_doses(ts: TiltSeries, p: DoseFilterParams, pointer: str) -> list[tuple[float, float]]:
    """(prior, own) dose in e/Å² of every view (stack order), from ``--dose`` or the stored doses."""
    out = []
    for im in ts.images:
        own: float | None
        prior: float | None
        if p.dose_per_tilt_e_a2 is not None:
            prior, own = p.dose_per_tilt_e_a2 * (im.acquisition_order - 1), p.dose_per_tilt_e_a2
        else:
            own, prior = im.dose_e_a2, im.dose_prior_e_a2
            if prior is None and im.dose_accumulated_e_a2 is not None and own is not None:
                prior = im.dose_accumulated_e_a2 - own
            if own is None or prior is None:
                raise InputError(
                    f"{pointer}: {ts.ts_id} view at {im.tilt_angle_deg:.1f}° (acquisition order "
                    f"{im.acquisition_order}) has no dose — pass --dose (e/Å² per tilt)"
                )
        out.append((prior + p.initial_dose_e_a2, own))
    return out


def check_dose_filter(p: DoseFilterParams, source: TiltSeriesSet, pointer: str) -> dict[str, tuple[list, float]]:
    """Every check before work; per series (doses, voltage). Excluded series are filtered too, so the
    set stays one kind of data if they are taken back."""
    found = {}
    for ts in source.items:
        require_stacks(ts, pointer)
        kv = p.voltage_kv if p.voltage_kv is not None else ts.acquisition.voltage_kv
        if not KNOWN_KV[0] <= kv <= KNOWN_KV[1]:
            raise InputError(
                f"{ts.ts_id}: recorded at {kv:g} kV; critical exposures are known for 200-300 kV "
                "— dose filtering cannot be done for this voltage"
            )
        found[ts.ts_id] = (view_doses(ts, p, pointer), kv)
    return found


@dataclass(frozen=True, kw_only=True)
class DoseFilterTask(ItemTask):
    """One series to filter (``key``: its tsId); ``exposure_e_a2`` per view, stack order."""

    refs: StackRefs
    exposure_e_a2: list[float]
    out_dir: str
    pixel_size_a: float
    voltage_kv: float
    device: str


def dose_filter_series_task(task: DoseFilterTask) -> StacksResult:
    """Filter one series and its halves, a view at a time (module level, so a Dask worker can run it)."""
    import numpy as np
    import torch

    from tiltflow.core.dose import dose_weight_views
    from tiltflow.io.mrc import read_section, write_mrc

    files = {}
    for key, view_refs in task.refs.items():
        out = np.empty((0,), dtype=np.float32)
        for i, ((f, index), exposure) in enumerate(zip(view_refs, task.exposure_e_a2, strict=False)):
            view = torch.from_numpy(np.ascontiguousarray(read_section(f, index))).to(task.device)
            filtered = dose_weight_views(
                view[None], [exposure], pixel_size_a=task.pixel_size_a, voltage_kv=task.voltage_kv
            )
            if i == 0:
                out = np.empty((len(view_refs), *view.shape), dtype=np.float32)
            out[i] = filtered[0].cpu().numpy()
        name = f"{task.key}.mrc" if key == "file" else f"{task.key}_{key.split('_')[0]}.mrc"
        files[key] = str(write_mrc(Path(task.out_dir) / name, out, voxel_size_a=task.pixel_size_a))
    return StacksResult(files)


def run_dose_filter(ctx: StepContext[DoseFilterParams]) -> dict[str, TiltSeriesSet]:
    from tiltflow.core.dose import view_exposure_e_a2
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    pointer = ctx.input_pointers["input"]
    found = check_dose_filter(p, source, pointer)
    if source.attrs.get("dose_filtered"):
        ctx.report.warn(f"{pointer} is already dose-filtered ({source.attrs['dose_filtered']}): filtering it again")
    device = resolve_device(ctx.options.device)
    at = "end" if p.mode == "exposure" else "mid"
    tasks: list[DoseFilterTask] = []
    exposures: dict[str, list[float]] = {}
    for ts in source.items:
        doses, kv = found[ts.ts_id]
        exposure = view_exposure_e_a2([d[0] for d in doses], [d[1] for d in doses], at=at).tolist()
        exposures[ts.ts_id] = exposure
        tasks.append(
            DoseFilterTask(
                key=ts.ts_id,
                refs=stack_refs(ts.images),
                exposure_e_a2=exposure,
                out_dir=str(ctx.run_dir),
                pixel_size_a=ts.acquisition.pixel_size_a,
                voltage_kv=kv,
                device=device,
            )
        )
    results = run_items_or_fail(ctx, dose_filter_series_task, tasks, StacksResult)
    items = []
    for ts in source.items:
        files = results[ts.ts_id].files
        images = [
            TiltImage(
                **{
                    **im.__dict__,
                    "file": files["file"],
                    "index": pos,
                    "odd_file": files.get("odd_file"),
                    "even_file": files.get("even_file"),
                    "attrs": dict(im.attrs, dose_filter_exposure_e_a2=e),
                }
            )
            for pos, (im, e) in enumerate(zip(ts.images, exposures[ts.ts_id], strict=False))
        ]
        items.append(replace(ts, images=images, attrs=dict(ts.attrs, dose_filtered=p.mode)))
        e = exposures[ts.ts_id]
        ctx.log.info(
            "%s: %d views filtered at %.1f-%.1f e/Å² (%s, %g kV)%s",
            ts.ts_id,
            len(e),
            min(e),
            max(e),
            p.mode,
            found[ts.ts_id][1],
            ", odd/even too" if "odd_file" in files else "",
        )
    attrs = dict(source.attrs, dose_filtered=p.mode)
    return {"TiltSeries": stacks_set(source, items, attrs)}


register(
    Step(
        id="dose-filter",
        title="Dose filter",
        params=DoseFilterParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (stacks) to filter"),),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_dose_filter,
        scipion_class="ProtImodDoseFilter",
        methods=(EXPOSURE_FILTER, IMOD),
        help="Filter each view by its accumulated exposure (Grant & Grigorieff's exposure filter, IMOD mtffilter).",
    )
)
