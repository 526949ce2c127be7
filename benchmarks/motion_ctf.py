"""Motion correction and per-tilt CTF on simulated movies: tiltflow against its peers, same data.

Run in the peers' venv (benchmarks/README.md): ``python benchmarks/motion_ctf.py [--small]
[--sizes 1440x1024 4096x4096] [--device cpu|cuda|auto] [--full-size] [--repeats 3]``.

Data: ``tiltflow demo-data`` tilt series (one per size, cached under ``--data``; 8 frames, 3 e/Å² per
tilt, 2.76 Å/px, gain, hot pixels, X-rays, local motion), whose ``truth.json`` holds every true shift
and defocus. Methods, each on the same movies:

- ``tiltflow core``: decoded frames in memory -> ``prepare_frames`` (gain) -> bright-outlier
  suppression -> ``estimate_global_shifts`` -> ``estimate_local_motion`` (automatic grid) ->
  ``align_and_sum`` (+ even/odd) | ``fit_ctf`` on the sum (tilt-aware, 512 px window, 30-8 Å).
- ``tiltflow step``: ``motion_movie_task`` of the ``motion-ctf`` step with the tutorial's values
  (file in -> sums, STAR, CTF, spectrum picture out; decode included); also motion alone.
- ``teamtomo``: torch-motion-correction 0.6.0 ``estimate_global_motion`` (XC pre-pass) ->
  ``estimate_local_motion`` (Adam, 100 iterations, lr 0.2, B 500, 300-10 Å, as teamtomo's ripple
  pipeline) -> ``correct_motion`` -> sum | torch-ctf-estimation 0.6.0 ``estimate_ctf`` on that sum
  (same range, window and defocus search; 1 x 2 x 2 defocus grid). It gets tiltflow's cleaned frames
  (gain-corrected, X-rays suppressed; not timed). Its ``torchvision`` import is shimmed with an
  equivalent ``gaussian_blur`` (torchvision cannot be installed beside CPU torch 2.13). Its results
  report U/V as mean ± astigmatism / 2 while its CTF model (torch-ctf) uses mean ± astigmatism:
  U/V are recomputed as mean ± astigmatism before comparing.
- ``relion``: RELION 3.1.3 ``relion_run_motioncorr --use_own`` (CPU; file in -> files out; decode
  included; B 150 px², patches as below). RELION reads TIFF movies upside down: the gain is given
  with ``--gain_flip 1`` and its shifts are converted to DESIGN.md's convention as (-x, +y).

Accuracy: frame trajectories on an 8 x 8 grid of points, mean-subtracted over frames; "global" =
the trajectory of the grid mean (truth: ``frame_shifts_px`` + local field averaged the same way),
"local" = per point (global-only methods apply one shift everywhere). CTF: mean defocus error
(median |.| for |tilt| <= 30° and above), astigmatism magnitude and angle errors where the true
astigmatism exceeds 300 Å. Timing: each timed item ``--repeats`` times, methods interleaved, the
minimum; ``uptime`` is printed because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the teamtomo optimisers print a progress bar per movie

import numpy as np
import torch
import torch.nn.functional as F

try:
    import tiltflow  # noqa: F401
except ImportError:  # a bare GPU machine: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PIXEL_A, FRAMES, DOSE_E_A2 = 2.76, 8, 3.0
WINDOW_PX, CTF_RANGE_A, DEFOCUS_RANGE_UM = 512, (30.0, 8.0), (0.5, 8.0)
FIT_RANGE_A, BFACTOR_A2 = (500.0, 10.0), -500.0
GRID_POINTS = 8
# size -> (tilts, tilt step °): tilts above 30° for the CTF's high-tilt column
PLANS = {(1440, 1024): (11, 10.0), (4096, 4096): (7, 12.0), (5760, 4092): (1, 10.0)}
SMALL_PLAN = (5, 20.0)


# --- peers --------------------------------------------------------------------------------------


def _gaussian_blur(img: torch.Tensor, kernel_size, sigma=None) -> torch.Tensor:
    """torchvision.transforms.functional.gaussian_blur for tensors (separable, reflect padding)."""
    kx, ky = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sx, sy = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma

    def kernel(n, s):
        x = torch.linspace(-(n - 1) / 2, (n - 1) / 2, n, dtype=img.dtype, device=img.device)
        p = torch.exp(-0.5 * (x / s) ** 2)
        return p / p.sum()

    x = img.reshape(-1, 1, *img.shape[-2:])
    x = F.pad(x, [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect")
    x = F.conv2d(F.conv2d(x, kernel(kx, sx).view(1, 1, 1, -1)), kernel(ky, sy).view(1, 1, -1, 1))
    return x.reshape(img.shape)


def _shim_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    tv, tr, fn = (
        types.ModuleType(n) for n in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    )
    vars(fn).update(gaussian_blur=_gaussian_blur)  # module attributes mypy cannot know
    vars(tr).update(functional=fn)
    vars(tv).update(transforms=tr)
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})


def available_methods() -> dict[str, str]:
    """method -> '' when usable, else why not."""
    out = {"tiltflow core": "", "tiltflow step": "", "tiltflow step (motion only)": ""}
    try:
        _shim_torchvision()
        import torch_ctf_estimation  # noqa: F401
        import torch_motion_correction  # noqa: F401

        out["teamtomo"] = ""
    except ImportError as err:
        out["teamtomo"] = f"not installed ({err.name})"
    out["relion"] = "" if shutil.which("relion_run_motioncorr") else "relion_run_motioncorr not on PATH"
    return out


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Dataset:
    root: Path
    series: dict
    gain: np.ndarray
    size: tuple[int, int]  # (nx, ny)

    def movie(self, i: int) -> Path:
        return self.root / self.series["tilts"][i]["movie"]


def ensure_dataset(root: Path, size: tuple[int, int], n_tilts: int, step_deg: float, seed: int = 1) -> Dataset:
    from tiltflow.io.gain import read_gain
    from tiltflow.testing.demo import DemoConfig, write_demo_dataset

    cfg = DemoConfig(
        n_series=1,
        n_tilts=n_tilts,
        tilt_step_deg=step_deg,
        size=size,
        n_frames=FRAMES,
        pixel_size_a=PIXEL_A,
        dose_per_tilt_e_a2=DOSE_E_A2,
        seed=seed,
    )
    truth_file = root / "truth.json"
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}
    if not (truth_file.is_file() and json.loads(truth_file.read_text())["config"] == want):
        print(f"simulating {n_tilts} movies of {size[0]} x {size[1]} x {FRAMES} in {root} ...", flush=True)
        write_demo_dataset(root, cfg, force=True)
    gain = read_gain(root / "gain_ref.gain")
    mrc = root / "gain_relion.mrc"
    if not mrc.is_file():
        import mrcfile

        with mrcfile.new(mrc, overwrite=True) as m:
            m.set_data(gain.astype(np.float32))
    return Dataset(root, json.loads(truth_file.read_text())["series"][0], gain, size)


def grid_points(size: tuple[int, int]) -> torch.Tensor:
    """(P, 2) x, y raw pixel positions: centres of a GRID_POINTS x GRID_POINTS tiling."""
    nx, ny = size
    c = (torch.arange(GRID_POINTS, dtype=torch.float64) + 0.5) / GRID_POINTS
    yy, xx = torch.meshgrid(c * ny, c * nx, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)


def true_displacements(tilt: dict, size: tuple[int, int], points: torch.Tensor) -> np.ndarray:
    """(t, P, 2): where a feature at each point of the sum lies in each frame, minus the point."""
    from tiltflow.testing.detector import local_displacement_px

    shifts = torch.tensor(tilt["frame_shifts_px"], dtype=torch.float64)
    out = shifts[:, None, :].expand(-1, points.shape[0], -1).clone()
    local = tilt.get("local_motion")
    if local:
        coef = torch.tensor(local["coefficients_px"], dtype=torch.float64)
        for f, w in enumerate(local["frame_weights"]):
            out[f] += local_displacement_px(
                points, coefficients_px=coef, frame_weight=w, image_shape=(size[1], size[0])
            )
    return out.numpy()


# --- methods: each returns {"seconds": {...}, "disp": (t, P, 2) or None, "ctf": {...} or None} ----


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _ctf_truth_free_params():
    from tiltflow.core.ctf import CtfParams

    return CtfParams(
        pixel_size_a=PIXEL_A,
        window_px=WINDOW_PX,
        resolution_range_a=CTF_RANGE_A,
        defocus_range_um=DEFOCUS_RANGE_UM,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
    )


def clean_frames(raw: np.ndarray, gain: np.ndarray, device: str) -> torch.Tensor:
    from tiltflow.core.defects import suppress_bright_outliers
    from tiltflow.core.motion import prepare_frames

    frames = prepare_frames(torch.from_numpy(raw).to(device), gain=gain)
    return suppress_bright_outliers(frames)


def run_tiltflow_core(ds: Dataset, i: int, raw: np.ndarray, points: torch.Tensor, device: str) -> dict:
    from tiltflow.core.ctf import fit_ctf
    from tiltflow.core.motion import align_and_sum, estimate_global_shifts, estimate_local_motion

    tilt = ds.series["tilts"][i]
    _sync(device)
    t0 = time.perf_counter()
    frames = clean_frames(raw, ds.gain, device)
    shifts = estimate_global_shifts(frames, pixel_size_a=PIXEL_A, fit_range_a=FIT_RANGE_A, bfactor_a2=BFACTOR_A2)
    motion = estimate_local_motion(frames, shifts, pixel_size_a=PIXEL_A, fit_range_a=FIT_RANGE_A, bfactor_a2=BFACTOR_A2)
    summed = align_and_sum(frames, motion, even_odd=True)
    _sync(device)
    t1 = time.perf_counter()
    fit = fit_ctf(
        summed.total,
        _ctf_truth_free_params(),
        tilt_angle_deg=tilt["mdoc_tilt_angle_deg"],
        tilt_axis_deg=ds.series["mdoc_tilt_axis_deg"],
    )
    _sync(device)
    t2 = time.perf_counter()
    f = torch.arange(raw.shape[0])[:, None].expand(-1, points.shape[0])
    disp = motion.shifts_at(f, points[:, 0].float().to(device), points[:, 1].float().to(device))
    return {
        "seconds": {"motion": t1 - t0, "ctf": t2 - t1},
        "disp": disp.double().cpu().numpy(),
        "local": True,
        "ctf": {"u": fit.defocus_u_a, "v": fit.defocus_v_a, "angle": fit.astigmatism_angle_deg},
    }


def run_tiltflow_step(ds: Dataset, i: int, points: torch.Tensor, device: str, *, with_ctf: bool) -> dict:
    from _simulated_tasks import simulated_movie_task

    from tiltflow.workflow.steps.motion_ctf import MotionCtfParams
    from tiltflow.workflow.steps.motion_tasks import MovieSetup, motion_movie_task

    # the tutorial's command line (issue #3), CTF alone switched by with_ctf
    p = MotionCtfParams(
        binning=1,
        fit_range_a=FIT_RANGE_A,
        bfactor_a2=BFACTOR_A2,
        even_odd=True,
        eer_groups=16,
        estimate_ctf=with_ctf,
        window_px=WINDOW_PX,
        ctf_range_a=CTF_RANGE_A,
        defocus_range_um=DEFOCUS_RANGE_UM,
        defocus_grid=(2, 2, 8),
        fit_phase=False,
        use_movie_average=False,
    )
    with tempfile.TemporaryDirectory(dir=ds.root) as out:
        _sync(device)
        t0 = time.perf_counter()
        setup = MovieSetup(params=p, gain=str(ds.root / "gain_ref.gain"), dark=None, device=device)
        r = motion_movie_task(simulated_movie_task(ds.series, i, str(ds.movie(i)), setup, out_dir=out))
        _sync(device)
        seconds = time.perf_counter() - t0
    shifts = np.asarray(r.shifts_px, dtype=np.float64)
    ctf = None
    if with_ctf and r.ctf is not None:
        c = r.ctf
        ctf = {"u": c.defocus_u_a, "v": c.defocus_v_a, "angle": c.astigmatism_angle_deg}
    return {"seconds": {"total": seconds}, "disp": np.repeat(shifts[:, None], points.shape[0], 1), "ctf": ctf}


def _teamtomo_field_px(field, t: int, points: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(t, P, 2) x, y px of a teamtomo DeformationField (Å, y/x channels, normalised t, y, x)."""
    nx, ny = size
    tt = torch.linspace(0, 1, t, dtype=torch.float32)[:, None].expand(-1, points.shape[0])
    yy = (points[:, 1] / (ny - 1)).float()[None].expand(t, -1)
    xx = (points[:, 0] / (nx - 1)).float()[None].expand(t, -1)
    tyx = torch.stack([tt, yy, xx], -1).to(field.device)
    with torch.no_grad():
        yx = field(tyx).double().cpu() / PIXEL_A
    return yx.flip(-1).numpy()


