"""Step ``normalize``: new stacks of a tilt-series set binned, density-scaled and stored in another
mode, as IMOD's ``newstack`` does with ``-bin``, ``-float 2 -meansd`` or ``-scale`` and ``-mode``
(Scipion's "tilt-series normalization"). Per view, in this order: Fourier binning (IMOD's centre
kept, ``core.reconstruct.bin_views``), scaling (``core.normalize``), rounding to the storage mode.

Views keep their order, flags, doses and alignment: ``.xf`` shifts are divided by the binning (they
are in pixels of the stack they apply to), the pixel size is multiplied by it. Odd/even half-sum
stacks get the same treatment, each scaled by its own statistics.

Storage: ``float`` is MRC mode 2, ``int16`` mode 1; ``uint8`` holds the whole numbers 0-255 (IMOD's
byte range) in MRC mode 6 (unsigned 16-bit), because mode 0 is read as signed bytes by mrcfile."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Self

from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import Acquisition, TiltImage, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams, show
from tiltflow.workflow.steps.checks_data import check_binning, check_normalize
from tiltflow.workflow.steps.citations import IMOD, NEWSTACK
from tiltflow.workflow.steps.views import require_stacks, stack_refs, stacks_set
from tiltflow.workflow.tasks import ItemTask, StackRefs, StacksResult

STORED = {"float": "float32", "int16": "int16", "uint8": "uint16"}  # numpy dtype written per mode


class NormalizeParams(CheckedParams):
    binning: int = param(1, "Bin the views by this factor (Fourier cropping, newstack -bin).", cli="--binning", ge=1)
    mode: Literal["float", "int16", "uint8"] = param(
        "float", "Storage: float (MRC mode 2), int16 (mode 1) or uint8 (whole numbers 0-255).", cli="--mode"
    )
    scale: Literal["none", "mean_sd", "min_max"] = param(
        "none",
        "none; mean_sd: every view to --mean/--sd (newstack -float 2 -meansd); min_max: one scaling of "
        "the whole stack from its min/max to --min/--max (newstack -scale).",
        cli="--scale",
    )
    mean: float = param(
        0.0, "Mean of each view, density units.", cli="--mean", condition=("scale", "mean_sd"), group="scaling"
    )
    sd: float = param(
        1.0,
        "Standard deviation of each view, density units.",
        cli="--sd",
        gt=0,
        condition=("scale", "mean_sd"),
        group="scaling",
    )
    min: float = param(
        0.0, "Value the stack's minimum becomes.", cli="--min", condition=("scale", "min_max"), group="scaling"
    )
    max: float = param(
        255.0, "Value the stack's maximum becomes.", cli="--max", condition=("scale", "min_max"), group="scaling"
    )

    def problems(self) -> list[str]:
        if self.scale == "min_max" and not self.max > self.min:
            return [f"--min {show(self.min)} --max {show(self.max)}: --max must exceed --min, e.g. --min 0 --max 255"]
        if self.scale == "min_max" and self.mode != "float":
            from tiltflow.core.normalize import MODE_RANGES

            lo, hi = MODE_RANGES[self.mode]
            if self.min < lo or self.max > hi:
                return [
                    (
                        f"--min {show(self.min)} --max {show(self.max)}: outside the {lo:g} to {hi:g} that "
                        f"--mode {self.mode} holds — pass values within it, e.g. --min {lo:g} --max {hi:g}"
                    )
                ]
        return []


@dataclass(frozen=True, kw_only=True)
class NormalizeTask(ItemTask):
    """One series to bin, scale and store (``key``: its tsId)."""

    refs: StackRefs
    params: NormalizeParams
    out_dir: str
    pixel_size_a: float
    device: str


@dataclass(frozen=True)
class StackStats:
    """Density statistics of a written stack (as stored) and its shape ``(t, h, w)``."""

    mean: float
    sd: float
    min: float
    max: float
    shape: list[int]


@dataclass(frozen=True)
class NormalizeResult(StacksResult):
    clipped: dict[str, int]  # per stack kind: pixels clipped to the storage mode's range
    stats: StackStats  # of the main stack

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        return cls(record["files"], record["clipped"], StackStats(**record["stats"]))


def normalize_series_task(task: NormalizeTask) -> NormalizeResult:
    """Bin, scale and store one series and its halves (module level, so a Dask worker can run it)."""
    import numpy as np

    from tiltflow.core.normalize import quantize, scale_views
    from tiltflow.io.mrc import write_mrc
    from tiltflow.workflow.steps.views import load_binned_views

    p = task.params
    files, clipped = {}, {}
    stats = StackStats(0.0, 0.0, 0.0, 0.0, [])
    for key, view_refs in task.refs.items():
        views = load_binned_views(view_refs, p.binning, task.device)
        scaled = scale_views(views, p.scale, mean=p.mean, sd=p.sd, minimum=p.min, maximum=p.max)
        del views
        stored, clipped[key] = quantize(scaled, p.mode)
        del scaled
        data = stored.cpu().numpy().astype(STORED[p.mode])
        name = f"{task.key}.mrc" if key == "file" else f"{task.key}_{key.split('_')[0]}.mrc"
        files[key] = str(write_mrc(Path(task.out_dir) / name, data, voxel_size_a=task.pixel_size_a * p.binning))
        if key == "file":
            stats = StackStats(
                mean=float(np.mean(data, dtype=np.float64)),
                sd=float(np.std(data, dtype=np.float64)),
                min=float(data.min()),
                max=float(data.max()),
                shape=list(data.shape),
            )
    return NormalizeResult(files, clipped, stats)


def _precision_warnings(p: NormalizeParams) -> list[str]:
    """Integer modes with a scaling that leaves few grey levels or runs out of range: said, not hidden."""
    if p.mode == "float" or p.scale != "mean_sd":
        return []
    from tiltflow.core.normalize import MODE_RANGES

    lo, hi = MODE_RANGES[p.mode]
    out = []
    if p.sd < 10:
        out.append(
            f"--mode {p.mode} --sd {show(p.sd)}: rounding to whole numbers keeps few grey levels — "
            "a larger --sd (e.g. 1000 for int16, 40 for uint8) keeps more"
        )
    if p.mean - 4 * p.sd < lo or p.mean + 4 * p.sd > hi:
        out.append(
            f"--mean {show(p.mean)} --sd {show(p.sd)}: mean ± 4 SD leaves the {lo:g} to {hi:g} of --mode "
            f"{p.mode}; values beyond are clipped"
        )
    return out


def run_normalize(ctx: StepContext[NormalizeParams]) -> dict[str, TiltSeriesSet]:
    from tiltflow.core.normalize import rescale_xf_shifts
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    pointer = ctx.input_pointers["input"]
    check_binning(p.binning, source)
    for ts in source.items:  # excluded series too: every series of the set keeps one pixel size
        require_stacks(ts, pointer)
    warnings = ctx.report.warnings
    warnings.extend(_precision_warnings(p))
    device = resolve_device(ctx.options.device)
    tasks = [
        NormalizeTask(
            key=ts.ts_id,
            refs=stack_refs(ts.images),
            params=p,
            out_dir=str(ctx.run_dir),
            pixel_size_a=ts.acquisition.pixel_size_a,
            device=device,
        )
        for ts in source.items
    ]
    results = run_items_or_fail(ctx, normalize_series_task, tasks, NormalizeResult)
    items = []
    for ts in source.items:
        r = results[ts.ts_id]
        files, b = r.files, p.binning
        pixel = ts.acquisition.pixel_size_a * b
        images = []
        for pos, im in enumerate(ts.images):
            xf = (
                None
                if im.transform is None
                else rescale_xf_shifts([im.transform], ts.acquisition.pixel_size_a, pixel)[0].tolist()
            )
            images.append(
                TiltImage(
                    **{
                        **im.__dict__,
                        "file": files["file"],
                        "index": pos,
                        "transform": xf,
                        "odd_file": files.get("odd_file"),
                        "even_file": files.get("even_file"),
                        "attrs": dict(im.attrs),
                    }
                )
            )
        acq = Acquisition(**{**ts.acquisition.__dict__, "pixel_size_a": pixel})
        size = (r.stats.shape[2], r.stats.shape[1])
        items.append(
            replace(
                ts,
                acquisition=acq,
                images=images,
                size=size,
                attrs=dict(ts.attrs, normalized={"binning": b, "mode": p.mode, "scale": p.scale}),
            )
        )
        s = r.stats
        ctx.log.info(
            "%s: %d x %d px at %.4g Å/px, %s, mean %.4g, SD %.4g, range %.4g to %.4g",
            ts.ts_id,
            *size,
            pixel,
            p.mode,
            s.mean,
            s.sd,
            s.min,
            s.max,
        )
        for key, n in r.clipped.items():
            if n:
                warnings.append(
                    f"{ts.ts_id}{'' if key == 'file' else ' ' + key.split('_')[0]}: {n} px clipped to "
                    f"the range of --mode {p.mode} — use --scale min_max or mean_sd"
                )
    attrs = dict(source.attrs, normalized={"binning": p.binning, "mode": p.mode, "scale": p.scale})
    return {"TiltSeries": stacks_set(source, items, attrs)}


register(
    Step(
        id="normalize",
        title="Tilt-series normalization",
        params=NormalizeParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (stacks)"),),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_normalize,
        scipion_class="ProtImodTsNormalization",
        checks=check_normalize,
        methods=(NEWSTACK, IMOD),
        help="New stacks binned, scaled to a mean/SD or a range, and stored as float, int16 or uint8 (IMOD newstack).",
    )
)
