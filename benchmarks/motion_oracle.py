"""Motion accuracy against an oracle, across acquisition conditions (issue 11, item 2).

``python benchmarks/motion_oracle.py [--size 1440x1024] [--pixel 1.38 2.76] [--dose 0.5 0.7 1.5 3]
[--frames 8 20] [--tilts 0 60] [--seeds 1] [--quick] [--device cpu|cuda]``

Movies are simulated with the project's simulator pieces (``testing.phantom`` specimen with
vesicles, blobs, beads and amorphous-ice texture; ``testing.imaging.render_tilt_image`` at the tilt,
with the damage of the dose a dose-symmetric scheme has given before that tilt, so contrast falls at
high tilt; ``testing.detector`` gain and hot pixels), but with a motion model of their own:
beam-induced motion fast in the first frames and decaying, plus linear drift, plus per-frame jitter.
``dose`` is the detected counts per pixel per frame (e/px/frame) after the ice.

Per movie three trajectories are scored as the RMS over frames of the 2-D error of the mean-zero
trajectory (px):

- ``ours``: ``core.motion.estimate_motion`` as the motion-ctf step calls it (fit range 500-10 Å,
  B -500 Å², automatic grid), the total shift evaluated on an 8 x 8 grid of points (truth:
  global);
- ``global``: the same with ``grid=(1, 1, 1)`` (``--motion-grid 1 1 1``);
- ``oracle``: each (outlier-cleaned, gain-corrected) frame aligned to its own noise-free image at
  zero shift by full-resolution cross-correlation and Newton refinement of the continuous Fourier
  cross-correlation (the matched filter for white counting noise): the noise floor of per-frame
  estimation; ``or@fit``: the same restricted to the fit range (what the band alone allows).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import tiltflow  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tiltflow.core import motion_xcorr as mx
from tiltflow.core.defects import find_bright_outliers
from tiltflow.core.motion import estimate_motion
from tiltflow.testing import detector
from tiltflow.testing.imaging import ImageCtf, ImageExposure, TiltView, render_tilt_image
from tiltflow.testing.phantom import SpecimenContents, make_specimen

MARGIN = 48
FIELD_NM = 200.0  # field width used to scale object counts (pixel-size independent density)


def trajectory_px(t: int, rng: np.random.Generator, *, jitter_px: float = 0.05) -> np.ndarray:
    """(t, 2) mean-zero: decaying beam-induced motion + linear drift + per-frame jitter."""
    f = np.arange(t, dtype=np.float64)
    tau = rng.uniform(0.08, 0.3) * t  # frames; fast in the first part of the exposure
    jump = rng.uniform(1.0, 4.0) * (1.0 - np.exp(-f / tau))
    a1, a2 = rng.uniform(0, 2 * np.pi, 2)
    drift = rng.uniform(0.3, 1.2) * f / max(t - 1, 1)  # px over the whole movie
    path = jump[:, None] * [math.cos(a1), math.sin(a1)] + drift[:, None] * [math.cos(a2), math.sin(a2)]
    path = path + rng.normal(0.0, jitter_px, (t, 2))
    return path - path.mean(axis=0)


def tilt_canvas(shape, pixel_size_a, tilt_deg, seed, device):
    """Noise-free image (ny + 2M, nx + 2M), mean 1, of a 150 nm specimen at ``tilt_deg``."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    area = (nx * pixel_size_a / 10) * (ny * pixel_size_a / 10) / FIELD_NM**2  # per (200 nm)^2
    # the demo's density: 12 beads, 2 vesicles, 150 blobs per 512^2 at 2.76 Å (141 nm)^2
    per = area * (FIELD_NM / 141.3) ** 2
    spec = make_specimen(
        rng,
        SpecimenContents(
            bead_diameter_nm=10.0, n_beads=max(1, round(6 * per)), n_vesicles=round(2 * per), n_blobs=round(150 * per)
        ),
        image_shape=shape,
        pixel_size_a=pixel_size_a,
        ice_thickness_nm=150.0,
        max_tilt_deg=abs(tilt_deg),
    )
    prior = abs(tilt_deg) / 3.0 * 3.0  # e/Å²: a dose-symmetric scheme, 3° steps, 3 e/Å² each
    img = render_tilt_image(
        spec,
        TiltView(tilt_angle_deg=tilt_deg, tilt_axis_deg=85.0, image_shape=shape, margin_px=MARGIN),
        ImageCtf(defocus_u_a=36000.0, defocus_v_a=34000.0, astigmatism_angle_deg=30.0),
        ImageExposure(exposure_e_a2=prior + 1.5, ice_texture_rad=0.15, texture_seed=seed),
        pixel_size_a=pixel_size_a,
        device=device,
    )
    return img / img.mean()