def run_teamtomo(ds: Dataset, i: int, raw: np.ndarray, points: torch.Tensor, device: str) -> dict:
    _shim_torchvision()
    from torch_ctf_estimation import CTFFittingParams, OpticalParams, estimate_ctf
    from torch_motion_correction import (
        FourierFilterConfig,
        OptimizationConfig,
        PatchSamplingConfig,
        correct_motion,
        estimate_global_motion,
        estimate_local_motion,
    )

    from tiltflow.core.motion import automatic_grid

    frames = clean_frames(raw, ds.gain, device)  # the same cleaned frames tiltflow aligns; not timed
    t, h, w = frames.shape
    nx_ctrl, ny_ctrl, _ = automatic_grid((h, w), t)  # the control points tiltflow's automatic grid uses
    patch = 1024 if min(h, w) >= 2048 else 512
    filt = FourierFilterConfig(b_factor=-BFACTOR_A2, frequency_range=(300.0, 10.0))
    _sync(device)
    t0 = time.perf_counter()
    glob = estimate_global_motion(frames, pixel_spacing=PIXEL_A, fourier_filter=filt, device=torch.device(device))
    _sync(device)
    t_glob = time.perf_counter()
    field, _ = estimate_local_motion(
        frames,
        PIXEL_A,
        deformation_field_resolution=(t, ny_ctrl, nx_ctrl),
        patch_sampling=PatchSamplingConfig(patch_shape=(patch, patch), overlap=0.5),
        initial_deformation_field=glob,
        fourier_filter=filt,
        optimization=OptimizationConfig(max_iterations=100, optimizer_type="adam", optimizer_kwargs={"lr": 0.2}),
        device=torch.device(device),
    )
    total = correct_motion(frames, field, pixel_spacing=PIXEL_A, device=torch.device(device)).sum(0)
    _sync(device)
    t1 = time.perf_counter()
    _, _, r2 = estimate_ctf(
        total,
        OpticalParams(
            pixel_spacing_angstroms=PIXEL_A,
            voltage_kev=300.0,
            spherical_aberration_mm=2.7,
            amplitude_contrast_fraction=0.07,
        ),
        CTFFittingParams(
            defocus_grid_resolution=(1, 2, 2),
            frequency_fit_range_angstroms=CTF_RANGE_A,
            defocus_range_microns=DEFOCUS_RANGE_UM,
            patch_sidelength=WINDOW_PX,
        ),
        device=torch.device(device),
    )
    _sync(device)
    t2 = time.perf_counter()
    mean_a = 0.5 * (r2.defocus_u + r2.defocus_v) * 1e4
    astig_a = abs(r2.astigmatism) * 1e4  # torch-ctf: U, V = mean ± astigmatism
    angle = r2.astigmatism_angle + (90.0 if r2.astigmatism < 0 else 0.0)
    xc = glob.data[:, :, 0, 0].T.flip(-1).double().cpu().numpy() / PIXEL_A  # (t, 2) x, y px
    return {
        "seconds": {"motion": t1 - t0, "ctf": t2 - t1, "global": t_glob - t0},
        "disp": _teamtomo_field_px(field, t, points, ds.size),
        "local": True,
        "xc": np.repeat(xc[:, None], points.shape[0], 1),
        "ctf": {"u": mean_a + astig_a, "v": mean_a - astig_a, "angle": angle},
    }


