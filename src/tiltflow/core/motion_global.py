"""Global (whole-frame) motion of a movie: one sub-pixel shift per frame.

Shift convention (DESIGN.md §2): per frame, in pixels of the unbinned movie, the displacement of
the specimen in that frame relative to the aligned sum (a feature at p in the sum lies at
p + shift in the frame), mean zero over frames.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from tiltflow.core.defects import BrightOutliers
from tiltflow.core.motion_xcorr import (
    SearchSchedule,
    SpectraGrid,
    align_stack,
    bin_frames,
    edge_taper,
    estimation_shape,
    fit_weights,
    frequency_vectors,
)


def check_movie(frames: torch.Tensor, pixel_size_a: float, fit_range_a, binning: int, name: str):
    """Validate the common arguments of the motion functions; raise a one-line ValueError."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 3 or frames.is_complex():
        shape = tuple(getattr(frames, "shape", ()))
        raise ValueError(f"{name}: frames must be a real (t, h, w) tensor, got shape {shape}")
    if frames.shape[0] < 1 or min(frames.shape[-2:]) < 16:
        raise ValueError(f"{name}: frames {tuple(frames.shape)} need t >= 1 and h, w >= 16")
    if not pixel_size_a > 0:
        raise ValueError(f"{name}: pixel_size_a must be > 0 Å/px, got {pixel_size_a}")
    low_a, high_a = fit_range_a
    if not (low_a > high_a > 0):
        raise ValueError(f"{name}: fit_range_a must be (low, high) in Å with low > high > 0, got {fit_range_a}")
    if int(binning) != binning or binning < 1:
        raise ValueError(f"{name}: binning must be an integer >= 1, got {binning}")


@dataclass
class BinnedMovie:
    """Frames Fourier-cropped for estimation: ``frames`` (t, h', w') mean zero, float32.

    ``scale_yx`` is the size of one binned pixel in unbinned pixels, ``image_shape`` the unbinned
    (h, w). Estimators work on this so that a movie is binned once for global and local motion.
    """

    frames: torch.Tensor
    scale_yx: tuple[float, float]
    image_shape: tuple[int, int]


def bin_movie(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    *,
    pixel_size_a: float,
    high_res_a: float,
    binning: int = 1,
    outliers: BrightOutliers | None = None,
) -> BinnedMovie:
    """Fourier-crop a movie until its Nyquist just holds ``high_res_a`` (and >= ``binning``).

    With ``outliers`` (:func:`tiltflow.core.defects.find_bright_outliers`) hot pixels and X-ray
    hits are replaced by the frame mean on the way, without copying the frames.
    """
    h, w = frames.shape[-2:]
    shape_b = estimation_shape((h, w), pixel_size_a=pixel_size_a, high_res_a=high_res_a, binning=binning)
    binned = bin_frames(frames, shape_b, outliers=outliers)
    return BinnedMovie(binned, (h / shape_b[0], w / shape_b[1]), (h, w))


def estimate_global_shifts(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    *,
    pixel_size_a: float,
    fit_range_a: tuple[float, float] = (500.0, 10.0),
    bfactor_a2: float = -500.0,
    binning: int = 1,
    iterations: int = 2,
    smooth: bool = True,
    max_shift_a: float | None = None,
) -> torch.Tensor:  # (t, 2) x, y shifts in unbinned px, mean zero
    """Per-frame specimen shifts of a movie, sub-pixel, mean zero over frames.

    The movie is Fourier-cropped until its Nyquist just holds ``fit_range_a[1]`` (and at least
    ``binning`` times), edge-tapered, and each frame aligned to the sum of the others: two coarse
    cross-correlation searches (on maps at half that resolution), then ``iterations`` rounds of
    Newton refinement on the Fourier cross-correlation, weighted per ring of |k| by the signal
    and noise the aligned movie itself shows (``motion_xcorr.signal_weights``: the band and
    B-factor then only bound the fit and shape the coarse search). With ``smooth`` each round ends
    by fitting a smooth trajectory (:func:`smooth_trajectory`: accelerations that may decay over
    the exposure, strength set by restricted maximum likelihood; drift is averaged, the fast
    beam-induced start is kept).

    Parameters
    ----------
    frames : (t, h, w) gain-corrected frames; never modified; the device follows them.
    pixel_size_a : unbinned pixel size, Å/px.
    fit_range_a : (low, high) resolution in Å of the band used for alignment.
    bfactor_a2 : B-factor (Å²) weighting the cross-correlation; negative dampens high frequencies.
    binning : minimum down-sampling before estimation (e.g. 2 for super-resolution movies).
    max_shift_a : search radius of the coarse search, Å (default: a quarter of the image).
    """
    name = "estimate_global_shifts"
    check_movie(frames, pixel_size_a, fit_range_a, binning, name)
    if frames.shape[0] == 1:
        return torch.zeros((1, 2), dtype=torch.float32, device=frames.device)
    binned = bin_movie(frames, pixel_size_a=pixel_size_a, high_res_a=fit_range_a[1], binning=binning)
    return global_shifts_binned(
        binned,
        pixel_size_a=pixel_size_a,
        fit_range_a=fit_range_a,
        bfactor_a2=bfactor_a2,
        iterations=iterations,
        smooth=smooth,
        max_shift_a=max_shift_a,
    )


