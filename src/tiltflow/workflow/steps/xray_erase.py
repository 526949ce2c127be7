"""Step ``xray-erase``: find and remove hot pixels / X-ray hits in tilt-series stacks (what IMOD's
ccderaser does with the parameters Scipion passes). Same size and order out; exclusion flags kept;
per tilt the erased pixels are saved (and, optionally, an IMOD point model)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.steps.checks_data import check_xray_erase
from tiltflow.workflow.steps.citations import CCDERASER, IMOD
from tiltflow.workflow.steps.views import require_stacks, stack_refs, stacks_set
from tiltflow.workflow.tasks import ItemTask, StackRefs, StacksResult


class XrayEraseParams(CheckedParams):
    peak_criterion: float = param(
        8.0, "Peaks this many SD above the local annulus are X-rays.", cli="--peak-criterion", gt=0
    )
    diff_criterion: float = param(
        6.0, "Pixel-to-neighbour differences this many SD are X-rays.", cli="--diff-criterion", gt=0
    )
    grow_criterion: float = param(
        4.0, "Neighbours above this many SD join a patch.", cli="--grow-criterion", gt=0, expert=True
    )
    scan_criterion: float = param(
        3.0, "Criterion for the scan that finds candidate peaks, SD.", cli="--scan-criterion", gt=0, expert=True
    )
    max_radius_px: float = param(4.2, "Largest radius of a patch, px.", cli="--max-radius", gt=0)
    giant_criterion: float = param(
        12.0,
        "Peaks this many SD are giant X-rays (erased up to --extra-large-radius).",
        cli="--giant-criterion",
        gt=0,
        expert=True,
    )
    extra_large_radius_px: float = param(
        8.0, "Largest radius of a giant patch, px.", cli="--extra-large-radius", gt=0, expert=True
    )
    big_diff_criterion: float = param(
        19.0, "Differences this many SD mark a big X-ray.", cli="--big-diff-criterion", gt=0, expert=True
    )
    annulus_width_px: float = param(
        2.0, "Width of the annulus for local statistics, px.", cli="--annulus-width", gt=0, expert=True
    )
    scan_size_px: int = param(
        100, "Size of the regions for local statistics, px.", cli="--scan-size", ge=10, expert=True
    )
    edge_exclusion_px: int = param(
        0, "Pixels at the edges not examined (IMOD's default: 4; 0 reaches the border).", cli="--edge-exclusion", ge=0
    )
    border_px: int = param(
        2, "Border around a patch used to fit the replacement, px.", cli="--border", ge=1, le=5, expert=True
    )
    poly_order: int = param(
        2, "Order of the polynomial fitted to the border (0-3).", cli="--poly-order", ge=0, le=3, expert=True
    )
    odd_even: bool = param(True, "Erase the odd/even half-sum stacks too, when present.", cli="--odd-even")
    imod_model: bool = param(
        False, "Also write the erased pixels as an IMOD point model per series.", cli="--imod-model"
    )

    def problems(self) -> list[str]:
        if self.extra_large_radius_px < self.max_radius_px:
            return [
                f"--extra-large-radius {self.extra_large_radius_px:g}: smaller than --max-radius "
                f"{self.max_radius_px:g} — pass --extra-large-radius {self.max_radius_px:g} or more"
            ]
        return []

    def core(self):
        from tiltflow.core.xray import XrayParams

        return XrayParams(**{k: v for k, v in self.model_dump().items() if k not in ("odd_even", "imod_model")})


@dataclass(frozen=True, kw_only=True)
class XrayTask(ItemTask):
    """One series to clean (``key``: its tsId); the half-sum stacks are erased with
    ``params.odd_even``, else copied in the same order."""

    refs: StackRefs
    params: XrayEraseParams
    out_dir: str
    pixel_size_a: float
    device: str


@dataclass(frozen=True)
class XrayResult(StacksResult):
    RENAMED: ClassVar[dict[str, str]] = {"positions": "positions_file", "imod_model": "model_file"}

    erased_px: list[int]  # per view (tilt order) of the main stack
    patches: list[int]
    positions_file: str  # the table of erased pixels
    model_file: str | None = None  # the erased pixels as an IMOD point model


def erase_series_task(task: XrayTask) -> XrayResult:
    """Erase one tilt series (module level, so a Dask worker can run it). Returns small results."""
    import torch

    from tiltflow.core.xray import erase_xrays
    from tiltflow.io.mrc import read_section, write_mrc

    p = task.params.core()
    out = Path(task.out_dir)
    files: dict[str, str] = {}
    erased_px: list[int] = []
    patches: list[int] = []
    masks = np.zeros((0, 0, 0), dtype=bool)
    for key, refs in task.refs.items():
        stack = np.stack([read_section(f, i) for f, i in refs])
        name = f"{task.key}.mrc" if key == "file" else f"{task.key}_{key.split('_')[0]}.mrc"
        if key != "file" and not task.params.odd_even:
            files[key] = str(write_mrc(out / name, stack, voxel_size_a=task.pixel_size_a))
            continue
        erased = erase_xrays(torch.from_numpy(stack).to(task.device), p)
        files[key] = str(write_mrc(out / name, erased.image.cpu().numpy(), voxel_size_a=task.pixel_size_a))
        if key == "file":
            masks = erased.mask.cpu().numpy()
            erased_px = [int(m.sum()) for m in masks]
            n = erased.n_patches
            patches = [int(v) for v in (n.tolist() if torch.is_tensor(n) else [n])]
    # positions of erased pixels: view (0-based, tilt order), x, y
    views, ys, xs = np.nonzero(masks)
    positions = out / f"{task.key}_xray_pixels.txt"
    np.savetxt(positions, np.stack([views, xs, ys], 1), fmt="%d", header="view(0-based, tilt order) x y")
    model = None
    if task.params.imod_model and len(views):
        model = str(_write_model(out / f"{task.key}_xrays.mod", masks, task.pixel_size_a, task.key))
    return XrayResult(files, erased_px, patches, str(positions), model)


def _write_model(path: Path, masks: np.ndarray, pixel_size_a: float, ts_id: str) -> Path:
    """The erased pixels (``masks``: (t, h, w) bool) as an IMOD point model, a contour per view."""
    import torch

    from tiltflow.io.imod import fiducial_model, write_mod

    views, ys, xs = np.nonzero(masks)
    contours = [
        torch.tensor(np.stack([xs[views == v], ys[views == v], views[views == v]], 1), dtype=torch.float32)
        for v in np.unique(views)
    ]
    model = fiducial_model(
        contours,
        image_shape=masks.shape[1:],
        n_views=masks.shape[0],
        pixel_size_a=pixel_size_a,
        name=f"{ts_id} erased pixels",
    )
    write_mod(path, model)
    return path


def run_xray_erase(ctx: StepContext[XrayEraseParams]) -> dict[str, TiltSeriesSet]:
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    check_xray_erase(p, source)
    device = resolve_device(ctx.options.device)
    tasks = []
    for ts in source.items:
        require_stacks(ts, ctx.input_pointers["input"])
        tasks.append(
            XrayTask(
                key=ts.ts_id,
                refs=stack_refs(ts.images),
                params=p,
                out_dir=str(ctx.run_dir),
                pixel_size_a=ts.acquisition.pixel_size_a,
                device=device,
            )
        )
    results = run_items_or_fail(ctx, erase_series_task, tasks, XrayResult)
    items, total = [], 0
    for ts in source.items:
        r = results[ts.ts_id]
        new_images = []
        for pos, im in enumerate(ts.images):
            attrs = dict(im.attrs, xray_erased_px=r.erased_px[pos])
            new_images.append(
                type(im)(
                    **{
                        **im.__dict__,
                        "file": r.files["file"],
                        "index": pos,
                        "odd_file": r.files.get("odd_file"),
                        "even_file": r.files.get("even_file"),
                        "attrs": attrs,
                    }
                )
            )
        total += sum(r.erased_px)
        items.append(
            replace(ts, images=new_images, attrs=dict(ts.attrs, xray_pixels=r.positions_file, xray_model=r.model_file))
        )
        ctx.log.info("%s: %d px erased in %d patches", ts.ts_id, sum(r.erased_px), sum(r.patches))
    attrs = dict(source.attrs, xray_erased_px=total)
    return {"TiltSeries": stacks_set(source, items, attrs)}


register(
    Step(
        id="xray-erase",
        title="X-ray eraser",
        params=XrayEraseParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series to clean"),),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_xray_erase,
        scipion_class="ProtImodXraysEraser",
        checks=check_xray_erase,
        methods=(CCDERASER, IMOD),
        help="Find and remove hot pixels and X-ray hits (IMOD ccderaser's detection and replacement).",
    )
)
