"""How far the motion oracle of the accuracy matrix is from what the data allow (issue 11, item 2).

The matrix's motion oracle registers each frame to its own *noise-free* image. An estimator has no
such image: its reference is built from the other frames, whose noise correlates with nothing but
adds a noise x noise term to every cross-correlation — at 0.5-3 e/px/frame the dominant one. This
script prints, per scenario of the matrix (same draws, same simulated movies), three RMS trajectory
errors (px, pooled over the views that are not dark):

- ``noise-free oracle``: each frame registered to its noise-free image (the matrix's oracle);
- ``data-reference floor``: each frame registered to the sum of the *other* frames placed at their
  true positions — what per-frame registration could reach if every other frame were perfectly
  aligned — weighted as the motion step's fit weights the frames (``motion_xcorr.fit_weights``:
  500-10 Å with cosine edges, B = -500 Å^2);
- ``ours``: the motion-ctf step's task (its defaults), as the matrix runs it.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/motion_reference_floor.py [--quick] [--scenarios 3,10,11]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_matrix  # noqa: E402
from _matrix_run import Session  # noqa: E402
from _matrix_truth import clean_movie_and_oracle, register_to_template, trajectory_sq_errors  # noqa: E402

from tiltflow.core.fourier import shift_image_2d  # noqa: E402
from tiltflow.core.frames import prepare_frames  # noqa: E402
from tiltflow.core.motion_xcorr import fit_weights, frequency_vectors  # noqa: E402

FIT_RANGE_A, BFACTOR_A2 = (500.0, 10.0), -500.0


def reference_floor(frames: torch.Tensor, true_px: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """(t, 2) shifts of each frame registered to the other frames at their true positions (truth 0),
    both weighted as the motion fit weights them (``motion_xcorr.fit_weights``)."""
    t, h, w = frames.shape
    placed = shift_image_2d(frames, -torch.as_tensor(true_px, dtype=frames.dtype))  # to the sum's frame
    ky, kx = frequency_vectors((h, w), (1.0, 1.0))
    weights = fit_weights(ky, kx, pixel_size_a=pixel_size_a, fit_range_a=FIT_RANGE_A, bfactor_a2=BFACTOR_A2)
    placed = torch.fft.irfft2(torch.fft.rfft2(placed) * weights.to(placed.dtype), s=(h, w))
    total = placed.sum(0)
    return np.asarray([register_to_template(placed[k], total - placed[k]) for k in range(t)])


def measure(ses: Session) -> tuple[float, float, float]:
    """(noise-free oracle, data-reference floor, ours) RMS px of one scenario's movies."""
    gain = torch.from_numpy(ses.gain.astype(np.float32))
    oracle, floor, ours = [], [], []
    for i, t in enumerate(ses.series["tilts"]):
        if i in ses.dark:
            continue
        true = np.asarray(t["frame_shifts_px"], dtype=np.float64)
        true -= true.mean(0)
        clean, shifts = clean_movie_and_oracle(ses.series, i, ses.gain)
        oracle.append(trajectory_sq_errors(shifts, np.zeros_like(true)))
        frames = prepare_frames(torch.from_numpy(clean.astype(np.float32)), gain=gain).double()  # no hot pixels
        floor.append(trajectory_sq_errors(reference_floor(frames, true, ses.sc.pixel_size_a), np.zeros_like(true)))
        result = ses.movie_task(i, str(ses.root / "data" / t["movie"]), ses.params["motion"], str(ses.root / "out"))
        ours.append(trajectory_sq_errors(np.asarray(result.shifts_px), true))
    rms = [float(np.sqrt(np.concatenate(x).mean())) for x in (oracle, floor, ours)]
    return rms[0], rms[1], rms[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the matrix's 3 quick scenarios (256² movies)")
    ap.add_argument("--scenarios", default=None, help="comma-separated indices (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = 3 if args.quick else 12
    scenarios = accuracy_matrix.matrix_scenarios(n, args.seed, args.quick)
    picked = [int(s) for s in args.scenarios.split(",")] if args.scenarios else range(len(scenarios))
    head = ("", "frames", "e/px/fr", "Å/px", "noise-free oracle", "data-ref floor", "ours")
    print("{:4s} {:>6s} {:>7s} {:>5s} {:>17s} {:>14s} {:>6s}".format(*head))
    with tempfile.TemporaryDirectory() as tmp:
        for k in picked:
            sc = scenarios[k]
            ses = Session(sc, Path(tmp) / sc.name)
            oracle, floor, ours = measure(ses)
            print(
                f"{sc.name:4s} {sc.n_frames:6d} {sc.dose_e_px_frame:7.2f} {sc.pixel_size_a:5.2f} "
                f"{oracle:17.3f} {floor:14.3f} {ours:6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
