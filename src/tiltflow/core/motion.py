"""Motion correction of tilt movies (Warp's motion step): the public API in one place.

- :func:`prepare_frames` (``core.frames``): raw frames to gain-corrected float32, gain orientation.
- :func:`estimate_global_shifts` (``core.motion_global``): one sub-pixel shift per frame.
- :func:`estimate_local_motion` (``core.motion_local``): a smooth residual field on a control grid.
- :func:`estimate_motion` (here): both on one binned copy, bright outliers cleaned on the way.
- :func:`align_and_sum` (``core.motion_sum``): total, even/odd sums, dose weighting, binning.

Shift convention (DESIGN.md §2): per frame, in unbinned pixels, the displacement of the specimen in
that frame relative to the aligned sum (a feature at p in the sum lies at p + shift in the frame),
mean zero over frames.
"""

import torch

from tiltflow.core.defects import find_bright_outliers
from tiltflow.core.frames import (
    GainOrientation,
    gain_orientations_matching,
    orient_gain,
    prepare_frames,
)
from tiltflow.core.motion_global import (
    bin_movie,
    check_movie,
    estimate_global_shifts,
    global_shifts_binned,
    total_motion_px,
)
from tiltflow.core.motion_local import (
    LocalMotion,
    automatic_grid,
    estimate_local_motion,
    local_motion_binned,
)
from tiltflow.core.motion_sum import DoseWeighting, MotionSum, align_and_sum, warp_frame_2d

__all__ = [
    "DoseWeighting",
    "GainOrientation",
    "LocalMotion",
    "MotionSum",
    "align_and_sum",
    "automatic_grid",
    "estimate_global_shifts",
    "estimate_local_motion",
    "estimate_motion",
    "gain_orientations_matching",
    "orient_gain",
    "prepare_frames",
    "total_motion_px",
    "warp_frame_2d",
]


def estimate_motion(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    *,
    pixel_size_a: float,
    fit_range_a: tuple[float, float] = (500.0, 10.0),
    bfactor_a2: float = -500.0,
    grid: tuple[int, int, int] | None = None,  # (nx, ny, nt); None: automatic; (1, 1, 1): global
    binning: int = 1,
    suppress_outliers: bool = True,
) -> LocalMotion:
    """Global and local motion of a movie from one binned copy of it.

    Equals :func:`estimate_global_shifts` followed by :func:`estimate_local_motion` on frames
    whose bright outliers (:mod:`tiltflow.core.defects`) are replaced by the frame mean, but bins
    the movie once and cleans it on the way (no copy of the frames). ``grid=(1, 1, 1)`` gives
    global shifts only, as a LocalMotion with a zero grid; any other grid is kept only where it
    predicts held-out (even/odd) frames better than global motion, else its grid is zero.
    Shifts are refined with weights measured on the movie itself (signal and noise per ring of
    |k| within ``fit_range_a``); ``bfactor_a2`` then only weights the coarse search.

    Parameters
    ----------
    frames : torch.Tensor
        ``(t, h, w)`` gain-corrected frames (h, w >= 16); never modified; the device follows them.
    pixel_size_a : float
        Unbinned pixel size, Å/px.
    fit_range_a : tuple of float
        (low, high) resolution, Å, of the band used for alignment.
    bfactor_a2 : float
        B-factor, Å², weighting the coarse cross-correlation search.
    grid : tuple of int, optional
        (nx, ny, nt) control points of the local motion; None: :func:`automatic_grid`;
        ``(1, 1, 1)``: global motion only.
    binning : int
        Minimum down-sampling before estimation (e.g. 2 for super-resolution movies).
    suppress_outliers : bool
        Replace hot pixels and X-ray hits by the frame mean before estimating.

    Returns
    -------
    LocalMotion
        ``global_shifts`` ``(t, 2)`` x, y in unbinned px, mean zero (DESIGN.md §2), and the
        residual ``grid`` ``(nt, ny, nx, 2)`` px (zero when local motion is not supported).

    Raises
    ------
    ValueError
        If the frames are not a real ``(t, h, w)`` tensor, or an option is out of range.

    Examples
    --------
    >>> import torch
    >>> image = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    >>> movie = torch.stack([image.roll(k, dims=-1) for k in range(4)])  # moves 1 px/frame along x
    >>> motion = estimate_motion(movie, pixel_size_a=5.0)
    >>> motion.global_shifts[:, 0].round(decimals=1).tolist()
    [-1.5, -0.5, 0.5, 1.5]
    """
    name = "estimate_motion"
    check_movie(frames, pixel_size_a, fit_range_a, binning, name)
    t, h, w = frames.shape
    nx, ny, nt = automatic_grid((h, w), t) if grid is None else (int(g) for g in grid)
    if min(nx, ny, nt) < 1 or nt > t:
        raise ValueError(f"{name}: grid (nx, ny, nt) needs values >= 1 and nt <= {t}, got {grid}")
    if t == 1:
        zero = torch.zeros((1, 2), dtype=torch.float32, device=frames.device)
        return LocalMotion(torch.zeros((nt, ny, nx, 2), device=frames.device), zero, (h, w))
    outliers = find_bright_outliers(frames) if suppress_outliers else None
    binned = bin_movie(frames, pixel_size_a=pixel_size_a, high_res_a=fit_range_a[1], binning=binning, outliers=outliers)
    shifts = global_shifts_binned(binned, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2)
    if (nx, ny, nt) == (1, 1, 1):
        return LocalMotion(torch.zeros((1, 1, 1, 2), device=frames.device), shifts, (h, w))
    return local_motion_binned(
        binned,
        shifts,
        pixel_size_a=pixel_size_a,
        grid=(nx, ny, nt),
        fit_range_a=fit_range_a,
        bfactor_a2=bfactor_a2,
    )
