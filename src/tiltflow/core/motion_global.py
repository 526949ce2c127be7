"""Global (whole-frame) motion of a movie: one sub-pixel shift per frame.

Shift convention (DESIGN.md §2): per frame, in pixels of the unbinned movie, the displacement of
the specimen in that frame relative to the aligned sum (a feature at p in the sum lies at
p + shift in the frame), mean zero over frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltflow.core.defects import BrightOutliers
from tiltflow.core.motion_xcorr import (
    align_stack,
    bin_frames,
    edge_taper,
    estimation_shape,
    fit_weights,
    frequency_vectors,
    smooth_trajectory,
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
        raise ValueError(
            f"{name}: fit_range_a must be (low, high) in Å with low > high > 0, got {fit_range_a}"
        )
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
    shape_b = estimation_shape(
        (h, w), pixel_size_a=pixel_size_a, high_res_a=high_res_a, binning=binning
    )
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
    Newton refinement on the Fourier cross-correlation. With ``smooth`` each round ends by fitting
    a smooth trajectory: the posterior mean under a prior on frame-to-frame accelerations whose
    strength is set by restricted maximum likelihood from the per-frame error estimates (steady
    drift is averaged, sudden jumps are kept).

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
        binned, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2,
        iterations=iterations, smooth=smooth, max_shift_a=max_shift_a,
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
    weights = fit_weights(
        ky, kx, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2
    )
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
        ky=ky,
        kx=kx,
        image_shape=(hb, wb),
        scale_yx=binned.scale_yx,
        weights=None,
        shifts=torch.zeros((t, 2), device=dev),
        coarse_iterations=2,
        outer_iterations=iterations,
        max_shift_px=max_shift_px,
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