def _relion_patches(size: tuple[int, int]) -> tuple[int, int]:
    return (5, 5) if min(size) >= 2048 else (4, 3)


def run_relion(ds: Dataset, i: int, points: torch.Tensor) -> dict:
    movie = ds.movie(i)
    s = ds.series
    with tempfile.TemporaryDirectory(dir=ds.root) as tmp_name:
        tmp = Path(tmp_name)
        star = tmp / "movies.star"
        star.write_text(
            "\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
            "_rlnMicrographOriginalPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n"
            f"_rlnAmplitudeContrast #6\nopticsGroup1 1 {PIXEL_A} {s['voltage_kv']} {s['cs_mm']} "
            f"{s['amplitude_contrast']}\n\n\ndata_movies\n\nloop_\n_rlnMicrographMovieName #1\n"
            f"_rlnOpticsGroup #2\n{movie} 1\n"
        )
        px, py = _relion_patches(ds.size)
        cmd = [
            "relion_run_motioncorr",
            "--i",
            str(star),
            "--o",
            str(tmp / "out") + "/",
            "--use_own",
            "--j",
            "1",
            "--bin_factor",
            "1",
            "--bfactor",
            "150",
            "--angpix",
            str(PIXEL_A),
            "--voltage",
            str(s["voltage_kv"]),
            "--dose_per_frame",
            str(s["dose_per_frame_e_a2"]),
            "--preexposure",
            str(s["tilts"][i]["prior_dose_e_a2"]),
            "--patch_x",
            str(px),
            "--patch_y",
            str(py),
            "--gainref",
            str(ds.root / "gain_relion.mrc"),
            "--gain_rot",
            "0",
            "--gain_flip",
            "1",
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=tmp)
        seconds = time.perf_counter() - t0
        out = list((tmp / "out").rglob(f"{movie.stem.replace('.', '_')}.star"))
        if done.returncode or not out:
            raise RuntimeError(
                f"relion_run_motioncorr failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}"
            )
        shifts = _relion_global_shifts(out[0])
    shifts = shifts * np.array([-1.0, 1.0])  # RELION: the shift that aligns the frame, y of the flipped TIFF
    return {"seconds": {"motion": seconds}, "disp": np.repeat(shifts[:, None], points.shape[0], 1), "ctf": None}


