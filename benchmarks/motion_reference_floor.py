"""How far the motion oracle of the accuracy matrix is from what the data allow (issue 11, item 2).

The matrix's motion oracle registers each frame to its own *noise-free* image. An estimator has no
such image: its reference is built from the other frames, whose noise correlates with nothing but
adds a noise x noise term to every cross-correlation — at 0.5-3 e/px/frame the dominant one. This
script prints, per scenario of the matrix (same draws, same simulated movies), RMS trajectory
errors (px, pooled over the views that are not dark; trajectories mean-subtracted):

- ``noise-free oracle``: each frame registered to its noise-free image (the matrix's oracle), and
  ``1.5x oracle``, the matrix's motion target;
- ``data-ref floor``: each frame of the movie without X-rays and hot pixels registered to the sum
  of the *other* frames placed at their true positions — what per-frame registration could reach if
  every other frame were perfectly aligned — as the estimator measures: the same binning, taper and
  fit band (``motion_xcorr.fit_weights``) and the same adaptive per-ring weights
  (``motion_xcorr.signal_weights``, here measured at the true positions), one Newton round of
  ``motion_xcorr.align_stack`` started at the truth, its (t - 1) / t step damping undone;
- ``ours raw``: the per-frame shifts the motion step measured in its last round, before the
  trajectory prior (the input of ``motion_global.smooth_trajectory``, recorded while it runs);
- ``best prior (truth)``: per movie, the posterior mean of that same input under the setting of the
  trajectory prior (``a^2`` over its grid, ``DECAYS``, ``JITTERS_PX2``, ``NOISE_SCALES``) whose
  result is closest to the truth — an oracle for the prior's model class, not an estimator;
- ``ours``: the motion-ctf step's task (its defaults), as the matrix runs it.

``ours raw`` and ``best prior`` pool only the movies aligned frame by frame; ``grouped`` counts the
movies the step aligned in groups of frames (``motion_checked``), left out of those two columns.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/motion_reference_floor.py [--quick] [--scenarios 3,10,11]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_matrix  # noqa: E402
from _matrix_run import TARGETS, Session  # noqa: E402
from _matrix_truth import clean_movie_and_oracle, trajectory_sq_errors  # noqa: E402

from tiltflow.core import motion_global  # noqa: E402
from tiltflow.core.frames import prepare_frames  # noqa: E402
from tiltflow.core.motion_global import (  # noqa: E402
    ACCELERATIONS_PX2,
    DECAYS,
    JITTERS_PX2,
    NOISE_SCALES,
    acceleration_variances,
    bin_movie,
    posterior_mean,
    second_differences,
)
from tiltflow.core.motion_xcorr import (  # noqa: E402
    SearchSchedule,
    SpectraGrid,
    align_stack,
    edge_taper,
    fit_weights,
    frequency_vectors,
)


def reference_floor(
    frames: torch.Tensor,
    true_px: np.ndarray,
    *,
    pixel_size_a: float,
    fit_range_a: tuple[float, float],
    bfactor_a2: float,
) -> np.ndarray:
    """(t, 2) shifts of each frame measured against the other frames at their true positions,
    binned, tapered and weighted as the motion step does (fit band, then adaptive weights)."""
    binned = bin_movie(frames, pixel_size_a=pixel_size_a, high_res_a=fit_range_a[1])
    t, hb, wb = binned.frames.shape
    ky, kx = frequency_vectors((hb, wb), binned.scale_yx)
    weights = fit_weights(ky, kx, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2)
    spectra = torch.fft.rfft2(binned.frames * edge_taper((hb, wb)))
    true = torch.as_tensor(true_px, dtype=torch.float32)
    fit = align_stack(
        spectra,
        SpectraGrid(ky=ky, kx=kx, image_shape=(hb, wb), scale_yx=binned.scale_yx),
        true,
        SearchSchedule(coarse_iterations=0, outer_iterations=1, max_shift_px=0.0),
        weights=weights,
    )
    # align_stack moves each frame by (t - 1) / t of its measured offset: undo that
    return (true + (fit.shifts - true) * t / (t - 1)).double().numpy()


def best_prior_errors(raw: torch.Tensor, variance: torch.Tensor, true_px: np.ndarray) -> np.ndarray:
    """(t,) squared errors px² of the trajectory prior's posterior mean of ``raw`` (t, 2) at the
    grid point (a^2, decay, jitter, noise scale) closest to the truth."""
    t = raw.shape[0]
    d2 = second_differences(t, "cpu")
    grid = list(itertools.product(ACCELERATIONS_PX2, DECAYS, JITTERS_PX2, NOISE_SCALES))
    a2, decay, j2, c = (torch.tensor(col, dtype=torch.float64) for col in zip(*grid, strict=True))
    lam = acceleration_variances(a2, decay, t - 2)
    r = raw.double().T  # (2, t)
    v = variance.double().T.clamp_min(1e-12)
    est = posterior_mean(r, v, d2, lam, c, j2).transpose(-2, -1).numpy()  # (G, t, 2)
    errors = np.stack([trajectory_sq_errors(e, true_px) for e in est])  # (G, t)
    return errors[int(np.argmin(errors.mean(-1)))]


@contextmanager
def recorded_prior_inputs() -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record each (shifts, variance) the global motion estimate passes to its trajectory prior."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    prior = motion_global.smooth_trajectory

    def record(shifts: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        calls.append((shifts.detach().clone(), variance.detach().clone()))
        return prior(shifts, variance)

    with mock.patch.object(motion_global, "smooth_trajectory", record):
        yield calls


def measure(ses: Session) -> dict[str, float]:
    """RMS px of one scenario's movies per column (and the count of movies aligned in groups)."""
    gain = torch.from_numpy(ses.gain.astype(np.float32))
    p = ses.params["motion"]
    fit_range_a, bfactor_a2 = tuple(p.fit_range_a), p.bfactor_a2
    errs: dict[str, list[np.ndarray]] = {k: [] for k in ("oracle", "floor", "raw", "best", "ours")}
    grouped = 0
    for i, t in enumerate(ses.series["tilts"]):
        if i in ses.dark:
            continue
        true = np.asarray(t["frame_shifts_px"], dtype=np.float64)
        true -= true.mean(0)
        clean, shifts = clean_movie_and_oracle(ses.series, i, ses.gain)
        errs["oracle"].append(trajectory_sq_errors(shifts, np.zeros_like(true)))
        frames = prepare_frames(torch.from_numpy(clean.astype(np.float32)), gain=gain)  # no hot pixels, no X-rays
        floor = reference_floor(
            frames, true, pixel_size_a=ses.sc.pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2
        )
        errs["floor"].append(trajectory_sq_errors(floor, true))
        with recorded_prior_inputs() as calls:
            result = ses.movie_task(i, str(ses.root / "data" / t["movie"]), p, str(ses.root / "out"))
        errs["ours"].append(trajectory_sq_errors(np.asarray(result.shifts_px), true))
        frame_calls = [c for c in calls if c[0].shape[0] == len(true)]
        if result.motion_note is not None or not frame_calls:
            grouped += 1
            continue
        raw, variance = frame_calls[-1]  # the last round of the frame-by-frame estimate
        errs["raw"].append(trajectory_sq_errors(raw.double().numpy(), true))
        errs["best"].append(best_prior_errors(raw, variance, true))
    rms = {k: float(np.sqrt(np.concatenate(v).mean())) if v else float("nan") for k, v in errs.items()}
    return rms | {"grouped": grouped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the matrix's 3 quick scenarios (256² movies)")
    ap.add_argument("--scenarios", default=None, help="comma-separated indices (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = 3 if args.quick else 12
    scenarios = accuracy_matrix.matrix_scenarios(n, args.seed, args.quick)
    picked = [int(s) for s in args.scenarios.split(",")] if args.scenarios else range(len(scenarios))
    ratio = TARGETS["motion_oracle_ratio"]
    head = ["", "frames", "e/px/fr", "Å/px", "noise-free oracle", f"{ratio}x oracle", "data-ref floor"]
    head += ["ours raw", "best prior (truth)", "ours", "grouped"]
    print("{:4s} {:>6s} {:>7s} {:>5s} {:>17s} {:>11s} {:>14s} {:>8s} {:>18s} {:>6s} {:>7s}".format(*head))
    with tempfile.TemporaryDirectory() as tmp:
        for k in picked:
            sc = scenarios[k]
            m = measure(Session(sc, Path(tmp) / sc.name))
            print(
                f"{sc.name:4s} {sc.n_frames:6d} {sc.dose_e_px_frame:7.2f} {sc.pixel_size_a:5.2f} "
                f"{m['oracle']:17.3f} {ratio * m['oracle']:11.3f} {m['floor']:14.3f} {m['raw']:8.3f} "
                f"{m['best']:18.3f} {m['ours']:6.3f} {int(m['grouped']):7d}",
                flush=True,
            )


if __name__ == "__main__":
    main()
