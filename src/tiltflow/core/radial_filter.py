"""Radial (ramp) weighting for weighted backprojection as IMOD ``tilt`` does it; SIRT-like filter.

Filters are 1-D along the view x axis in ``rfft`` layout: index ``i`` is ``k = i / n_px`` cycles/px.

- RADIAL: the ramp ``|k|`` up to ``cutoff`` (cycles/px), then the value at ``cutoff`` times a
  Gaussian of standard deviation ``falloff`` (cycles/px; IMOD's ``RADIAL cutoff falloff`` with
  ``FalloffIsTrueSigma 1``).  At ``k = 0`` the weight is ``0.2 / n_px``, what the Kak & Slaney
  spatial ramp kernel gives there (keeps the mean from vanishing).
- SIRT-like (IMOD's ``FakeSIRTiterations``; Zeng, Med. Phys. 39:603 (2012), doi:10.1118/1.3673956):
  ``N`` SIRT / Landweber iterations started from zero equal a backprojection weighted by
  ``ramp * (1 - (1 - alpha / |k|) ** N)``: the full ramp where ``|k| << N alpha`` (low frequencies
  converge first), flattening to about ``N alpha`` above.  IMOD's empirical constants are used so
  the same ``N`` looks like IMOD's: ``alpha = 0.00195`` cycles/px, ``N`` reduced above 15 and 30
  iterations and increased by 0.3; the plain ramp is kept below ``k = alpha``.
"""

from __future__ import annotations

import math

import torch

FAKE_SIRT_ALPHA = 0.00195  # cycles/px, IMOD tilt's empirical value


def fake_sirt_exponent(iterations: int) -> float:
    """Return the exponent IMOD uses for ``iterations`` SIRT-like iterations (matched to its real SIRT)."""
    n = float(iterations)
    if iterations > 30:
        n = 27.0 + 0.6 * (iterations - 30)
    elif iterations > 15:
        n = 15.0 + 0.8 * (iterations - 15)
    return n + 0.3


def radial_filter(
    n_px: int,
    *,
    cutoff: float = 0.35,  # cycles/px where the Gaussian fall-off starts (0.5: none)
    falloff: float = 0.035,  # sigma of the fall-off, cycles/px
    n_views: int | None = None,  # scale by pi / n_views (views evenly over 180 deg)
    sirt_like_iterations: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (n_px // 2 + 1,) float32 weights, rfft layout
    """IMOD-style radial weighting for rows of ``n_px`` pixels (module docstring).

    Without ``n_views`` the weights are in cycles/px: backprojecting rows filtered by them, each
    view weighted by its angular increment in radians, gives densities on the specimen's scale.
    """
    if n_px < 2:
        raise ValueError(f"radial_filter: n_px must be at least 2, got {n_px}")
    if not 0.0 < cutoff <= 0.5:
        raise ValueError(f"radial_filter: cutoff must be in (0, 0.5] cycles/px, got {cutoff}")
    if falloff <= 0.0:
        raise ValueError(f"radial_filter: falloff (a sigma in cycles/px) must be > 0, got {falloff}")
    k = torch.arange(n_px // 2 + 1, dtype=torch.float64, device=device) / n_px  # cycles/px
    w = k.clone()
    if sirt_like_iterations:
        if sirt_like_iterations < 0:
            raise ValueError(f"sirt_like_iterations must be positive, got {sirt_like_iterations}")
        n = fake_sirt_exponent(int(sirt_like_iterations))
        above = k >= FAKE_SIRT_ALPHA
        ratio = 1.0 - torch.pow(1.0 - FAKE_SIRT_ALPHA / k[above], n)
        w[above] = k[above] * ratio
    w[0] = 0.2 / n_px
    if cutoff < 0.5:
        i_cut = round(cutoff * n_px)
        top = w[min(i_cut, w.numel() - 1)]
        tail = k > i_cut / n_px
        w[tail] = top * torch.exp(-0.5 * ((k[tail] - i_cut / n_px) / falloff) ** 2)
    if n_views:
        w = w * (math.pi / n_views)
    return w.to(torch.float32)


def padded_length(n_px: int) -> int:
    """Smallest 2,3,5-smooth length >= 2 * n_px (room for the ramp kernel without wrap-around)."""
    m = 2 * n_px
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def tilt_increment_weights(tilt_angles_deg) -> torch.Tensor:
    """Angular weight of each view ``(t,)`` in radians: half the gap to its two neighbours in angle.

    End views get the gap to their one neighbour; a single view gets pi.
    """
    a = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)
    if a.numel() == 1:
        return torch.full((1,), math.pi, dtype=torch.float64)
    order = torch.argsort(a)
    s = torch.deg2rad(a[order])
    gaps = s[1:] - s[:-1]
    w_sorted = torch.empty_like(s)
    w_sorted[1:-1] = 0.5 * (gaps[1:] + gaps[:-1])
    w_sorted[0], w_sorted[-1] = gaps[0], gaps[-1]
    w = torch.empty_like(w_sorted)
    w[order] = w_sorted
    return w


def filter_views(
    views: torch.Tensor,  # (..., ny, nx)
    weights: torch.Tensor,  # (n_pad // 2 + 1,) from radial_filter(n_pad)
    *,
    n_pad: int,
    rows_per_batch: int = 2048,
) -> torch.Tensor:  # (..., ny, nx) filtered rows
    """Filter rows along x with 1-D rfft weights after edge-value padding to ``n_pad`` pixels."""
    nx = views.shape[-1]
    if n_pad < nx or weights.numel() != n_pad // 2 + 1:
        raise ValueError(f"filter_views: {weights.numel()} weights do not fit n_pad={n_pad} (must be >= nx={nx})")
    left = (n_pad - nx) // 2
    rows = views.reshape(-1, 1, nx)
    out = torch.empty_like(rows)
    w = weights.to(device=views.device)
    for r0 in range(0, rows.shape[0], rows_per_batch):
        chunk = rows[r0 : r0 + rows_per_batch]
        padded = torch.nn.functional.pad(chunk, (left, n_pad - nx - left), mode="replicate")
        spec = torch.fft.rfft(padded, dim=-1) * w
        out[r0 : r0 + rows_per_batch] = torch.fft.irfft(spec, n=n_pad, dim=-1)[..., left : left + nx]
    return out.reshape(views.shape)
