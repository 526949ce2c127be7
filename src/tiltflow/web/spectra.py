"""What the CTF viewer draws over a power spectrum: the fitted CTF's zeros and its model image.

Conventions of DESIGN.md §2: ``ctf = -sin(chi + arcsin(A) + phase)``, underfocus-positive defocus
in Å, ``defocus_u`` along the azimuth (degrees from +x, counter-clockwise). Images are centred
power spectra, ``(y, x)`` with the origin at ``n // 2`` and the edge at Nyquist.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.ctf_model import Optics, ctf_2d, electron_wavelength_a
from tiltflow.workflow.sets import Acquisition, CtfTomo


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


def ctf_power_image(size_px: int, fit: CtfTomo, *, acquisition: Acquisition, pixel_size_a: float) -> torch.Tensor:
    """CTF² of the fitted model ``fit`` as a centred ``(size, size)`` spectrum (origin at ``size // 2``)
    of pixel size ``pixel_size_a``; voltage, Cs and amplitude contrast from ``acquisition``."""
    optics = Optics(
        pixel_size_a=pixel_size_a,
        voltage_kv=acquisition.voltage_kv,
        cs_mm=acquisition.cs_mm,
        amplitude_contrast=acquisition.amplitude_contrast,
    )
    ctf = ctf_2d(
        (size_px, size_px),
        optics,
        defocus_u_a=fit.defocus_u_a,
        defocus_v_a=fit.defocus_v_a,
        astigmatism_angle_deg=fit.astigmatism_angle_deg,
        phase_shift_rad=fit.phase_shift_rad or 0.0,
        rfft=False,
    )
    return torch.fft.fftshift(ctf**2, dim=(-2, -1))
