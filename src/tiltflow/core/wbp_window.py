"""tomo3d's Hamming window for weighted back-projection: the ramp filter times a Hamming window.

Agulleiro & Fernandez, Bioinformatics 27:582 (2011), doi:10.1093/bioinformatics/btq692. The window
starts at a frequency ``start`` (cycles/px) and falls to 0.08 at Nyquist:

``H(k) = 1`` for ``|k| <= start``, ``0.54 + 0.46 cos(pi (|k| - start) / (0.5 - start))`` above;
``start = 0`` spans the whole range (tomo3d's default), ``start = 0.5`` is no window.

The window is applied along the view rows (x, perpendicular to the tilt axis), the axis the ramp
filter acts on; the two 1-D filters commute, so windowed views back-projected by
:func:`tiltflow.core.reconstruct.wbp` with ``radial_cutoff=0.5`` (a plain ramp) give tomo3d's WBP.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.radial_filter import filter_views, padded_length


def hamming_window(
    n_px: int,  # row length the rfft works on
    start: float,  # cycles/px where the window starts, in [0, 0.5]
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (n_px // 2 + 1,) float32, rfft layout
    """Return the window ``H(k)`` of the module docstring at ``k = i / n_px`` cycles/px."""
    if n_px < 2:
        raise ValueError(f"hamming_window: n_px must be at least 2, got {n_px}")
    if not 0.0 <= start <= 0.5:
        raise ValueError(f"hamming_window: start must be in [0, 0.5] cycles/px, got {start}")
    k = torch.arange(n_px // 2 + 1, dtype=torch.float64, device=device) / n_px
    if start >= 0.5:
        return torch.ones_like(k, dtype=torch.float32)
    phase = ((k - start) / (0.5 - start)).clamp(0.0, 1.0)
    return (0.54 + 0.46 * torch.cos(math.pi * phase)).to(torch.float32)


def hamming_filter_views(
    views: torch.Tensor,  # (..., ny, nx)
    start: float,  # cycles/px, [0, 0.5]
) -> torch.Tensor:  # (..., ny, nx)
    """Filter every row of the views by :func:`hamming_window` (edge-padded like the ramp filter)."""
    nx = views.shape[-1]
    n_pad = padded_length(nx)
    return filter_views(views, hamming_window(n_pad, start, device=views.device).to(views.dtype), n_pad=n_pad)
