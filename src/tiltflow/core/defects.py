"""Bright detector outliers (hot pixels, X-ray hits) in movie frames.

Motion estimation correlates frames with each other: a hot pixel, identical in every frame, pulls
every shift towards zero, and a single X-ray hit adds a false peak. Estimating on frames whose
bright outliers are replaced by the frame mean avoids both; the sum itself is made from the
original frames (the X-ray eraser step deals with what is left).

Per frame, a pixel is an outlier when it lies more than ``k_sigma`` robust SDs above the frame's
mean; a pixel is a persistent hot pixel when its sum over frames (each frame capped at its
threshold, so that one X-ray hit does not count) does the same. The statistics
(mean, SD after one trimming pass) come from an even sample of rows (about 2.6 10^5 pixels), so the
frames are read only once more to find the persistent pixels; :class:`BrightOutliers` then
cleans any block of a frame on the fly (used while binning for motion estimation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SAMPLE_PIXELS = 1 << 18  # pixels per frame that set the statistics (SD to ~0.2 %)
CHUNK_PIXELS = 1 << 21  # CPU work block (8 MB of float32): large temporaries cost page faults


def row_chunk(h: int, w: int, device: torch.device) -> int:
    """Rows per block for streaming over an (h, w) frame: whole frames on a GPU."""
    if device.type != "cpu":
        return h
    return max(1, min(h, CHUNK_PIXELS // max(w, 1)))


def _robust_mean_sd(x: torch.Tensor, k_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and SD of each row of ``x`` (b, n) after removing values above mean + k SD once."""
    x = x.to(torch.float64)
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)  # float64: sums of 10^5+ values
    keep = x <= mean + k_sigma * std  # one trim pass: the outliers inflate the first SD
    n = keep.sum(-1, keepdim=True).clamp_min(2)
    mean = (x * keep).sum(-1, keepdim=True) / n
    std = torch.sqrt(((x - mean) ** 2 * keep).sum(-1, keepdim=True) / (n - 1))
    return mean[:, 0], std[:, 0].clamp_min(1e-6)


@dataclass
class BrightOutliers:
    """Outlier model of a movie (t, h, w).

    A pixel of frame i is an outlier when above ``threshold[i]``, or when it is one of the
    ``persistent`` hot pixels (sorted flat indices). ``fill`` (t,) is each frame's mean without its
    outliers, the replacement value.
    """

    threshold: torch.Tensor  # (t,) counts
    fill: torch.Tensor  # (t,) counts
    persistent: torch.Tensor  # (n,) int64 flat indices y * w + x, sorted
    width: int

    def mask(self, block: torch.Tensor, index: int, row0: int) -> torch.Tensor:
        """Outlier mask of ``block`` = rows ``row0 ..`` of frame ``index`` (rows, w)."""
        out = block > self.threshold[index]
        out.view(-1)[self._hot_in(row0, block.shape[-2])] = True
        return out

    def _hot_in(self, row0: int, rows: int) -> torch.Tensor:
        """Flat indices, relative to row ``row0``, of the persistent pixels in ``rows`` rows."""
        bounds = torch.tensor([row0 * self.width, (row0 + rows) * self.width], device=self.persistent.device)
        lo, hi = torch.searchsorted(self.persistent, bounds).tolist()
        return self.persistent[lo:hi] - row0 * self.width

    def clean(self, block: torch.Tensor, index: int, row0: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Return a float32 copy of ``block`` (rows of frame ``index`` from ``row0``), outliers filled.

        The copy is written into ``out`` when given.
        """
        out = block.to(torch.float32, copy=True) if out is None else out.copy_(block)
        fill = self.fill[index]
        out.masked_fill_(out > self.threshold[index], fill)
        out.view(-1)[self._hot_in(row0, out.shape[-2])] = fill
        return out


def find_bright_outliers(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    *,
    k_sigma: float = 10.0,
) -> BrightOutliers:
    """Thresholds, fill values and persistent hot pixels of a movie (see the module doc)."""
    t, h, w = frames.shape
    step = max(1, math.ceil(h * w / SAMPLE_PIXELS))
    sample = frames[:, ::step]  # a view: every step-th row
    mean, std = _robust_mean_sd(sample.reshape(t, -1), k_sigma)
    threshold = (mean + k_sigma * std).to(torch.float32)
    x = sample.reshape(t, -1).to(torch.float32)
    keep = x <= threshold[:, None]
    fill = ((x * keep).sum(-1) / keep.sum(-1).clamp_min(1)).to(torch.float32)
    cap = threshold[:, None, None]  # a hit in one frame does not make a pixel persistent

    def capped_sum(block: torch.Tensor) -> torch.Tensor:
        return torch.minimum(block.to(torch.float32), cap).sum(0)

    s_mean, s_std = _robust_mean_sd(capped_sum(sample).reshape(1, -1), k_sigma)
    limit = float(s_mean[0] + k_sigma * s_std[0])
    hot = []
    rows = max(1, row_chunk(h, w, frames.device) // max(t, 1))
    for r0 in range(0, h, rows):
        hot.append((capped_sum(frames[:, r0 : r0 + rows]) > limit).view(-1).nonzero()[:, 0] + r0 * w)
    return BrightOutliers(threshold=threshold, fill=fill, persistent=torch.cat(hot), width=w)


def bright_outlier_mask(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    *,
    k_sigma: float = 10.0,
) -> torch.Tensor:  # (t, h, w) bool
    """Mask the pixels more than ``k_sigma`` robust SDs above their frame's mean.

    Also those whose sum over frames is (persistent hot pixels, each frame only mildly high).
    """
    model = find_bright_outliers(frames, k_sigma=k_sigma)
    mask = (frames if frames.is_floating_point() else frames.float()) > model.threshold[:, None, None]
    mask.view(frames.shape[0], -1)[:, model.persistent] = True
    return mask


def suppress_bright_outliers(frames: torch.Tensor, *, k_sigma: float = 10.0) -> torch.Tensor:
    """Return a float32 copy of ``frames`` (t, h, w) with bright outliers replaced by their frame's mean."""
    model = find_bright_outliers(frames, k_sigma=k_sigma)
    t, h, w = frames.shape
    out = torch.empty((t, h, w), dtype=torch.float32, device=frames.device)
    rows = row_chunk(h, w, frames.device)
    for i in range(t):
        for r0 in range(0, h, rows):
            model.clean(frames[i, r0 : r0 + rows], i, r0, out=out[i, r0 : r0 + rows])
    return out
