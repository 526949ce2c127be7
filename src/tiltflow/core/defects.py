"""Bright detector outliers (hot pixels, X-ray hits) in movie frames.

Motion estimation correlates frames with each other: a hot pixel, identical in every frame, pulls
every shift towards zero, and a single X-ray hit adds a false peak. Estimating on frames whose
bright outliers are replaced by the frame mean avoids both; the sum itself is made from the
original frames (the X-ray eraser step deals with what is left).
"""

from __future__ import annotations

import torch


def bright_outlier_mask(
    frames: torch.Tensor,                # (t, h, w) gain-corrected counts
    *,
    k_sigma: float = 10.0,
) -> torch.Tensor:                       # (t, h, w) bool
    """Pixels more than ``k_sigma`` robust SDs above their frame's mean, or whose sum over frames is
    (persistent hot pixels, each frame only mildly high)."""
    def high(x: torch.Tensor) -> torch.Tensor:      # (b, n) -> bool (b, n)
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        keep = x <= mean + k_sigma * std            # one trim pass: the outliers inflate the first SD
        n = keep.sum(-1, keepdim=True).clamp_min(2)
        mean = (x * keep).sum(-1, keepdim=True) / n
        std = torch.sqrt(((x - mean) ** 2 * keep).sum(-1, keepdim=True) / (n - 1))
        return x > mean + k_sigma * std.clamp_min(1e-6)

    t, h, w = frames.shape
    x = frames.reshape(t, -1).float()
    per_frame = high(x)
    persistent = high(x.sum(0, keepdim=True))
    return (per_frame | persistent).reshape(t, h, w)


def suppress_bright_outliers(frames: torch.Tensor, *, k_sigma: float = 10.0) -> torch.Tensor:
    """A copy of ``frames`` (t, h, w) with bright outliers replaced by their frame's mean."""
    mask = bright_outlier_mask(frames, k_sigma=k_sigma)
    x = frames.float()
    keep = (~mask).float()
    mean = (x * keep).sum((-2, -1), keepdim=True) / keep.sum((-2, -1), keepdim=True).clamp_min(1)
    return torch.where(mask, mean.expand_as(x), x).to(frames.dtype)
