"""Gold-bead detection and sub-pixel location by normalised cross-correlation with a dark disc.

Gold beads are dark (DESIGN.md: density as in the images). A bead of diameter ``d`` projects to a
disc whose darkness follows the projected sphere thickness ``2 sqrt(R^2 - r^2)``; the template is
that profile, blurred slightly, made zero-mean over a box about twice the diameter and negated, so
a dark bead scores a positive normalised cross-correlation (NCC, in [-1, 1]). Positions are
(x, y) = (column, row) in pixels, refined to sub-pixel by a parabola through the NCC peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["BeadDetections", "bead_template", "detect_beads", "ncc_map", "subpixel_peak"]


@dataclass(frozen=True)
class BeadDetections:
    """Beads found in one image, strongest first."""

    xy_px: torch.Tensor  # (n, 2) sub-pixel centres (x, y)
    scores: torch.Tensor  # (n,) NCC with the bead template at the peak


def bead_template(
    diameter_px: float, *, blur_px: float | None = None, device=None, dtype=torch.float32
) -> torch.Tensor:  # (L, L), L odd ~ 2 * diameter, zero mean, unit norm
    """Negated projected-sphere profile of a bead (module docstring), centred at ``L // 2``."""
    if not diameter_px > 1.0:
        raise ValueError(f"bead_diameter_px must be > 1 px, got {diameter_px}")
    radius = diameter_px / 2.0
    half = int(math.ceil(diameter_px))
    size = 2 * half + 1
    r = torch.arange(size, dtype=torch.float64) - half
    rr = r[:, None] ** 2 + r[None, :] ** 2
    # supersample by 4 so the disc edge is smooth
    sub = (torch.arange(4, dtype=torch.float64) + 0.5) / 4 - 0.5
    xs = (r[:, None] + sub[None, :]).reshape(-1)
    prof = 2.0 * torch.sqrt((radius**2 - xs[:, None] ** 2 - xs[None, :] ** 2).clamp_min(0.0))
    prof = prof.reshape(size, 4, size, 4).mean(dim=(1, 3))
    sigma = 0.15 * diameter_px if blur_px is None else blur_px
    if sigma > 0:
        g = torch.exp(-rr / (2 * sigma**2))
        kernel = torch.fft.rfft2(torch.fft.ifftshift(g / g.sum()))
        prof = torch.fft.irfft2(torch.fft.rfft2(prof) * kernel, s=(size, size))
    tpl = -(prof - prof.mean())
    return (tpl / tpl.norm()).to(device=device, dtype=dtype)


