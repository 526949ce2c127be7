"""Density scaling and storage modes of tilt-series views, as IMOD's ``newstack`` does them.

- ``mean_sd``: every view shifted and scaled to the given mean and standard deviation (newstack
  ``-float 2 -meansd``); views are scaled one by one, so exposure differences between views go.
- ``min_max``: one linear scaling for the whole stack mapping its minimum and maximum to the given
  values (newstack ``-scale``); the density relations between views are kept.
- Storage modes: ``float`` (MRC mode 2), ``int16`` (mode 1) and ``uint8`` (0-255 whole numbers).
  Integer modes round to the nearest whole number; values outside the mode's range are clipped and
  counted, never hidden.

Binning is :func:`tiltflow.core.reconstruct.bin_views` (Fourier cropping, IMOD's centre kept); an
``.xf`` that applied to the unbinned stack applies to the binned one with its shifts divided by the
factor (:func:`rescale_xf_shifts`; shifts are in pixels of the stack they apply to, DESIGN.md §2).
"""

from __future__ import annotations

import torch

MODE_RANGES = {"int16": (-32768.0, 32767.0), "uint8": (0.0, 255.0)}  # whole numbers a mode holds


def scale_views(
    views: torch.Tensor,  # (t, h, w) float
    scale: str,  # "none" | "mean_sd" | "min_max"
    *,
    mean: float = 0.0,  # mean_sd: target mean of each view (density units)
    sd: float = 1.0,  # mean_sd: target standard deviation of each view, > 0
    minimum: float = 0.0,  # min_max: value the stack's minimum maps to
    maximum: float = 255.0,  # min_max: value the stack's maximum maps to
) -> torch.Tensor:  # (t, h, w) float32
    """Scale densities (module docstring); a constant view (SD 0) becomes ``mean`` / the range's middle.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` views; never modified.
    scale : str
        ``"none"``, ``"mean_sd"`` (each view to ``mean`` and ``sd``) or ``"min_max"`` (the stack's
        range to ``minimum`` .. ``maximum``).
    mean, sd : float
        Target mean and standard deviation of each view (``mean_sd``; ``sd`` > 0).
    minimum, maximum : float
        Values the stack's minimum and maximum map to (``min_max``).

    Returns
    -------
    torch.Tensor
        ``(t, h, w)`` float32 scaled views.

    Raises
    ------
    ValueError
        If the views are not ``(t, h, w)``, ``scale`` is unknown, ``sd`` <= 0 or
        ``maximum`` <= ``minimum``.

    Examples
    --------
    >>> import torch
    >>> scaled = scale_views(torch.arange(32.0).reshape(2, 4, 4), "mean_sd", mean=10.0, sd=2.0)
    >>> round(float(scaled[1].mean()), 4), round(float(scaled[1].std(correction=0)), 4)
    (10.0, 2.0)
    """
    if views.ndim != 3:
        raise ValueError(f"scale_views: views must be (t, h, w), got {tuple(views.shape)}")
    v = views.to(torch.float64)
    if scale == "none":
        out = v
    elif scale == "mean_sd":
        if not sd > 0:
            raise ValueError(f"scale_views: sd must be > 0, got {sd}")
        m = v.mean(dim=(-2, -1), keepdim=True)
        s = v.std(dim=(-2, -1), correction=0, keepdim=True)
        out = torch.where(s > 0, (v - m) / s.clamp_min(1e-300) * sd, torch.zeros_like(v)) + mean
    elif scale == "min_max":
        if not maximum > minimum:
            raise ValueError(f"scale_views: maximum {maximum} must exceed minimum {minimum}")
        lo, hi = v.min(), v.max()
        if hi > lo:
            out = (v - lo) * ((maximum - minimum) / (hi - lo)) + minimum
        else:
            out = torch.full_like(v, 0.5 * (minimum + maximum))
    else:
        raise ValueError(f"scale_views: scale must be 'none', 'mean_sd' or 'min_max', got {scale!r}")
    return out.to(torch.float32)


def quantize(views: torch.Tensor, mode: str) -> tuple[torch.Tensor, int]:
    """Values as stored in ``mode``, and how many were clipped.

    ``float``: unchanged (float32); ``int16`` / ``uint8``: rounded to whole numbers and clipped to
    the mode's range (``MODE_RANGES``). Returns (values as float32, clipped count).
    """
    if mode == "float":
        return views.to(torch.float32), 0
    if mode not in MODE_RANGES:
        raise ValueError(f"quantize: mode must be 'float', 'int16' or 'uint8', got {mode!r}")
    lo, hi = MODE_RANGES[mode]
    rounded = torch.round(views.to(torch.float64))
    clipped = int(((rounded < lo) | (rounded > hi)).sum())
    return rounded.clamp(lo, hi).to(torch.float32), clipped


def rescale_xf_shifts(
    xf,  # (t, 6) IMOD .xf rows for a stack of pixel size ``from_pixel_a``
    from_pixel_a: float,  # Å/px of the stack the rows apply to
    to_pixel_a: float,  # Å/px of the stack they should apply to
) -> torch.Tensor:  # (t, 6) float64
    """Return the same alignment for a stack of the same field at another pixel size.

    The 2x2 part is kept; DX, DY (pixels of the stack they apply to) are multiplied by
    ``from_pixel_a / to_pixel_a``.
    """
    if not (from_pixel_a > 0 and to_pixel_a > 0):
        raise ValueError(f"rescale_xf_shifts: pixel sizes must be > 0 Å/px, got {from_pixel_a}, {to_pixel_a}")
    out = torch.as_tensor(xf, dtype=torch.float64).clone().reshape(-1, 6)
    out[:, 4:] *= from_pixel_a / to_pixel_a
    return out
