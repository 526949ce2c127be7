"""Step ``erase-beads``: gold beads replaced by noise matching their surroundings before reconstruction
(IMOD ``ccderaser`` with the bead model, fidder's erase). The beads are those the fiducial alignment
found: its 3-D bead model (``fid.xyz``) projected into every aligned view with the view's ``.xf`` and
refined tilt angle (``core.bead_erase``), so views where tracking lost a bead are erased too; or, with
``--detect``, the beads found in each view by ``core.align.beads.detect_beads``.

Discs of the bead radius plus ``--expand`` pixels are filled with the local mean plus noise of the
local SD (a ring around each bead); nothing outside the discs changes. Same size, order and flags
out; odd/even half-sum stacks erased at the same places. Per series the erased positions are saved
(``<ts>_beads.txt``: view (0-based, stack order), x, y, radius in px)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from tiltflow.workflow.errors import InputError, ProjectError
from tiltflow.workflow.executor import run_items_or_fail
from tiltflow.workflow.sets import TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.steps.citations import CCDERASER, IMOD
from tiltflow.workflow.steps.views import require_stacks, stack_refs, stacks_set
from tiltflow.workflow.tasks import ItemTask, StackRefs, StacksResult, ViewRefs


class EraseBeadsParams(CheckedParams):
    bead_diameter_nm: float | None = param(
        None, "Gold bead diameter, nm (empty: the one the fiducial alignment used).", cli="--bead-diameter-nm", gt=0
    )
    expand_px: float = param(
        1.0, "Erase this many pixels beyond the bead's radius (ccderaser -expand).", cli="--expand", ge=0, le=50
    )
    detect: bool = param(
        False, "Find the beads in every view instead of using the alignment's bead model.", cli="--detect"
    )


def _diameter_from_alignment(ts: TiltSeries, ctx: StepContext) -> float | None:
    """The bead diameter (nm) of the alignment that made this series' bead model: recorded with the
    alignment, else the parameters of the align run whose folder holds its ``.fid``."""
    alignment = ts.alignment or {}
    if alignment.get("bead_diameter_nm"):
        return float(alignment["bead_diameter_nm"])
    fid = alignment.get("fid") or alignment.get("fid_xyz")
    m = re.match(r"^(\d+)_", Path(fid).parent.name) if fid else None
    if m is None or ctx.store is None:
        return None
    try:
        run = ctx.store.run(int(m.group(1)))
    except ProjectError:  # a run of another project, or gone: the user gives the diameter
        return None
    value = run.params.get("bead_diameter_nm") if run.step == "align" else None
    return float(value) if value else None


def _model_positions(ts: TiltSeries, pointer: str) -> list[list[list[float]]]:
    """Per view (stack order) the (x, y) px of every bead of the alignment's model; [] where the view has
    no alignment (excluded when it was aligned)."""
    import torch

    from tiltflow.core.bead_erase import beads_in_views
    from tiltflow.io.imod import read_fid_xyz

    alignment = ts.alignment or {}
    path = alignment.get("fid_xyz")
    if not path:
        status = (alignment.get("verdict") or {}).get("status")
        why = "its alignment failed" if status == "failed" else "it has no bead model (align --method fiducial)"
        raise InputError(f"{pointer}: {ts.ts_id}: {why} — erase with --detect, or align it first")
    if not Path(path).is_file():
        raise InputError(f"{path}: the bead model of {ts.ts_id} is missing — align it again or pass --detect")
    fid = read_fid_xyz(path)
    xyz = fid.xyz.clone()
    if xyz.shape[0] and fid.image_size and not bool((xyz[:, :2].mean(0).abs() < 1.0).all()):
        xyz[:, 0] -= fid.image_size[0] / 2.0  # IMOD's convention (corner origin): to the centre
        xyz[:, 1] -= fid.image_size[1] / 2.0
    xyz *= (fid.pixel_size_a or ts.acquisition.pixel_size_a) / ts.acquisition.pixel_size_a
    views = [i for i, im in enumerate(ts.images) if im.enabled and im.transform is not None]
    out: list[list[list[float]]] = [[] for _ in ts.images]
    if not views or not xyz.shape[0]:
        return out
    angles = [ts.images[i].best_tilt_angle_deg for i in views]
    xf = torch.tensor([ts.images[i].transform for i in views], dtype=torch.float64)
    raw = beads_in_views(xyz, angles, xf, (ts.size[1], ts.size[0]))
    for j, i in enumerate(views):
        out[i] = raw[:, j].tolist()
    return out


@dataclass(frozen=True, kw_only=True)
class EraseBeadsTask(ItemTask):
    """One series to erase (``key``: its tsId). ``positions``: per view a list of (x, y) px; None
    with ``detect_diameter_px``: found in each view of the main stack."""

    refs: StackRefs
    positions: list[list[list[float]]] | None
    radius_px: float
    detect_diameter_px: float | None
    out_dir: str
    pixel_size_a: float
    device: str
    seed: int = 0


@dataclass(frozen=True)
class EraseBeadsResult(StacksResult):
    erased_px: list[int]  # per view (stack order) of the main stack
    beads: list[int]  # per view: how many bead discs were erased
    positions_file: str  # the table of erased positions

    RENAMED: ClassVar[dict[str, str]] = {"positions": "positions_file"}


def erase_beads_series_task(task: EraseBeadsTask) -> EraseBeadsResult:
    """Erase one series and its halves (module level, so a Dask worker can run it)."""
    import numpy as np

    out = Path(task.out_dir)
    files: dict[str, str] = {}
    erased_px: list[int] = []
    found = task.positions
    for key, view_refs in task.refs.items():  # "file" first: detection runs on the main stack
        found = _erase_stack(task, key, view_refs, found, erased_px if key == "file" else None, seed=len(files))
        name = f"{task.key}.mrc" if key == "file" else f"{task.key}_{key.split('_')[0]}.mrc"
        files[key] = str(out / name)
    rows = [(v, x, y, task.radius_px) for v, xy in enumerate(found or []) for x, y in xy]
    table = out / f"{task.key}_beads.txt"
    np.savetxt(
        table,
        np.array(rows, dtype=np.float64).reshape(-1, 4),
        fmt=["%d", "%.2f", "%.2f", "%.2f"],
        header="view(0-based, stack order) x y radius (px)",
    )
    return EraseBeadsResult(files, erased_px, [len(xy) for xy in (found or [])], str(table))


def _erase_stack(
    task: EraseBeadsTask, key: str, view_refs: ViewRefs, found: list | None, erased_px: list[int] | None, *, seed: int
) -> list:
    """Erase the beads of one stack, writing it; returns the positions per view (found in the views
    that had none yet). ``erased_px`` collects the erased pixels per view."""
    import numpy as np
    import torch

    from tiltflow.core.align.beads import detect_beads
    from tiltflow.core.bead_erase import erase_beads
    from tiltflow.io.mrc import read_section, write_mrc

    found = [] if found is None else found
    stack = np.empty((0,), dtype=np.float32)
    gen = torch.Generator(device=task.device).manual_seed(task.seed + seed)
    for v, (f, index) in enumerate(view_refs):
        view = torch.from_numpy(np.ascontiguousarray(read_section(f, index))).to(task.device)
        if len(found) <= v:
            if task.detect_diameter_px is None:
                raise ValueError(f"{task.key}: view {v} has no bead positions and detection is off")
            found.append(detect_beads(view, bead_diameter_px=task.detect_diameter_px).xy_px.tolist())
        xy = torch.tensor(found[v], dtype=torch.float64).reshape(-1, 2)
        erased, mask = erase_beads(view, xy, task.radius_px, generator=gen)
        if v == 0:
            stack = np.empty((len(view_refs), *view.shape), dtype=np.float32)
        stack[v] = erased.cpu().numpy()
        if erased_px is not None:
            erased_px.append(int(mask.sum()))
    name = f"{task.key}.mrc" if key == "file" else f"{task.key}_{key.split('_')[0]}.mrc"
    write_mrc(Path(task.out_dir) / name, stack, voxel_size_a=task.pixel_size_a)
    return found


def run_erase_beads(ctx: StepContext[EraseBeadsParams]) -> dict[str, TiltSeriesSet]:
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    pointer = ctx.input_pointers["input"]
    device = resolve_device(ctx.options.device)
    tasks: list[EraseBeadsTask] = []
    plans: dict[str, tuple[float, float]] = {}
    for ts in source.items:  # every check and every bead model before the first view is read
        if not ts.enabled:
            continue
        require_stacks(ts, pointer)
        diameter = p.bead_diameter_nm or _diameter_from_alignment(ts, ctx)
        if diameter is None:
            raise InputError(
                f"{pointer}: {ts.ts_id}: the bead diameter of its alignment is not known — pass --bead-diameter-nm"
            )
        diameter_px = diameter * 10.0 / ts.acquisition.pixel_size_a
        if not 1.0 < diameter_px <= min(ts.size) / 2:
            raise InputError(
                f"--bead-diameter-nm {diameter:g}: {diameter_px:.1f} px in the {ts.size[0]} x "
                f"{ts.size[1]} px views of {ts.ts_id} — give the gold beads' diameter in nm"
            )
        positions = None if p.detect else _model_positions(ts, pointer)
        radius = diameter_px / 2.0 + p.expand_px
        plans[ts.ts_id] = (diameter, radius)
        tasks.append(
            EraseBeadsTask(
                key=ts.ts_id,
                refs=stack_refs(ts.images),
                positions=positions,
                radius_px=radius,
                detect_diameter_px=diameter_px if p.detect else None,
                out_dir=str(ctx.run_dir),
                pixel_size_a=ts.acquisition.pixel_size_a,
                device=device,
            )
        )
    if not tasks:
        raise InputError(f"{pointer}: every tilt series is excluded")
    results = run_items_or_fail(ctx, erase_beads_series_task, tasks, EraseBeadsResult)
    items = []
    for ts in source.items:
        if ts.ts_id not in results:  # excluded: its alignment may have failed; passed through as it was
            items.append(ts)
            ctx.report.note(f"{ts.ts_id}: excluded, passed through without erasing")
            continue
        r = results[ts.ts_id]
        files = r.files
        images = [
            TiltImage(
                **{
                    **im.__dict__,
                    "file": files["file"],
                    "index": pos,
                    "odd_file": files.get("odd_file"),
                    "even_file": files.get("even_file"),
                    "attrs": dict(
                        im.attrs,
                        beads_erased=r.beads[pos] if pos < len(r.beads) else 0,
                        bead_erased_px=r.erased_px[pos],
                    ),
                }
            )
            for pos, im in enumerate(ts.images)
        ]
        diameter, radius = plans[ts.ts_id]
        untouched = sum(1 for n in r.beads if n == 0)
        items.append(
            replace(
                ts,
                images=images,
                attrs=dict(
                    ts.attrs,
                    beads_erased={
                        "source": "detected" if p.detect else "alignment",
                        "bead_diameter_nm": diameter,
                        "radius_px": radius,
                        "positions_file": r.positions_file,
                    },
                ),
            )
        )
        line = (
            f"{ts.ts_id}: {sum(r.beads)} bead discs of {radius:.1f} px erased over {len(ts.images)} views "
            f"({'detected' if p.detect else 'bead model of the alignment'}, {diameter:g} nm beads)"
            + (f"; {untouched} views without beads" if untouched else "")
        )
        ctx.log.info(line)
        ctx.report.note(line)
    attrs = dict(source.attrs, beads_erased="detected" if p.detect else "alignment")
    return {"TiltSeries": stacks_set(source, items, attrs)}


register(
    Step(
        id="erase-beads",
        title="Gold bead eraser",
        params=EraseBeadsParams,
        inputs=(InputSpec("input", ("TiltSeries",), "Tilt series (stacks), aligned with beads unless --detect"),),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_erase_beads,
        scipion_class="ProtFidderDetectAndEraseFiducials",
        methods=(CCDERASER, IMOD),
        help="Replace gold beads by local noise: the alignment's bead model projected to each view, or detected beads.",
    )
)