def _relion_global_shifts(path: Path) -> np.ndarray:
    import starfile

    table = starfile.read(path, always_dict=True)["global_shift"]
    return table[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=np.float64)


# --- accuracy ---------------------------------------------------------------------------------


def trajectory_errors(est: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(global, local) RMS error px of (t, P, 2) displacements, each mean-subtracted over frames."""
    g_est, g_true = est.mean(1), truth.mean(1)
    g = (g_est - g_est.mean(0)) - (g_true - g_true.mean(0))
    loc = (est - est.mean(0)) - (truth - truth.mean(0))
    return float(np.sqrt((g**2).sum(-1).mean())), float(np.sqrt((loc**2).sum(-1).mean()))


def ctf_errors(ctf: dict, tilt: dict) -> dict:
    true_mean = 0.5 * (tilt["defocus_u_a"] + tilt["defocus_v_a"])
    true_astig = tilt["defocus_u_a"] - tilt["defocus_v_a"]
    d_angle = (ctf["angle"] - tilt["astigmatism_angle_deg"] + 90.0) % 180.0 - 90.0
    return {
        "defocus": 0.5 * (ctf["u"] + ctf["v"]) - true_mean,
        "astig": abs(ctf["u"] - ctf["v"]) - true_astig,
        "angle": d_angle,
        "true_astig": true_astig,
    }


# Results: {method: {"seconds": {part: [s, ...]}, "tilts": {acquisition index: {...}}, "note": str}}


def _slot(results: dict, name: str) -> dict:
    return results.setdefault(name, {"seconds": {}, "tilts": {}, "note": ""})


def add_seconds(results: dict, name: str, r: dict) -> None:
    for k, v in r["seconds"].items():
        if k != "global":
            _slot(results, name)["seconds"].setdefault(k, []).append(v)
    if "global" in r["seconds"]:  # teamtomo's cross-correlation pre-pass, timed inside its run
        # (its CPU time is not measured apart)
        _slot(results, "teamtomo (global XC only)")["seconds"].setdefault("motion", []).append(r["seconds"]["global"])


def add_accuracy(results: dict, name: str, r: dict, tilt: dict, i: int, truth: np.ndarray) -> None:
    g, loc = trajectory_errors(r["disp"], truth)
    entry = {
        "tilt": tilt["nominal_tilt_angle_deg"],
        "global": g,
        "local": loc if r.get("local") else None,
        "ctf": ctf_errors(r["ctf"], tilt) if r.get("ctf") else None,
        "seconds": r["seconds"],
    }
    _slot(results, name)["tilts"][str(i)] = entry
    if "xc" in r:
        xc = _slot(results, "teamtomo (global XC only)")
        g, _ = trajectory_errors(r["xc"], truth)
        xc["tilts"][str(i)] = {"tilt": tilt["nominal_tilt_angle_deg"], "global": g, "local": None, "ctf": None}
        integral = bool(np.allclose(r["xc"], np.round(r["xc"]), atol=1e-4))
        if xc["note"] != "non-integer shifts seen":
            xc["note"] = "whole-pixel shifts" if integral else "non-integer shifts seen"


# --- running ------------------------------------------------------------------------------------


def run_one(name: str, ds: Dataset, i: int, raw: np.ndarray, points: torch.Tensor, device: str) -> dict:
    """One method on one movie; adds ``seconds["cpu"]``: CPU time of this process and its children
    (RELION) for the whole call, which a loaded machine does not inflate as it does wall time."""

    def cpu() -> float:
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + child.ru_utime + child.ru_stime

    c0 = cpu()
    r = _dispatch(name, ds, i, raw, points, device)
    r["seconds"]["cpu"] = cpu() - c0
    return r


def _dispatch(name: str, ds: Dataset, i: int, raw: np.ndarray, points: torch.Tensor, device: str) -> dict:
    if name == "tiltflow core":
        return run_tiltflow_core(ds, i, raw, points, device)
    if name == "tiltflow step":
        return run_tiltflow_step(ds, i, points, device, with_ctf=True)
    if name == "tiltflow step (motion only)":
        return run_tiltflow_step(ds, i, points, device, with_ctf=False)
    if name == "teamtomo":
        return run_teamtomo(ds, i, raw, points, device)
    if name == "relion":
        return run_relion(ds, i, points)
    raise ValueError(name)


def warm_up(ds: Dataset, methods: list[str], i: int, raw: np.ndarray, device: str) -> None:
    """Imports, allocators, FFT plans: in-memory methods on a 1024 px crop, the step on the file."""
    c = min(1024, *ds.size)
    crop = Dataset(ds.root, ds.series, ds.gain[:c, :c], (c, c))
    points = grid_points(crop.size)
    for name in methods:
        if name in ("tiltflow core", "teamtomo"):
            run_one(name, crop, i, np.ascontiguousarray(raw[:, :c, :c]), points, device)
        elif name.startswith("tiltflow step"):
            run_one(name, ds, i, raw, grid_points(ds.size), device)


def benchmark_size(
    ds: Dataset, methods: list[str], repeats: int, device: str, accuracy_tilts: int | None, accuracy_from: int = 0
) -> dict:
    """Timing on the movie nearest 0° (``repeats`` rounds, methods interleaved); accuracy on the tilts
    ``accuracy_from`` to ``accuracy_from + accuracy_tilts`` in the order of |tilt| (None: to the end)."""
    from tiltflow.io.movies import read_movie_frames

    points = grid_points(ds.size)
    tilts = ds.series["tilts"]
    order = sorted(range(len(tilts)), key=lambda k: (abs(tilts[k]["nominal_tilt_angle_deg"]), k))
    results: dict = {}
    if repeats:
        i = order[0]
        raw = read_movie_frames(ds.movie(i))
        truth = true_displacements(tilts[i], ds.size, points)
        warm_up(ds, methods, i, raw, device)
        for rep in range(repeats):  # methods interleaved, so that load changes hit them alike
            for name in methods:
                r = run_one(name, ds, i, raw, points, device)
                add_seconds(results, name, r)
                if rep == 0:
                    add_accuracy(results, name, r, tilts[i], i, truth)
            print(f"  timing round {rep + 1}/{repeats} done", flush=True)
    todo = order[accuracy_from:] if accuracy_tilts is None else order[accuracy_from : accuracy_from + accuracy_tilts]
    for i in todo:
        if all(str(i) in results.get(name, {}).get("tilts", {}) for name in methods):
            continue
        raw = read_movie_frames(ds.movie(i))
        truth = true_displacements(tilts[i], ds.size, points)
        for name in methods:
            add_accuracy(results, name, run_one(name, ds, i, raw, points, device), tilts[i], i, truth)
        print(f"  accuracy: tilt {tilts[i]['nominal_tilt_angle_deg']:+.0f}° done", flush=True)
    return results


def merge(into: dict, other: dict) -> None:
    """Runs of the same size and method: timings appended, per-tilt accuracy united."""
    for name, res in other.items():
        slot = _slot(into, name)
        for k, v in res["seconds"].items():
            slot["seconds"].setdefault(k, []).extend(v)
        slot["tilts"].update(res["tilts"])
        if res["note"] and slot["note"] != "non-integer shifts seen":
            slot["note"] = res["note"]


# --- tables -------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _median(xs) -> float | None:
    return float(np.median(xs)) if len(xs) else None


def _best(res: dict | None, part: str) -> float | None:
    """Minimum over the repeats of one part, or of motion + CTF per repeat for ``total``."""
    if res is None or not res["seconds"]:
        return None
    sec = res["seconds"]
    if part in sec:
        return min(sec[part])
    if part == "total":
        keys = [k for k in ("motion", "ctf") if k in sec]
        return min(sum(sec[k][r] for k in keys) for r in range(min(len(sec[k]) for k in keys)))
    return None


def _size(text: str) -> tuple[int, int]:
    """``'HxW'`` -> (H, W) px."""
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None where either is missing."""
    return value / reference if value and reference else None


def print_tables(size: str, results: dict, device: str) -> None:
    core, step_motion = results.get("tiltflow core"), results.get("tiltflow step (motion only)")
    print(f"\n### {size.replace('x', ' x ')} x {FRAMES} movies, {PIXEL_A} Å/px, {DOSE_E_A2} e/Å² per tilt, {device}")
    print(
        "Seconds per movie: wall time, the minimum over the repeats (n); CPU s: CPU time of the whole call"
        " (process + children, min), which load does not inflate. Ratio (wall) = method / tiltflow core (both"
        " in memory); for RELION (file to file, decode included) / tiltflow step (motion only)."
    )
    print("| method | n | motion s | CTF s | total s | CPU s | ratio motion | ratio CTF | ratio total |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, res in results.items():
        if not res["seconds"]:
            continue
        m, c, tot = _best(res, "motion"), _best(res, "ctf"), _best(res, "total")
        n = max(len(v) for v in res["seconds"].values())
        ratios: list[float | None] = [None, None, None]
        if name == "relion":
            ref = _best(step_motion, "total")
            ratios = [m / ref, None, m / ref] if ref and m else ratios
        elif not name.startswith("tiltflow") and _best(core, "motion"):
            ratios = [
                _ratio(m, _best(core, "motion")),
                _ratio(c, _best(core, "ctf")),
                _ratio(tot, _best(core, "total")) if c else None,
            ]
        print(
            f"| {name} | {n} | {_fmt(m)} | {_fmt(c)} | {_fmt(tot)} | {_fmt(_best(res, 'cpu'))} | "
            + " | ".join(_fmt(r, 1) for r in ratios)
            + " |"
        )
    print(
        "\nAccuracy against truth.json: trajectories mean-subtracted, RMS px over frames (global: grid mean;"
        " local: per grid point); CTF errors |estimate - truth| in Å, medians over tilts"
    )
    print(
        "| method | tilts | global RMS px median / max | local RMS px median | |Δdefocus| <=30° | "
        "|Δdefocus| >30° | |Δastig| (astig > 300 Å) | |Δangle| ° (astig > 300 Å) | note |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, res in results.items():
        t = list(res["tilts"].values())
        if not t:
            continue
        glob = [e["global"] for e in t]
        local = [e["local"] for e in t if e["local"] is not None]
        ctf = [(e["tilt"], e["ctf"]) for e in t if e["ctf"]]
        low = [abs(c["defocus"]) for a, c in ctf if abs(a) <= 30]
        high = [abs(c["defocus"]) for a, c in ctf if abs(a) > 30]
        ast = [c for _, c in ctf if c["true_astig"] > 300]
        n_ctf = f" ({len(low)} + {len(high)} CTF)" if ctf else ""
        print(
            f"| {name} | {len(t)}{n_ctf} | {_fmt(_median(glob), 3)} / {_fmt(max(glob), 3)} | "
            f"{_fmt(_median(local), 3)} | {_fmt(_median(low), 0)} | {_fmt(_median(high), 0)} | "
            f"{_fmt(_median([abs(c['astig']) for c in ast]), 0)} | "
            f"{_fmt(_median([abs(c['angle']) for c in ast]), 1)} | {res['note']} |"
        )


def _uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="quick run: 1440 x 1024, 5 tilts, 1 timing round")
    ap.add_argument("--sizes", nargs="+", default=["1440x1024", "4096x4096"], help="NXxNY movie sizes")
    ap.add_argument("--full-size", action="store_true", help="also one 5760 x 4092 x 8 movie (decode included)")
    ap.add_argument("--repeats", type=int, default=3, help="timing rounds (0: accuracy only)")
    ap.add_argument("--accuracy-tilts", type=int, default=None, help="tilts per size for accuracy (default all)")
    ap.add_argument(
        "--accuracy-from",
        type=int,
        default=0,
        help="skip this many tilts (in the order of |tilt|) for accuracy: to split a long run",
    )
    ap.add_argument("--methods", nargs="+", default=None, help="subset of the methods (names as printed)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "tiltflow-bench-motion-ctf")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here")
    ap.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="print the tables of earlier --json files merged (timings appended), run nothing",
    )
    args = ap.parse_args()

    if args.report:
        merged: dict = {}
        for f in args.report:
            run = json.loads(f.read_text())
            print(f"{f.name}: {run['environment']}; {run['uptime'][0]} ... {run['uptime'][1]}")
            for size, res in run["sizes"].items():
                merge(merged.setdefault((size, run["device"]), {}), res)
        for (size, device), res in merged.items():
            print_tables(size, res, device)
        return

    from tiltflow.workflow.device import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    usable = available_methods()
    methods = [m for m, why in usable.items() if not why and (args.methods is None or m in args.methods)]
    sizes = [_size(s) for s in args.sizes]
    if args.small:
        sizes, args.repeats = [(1440, 1024)], 1
    if args.full_size:
        sizes.append((5760, 4092))
    environment = f"torch {torch.__version__}, {args.threads} thread(s), device {device}" + (
        f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""
    )
    uptime = [_uptime()]
    print(f"uptime: {uptime[0]}\n{environment}")
    for m, why in usable.items():
        if why:
            print(f"skipped {m}: {why}")
    out = {"environment": environment, "device": device, "uptime": uptime, "sizes": {}}
    for size in sizes:
        n_tilts, step = SMALL_PLAN if args.small else PLANS.get(size, (5, 15.0))
        ds = ensure_dataset(args.data / f"{size[0]}x{size[1]}_{n_tilts}", size, n_tilts, step)
        print(f"benchmarking {size[0]} x {size[1]}: {', '.join(methods)}", flush=True)
        results = benchmark_size(ds, methods, args.repeats, device, args.accuracy_tilts, args.accuracy_from)
        out["sizes"][f"{size[0]}x{size[1]}"] = results
        print_tables(f"{size[0]}x{size[1]}", results, device)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    uptime.append(_uptime())
    print(f"\nuptime: {uptime[1]}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