def simulate(canvas, shape, t, dose_px, seed):
    """Gain-corrected frames (t, h, w), true shifts (t, 2), noise-free zero-shift image (h, w)."""
    rng = np.random.default_rng(seed)
    truth = trajectory_px(t, rng)
    gain = detector.make_gain(shape, rng)
    hot = detector.make_hot_pixels(shape, rng, n=4)
    frames = torch.empty((t, *shape), dtype=torch.float32)
    for i in range(t):
        clean = detector.move_frame(canvas, tuple(truth[i]), margin_px=MARGIN, image_shape=shape)
        expected = (clean * dose_px).cpu().numpy()
        raw = detector.count_frame(expected, gain, rng, frame_index=i, hot_pixels=hot, xray_hits=[])
        frames[i] = torch.from_numpy((raw * gain).astype(np.float32))
    ref = canvas[MARGIN:-MARGIN, MARGIN:-MARGIN] * dose_px
    return frames.to(canvas.device), torch.tensor(truth, dtype=torch.float32), ref


def oracle_shifts(frames, ref, pixel_size_a=None, fit_range_a=None):
    """Each frame aligned to the noise-free ``ref`` (h, w): (t, 2) px, mean zero. With
    ``fit_range_a`` (low, high) Å only that band is used (cosine edges, as ours)."""
    t, h, w = frames.shape
    dev = frames.device
    outliers = find_bright_outliers(frames)
    taper = mx.edge_taper((h, w), device=dev)
    fr = torch.fft.rfft2((ref - ref.mean()) * taper)
    ky, kx = mx.frequency_vectors((h, w), (1.0, 1.0), device=dev)
    if fit_range_a is not None:
        fr = fr * mx.fit_weights(ky, kx, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=0.0)
    herm = mx.hermitian_weights(w, device=dev)
    out = []
    for i in range(t):
        f = outliers.clean(frames[i], i, 0)
        cross = torch.fft.rfft2((f - f.mean()) * taper) * fr.conj()
        cc = torch.fft.irfft2(cross, s=(h, w))
        start = mx._coarse_peaks(cc, (h / 4, w / 4))
        s, _, _ = mx._newton(cross, ky, kx, start, herm, torch.tensor([0.5, 0.5], device=dev), 6)
        out.append(s)
    s = torch.stack(out).cpu()
    return s - s.mean(0)


def rms_px(a, b) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(((a - b) ** 2).sum(-1).mean().sqrt())


