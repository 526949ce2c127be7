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
from tiltflow.workflow.sets import TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, param, register
from tiltflow.workflow.steps.checks_data import check_motion_ctf
from tiltflow.workflow.steps.citations import CTFFIND4, EXPOSURE_FILTER, WARP
from tiltflow.workflow.steps.common import check_window_fits
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
from tiltflow.workflow.steps.ctf_series_pass import refine_series_results, stack_images_of


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


class _MovieSession:
    """What the movies of one run share inside this process: a background decoder running ahead of
    the tasks, the gain/dark references (read once), and per-thread float32 frame buffers reused
    from movie to movie (large fresh allocations cost page faults on every movie)."""

    def __init__(self, movies: list[str], eer_groups: int, depth: int, device: str = "cpu"):
        import threading

        from tiltflow.io.movies import MoviePrefetcher

        # for a GPU the raw counts are also copied into page-locked memory in the thread (fast upload)
        self.prefetch = MoviePrefetcher(
            movies, depth=depth, eer_groups=eer_groups, prepare=_pinned if str(device).startswith("cuda") else None
        )
        self._lock = threading.Lock()
        self._refs: dict[str, object] = {}
        self._buffers: dict[int, object] = {}

    def reference(self, path: str):
        from tiltflow.io.gain import read_gain

        with self._lock:
            if path not in self._refs:
                self._refs[path] = read_gain(path)
            return self._refs[path]

    def buffer(self, shape: tuple[int, ...], device):
        """A float32 tensor of ``shape`` on ``device`` owned by the calling thread."""
        import threading

        import torch

        key = threading.get_ident()
        with self._lock:
            buf = self._buffers.get(key)
            if buf is None or tuple(buf.shape) != tuple(shape) or buf.device != torch.device(device):
                buf = self._buffers[key] = None  # free the old one first
                buf = self._buffers[key] = torch.empty(shape, dtype=torch.float32, device=device)
            return buf

    def close(self) -> None:
        self.prefetch.close()
        self._buffers.clear()
        self._refs.clear()


