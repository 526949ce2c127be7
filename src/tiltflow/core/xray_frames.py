"""X-ray hits in movie frames, removed before the frames are shifted and summed.

A hit is a few pixels (single, pair, short streak) of one frame with tens to hundreds of counts
more than the Poisson expectation. Found in the frames, it is one bright pixel group; once the
frames are Fourier-shifted and summed it becomes a ringing pattern that no eraser on the sum
removes cleanly. So, per gain-corrected movie ``(t, h, w)``:

1. Noise: ``var(lam) = s * lam + s^2`` for a pixel whose expectation is ``lam`` (Poisson in units
   of ``s``: 1 for counts, the gain factor for scaled counts; the ``s^2`` floor keeps the tails
   sane below one count per pixel); ``s`` = sum of temporal variances / sum of temporal means
   over a sample of rows.
2. Screen (the only passes over the whole movie: the maximum over frames, then its maximum per
   16 x 16 block): blocks whose maximum exceeds a threshold set by the lowest mean of the
   neighbouring blocks, then their pixels; each candidate pixel's frames are tested next.
3. Expectation ``lam`` of a pixel: the mean over all frames and its ``box_px`` x ``box_px``
   neighbourhood (the specimen barely moves at these scales), values above the screen threshold
   left out. A frame pixel more than ``threshold_sd`` SDs above it is a hit; its 8-connected
   neighbours in the same frame more than ``grow_sd`` SDs above theirs join it (pairs, streaks,
   a hit's faint tail), repeatedly.
4. Each hit pixel is replaced by ``lam`` of its position.

Costs one read of the movie (its maximum over frames), the block means of two frames and the
temporal statistics of a sample of rows; the rest works on the few candidate pixels only.
Pure torch; the device follows the input; no files, no prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAMPLE_PIXELS = 1 << 16  # pixels whose temporal statistics set the noise scale
BLOCK_PX = 16  # screen blocks
_MAX_GROW = 8  # grow steps: the longest streak followed from its hit pixel
_CHUNK = 1 << 14  # candidate pixels per batched gather


@dataclass
class FrameXrays:
    """Result of :func:`remove_frame_xrays`.

    ``frames`` (t, h, w): cleaned frames (the input itself with ``inplace``); ``frame``, ``y``,
    ``x`` (n,) int64: the replaced pixels; ``original`` / ``replacement`` (n,): their values
    before / after (counts); ``noise_scale``: ``s`` of the noise model (variance / mean).
    """

    frames: torch.Tensor
    frame: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    original: torch.Tensor
    replacement: torch.Tensor
    noise_scale: float

    @property
    def n_replaced_px(self) -> int:
        """Number of pixels replaced (over all frames)."""
        return int(self.frame.numel())


def remove_frame_xrays(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts, float
    *,
    threshold_sd: float = 7.0,
    grow_sd: float = 3.0,
    box_px: int = 5,
    inplace: bool = False,
) -> FrameXrays:
    """Replace X-ray hits of a gain-corrected movie by their local expectation.

    Parameters
    ----------
    frames : torch.Tensor
        ``(t, h, w)`` contiguous floating-point gain-corrected counts (any device).
    threshold_sd : float
        A frame pixel this many noise SDs above its expectation is a hit.
    grow_sd : float
        Pixels this many SDs above theirs, 8-connected to a hit in the same frame, join it.
    box_px : int
        Odd side of the spatial neighbourhood (px) averaged, over all frames, for the expectation.
    inplace : bool
        Write into ``frames`` (no copy of the movie) instead of a copy.

    Returns
    -------
    FrameXrays
        The cleaned frames ``(t, h, w)`` and the replaced pixels (frame, y, x, values before and
        after).

    Raises
    ------
    ValueError
        If the frames are not a contiguous floating-point ``(t, h, w)`` tensor, or an option is out
        of range.

    Examples
    --------
    >>> import torch
    >>> movie = torch.poisson(torch.full((8, 64, 64), 5.0), generator=torch.Generator().manual_seed(0))
    >>> movie[3, 10, 12] = 200.0  # an X-ray hit
    >>> cleaned = remove_frame_xrays(movie)
    >>> cleaned.frames.shape, bool(cleaned.frames[3, 10, 12] < 20), float(movie[3, 10, 12])
    (torch.Size([8, 64, 64]), True, 200.0)
    """
    _check(frames, threshold_sd, grow_sd, box_px)
    x = frames if inplace else frames.clone()
    t, h, w = x.shape
    s = _noise_scale(x)
    floor = _screen_floor(x, s, threshold_sd)  # (hb, wb) no hit pixel is below it
    yx = _screen(x, floor)  # candidate pixels (flat y * w + x)
    flat = x.view(-1)
    lin = (torch.arange(t, device=x.device)[:, None] * (h * w) + yx).flatten()
    lam = _expectation(x, floor, yx, box_px).repeat(t)
    lin = lin[flat[lin] > lam + threshold_sd * _sd(lam, s)]
    done = lin
    for _ in range(_MAX_GROW):  # 8-connected neighbours, same frame
        nbr = _neighbours(lin, h, w)
        nbr = nbr[~torch.isin(nbr, done)]
        if not nbr.numel():
            break
        lam_n = _expectation(x, floor, nbr % (h * w), box_px)
        lin = nbr[flat[nbr] > lam_n + grow_sd * _sd(lam_n, s)]
        done = torch.cat([done, lin])
        if not lin.numel():
            break
    order = torch.argsort(done)
    done = done[order]
    values = _expectation(x, floor, done % (h * w), box_px)
    original = flat[done].clone()
    flat[done] = values.to(flat.dtype)
    return FrameXrays(
        frames=x,
        frame=done // (h * w),
        y=done // w % h,
        x=done % w,
        original=original,
        replacement=values,
        noise_scale=s,
    )


def _check(frames, threshold_sd, grow_sd, box_px) -> None:
    name = "remove_frame_xrays"
    if not isinstance(frames, torch.Tensor) or frames.ndim != 3 or not frames.is_floating_point():
        got = f"{getattr(frames, 'dtype', type(frames))} {tuple(getattr(frames, 'shape', ()))}"
        raise ValueError(f"{name}: frames must be a real floating-point (t, h, w) tensor, got {got}")
    if not frames.is_contiguous():
        raise ValueError(f"{name}: frames must be contiguous")
    if not (math.isfinite(threshold_sd) and math.isfinite(grow_sd) and 0 < grow_sd <= threshold_sd):
        raise ValueError(f"{name}: need 0 < grow_sd <= threshold_sd, got {grow_sd}, {threshold_sd}")
    if not (isinstance(box_px, int) and box_px >= 3 and box_px % 2 == 1):
        raise ValueError(f"{name}: box_px must be an odd integer >= 3, got {box_px!r}")


def _sd(lam: torch.Tensor, s: float) -> torch.Tensor:
    """Noise SD (counts) of a pixel whose expectation is ``lam``: sqrt(s * lam + s^2)."""
    return (lam.clamp_min(0.0) * s + s * s).sqrt()


def _noise_scale(x: torch.Tensor) -> float:
    """Estimate ``s`` = variance / mean of the counts from the temporal statistics of sampled rows.

    Pixels whose variance is over 10x the model's are left out (hits, hot pixels).
    """
    t, h, w = x.shape
    if t < 2:
        return 1.0
    rows = x[:, :: max(1, h * w // SAMPLE_PIXELS)].to(torch.float64)
    m, v = rows.mean(0).flatten(), rows.var(0).flatten()
    s = 1.0
    for _ in range(2):
        keep = v <= 10.0 * (s * m.clamp_min(0.0) + s * s)
        sm = float(m[keep].sum())
        if sm <= 0 or not bool(keep.any()):
            return max(math.sqrt(float(v.median())), 1e-6)  # no positive counts: constant noise
        s = max(float(v[keep].sum()) / sm, 1e-6)
    return s


def _screen_floor(x: torch.Tensor, s: float, threshold_sd: float) -> torch.Tensor:
    """Floor (hb, wb) per 16 x 16 block: a count no hit pixel of the block is below.

    Set from the lowest mean of the block and its 8 neighbours (first and last frame; 0.8 x for
    finer structure).
    """
    ends = sorted({0, x.shape[0] - 1})  # one frame at a time: pooling a strided view is ~5x slower
    pooled = [F.avg_pool2d(x[i][None], BLOCK_PX, BLOCK_PX, ceil_mode=True)[0] for i in ends]
    mean = (pooled[0] if len(pooled) == 1 else pooled[0] + pooled[1]) / len(ends)
    low = -F.max_pool2d(-mean[None], 3, 1, 1)[0] * 0.8
    return low + (threshold_sd - 1.0) * _sd(low, s)


def _screen(x: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Find the pixels whose maximum over frames exceeds the floor of their block.

    Returns their sorted flat indices (y * w + x).
    """
    t, h, w = x.shape
    top = x.amax(0)
    hb, wb = floor.shape
    blocks = (F.max_pool2d(top[None], BLOCK_PX, BLOCK_PX, ceil_mode=True)[0] > floor).nonzero()
    g = torch.arange(BLOCK_PX, device=x.device)
    yy = (blocks[:, 0, None] * BLOCK_PX + g)[:, :, None].expand(-1, -1, BLOCK_PX)
    xx = (blocks[:, 1, None] * BLOCK_PX + g)[:, None, :].expand(-1, BLOCK_PX, -1)
    inside = (yy < h) & (xx < w)
    yy, xx = yy[inside], xx[inside]
    yx = yy * w + xx
    yx = yx[top.view(-1)[yx] > floor[yy // BLOCK_PX, xx // BLOCK_PX]]
    return torch.sort(yx).values


def _expectation(x: torch.Tensor, floor: torch.Tensor, yx: torch.Tensor, box: int) -> torch.Tensor:
    """Estimate the expected counts (n,) at pixels ``yx`` (flat y * w + x).

    The mean over all frames of the in-image box x box neighbourhood, values above the block's
    floor left out.
    """
    t, h, w = x.shape
    r = box // 2
    g = torch.arange(-r, r + 1, device=x.device)
    dy, dx = (a.flatten() for a in torch.meshgrid(g, g, indexing="ij"))
    flat = x.view(-1)
    out = []
    for i in range(0, yx.numel(), _CHUNK):
        p = yx[i : i + _CHUNK]
        yy, xx = p // w, p % w
        ny, nx = yy[:, None] + dy, xx[:, None] + dx  # (n, box^2)
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        q = ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1)
        lim = floor[ny.clamp(0, h - 1) // BLOCK_PX, nx.clamp(0, w - 1) // BLOCK_PX]
        v = flat[(torch.arange(t, device=x.device)[:, None, None] * (h * w) + q)]  # (t, n, box^2)
        use = ok & (v <= lim)
        out.append(torch.where(use, v, 0.0).sum((0, 2)) / use.sum((0, 2)).clamp_min(1))
    return torch.cat(out) if out else x.new_zeros(0)


def _neighbours(lin: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Return the unique flat indices (f, y, x) of the in-image 8-neighbours (same frame) of ``lin``."""
    y, xx = lin // w % h, lin % w
    out = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                ok = (y + dy >= 0) & (y + dy < h) & (xx + dx >= 0) & (xx + dx < w)
                out.append(lin[ok] + dy * w + dx)
    return torch.unique(torch.cat(out))
