"""How far a CTF fit holds.

The astigmatism-corrected (equi-phase) average of a spectrum, its
per-ring correlation with the fitted ``ctf^2`` and CTFFIND4's fit resolution. Conventions as
``ctf_fit`` (DESIGN.md §2): Å, 1/Å, rfft layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tiltflow.core.ctf_model import ctf_1d, defocus_at_azimuth, electron_wavelength_a
from tiltflow.core.ctf_spectra import (
    defocus_phase,
    local_mean,
    matching_k2,
    pixel_radius,
    radial_bins,
    ring_window,
    subtract_background,
)
from tiltflow.core.fourier import frequency_grid_2d

if TYPE_CHECKING:
    from tiltflow.core.ctf_fit import CtfFit, CtfParams

__all__ = ["equiphase_average", "fit_resolution_a", "ring_correlation"]


def equiphase_average(spectrum: torch.Tensor, params: CtfParams, fit: CtfFit) -> tuple[torch.Tensor, torch.Tensor]:
    """Astigmatism-corrected rotational average of the normalised spectrum -> (profile, counts) (nb,).

    Each pixel is binned at the radius where a CTF of the mean defocus has the same phase.
    """
    n = spectrum.shape[-2]
    nb = n // 2 + 1
    dev = spectrum.device
    lam, cs_a = electron_wavelength_a(params.voltage_kv), params.cs_mm * 1e7
    ky, kx = frequency_grid_2d((n, n), device=dev)
    ky, kx = ky.to(torch.float64) / params.pixel_size_a, kx.to(torch.float64) / params.pixel_size_a
    k2 = kx**2 + ky**2
    df = defocus_at_azimuth(fit.defocus_u_a, fit.defocus_v_a, fit.astigmatism_angle_deg, torch.atan2(ky, kx))
    chi = defocus_phase(k2, df, wavelength_a=lam, cs_a=cs_a)
    mean = torch.full_like(k2, fit.defocus_mean_a)
    r_eq = torch.sqrt(matching_k2(chi, mean, wavelength_a=lam, cs_a=cs_a)) * n * params.pixel_size_a
    r_eq = torch.where(pixel_radius(n, device=dev) <= nb - 1, r_eq, torch.full_like(r_eq, float(nb + 1)))
    norm = subtract_background(
        spectrum,
        pixel_size_a=params.pixel_size_a,
        defocus_a=fit.defocus_mean_a,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
    )
    return radial_bins(norm, r_eq, nb)


def ring_correlation(
    spectrum: torch.Tensor, params: CtfParams, fit: CtfFit
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k 1/Å, equi-phase profile, fitted ctf^2, per-ring correlation), each (nb,)."""
    n = spectrum.shape[-2]
    nb = n // 2 + 1
    dev = spectrum.device
    profile, counts = equiphase_average(spectrum, params, fit)
    k = torch.arange(nb, dtype=torch.float64, device=dev) / (n * params.pixel_size_a)
    model = (
        ctf_1d(
            k,
            voltage_kv=params.voltage_kv,
            cs_mm=params.cs_mm,
            amplitude_contrast=params.amplitude_contrast,
            defocus_a=fit.defocus_mean_a,
            phase_shift_rad=fit.phase_shift_rad,
        )
        ** 2
    )
    lo, hi = ring_window(
        n,
        pixel_size_a=params.pixel_size_a,
        defocus_a=torch.tensor(fit.defocus_mean_a, device=dev),
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
    )
    mo, mm = local_mean(profile, counts, lo, hi), local_mean(model, counts, lo, hi)
    cov = local_mean(profile * model, counts, lo, hi) - mo * mm
    vo = local_mean(profile * profile, counts, lo, hi) - mo * mo
    vm = local_mean(model * model, counts, lo, hi) - mm * mm
    frc = cov / torch.sqrt((vo * vm).clamp_min(1e-30))
    return k, profile, model, frc


def fit_resolution_a(spectrum: torch.Tensor, params: CtfParams, fit: CtfFit) -> float:
    """Estimate the resolution (Å) up to which Thon rings are fitted (CTFFIND4's measure).

    Resolution (Å) up to which Thon rings are fitted: CTFFIND4's thresholds on the ring
    correlation, scanned from the low-resolution limit up to where rings come closer than 3 px.
    """
    k, _, _, frc = ring_correlation(spectrum, params, fit)
    n = spectrum.shape[-2]
    kmin = 1.0 / params.resolution_range_a[0]
    lam = electron_wavelength_a(params.voltage_kv)
    # ring period in bins at bin i: d(r^2) = (n*px)^2 / (lam*df) per ring, dr = d(r^2) / (2r)
    period = (n * params.pixel_size_a) ** 2 / (
        lam * max(fit.defocus_u_a, 1.0) * 2.0 * torch.arange(k.numel()).clamp_min(1)
    )
    last = int((period >= 3.0).sum()) - 1
    start = max(int(torch.searchsorted(k, torch.tensor(kmin, dtype=k.dtype, device=k.device))), 1)
    above_low = above_high = 0
    for i in range(start, last + 1):
        c = float(frc[i])
        if (above_low > 3 and c < 0.1) or (above_high > 3 and c < 0.5):
            return float(1.0 / k[i])
        above_low += c > 0.1
        above_high += c > 0.66
    return float(1.0 / k[max(last, start)]) if above_high > 3 else float(1.0 / k[start])