def _pinned(frames):
    """Raw frames (numpy) as a page-locked CPU tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).pin_memory()


_SESSIONS: dict[str, _MovieSession] = {}  # run key -> session, looked up by tasks in this process


def _check_raw_frames(movie: str, raw) -> None:
    """One-line MovieError for a movie that cannot be motion-corrected (checked on the raw array)."""
    import numpy as np

    from tiltflow.io.movies import MovieError

    if raw.shape[0] < 2:
        raise MovieError(f"{movie}: only {raw.shape[0]} frame — motion correction needs at least 2")
    flat = raw.reshape(raw.shape[0], -1)
    if raw.dtype.kind == "f" and not all(bool(np.isfinite(f).all()) for f in flat):
        raise MovieError(f"{movie}: frames contain NaN or infinite values — the file is corrupt")
    if ((flat.max(axis=1) == 0) & (flat.min(axis=1) == 0)).any():
        raise MovieError(f"{movie}: a frame is all zeros — the file is corrupt or the camera dropped a frame")


def motion_movie_task(
    movie: str,
    gain: str | None,
    dark: str | None,
    p: dict,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    tilt_angle_deg: float,
    tilt_axis_deg: float,
    prior_dose: float | None,
    dose: float | None,
    out_dir: str,
    name: str,
    device: str,
    session: str | None = None,
) -> dict:
    """Motion-correct (and CTF-fit) one movie; writes its files, returns small results.

    ``session`` names this run's shared decoder and buffers when the task runs in the coordinator's
    process (threads); elsewhere (Dask workers) the movie is read here."""
    import numpy as np
    import torch

    from tiltflow.core.motion import (
        DoseWeighting,
        align_and_sum,
        prepare_frames,
        total_motion_px,
    )
    from tiltflow.core.motion_checked import estimate_motion_checked
    from tiltflow.io.gain import read_gain
    from tiltflow.io.movies import read_movie_frames
    from tiltflow.io.star import write_motion_star

    shared = _SESSIONS.get(session) if session else None
    raw = shared.prefetch.get(movie) if shared else read_movie_frames(movie, eer_groups=p["eer_groups"])
    if isinstance(raw, torch.Tensor):  # page-locked by the prefetcher (GPU runs)
        _check_raw_frames(movie, raw.numpy())
        frames = raw.to(device, non_blocking=True)
    else:
        _check_raw_frames(movie, raw)
        frames = torch.from_numpy(np.ascontiguousarray(raw)).to(device)  # raw counts travel (4x smaller)
    del raw

    def ref(path):
        return None if path is None else shared.reference(path) if shared else read_gain(path)

    frames = prepare_frames(
        frames,
        gain=ref(gain),
        dark=ref(dark),
        gain_transpose=p["gain_transpose"] == "transpose",
        gain_flip_x=p["gain_flip"] == "x",
        gain_flip_y=p["gain_flip"] == "y",
        out=shared.buffer(tuple(frames.shape), device) if shared else None,
    )
    if p.get("frame_xray_sd", 0) > 0:  # before any shift: a hit is still a few bright pixels
        from tiltflow.core.xray_frames import remove_frame_xrays

        xrays = remove_frame_xrays(
            frames, threshold_sd=p["frame_xray_sd"], grow_sd=min(3.0, p["frame_xray_sd"]), inplace=True
        )
        n_xray_px = xrays.n_replaced_px
        del xrays
    else:
        n_xray_px = 0
    t = frames.shape[0]
    # hot pixels / X-rays would pin the shifts at zero: cleaned while binning for estimation
    checked = estimate_motion_checked(
        frames,
        pixel_size_a=pixel_size_a,
        fit_range_a=tuple(p["fit_range_a"]),
        bfactor_a2=p["bfactor_a2"],
        grid=tuple(p["motion_grid"]) if p["motion_grid"] else None,
    )
    motion = checked.motion
    weights = None
    if p["dose_weighting"] and dose is not None:
        weights = DoseWeighting(
            pixel_size_a=pixel_size_a,
            dose_per_frame_e_a2=dose / t,
            pre_exposure_e_a2=prior_dose or 0.0,
            voltage_kv=voltage_kv,
        )
    # the CTF's "frame spectra" mode averages the spectra of the aligned even and odd half sums
    halves = p["even_odd"] or (p["estimate_ctf"] and not p["use_movie_average"])
    summed = align_and_sum(frames, motion, even_odd=halves, dose_weights=weights, binning=p["binning"])
    del frames
    out = Path(out_dir)
    # per-movie sums are intermediate (stacked per series by the coordinator; removed by the runner
    # once the run is finished): raw .npy
    files = {"sum": _write_sum(out / "sums" / f"{name}.npy", summed.total)}
    if p["even_odd"]:
        files["even"] = _write_sum(out / "sums" / f"{name}_even.npy", summed.even)
        files["odd"] = _write_sum(out / "sums" / f"{name}_odd.npy", summed.odd)
    shifts = summed.shifts_px  # refined by the local fit when there is one
    star = out / "motion" / f"{name}.star"
    tmp = write_motion_star(
        star.with_name(f".{name}.tmp.star"), shifts.cpu().numpy(), movie=movie, pixel_size_a=pixel_size_a
    )
    tmp.replace(star)  # atomic: a kill leaves no half-written STAR
    result = {
        "files": files,
        "shifts_px": shifts.cpu().tolist(),
        "total_motion_px": total_motion_px(shifts),
        "frame_xray_px": n_xray_px,
        "motion_note": checked.note,
    }
    if p["estimate_ctf"]:
        params = ctf_params(
            CtfOptions(**{k: p[k] for k in CtfOptions.model_fields}),
            pixel_size_a=pixel_size_a * p["binning"],
            voltage_kv=voltage_kv,
            cs_mm=cs_mm,
            amplitude_contrast=amplitude_contrast,
        )
        # single frames are too noisy at tilt-series doses: the aligned half sums are the frame groups
        images = [summed.total] if p["use_movie_average"] else [summed.even, summed.odd]
        grid = tuple(p["defocus_grid"][:2]) if p["defocus_grid"] else None
        result["ctf"] = fit_tilt_ctf(
            images,
            params,
            tilt_angle_deg=tilt_angle_deg,
            tilt_axis_deg=tilt_axis_deg,
            grid_xy=grid,
            out_png=out / "ctf" / f"{name}.png",
        )
    return result


def movie_task_args(
    ts: TiltSeries,
    im,
    gain: str | None,
    dark: str | None,
    params: dict,
    out_dir: str,
    name: str,
    device: str,
    session: str | None = None,
) -> tuple:
    """The positional arguments of :func:`motion_movie_task` for tilt ``im`` of series ``ts`` (``params``:
    the step's ``model_dump()``); the step's runs and the watch mode's per-tilt tasks both build them here."""
    a = ts.acquisition
    return (
        im.file,
        gain,
        dark,
        params,
        a.pixel_size_a,
        a.voltage_kv,
        a.cs_mm,
        a.amplitude_contrast,
        im.tilt_angle_deg,
        a.tilt_axis_deg,
        im.dose_prior_e_a2,
        im.dose_e_a2,
        out_dir,
        name,
        device,
        session,
    )


def _write_sum(path: Path, image) -> str:
    """Write one per-movie sum (h, w) float32 as .npy, atomically; returns the path."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, image.cpu().numpy().astype(np.float32, copy=False))
    tmp.replace(path)
    return str(path)


def _read_sum(path: str):
    """A per-movie sum written by :func:`_write_sum` (or an MRC of an earlier version)."""
    import numpy as np

    from tiltflow.io.mrc import read_stack

    return np.load(path) if path.endswith(".npy") else read_stack(path)[0]


def _assemble_series(ts: TiltSeries, results: dict, run_dir: Path, binning: int, even_odd: bool) -> TiltSeries:
    """One MRC stack per series (tilt-angle order) from the per-movie sums, which are kept (a
    continue after a kill here assembles again; the runner removes them once the run is finished)."""
    import numpy as np

    from tiltflow.io.mrc import write_mrc

    kept = [im for im in ts.images if im.file in results]
    pixel = ts.acquisition.pixel_size_a * binning
    stacks = {}
    for key in ("sum", "even", "odd") if even_odd else ("sum",):
        data = np.stack([_read_sum(results[im.file]["files"][key]) for im in kept])
        suffix = "" if key == "sum" else f"_{key}"
        stacks[key] = str(write_mrc(run_dir / f"{ts.ts_id}{suffix}.mrc", data, voxel_size_a=pixel))
    images = []
    for i, im in enumerate(kept):
        r = results[im.file]
        attrs = dict(im.attrs, frame_xray_px=r.get("frame_xray_px", 0))
        if r.get("motion_note"):
            attrs["motion_note"] = r["motion_note"]
        ctf = r.get("ctf") or {}
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
                total_motion_px=r["total_motion_px"],
                defocus_u_a=ctf.get("defocus_u_a"),
                defocus_v_a=ctf.get("defocus_v_a"),
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


def run_motion_ctf(ctx: StepContext):
    from tiltflow.workflow.device import resolve_device

    p: MotionCtfParams = ctx.params
    source: TiltSeriesSet = ctx.inputs["input"]
    if p.estimate_ctf:  # the runner checked already (checks_data.check_motion_ctf); kept for direct calls
        check_window_fits(p.window_px, source, binning=p.binning)
    device = resolve_device(ctx.options.get("device"))
    gain, dark = source.gain_file, source.dark_file
    pd = p.model_dump()
    session = f"{id(ctx)}-{ctx.run_id}"
    ctx.scratch.append(ctx.run_dir / "sums")
    tasks, where = [], {}
    for ts in source.items:
        for im in ts.images:
            name = f"{ts.ts_id}_{im.acquisition_order:03d}"
            where[im.file] = (ts.ts_id, name)
            tasks.append((im.file, movie_task_args(ts, im, gain, dark, pd, str(ctx.run_dir), name, device, session)))
    # movies are decoded in a background thread ahead of the tasks that use them
    _SESSIONS[session] = _MovieSession(
        [key for key, _ in tasks], p.eer_groups, depth=max(1, int(ctx.options.get("workers") or 2)), device=device
    )
    try:
        results = run_items(
            ctx,
            motion_movie_task,
            tasks,
            on_result=lambda key, v: ctx.log.info(
                "%s: %s",
                where[key][1],
                "failed: " + str(v)
                if isinstance(v, BaseException)
                else f"{v['total_motion_px']:.2f} px total motion, "
                f"{v.get('frame_xray_px', 0)} X-ray px replaced in frames"
                + (f"; {v['motion_note']}" if v.get("motion_note") else ""),
            ),
        )
    finally:
        _SESSIONS.pop(session).close()
    bad = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    if bad:
        lines = [failure_line(k, v) for k, v in bad.items()]
        if not ctx.skip_bad:
            raise ItemFailures(lines, what="movie", total=len(tasks), hint=" (use --skip-bad to process the rest)")
        for line in lines:
            ctx.log.warning("skipped: %s", line)
        ctx.options.setdefault("warnings", []).extend(f"skipped: {w}" for w in summarized(lines))
    good = {k: v for k, v in results.items() if not isinstance(v, BaseException)}
    noted = [f"{where[k][1]}: {v['motion_note']}" for k, v in good.items() if v.get("motion_note")]
    if noted:
        more = f" and {len(noted) - 3} more (see run.log)" if len(noted) > 3 else ""
        ctx.options.setdefault("notes", []).append(f"motion: {'; '.join(noted[:3])}{more}")
    items, ctf_items = [], []
    series = [ts for ts in source.items if any(im.file in good for im in ts.images)]
    phase = "stacks + CTF series pass" if p.estimate_ctf else "stacks"  # progress per series
    for i, ts in enumerate(series):
        ctx.progress(f"{phase}: {ts.ts_id}", i, len(series))
        new = _assemble_series(ts, good, ctx.run_dir, p.binning, p.even_odd)
        items.append(new)
        if p.estimate_ctf:
            a = new.acquisition
            params = ctf_params(
                p,
                pixel_size_a=a.pixel_size_a,
                voltage_kv=a.voltage_kv,
                cs_mm=a.cs_mm,
                amplitude_contrast=a.amplitude_contrast,
            )
            per_tilt = {im.acquisition_order: dict(good[im.movie]["ctf"]) for im in new.images}
            changed = refine_series_results(  # tilts that disagree with the series' trend are re-fitted
                per_tilt,
                stack_images_of(new, halves=not p.use_movie_average, device=device),
                params,
                tilt_angles_deg={im.acquisition_order: im.tilt_angle_deg for im in new.images},
                tilt_axis_deg=a.tilt_axis_deg,
                grid_xy=tuple(p.defocus_grid[:2]) if p.defocus_grid else None,
            )
            ctx.log.info("%s: series pass re-fitted %d tilt(s): %s", new.ts_id, len(changed), changed)
            if p.defocus_grid:
                smooth_grids_in_time(per_tilt, p.defocus_grid[2])
            skipped = next((r["defocus_grid_skipped"] for r in per_tilt.values() if "defocus_grid_skipped" in r), None)
            if skipped:
                ctx.log.warning("%s: defocus grid not fitted: %s", new.ts_id, skipped)
                ctx.options.setdefault("warnings", []).append(f"{new.ts_id}: defocus grid not fitted ({skipped})")
            for im in new.images:  # the tilt series carries the series pass's values, not the first fits
                r = per_tilt.get(im.acquisition_order)
                if r is not None:
                    im.defocus_u_a, im.defocus_v_a = r["defocus_u_a"], r["defocus_v_a"]
            ctf_series = ctf_series_from_results(new, per_tilt, params)
            note_ctf_verdict(ctx, ctf_series)
            ctf_series = write_series_ctf_files(ctf_series, params, ctx.run_dir)
            ctf_items.append(ctf_series)
        ctx.progress(f"{phase}: {ts.ts_id}", i + 1, len(series))
    if not items:
        raise RuntimeError("no movie could be processed")
    outputs = {
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
