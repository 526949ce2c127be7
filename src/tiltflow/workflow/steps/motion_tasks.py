"""The per-movie task of the ``motion-ctf`` step (module level, so a Dask worker can run it): gain
correction, frame X-rays, global and local motion, the aligned sum and half sums, the motion STAR
and, optionally, the tilt's CTF. The watch mode runs the same task per tilt as tilts arrive."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from tiltflow.workflow.steps.ctf_common import CtfOptions, TiltCtf, ctf_params, fit_tilt_ctf
from tiltflow.workflow.tasks import ItemResult, ItemTask

if TYPE_CHECKING:
    from tiltflow.workflow.sets import TiltImage, TiltSeries
    from tiltflow.workflow.steps.motion_ctf import MotionCtfParams


class MovieSession:
    """What the movies of one run share inside this process: a background decoder running ahead of
    the tasks, the gain/dark references (read once), and per-thread float32 frame buffers reused
    from movie to movie (large fresh allocations cost page faults on every movie). A context
    manager: the step opens it for the run and closes it when the tasks are done."""

    def __init__(self, movies: list[str], eer_groups: int, depth: int, device: str = "cpu"):
        from tiltflow.io.movies import MoviePrefetcher

        # for a GPU the raw counts are also copied into page-locked memory in the thread (fast upload)
        self.prefetch = MoviePrefetcher(
            movies, depth=depth, eer_groups=eer_groups, prepare=_pinned if str(device).startswith("cuda") else None
        )
        self._lock = threading.Lock()
        self._refs: dict[str, Any] = {}
        self._buffers: dict[int, Any] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reference(self, path: str) -> Any:
        from tiltflow.io.gain import read_gain

        with self._lock:
            if path not in self._refs:
                self._refs[path] = read_gain(path)
            return self._refs[path]

    def buffer(self, shape: tuple[int, ...], device: Any) -> Any:
        """A float32 tensor of ``shape`` on ``device`` owned by the calling thread."""
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


@dataclass(frozen=True)
class MovieSetup:
    """What every movie of a run shares: the step's parameters, gain and dark references, device."""

    params: MotionCtfParams
    gain: str | None
    dark: str | None
    device: str


@dataclass(frozen=True, kw_only=True)
class MovieTask(ItemTask):
    """One movie (``key``: the tilt image's file) and where its files go (``out_dir``, ``name``).

    ``session``: the run's shared decoder and buffers when the task runs in the coordinator's
    process (threads); it is not pickled, so elsewhere (Dask workers) the movie is read by the task."""

    movie: str
    setup: MovieSetup
    pixel_size_a: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    tilt_angle_deg: float
    tilt_axis_deg: float
    prior_dose: float | None
    dose: float | None
    out_dir: str
    name: str
    session: MovieSession | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "session": None}


def movie_task(
    ts: TiltSeries, im: TiltImage, setup: MovieSetup, *, out_dir: str = "", name: str = "", session=None
) -> MovieTask:
    """The task of tilt ``im`` of series ``ts``; the step's runs and the watch mode's per-tilt tasks
    both build them here."""
    a = ts.acquisition
    return MovieTask(
        key=im.file,
        movie=im.file,
        setup=setup,
        pixel_size_a=a.pixel_size_a,
        voltage_kv=a.voltage_kv,
        cs_mm=a.cs_mm,
        amplitude_contrast=a.amplitude_contrast,
        tilt_angle_deg=im.tilt_angle_deg,
        tilt_axis_deg=a.tilt_axis_deg,
        prior_dose=im.dose_prior_e_a2,
        dose=im.dose_e_a2,
        out_dir=out_dir,
        name=name,
        session=session,
    )


@dataclass(frozen=True)
class MovieResult(ItemResult):
    """One movie's sums (``files``: ``sum``, with even/odd ``even``, ``odd``; raw .npy), its shifts
    and motion, frame X-rays replaced, and the tilt's CTF when estimated."""

    files: dict[str, str]
    shifts_px: list[list[float]]
    total_motion_px: float
    frame_xray_px: int = 0
    motion_note: str | None = None
    ctf: TiltCtf | None = None

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "files": self.files,
            "shifts_px": self.shifts_px,
            "total_motion_px": self.total_motion_px,
            "frame_xray_px": self.frame_xray_px,
            "motion_note": self.motion_note,
        }
        if self.ctf is not None:
            out["ctf"] = self.ctf.to_record()
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        ctf = record.get("ctf")
        return cls(
            dict(record["files"]),
            record["shifts_px"],
            record["total_motion_px"],
            record.get("frame_xray_px", 0),
            record.get("motion_note"),
            TiltCtf.from_record(ctf) if ctf else None,
        )


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


