"""Step ``motion-ctf`` (Warp's tilt-series motion + CTF): per movie, gain correction, global and
local (grid) motion, aligned sum (+ even/odd half sums), optional dose weighting, and per-tilt CTF.

Per movie a task runs on the executor (threads, or Dask workers) and writes the movie's sum, its
RELION motion STAR and its spectrum picture; the coordinator then writes one MRC stack per tilt
series (tilt-angle order) and the CTFFIND4 / IMOD ``.defocus`` files, and registers a
``TiltSeries`` and a ``CTFTomoSeries`` set. A bad movie (unreadable, one frame, zeros, NaNs) is
reported per movie; ``--skip-bad`` drops it (the view disappears from the output), otherwise the
run fails and nothing is registered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from tiltflow.workflow.executor import ItemFailures, failure_line, run_items, summarized
from tiltflow.workflow.sets import AnySet, CtfTomoSeries, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks_data import check_motion_ctf
from tiltflow.workflow.steps.citations import CTFFIND4, EXPOSURE_FILTER, WARP
from tiltflow.workflow.steps.common import check_window_fits
from tiltflow.workflow.steps.ctf_common import (
    CtfOptions,
    ctf_params,
    ctf_series_from_results,
    ctf_set,
    note_ctf_verdict,
    smooth_grids_in_time,
    write_series_ctf_files,
)
from tiltflow.workflow.steps.ctf_series_pass import refine_series_results, stack_images_of
from tiltflow.workflow.steps.motion_tasks import MovieResult, MovieSession, MovieSetup, motion_movie_task, movie_task


class MotionCtfParams(CtfOptions):
    binning: int = param(1, "Bin the output by this factor (Fourier cropping).", cli="--binning", ge=1)
    fit_range_a: tuple[float, float] = param(
        (500.0, 10.0), "Fit resolution range (low, high), Å.", cli="--fit-range", group="motion"
    )
    bfactor_a2: float = param(
        -500.0, "B-factor weighting of the fit, Å².", cli="--bfactor", group="motion", expert=True
    )
    motion_grid: tuple[int, int, int] | None = param(
        None,
        "Motion model grid (x, y, frames); empty: automatic; 1 1 1: global only.",
        cli="--motion-grid",
        group="motion",
    )
    even_odd: bool = param(True, "Write even/odd half-sum stacks.", cli="--even-odd")
    gain_transpose: Literal["none", "transpose"] = param(
        "none", "Transpose the gain before use.", cli="--gain-transpose", group="gain"
    )
    gain_flip: Literal["none", "x", "y"] = param(
        "none", "Flip the gain (before transposing, as Warp).", cli="--gain-flip", group="gain"
    )
    eer_groups: int = param(
        16, "EER: fractions summed into this many frames.", cli="--eer-groups", ge=1, group="motion"
    )
    frame_xray_sd: float = param(
        7.0,
        "X-rays: replace frame pixels this many noise SD above their local expectation (and their"
        " neighbours above 3 SD) before the frames are shifted; 0: off.",
        cli="--frame-xray-sd",
        ge=0,
    )
    dose_weighting: bool = param(
        False, "Weight frames by the accumulated dose (Grant & Grigorieff).", cli="--dose-weighting"
    )
    estimate_ctf: bool = param(True, "Estimate the CTF of each tilt.", cli="--estimate-ctf")
    use_movie_average: bool = param(
        False,
        "CTF from the aligned sum's spectrum instead of the mean spectrum of the"
        " aligned frame groups (even/odd half sums).",
        cli="--use-movie-average",
        condition=("estimate_ctf", True),
        group="ctf",
        expert=True,
    )


def _read_sum(path: str):
    """A per-movie sum written by :func:`_write_sum` (or an MRC of an earlier version)."""
    import numpy as np

    from tiltflow.io.mrc import read_stack

    return np.load(path) if path.endswith(".npy") else read_stack(path)[0]


def _assemble_series(
    ts: TiltSeries, results: dict[str, MovieResult], run_dir: Path, binning: int, even_odd: bool
) -> TiltSeries:
    """One MRC stack per series (tilt-angle order) from the per-movie sums, which are kept (a
    continue after a kill here assembles again; the runner removes them once the run is finished)."""
    import numpy as np

    from tiltflow.io.mrc import write_mrc

    kept = [im for im in ts.images if im.file in results]
    pixel = ts.acquisition.pixel_size_a * binning
    stacks = {}
    for key in ("sum", "even", "odd") if even_odd else ("sum",):
        data = np.stack([_read_sum(results[im.file].files[key]) for im in kept])
        suffix = "" if key == "sum" else f"_{key}"
        stacks[key] = str(write_mrc(run_dir / f"{ts.ts_id}{suffix}.mrc", data, voxel_size_a=pixel))
    images = []
    for i, im in enumerate(kept):
        r = results[im.file]
        attrs = dict(im.attrs, frame_xray_px=r.frame_xray_px)
        if r.motion_note:
            attrs["motion_note"] = r.motion_note
        images.append(
            replace(
                im,
                file=stacks["sum"],
                index=i,
                frames=None,
                transform=None,
                odd_file=stacks.get("odd"),
                even_file=stacks.get("even"),
                attrs=attrs,
                movie=im.file,
                total_motion_px=r.total_motion_px,
                defocus_u_a=r.ctf.defocus_u_a if r.ctf else None,
                defocus_v_a=r.ctf.defocus_v_a if r.ctf else None,
            )
        )
    nx, ny = ts.size
    size = (nx // binning, ny // binning)
    return replace(
        ts,
        acquisition=replace(ts.acquisition, pixel_size_a=pixel),
        images=images,
        size=size,
        attrs=dict(ts.attrs),
        motion_star_dir=str(run_dir / "motion"),
    )


def _log_movie(ctx: StepContext, name: str, v: MovieResult | BaseException) -> None:
    if isinstance(v, BaseException):
        ctx.log.info("%s: %s", name, "failed: " + str(v))
        return
    note = f"; {v.motion_note}" if v.motion_note else ""
    ctx.log.info(
        "%s: %s",
        name,
        f"{v.total_motion_px:.2f} px total motion, {v.frame_xray_px} X-ray px replaced in frames{note}",
    )


def _run_movies(ctx: StepContext, p: MotionCtfParams, source: TiltSeriesSet, device: str) -> dict[str, MovieResult]:
    """Every movie through the executor (decoded ahead in this process); the movies that worked.
    Failed movies fail the run, or with ``--skip-bad`` are reported and left out."""
    setup = MovieSetup(p, source.gain_file, source.dark_file, device)
    names = {im.file: f"{ts.ts_id}_{im.acquisition_order:03d}" for ts in source.items for im in ts.images}
    # movies are decoded in a background thread ahead of the tasks that use them
    with MovieSession(list(names), p.eer_groups, depth=max(1, int(ctx.options.workers or 2)), device=device) as session:
        tasks = [
            movie_task(ts, im, setup, out_dir=str(ctx.run_dir), name=names[im.file], session=session)
            for ts in source.items
            for im in ts.images
        ]
        results = run_items(
            ctx, motion_movie_task, tasks, MovieResult, on_result=lambda key, v: _log_movie(ctx, names[key], v)
        )
    bad = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    if bad:
        lines = [failure_line(k, v) for k, v in bad.items()]
        if not ctx.skip_bad:
            raise ItemFailures(lines, what="movie", total=len(tasks), hint=" (use --skip-bad to process the rest)")
        for line in lines:
            ctx.log.warning("skipped: %s", line)
        ctx.report.warn_all(f"skipped: {w}" for w in summarized(lines))
    good = {k: v for k, v in results.items() if not isinstance(v, BaseException)}
    noted = [f"{names[k]}: {v.motion_note}" for k, v in good.items() if v.motion_note]
    if noted:
        more = f" and {len(noted) - 3} more (see run.log)" if len(noted) > 3 else ""
        ctx.report.note(f"motion: {'; '.join(noted[:3])}{more}")
    return good


def _series_ctf(
    ctx: StepContext, p: MotionCtfParams, new: TiltSeries, good: dict[str, MovieResult], device: str
) -> CtfTomoSeries:
    """The series pass over the per-tilt fits of one assembled series, its CTF files written."""
    a = new.acquisition
    params = ctf_params(
        p,
        pixel_size_a=a.pixel_size_a,
        voltage_kv=a.voltage_kv,
        cs_mm=a.cs_mm,
        amplitude_contrast=a.amplitude_contrast,
    )
    per_tilt = {
        im.acquisition_order: r.ctf for im in new.images if (r := good.get(im.movie or "")) and r.ctf is not None
    }
    changed = refine_series_results(  # tilts that disagree with the series' trend are re-fitted
        per_tilt,
        stack_images_of(new, halves=not p.use_movie_average, device=device),
        params,
        tilt_angles_deg={im.acquisition_order: im.tilt_angle_deg for im in new.images},
        tilt_axis_deg=a.tilt_axis_deg,
        grid_xy=(p.defocus_grid[0], p.defocus_grid[1]) if p.defocus_grid else None,
    )
    ctx.log.info("%s: series pass re-fitted %d tilt(s): %s", new.ts_id, len(changed), changed)
    if p.defocus_grid:
        smooth_grids_in_time(per_tilt, p.defocus_grid[2])
    skipped = next((r.defocus_grid_skipped for r in per_tilt.values() if r.defocus_grid_skipped), None)
    if skipped:
        ctx.log.warning("%s: defocus grid not fitted: %s", new.ts_id, skipped)
        ctx.report.warn(f"{new.ts_id}: defocus grid not fitted ({skipped})")
    for im in new.images:  # the tilt series carries the series pass's values, not the first fits
        fit = per_tilt.get(im.acquisition_order)
        if fit is not None:
            im.defocus_u_a, im.defocus_v_a = fit.defocus_u_a, fit.defocus_v_a
    ctf_series = ctf_series_from_results(new, per_tilt, params)
    note_ctf_verdict(ctx, ctf_series)
    return write_series_ctf_files(ctf_series, params, ctx.run_dir)


def run_motion_ctf(ctx: StepContext[MotionCtfParams]) -> dict[str, AnySet]:
    from tiltflow.workflow.device import resolve_device

    p = ctx.params
    source = ctx.input_set("input", TiltSeriesSet)
    if p.estimate_ctf:  # the runner checked already (checks_data.check_motion_ctf); kept for direct calls
        check_window_fits(p.window_px, source, binning=p.binning)
    device = resolve_device(ctx.options.device)
    ctx.scratch.append(ctx.run_dir / "sums")
    good = _run_movies(ctx, p, source, device)
    items, ctf_items = [], []
    series = [ts for ts in source.items if any(im.file in good for im in ts.images)]
    phase = "stacks + CTF series pass" if p.estimate_ctf else "stacks"  # progress per series
    for i, ts in enumerate(series):
        ctx.progress(f"{phase}: {ts.ts_id}", i, len(series))
        new = _assemble_series(ts, good, ctx.run_dir, p.binning, p.even_odd)
        items.append(new)
        if p.estimate_ctf:
            ctf_items.append(_series_ctf(ctx, p, new, good, device))
        ctx.progress(f"{phase}: {ts.ts_id}", i + 1, len(series))
    if not items:
        raise RuntimeError("no movie could be processed")
    outputs: dict[str, AnySet] = {
        "TiltSeries": TiltSeriesSet("TiltSeries", items, {"source": ctx.input_pointers["input"]}, odd_even=p.even_odd)
    }
    if p.estimate_ctf:
        outputs["CTFTomoSeries"] = ctf_set(ctf_items)
    return outputs


register(
    Step(
        id="motion-ctf",
        title="Motion correction and CTF estimation (tilt-series movies)",
        params=MotionCtfParams,
        inputs=(InputSpec("input", ("TiltSeriesM",), "Tilt-series movies"),),
        outputs={"TiltSeries": "TiltSeries", "CTFTomoSeries": "CTFTomoSeries"},
        run=run_motion_ctf,
        scipion_class="ProtWarpTSMotionCorr",
        checks=check_motion_ctf,
        methods=(WARP, CTFFIND4, EXPOSURE_FILTER),
        help="Warp-style motion correction (global + local grid, even/odd) and per-tilt CTF estimation.",
    )
)
