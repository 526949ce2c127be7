"""Motion the data support, or none: motion estimation with a plausibility check and fall-backs.

:func:`estimate_motion` is followed by a plausibility check of the trajectory, and a fall-back to
frames aligned in groups when single frames are too dim. Frames of a tilt-series movie carry
little dose (0.3-1 e/px at fine pixels, 40 frames at high tilt through thick ice); when a frame's
correlation with the others holds no signal its peak lands anywhere in the search window, tens of
pixels from where the specimen moved. Beam-induced motion and drift do not jump by tens of Å
between frames, so such a trajectory is refused: the frames are summed in groups of 2, 4, ...
(dose per group up), aligned as global motion, and the group shifts interpolated to every frame.
When no grouping gives a plausible trajectory, the frames are summed without shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltflow.core.motion import estimate_motion
from tiltflow.core.motion_local import LocalMotion

__all__ = ["CheckedMotion", "estimate_motion_checked", "implausible_motion"]


@dataclass(frozen=True)
class CheckedMotion:
    """Result of :func:`estimate_motion_checked`: the motion and how it was obtained."""

    motion: LocalMotion
    note: str | None  # None: single frames; else how the trajectory was obtained, and why
    frames_per_group: int  # 1: single frames; 0: no motion correction


def implausible_motion(
    shifts_px: torch.Tensor,  # (t, 2) per frame
    pixel_size_a: float,
    *,
    max_jump_a: float = 30.0,  # between consecutive frames
    max_range_a: float = 400.0,  # over the movie
) -> str | None:
    """Say why a trajectory cannot be the specimen's, or return None.

    Refused: jumps beyond ``max_jump_a`` between frames, or a range beyond ``max_range_a`` (each
    limit at least 3 px).
    """
    s = shifts_px.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(s).all()):
        return "non-finite shifts"
    if s.shape[0] < 2:
        return None
    jump = float((s[1:] - s[:-1]).norm(dim=-1).max()) * pixel_size_a
    span = float((s.amax(0) - s.amin(0)).norm()) * pixel_size_a
    if jump > max(max_jump_a, 3.0 * pixel_size_a):
        return f"frames jump by up to {jump:.0f} Å"
    if span > max(max_range_a, 3.0 * pixel_size_a):
        return f"the trajectory spans {span:.0f} Å"
    return None


def estimate_motion_checked(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    *,
    pixel_size_a: float,
    **options,  # as for :func:`estimate_motion`
) -> CheckedMotion:
    """Estimate the motion of a movie as :func:`estimate_motion`, its trajectory checked (module docstring).

    Parameters
    ----------
    frames : torch.Tensor
        ``(t, h, w)`` gain-corrected frames; never modified.
    pixel_size_a : float
        Unbinned pixel size, Å/px.
    **options
        Passed to :func:`estimate_motion` (``fit_range_a``, ``bfactor_a2``, ``grid``, ...).

    Returns
    -------
    CheckedMotion
        The motion (single frames, frames aligned in groups, or none), ``note`` saying how it was
        obtained (None for single frames) and ``frames_per_group`` (1, the group size, or 0).

    Examples
    --------
    >>> import torch
    >>> image = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    >>> movie = torch.stack([image.roll(k, dims=-1) for k in range(4)])
    >>> checked = estimate_motion_checked(movie, pixel_size_a=5.0)
    >>> checked.frames_per_group, checked.note, checked.motion.global_shifts.shape
    (1, None, torch.Size([4, 2]))
    """
    motion = estimate_motion(frames, pixel_size_a=pixel_size_a, **options)
    why = implausible_motion(motion.global_shifts, pixel_size_a)
    if why is None:
        return CheckedMotion(motion, None, 1)
    t, h, w = frames.shape
    global_only = {k: v for k, v in options.items() if k != "grid"}
    group = 2
    while t // group >= 2:
        n = t // group
        grouped = torch.stack([frames[i * group : (i + 1) * group].sum(0) for i in range(n)])
        coarse = estimate_motion(grouped, pixel_size_a=pixel_size_a, grid=(1, 1, 1), **global_only)
        del grouped
        shifts = _interpolate_groups(coarse.global_shifts, group, t)
        # judged on the groups themselves: interpolation spreads a noise jump over many frames
        if implausible_motion(coarse.global_shifts, pixel_size_a) is None:
            zero = torch.zeros((1, 1, 1, 2), dtype=motion.grid.dtype, device=frames.device)
            return CheckedMotion(
                LocalMotion(zero, shifts.to(motion.global_shifts.dtype), (h, w)),
                f"single frames too dim ({why}): aligned in groups of {group} frames",
                group,
            )
        group *= 2
    zero = torch.zeros((1, 1, 1, 2), dtype=motion.grid.dtype, device=frames.device)
    none = torch.zeros_like(motion.global_shifts)
    return CheckedMotion(
        LocalMotion(zero, none, (h, w)),
        f"motion not measurable ({why}, also in groups of frames): summed without shifts",
        0,
    )


def _interpolate_groups(group_shifts: torch.Tensor, group: int, n_frames: int) -> torch.Tensor:
    """Shifts (n_frames, 2), mean zero, linearly interpolated from groups of ``group`` frames.

    Each group's shift is taken at its centre frame; constant beyond the first and last centres.
    """
    g = group_shifts.detach().to(torch.float64)
    centres = torch.arange(g.shape[0], dtype=torch.float64, device=g.device) * group + (group - 1) / 2.0
    f = torch.arange(n_frames, dtype=torch.float64, device=g.device).clamp(float(centres[0]), float(centres[-1]))
    k = torch.searchsorted(centres, f, right=True).clamp(1, g.shape[0] - 1) if g.shape[0] > 1 else None
    if k is None:
        out = g[:1].expand(n_frames, 2).clone()
    else:
        c0, c1 = centres[k - 1], centres[k]
        a = ((f - c0) / (c1 - c0)).clamp(0.0, 1.0)[:, None]
        out = g[k - 1] * (1 - a) + g[k] * a
    return (out - out.mean(0)).to(group_shifts.dtype)