def global_shifts_binned(
    binned: BinnedMovie,
    *,
    pixel_size_a: float,
    fit_range_a: tuple[float, float] = (500.0, 10.0),
    bfactor_a2: float = -500.0,
    iterations: int = 2,
    smooth: bool = True,
    max_shift_a: float | None = None,
) -> torch.Tensor:  # (t, 2)
    """:func:`estimate_global_shifts` on a movie already binned by :func:`bin_movie`."""
    frames = binned.frames
    t, hb, wb = frames.shape
    dev = frames.device
    if t == 1:
        return torch.zeros((1, 2), dtype=torch.float32, device=dev)
    ky, kx = frequency_vectors((hb, wb), binned.scale_yx, device=dev)
    weights = fit_weights(ky, kx, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2)
    root_w = weights.sqrt()
    taper = edge_taper((hb, wb), device=dev)
    spectra = torch.empty((t, hb, wb // 2 + 1), dtype=torch.complex64, device=dev)
    for i in range(t):  # one frame at a time: no (t, h, w) temporaries
        torch.fft.rfft2(frames[i] * taper, out=spectra[i])
        spectra[i].mul_(root_w)
    h, w = binned.image_shape
    max_shift_px = min(h, w) / 4.0 if max_shift_a is None else max_shift_a / pixel_size_a
    fit = align_stack(
        spectra,
        SpectraGrid(ky=ky, kx=kx, image_shape=(hb, wb), scale_yx=binned.scale_yx),
        torch.zeros((t, 2), device=dev),
        SearchSchedule(coarse_iterations=2, outer_iterations=iterations, max_shift_px=max_shift_px),
        smooth=smooth_trajectory if smooth else None,
    )
    return fit.shifts


def total_motion_px(shifts: torch.Tensor) -> float:
    """Path length of a trajectory (t, 2): the sum of frame-to-frame displacements, px."""
    shifts = torch.as_tensor(shifts)
    if shifts.ndim != 2 or shifts.shape[-1] != 2:
        raise ValueError(f"total_motion_px: shifts must be (t, 2), got shape {tuple(shifts.shape)}")
    if shifts.shape[0] < 2:
        return 0.0
    return float(torch.linalg.vector_norm(shifts[1:] - shifts[:-1], dim=-1).sum())


# smooth_trajectory's hyperparameter grid (besides the acceleration scale a^2)
DECAYS = (1.0, 0.7, 0.45, 0.25)  # r: acceleration amplitude ratio from one frame to the next
JITTERS_PX2 = (0.0, 0.0005, 0.002, 0.008)  # j^2: per-frame jitter variance per axis, px^2
NOISE_SCALES = (1.0, 1.5, 2.25, 3.4, 5.0)  # c: measured / stated shift variance
ACCELERATIONS_PX2 = tuple(10.0 ** (-6 + 9 * k / 27) for k in range(28))  # a^2: px^2 / frame^4, 1e-6 to 1e3


def second_differences(t: int, device) -> torch.Tensor:
    """(t - 2, t) float64 operator taking a trajectory to its second differences."""
    d2 = torch.zeros((t - 2, t), dtype=torch.float64, device=device)
    idx = torch.arange(t - 2, device=device)
    d2[idx, idx], d2[idx, idx + 1], d2[idx, idx + 2] = 1.0, -2.0, 1.0
    return d2


def acceleration_variances(a2: torch.Tensor, decay: torch.Tensor, n: int) -> torch.Tensor:
    """Prior variances (..., n) of the n second differences: ``a2 * decay ** (2 f)`` (px^2 / frame^4).

    ``a2`` and ``decay`` broadcast against each other (shape ``(...)``); clamped away from zero.
    """
    f = torch.arange(n, dtype=a2.dtype, device=a2.device)
    return (a2[..., None] * decay[..., None].to(a2) ** (2 * f)).clamp_min(1e-12)


def _best_at_decay(z, d2, v, decay: float) -> tuple[torch.Tensor, ...]:
    """(nll, lam, c, j2) per leading index: the restricted ML of ``a^2``, ``j^2``, ``c`` at one decay.

    ``z`` (..., 2, t-2) second differences of the measured trajectory, ``v`` (..., 2, t) its stated
    variances; ``nll`` is -2 log L (up to a constant, x and y summed), ``lam`` (..., t-2).
    """
    a2 = torch.tensor(ACCELERATIONS_PX2, dtype=d2.dtype, device=d2.device)
    lam = acceleration_variances(a2, torch.tensor(decay, dtype=d2.dtype), d2.shape[0])  # (A, t-2)
    best: tuple[torch.Tensor, ...] | None = None
    for j2, c in itertools.product(JITTERS_PX2, NOISE_SCALES):
        white = torch.einsum("it,...ct,jt->...cij", d2, c * v + j2, d2)  # (..., 2, t-2, t-2)
        cov = white[..., None, :, :, :] + torch.diag_embed(lam)[:, None]  # (..., A, 2, n, n)
        chol = torch.linalg.cholesky(cov)
        sol = torch.cholesky_solve(z[..., None, :, :, None], chol)[..., 0]
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        nll, idx = (logdet + (z[..., None, :, :] * sol).sum(-1)).sum(-1).min(dim=-1)  # (...)
        cand = (nll, lam[idx], torch.full_like(nll, c), torch.full_like(nll, j2))
        if best is None:
            best = cand
        else:
            better = nll < best[0]
            best = tuple(
                torch.where(better[..., None] if x.ndim > nll.ndim else better, x, y)
                for x, y in zip(cand, best, strict=False)
            )
    assert best is not None  # the hyperparameter grid is not empty
    return best


def posterior_mean(r, v, d2, lam, c, j2) -> torch.Tensor:
    """Posterior mean (..., 2, t) of the trajectory ``r`` (..., 2, t) under one set of hyperparameters."""
    prior = torch.einsum("it,...i,is->...ts", d2, 1.0 / lam, d2)  # (..., t, t)
    noise = c[..., None, None] * v + j2[..., None, None]  # (..., 2, t): all that is white
    prec = torch.diag_embed(1.0 / noise) + prior[..., None, :, :]
    smooth = torch.linalg.solve(prec, (r / noise)[..., None])[..., 0]
    return smooth + j2[..., None, None] / noise * (r - smooth)  # the jitter's share is kept


def smooth_trajectory(shifts: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Posterior mean of a trajectory (..., t, 2) under a prior matched to beam-induced motion.

    Model: measured = smooth + jitter + noise. The noise has variance ``c * variance``
    (curvature-based variances are optimistic at low dose); the jitter, white with variance
    ``j^2`` per frame, is part of the true trajectory and kept; the smooth part's second
    difference at frame f + 1 ~ N(0, a^2 r^(2 f)): accelerations that decay over the exposure
    (fast beam-induced motion first, then drift; r = 1 is uniform), the linear part free.
    ``a^2``, ``j^2`` and ``c`` are chosen per leading index by restricted maximum likelihood,
    shared by x and y. The decay ``r`` is averaged over (``DECAYS``, equally likely a priori),
    each posterior mean weighted by its restricted likelihood: a movie of few frames has only
    t - 2 second differences per axis, which rarely single out one decay, and picking the best
    one alone makes the trajectory follow that choice's accidents.
    """
    t = shifts.shape[-2]
    if t < 3:
        return shifts
    dt, dev = torch.float64, shifts.device
    d2 = second_differences(t, dev)
    r = shifts.to(dt).movedim(-1, -2)  # (..., 2, t)
    v = variance.to(dt).movedim(-1, -2).clamp_min(1e-12)
    z = r @ d2.T  # (..., 2, t-2)
    fits = [_best_at_decay(z, d2, v, decay) for decay in DECAYS]
    weights = torch.softmax(-0.5 * torch.stack([fit[0] for fit in fits]), dim=0)  # (R, ...)
    means = torch.stack([posterior_mean(r, v, d2, *fit[1:]) for fit in fits])  # (R, ..., 2, t)
    return (weights[..., None, None] * means).sum(0).movedim(-2, -1).to(shifts.dtype)