def trajectory_error(motion, truth, shape) -> float:
    """RMS error of the total shift on an 8 x 8 grid of points against a global ``truth``."""
    h, w = shape
    t = truth.shape[0]
    f = torch.arange(t, dtype=torch.float32)[:, None, None]
    ys = torch.linspace(0, h - 1, 8)[None, :, None]
    xs = torch.linspace(0, w - 1, 8)[None, None, :]
    f, ys, xs = torch.broadcast_tensors(f, ys, xs)
    est = motion.shifts_at(f.to(motion.grid.device), xs.to(motion.grid.device), ys.to(motion.grid.device)).cpu()
    est = est - est.mean(0, keepdim=True)
    err = est - (truth - truth.mean(0))[:, None, None, :]
    return float(err.square().sum(-1).mean().sqrt())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1440x1024")
    ap.add_argument("--pixel", type=float, nargs="+", default=[1.38, 2.76])
    ap.add_argument("--dose", type=float, nargs="+", default=[0.5, 0.7, 1.5, 3.0])
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 20])
    ap.add_argument("--tilts", type=float, nargs="+", default=[0.0, 30.0, 60.0])
    ap.add_argument("--seeds", type=int, default=1, help="movies per condition")
    ap.add_argument("--quick", action="store_true", help="1.38 Å, 0.5/0.7 e/px/frame, 8 frames")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--fit-range",
        type=float,
        nargs=2,
        default=[500.0, 10.0],
        help="fit_range_a passed to estimate_motion (the step's default: 500 10)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.pixel, args.dose, args.frames = [1.38], [0.5, 0.7], [8]
    nx, ny = (int(v) for v in args.size.lower().split("x"))
    shape = (ny, nx)
    dev = torch.device(args.device)
    fit = tuple(args.fit_range)
    print(
        f"motion vs oracle: {nx} x {ny}, device {dev}, fit range {fit} Å, RMS trajectory error "
        "px (ours = automatic grid, global = grid 1 1 1)"
    )
    print(
        f"{'px Å':>5} {'tilt':>5} {'e/px/fr':>7} {'frames':>6} | {'ours':>6} {'global':>6} "
        f"{'oracle':>6} {'or@fit':>6} | {'ours/or':>7} {'/or@fit':>7} {'time s':>6}"
    )
    rows = []
    for pixel in args.pixel:
        for tilt in args.tilts:
            canvas = tilt_canvas(shape, pixel, tilt, seed=int(tilt * 7 + pixel * 100), device=dev)
            for dose in args.dose:
                for t in args.frames:
                    errs = []
                    for k in range(args.seeds):
                        seed = int(1000 * pixel + 10 * dose + t + 97 * k + tilt)
                        frames, truth, ref = simulate(canvas, shape, t, dose, seed)
                        t0 = time.perf_counter()
                        ours = estimate_motion(frames, pixel_size_a=pixel, fit_range_a=fit)
                        dt = time.perf_counter() - t0
                        glob = estimate_motion(frames, pixel_size_a=pixel, fit_range_a=fit, grid=(1, 1, 1))
                        orc = oracle_shifts(frames, ref)
                        band = oracle_shifts(frames, ref, pixel, fit)
                        errs.append(
                            (
                                trajectory_error(ours, truth, shape),
                                rms_px(glob.global_shifts.cpu(), truth),
                                rms_px(orc, truth),
                                rms_px(band, truth),
                                dt,
                            )
                        )
                    e = np.sqrt(np.mean(np.square(errs), axis=0))
                    rows.append((pixel, tilt, dose, t, *e))
                    print(
                        f"{pixel:5.2f} {tilt:5.0f} {dose:7.2f} {t:6d} | {e[0]:6.3f} {e[1]:6.3f} "
                        f"{e[2]:6.3f} {e[3]:6.3f} | {e[0] / e[2]:7.2f} {e[0] / e[3]:7.2f} "
                        f"{np.mean([x[4] for x in errs]):6.1f}",
                        flush=True,
                    )
    a = np.array(rows)
    rms = np.sqrt(np.mean(a[:, 4:8] ** 2, axis=0))
    print(
        f"RMS over all: ours {rms[0]:.3f}  global {rms[1]:.3f}  oracle {rms[2]:.3f}  "
        f"oracle in the fit range {rms[3]:.3f}; worst ours/oracle {np.max(a[:, 4] / a[:, 6]):.2f}"
    )
    ok = a[:, 2] >= 0.5
    print(
        f"dose >= 0.5 e/px/frame: ours <= 0.15 px in {int((a[ok, 4] <= 0.15).sum())} of "
        f"{int(ok.sum())} conditions; ours <= 1.5 x oracle in "
        f"{int((a[:, 4] <= 1.5 * a[:, 6]).sum())} of {len(a)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