def _gain_corrected_frames(task: MovieTask):
    """The movie's frames ``(t, h, w)`` float32 on the device, gain- (and dark-) corrected."""
    import numpy as np
    import torch

    from tiltflow.core.motion import prepare_frames
    from tiltflow.io.gain import read_gain
    from tiltflow.io.movies import read_movie_frames

    p, device, shared = task.setup.params, task.setup.device, task.session
    raw = shared.prefetch.get(task.movie) if shared else read_movie_frames(task.movie, eer_groups=p.eer_groups)
    if isinstance(raw, torch.Tensor):  # page-locked by the prefetcher (GPU runs)
        _check_raw_frames(task.movie, raw.numpy())
        frames = raw.to(device, non_blocking=True)
    else:
        _check_raw_frames(task.movie, raw)
        frames = torch.from_numpy(np.ascontiguousarray(raw)).to(device)  # raw counts travel (4x smaller)
    del raw

    def ref(path: str | None):
        return None if path is None else shared.reference(path) if shared else read_gain(path)

    return prepare_frames(
        frames,
        gain=ref(task.setup.gain),
        dark=ref(task.setup.dark),
        gain_transpose=p.gain_transpose == "transpose",
        gain_flip_x=p.gain_flip == "x",
        gain_flip_y=p.gain_flip == "y",
        out=shared.buffer(tuple(frames.shape), device) if shared else None,
    )


def motion_movie_task(task: MovieTask) -> MovieResult:
    """Motion-correct (and CTF-fit) one movie; writes its files, returns small results."""
    from tiltflow.core.motion import DoseWeighting, align_and_sum, total_motion_px
    from tiltflow.core.motion_checked import estimate_motion_checked
    from tiltflow.io.star import write_motion_star

    p = task.setup.params
    frames = _gain_corrected_frames(task)
    n_xray_px = 0
    if p.frame_xray_sd > 0:  # before any shift: a hit is still a few bright pixels
        from tiltflow.core.xray_frames import remove_frame_xrays

        xrays = remove_frame_xrays(
            frames, threshold_sd=p.frame_xray_sd, grow_sd=min(3.0, p.frame_xray_sd), inplace=True
        )
        n_xray_px = xrays.n_replaced_px
        del xrays
    t = frames.shape[0]
    # hot pixels / X-rays would pin the shifts at zero: cleaned while binning for estimation
    checked = estimate_motion_checked(
        frames,
        pixel_size_a=task.pixel_size_a,
        fit_range_a=tuple(p.fit_range_a),
        bfactor_a2=p.bfactor_a2,
        grid=tuple(p.motion_grid) if p.motion_grid else None,
    )
    weights = None
    if p.dose_weighting and task.dose is not None:
        weights = DoseWeighting(
            pixel_size_a=task.pixel_size_a,
            dose_per_frame_e_a2=task.dose / t,
            pre_exposure_e_a2=task.prior_dose or 0.0,
            voltage_kv=task.voltage_kv,
        )
    # the CTF's "frame spectra" mode averages the spectra of the aligned even and odd half sums
    halves = p.even_odd or (p.estimate_ctf and not p.use_movie_average)
    summed = align_and_sum(frames, checked.motion, even_odd=halves, dose_weights=weights, binning=p.binning)
    del frames
    out, name = Path(task.out_dir), task.name
    # per-movie sums are intermediate (stacked per series by the coordinator; removed by the runner
    # once the run is finished): raw .npy
    files = {"sum": _write_sum(out / "sums" / f"{name}.npy", summed.total)}
    if p.even_odd:
        files["even"] = _write_sum(out / "sums" / f"{name}_even.npy", summed.even)
        files["odd"] = _write_sum(out / "sums" / f"{name}_odd.npy", summed.odd)
    shifts = summed.shifts_px  # refined by the local fit when there is one
    star = out / "motion" / f"{name}.star"
    tmp = write_motion_star(
        star.with_name(f".{name}.tmp.star"), shifts.cpu().numpy(), movie=task.movie, pixel_size_a=task.pixel_size_a
    )
    tmp.replace(star)  # atomic: a kill leaves no half-written STAR
    return MovieResult(
        files=files,
        shifts_px=shifts.cpu().tolist(),
        total_motion_px=total_motion_px(shifts),
        frame_xray_px=n_xray_px,
        motion_note=checked.note,
        ctf=_movie_ctf(task, summed) if p.estimate_ctf else None,
    )


def _movie_ctf(task: MovieTask, summed) -> TiltCtf:
    """The tilt's CTF from the aligned sums (writes its spectrum picture)."""
    p = task.setup.params
    params = ctf_params(
        CtfOptions(**{k: getattr(p, k) for k in CtfOptions.model_fields}),
        pixel_size_a=task.pixel_size_a * p.binning,
        voltage_kv=task.voltage_kv,
        cs_mm=task.cs_mm,
        amplitude_contrast=task.amplitude_contrast,
    )
    # single frames are too noisy at tilt-series doses: the aligned half sums are the frame groups
    images = [summed.total] if p.use_movie_average else [summed.even, summed.odd]
    return fit_tilt_ctf(
        images,
        params,
        tilt_angle_deg=task.tilt_angle_deg,
        tilt_axis_deg=task.tilt_axis_deg,
        grid_xy=(p.defocus_grid[0], p.defocus_grid[1]) if p.defocus_grid else None,
        out_png=Path(task.out_dir) / "ctf" / f"{task.name}.png",
    )


def _write_sum(path: Path, image) -> str:
    """Write one per-movie sum (h, w) float32 as .npy, atomically; returns the path."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, image.cpu().numpy().astype(np.float32, copy=False))
    tmp.replace(path)
    return str(path)
