"""The fit annulus of a power spectrum and the CTF model over it.

(``ctf_fit``'s 2-D refinement,
the series pass's joint astigmatism). Conventions as ``ctf_fit`` (DESIGN.md §2): Å, rad, rfft layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tiltflow.core.ctf_model import ctf_1d, electron_wavelength_a
from tiltflow.core.ctf_spectra import subtract_background
from tiltflow.core.fourier import frequency_grid_2d

if TYPE_CHECKING:
    from tiltflow.core.ctf_fit import CtfParams

__all__ = ["Annulus", "AnnulusGrid", "annulus", "grid_scores", "model_sq"]


@dataclass(frozen=True)
class AnnulusGrid:
    """The float32 terms of the grid searches over an annulus.

    float32 terms of the grid searches: ``chi = df * per_df + fixed (+ phase)``,
    ``df = m + a1 c2 + a2 s2``; ``y`` the centred, unit-norm spectrum values.
    """

    per_df: torch.Tensor  # (p,) rad/Å
    fixed: torch.Tensor  # (p,) rad
    c2: torch.Tensor  # (p,) cos 2 azimuth
    s2: torch.Tensor  # (p,) sin 2 azimuth
    y: torch.Tensor  # (p,)


@dataclass(frozen=True)
class Annulus:
    """The background-subtracted spectrum over the fit band.

    The background-subtracted spectrum over the fit band, (p,) float64 each: spatial frequency
    ``k`` (1/Å), azimuth ``az`` (rad, from +x), value ``y``; ``grid``: the grid searches' terms.
    """

    k: torch.Tensor
    az: torch.Tensor
    y: torch.Tensor
    grid: AnnulusGrid


def annulus(spectrum: torch.Tensor, params: CtfParams, mean_defocus_a: float) -> Annulus:
    """Take the fit band of ``spectrum`` (rfft layout), background removed at ``mean_defocus_a`` (Å)."""
    n = spectrum.shape[-2]
    dev = spectrum.device
    ky, kx = frequency_grid_2d((n, n), device=dev)
    ky, kx = ky.to(torch.float64) / params.pixel_size_a, kx.to(torch.float64) / params.pixel_size_a  # 1/Å
    k2 = kx**2 + ky**2
    low, high = params.resolution_range_a
    mask = (k2 >= 1.0 / low**2) & (k2 <= 1.0 / high**2)
    norm = subtract_background(
        spectrum,
        pixel_size_a=params.pixel_size_a,
        defocus_a=mean_defocus_a,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
    )
    k, az, y = torch.sqrt(k2[mask]), torch.atan2(ky, kx)[mask], norm.to(torch.float64)[mask]
    lam, cs_a = electron_wavelength_a(params.voltage_kv), params.cs_mm * 1e7
    k2m = k2[mask]
    yc = y - y.mean()
    grid = AnnulusGrid(
        *(
            t.to(torch.float32)
            for t in (
                math.pi * lam * k2m,
                -0.5 * math.pi * cs_a * lam**3 * k2m**2 + math.asin(params.amplitude_contrast),
                torch.cos(2 * az),
                torch.sin(2 * az),
                yc / yc.norm().clamp_min(1e-30),
            )
        )
    )
    return Annulus(k, az, y, grid)


def model_sq(ann: Annulus, params: CtfParams, m, a1, a2, ph) -> torch.Tensor:
    """Compute ``ctf^2`` over the annulus for given defocus, astigmatism and phase.

    ``ctf^2`` over the annulus for mean defocus ``m``, astigmatism ``(a1, a2)`` (Å) and phase
    ``ph`` (rad), each a tensor (batched over leading dims; float64, differentiable).
    """
    df = m[..., None] + a1[..., None] * torch.cos(2 * ann.az) + a2[..., None] * torch.sin(2 * ann.az)
    ctf = ctf_1d(
        ann.k,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
        amplitude_contrast=params.amplitude_contrast,
        defocus_a=df,
        phase_shift_rad=ph[..., None],
    )
    return ctf * ctf


def grid_scores(ann: Annulus, m, a1, a2, ph, chunk: int = 32) -> torch.Tensor:
    """Correlate ``ctf^2`` of candidate parameters with the annulus (float32, for grid searches).

    Pearson correlations (c,) of ``ctf^2`` with the annulus for candidate (mean defocus, a1, a2,
    phase) (c,) each, in float32 (for grid searches; refinement is float64).
    """
    g = ann.grid
    out = []
    for i in range(0, m.numel(), chunk):
        sl = slice(i, i + chunk)
        df = (m[sl, None].float() + a1[sl, None].float() * g.c2).addcmul_(a2[sl, None].float(), g.s2)
        chi = df.mul_(g.per_df).add_(g.fixed).add_(ph[sl, None].float())
        x = chi.sin_().square_()
        x = x - x.mean(-1, keepdim=True)
        out.append((x @ g.y) / x.norm(dim=-1).clamp_min(1e-30))
    return torch.cat(out).to(torch.float64)