def _box_sums(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sum every ``size`` x ``size`` window of ``x`` from an integral image.

    Sums over every ``size`` x ``size`` window (valid positions) of ``x`` (b, 1, h, w), from an
    integral image in float64: O(1) per pixel whatever the window size.
    """
    c = F.pad(x.to(torch.float64), (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    return c[..., size:, size:] - c[..., :-size, size:] - c[..., size:, :-size] + c[..., :-size, :-size]


def _correlate_valid(x: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, template)`` (cross-correlation, valid positions) of (b, 1, h, w) by FFT."""
    h, w = x.shape[-2:]
    size = template.shape[-1]
    spec = torch.fft.rfft2(x) * torch.conj(torch.fft.rfft2(template, s=(h, w)))
    return torch.fft.irfft2(spec, s=(h, w))[..., : h - size + 1, : w - size + 1]


def ncc_map(
    images: torch.Tensor,  # (b, h, w)
    template: torch.Tensor,  # (L, L) zero mean, unit norm
    *,
    padding: str = "same",  # "same" (reflect-padded) or "valid"
) -> torch.Tensor:  # (b, h, w) or (b, h-L+1, w-L+1)
    """Compute the normalised cross-correlation of each image with the template at every position.

    Normalised cross-correlation of each image with the template at every position
    (FFT correlation and integral-image window statistics: cost independent of the template size).
    """
    x = images.to(template.dtype)[:, None]
    size = template.shape[-1]
    if padding == "same":
        half = size // 2
        x = F.pad(x, (half, half, half, half), mode="reflect")
    elif padding != "valid":
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    x = x - x.mean(dim=(-2, -1), keepdim=True)  # NCC ignores offsets; FFT precision does not
    num = _correlate_valid(x, template)
    n_px = size * size
    mean = _box_sums(x, size) / n_px
    var = (_box_sums(x * x, size) / n_px - mean * mean).clamp_min(0.0)
    den = torch.sqrt(var * n_px).to(num.dtype)
    return (num / den.clamp_min(1e-12 * float(den.max()) + 1e-30))[:, 0]


def _parabola(m1: torch.Tensor, c0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    den = m1 - 2 * c0 + p1
    ok = den < -1e-12
    return torch.where(ok, 0.5 * (m1 - p1) / torch.where(ok, den, -torch.ones_like(den)), torch.zeros_like(den)).clamp(
        -0.5, 0.5
    )


def subpixel_peak(score: torch.Tensor, iy: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
    """Find parabolic sub-pixel offsets of maxima in score maps.

    Parabolic sub-pixel offsets (n, 2) (dx, dy) of maxima at integer (iy, ix) of ``score``
    ``(n, h, w)`` (one map per peak) or ``(h, w)``; edges give 0.
    """
    s = score if score.ndim == 3 else score[None].expand(iy.shape[0], -1, -1)
    h, w = s.shape[-2:]
    n = torch.arange(iy.shape[0], device=s.device)
    ym, yp = (iy - 1).clamp(0, h - 1), (iy + 1).clamp(0, h - 1)
    xm, xp = (ix - 1).clamp(0, w - 1), (ix + 1).clamp(0, w - 1)
    c0 = s[n, iy, ix]
    dx = _parabola(s[n, iy, xm], c0, s[n, iy, xp]) * ((ix > 0) & (ix < w - 1))
    dy = _parabola(s[n, ym, ix], c0, s[n, yp, ix]) * ((iy > 0) & (iy < h - 1))
    return torch.stack([dx, dy], -1)


def detect_beads(
    image: torch.Tensor,  # (h, w) one tilt image (gold dark)
    *,
    bead_diameter_px: float,
    threshold: float | None = None,  # minimum NCC; default: adaptive (docstring)
    max_beads: int | None = None,
    min_separation_px: float | None = None,  # default: the bead diameter
    edge_px: float | None = None,  # ignore peaks this close to the border, default radius + 1
) -> BeadDetections:
    """Find gold beads as NCC maxima with the bead template, strongest first.

    The default threshold is ``max(0.3, 0.5 * q)`` with ``q`` the median score of the strongest
    ten maxima, so faint blobs and CTF fringes around beads are not taken for beads.
    """
    if image.ndim != 2:
        raise ValueError(f"image must have shape (h, w), got {tuple(image.shape)}")
    tpl = bead_template(bead_diameter_px, device=image.device)
    score = ncc_map(image[None].float(), tpl)[0]
    h, w = score.shape
    win = 2 * int(bead_diameter_px / 4) + 1
    is_max = score == F.max_pool2d(score[None, None], win, stride=1, padding=win // 2)[0, 0]
    edge = bead_diameter_px / 2 + 1 if edge_px is None else edge_px
    yy, xx = torch.meshgrid(torch.arange(h, device=score.device), torch.arange(w, device=score.device), indexing="ij")
    inner = (xx >= edge) & (xx <= w - 1 - edge) & (yy >= edge) & (yy <= h - 1 - edge)
    iy, ix = torch.nonzero(is_max & inner & (score > 0), as_tuple=True)
    vals = score[iy, ix]
    order = torch.argsort(vals, descending=True)
    iy, ix, vals = iy[order], ix[order], vals[order]
    if threshold is None:
        top = vals[:10]
        threshold = max(0.3, 0.5 * float(top.median())) if top.numel() else 0.3
    keep = vals >= threshold
    iy, ix, vals = iy[keep], ix[keep], vals[keep]
    xy = torch.stack([ix, iy], -1).to(torch.float64)
    xy = xy + subpixel_peak(score, iy, ix).to(torch.float64)
    sep = bead_diameter_px if min_separation_px is None else min_separation_px
    chosen: list[int] = []
    for i in range(xy.shape[0]):  # greedy: strongest first
        if chosen and bool(((xy[chosen] - xy[i]).norm(dim=1) < sep).any()):
            continue
        chosen.append(i)
        if max_beads is not None and len(chosen) >= max_beads:
            break
    idx = torch.tensor(chosen, dtype=torch.long, device=xy.device)
    return BeadDetections(xy_px=xy[idx], scores=vals[idx].to(torch.float64))
