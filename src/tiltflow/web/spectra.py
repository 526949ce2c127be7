"""What the CTF viewer draws over a power spectrum: the fitted CTF's zeros and its model image.

Conventions of DESIGN.md §2: ``ctf = -sin(chi + arcsin(A) + phase)``, underfocus-positive defocus
in Å, ``defocus_u`` along the azimuth (degrees from +x, counter-clockwise). Images are centred
power spectra, ``(y, x)`` with the origin at ``n // 2`` and the edge at Nyquist.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.ctf_model import ctf_2d, electron_wavelength_a


def ctf_zero_frequencies(
    defocus_a: float,
    *,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_rad: float = 0.0,
    k_max_per_a: float,
    n_max: int = 60,
) -> list[float]:
    """Spatial frequencies (1/Å, ascending, <= ``k_max_per_a``) where the CTF is zero.

    Zeros: ``chi(k) + arcsin(A) + phase = n pi``; with ``u = k^2`` that is the quadratic
    ``(pi/2) Cs lam^3 u^2 - pi lam df u + (n pi - arcsin(A) - phase) = 0``, smaller root.
    """
    lam = electron_wavelength_a(voltage_kv)
    cs_a = cs_mm * 1e7  # mm -> Å
    a = 0.5 * math.pi * cs_a * lam**3
    b = -math.pi * lam * defocus_a
    phi0 = math.asin(amplitude_contrast) + phase_shift_rad
    zeros = []
    for n in range(n_max + 1):
        c = n * math.pi - phi0
        if c <= 0:
            continue
        if a == 0:
            u = -c / b if b < 0 else float("nan")
        else:
            disc = b * b - 4 * a * c
            if disc < 0:
                break
            u = (-b - math.sqrt(disc)) / (2 * a)
        if not u > 0:
            continue
        k = math.sqrt(u)
        if k > k_max_per_a:
            break
        zeros.append(k)
    return zeros


def ctf_power_image(
    size_px: int,
    *,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    defocus_u_a: float,
    defocus_v_a: float,
    astigmatism_angle_deg: float,
    phase_shift_rad: float = 0.0,
) -> torch.Tensor:
    """CTF² of the fitted model as a centred ``(size, size)`` spectrum (origin at ``size // 2``)."""
    ctf = ctf_2d(
        (size_px, size_px),
        pixel_size_a=pixel_size_a,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a,
        astigmatism_angle_deg=astigmatism_angle_deg,
        phase_shift_rad=phase_shift_rad,
        rfft=False,
    )
    return torch.fft.fftshift(ctf**2, dim=(-2, -1))
