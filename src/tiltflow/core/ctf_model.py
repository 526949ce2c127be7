"""The CTF model of DESIGN.md §2, shared by the simulator and the estimators.

``ctf = -sin(chi + arcsin(A) + phase)`` with
``chi = pi * lambda * df * k^2 - pi/2 * Cs * lambda^3 * k^4`` and the relativistic wavelength.
Defocus is underfocus-positive in Å; ``defocus_u_a`` lies along the astigmatism azimuth
``astigmatism_angle_deg`` (degrees from +x, counter-clockwise), ``defocus_v_a`` perpendicular.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core.fourier import frequency_grid_2d

__all__ = ["Optics", "ctf_1d", "ctf_2d", "defocus_at_azimuth", "electron_wavelength_a"]


@dataclass(frozen=True)
class Optics:
    """The microscope and sampling terms of the CTF: Å/px, kV, mm, fraction."""

    pixel_size_a: float
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07


def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3  # V
    # h / sqrt(2 m e V (1 + e V / (2 m c^2))), constants in SI, result in m -> Å
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    return h / math.sqrt(2 * m * e * v * (1 + e * v / (2 * m * c * c))) * 1e10


def defocus_at_azimuth(
    defocus_u_a: torch.Tensor | float,
    defocus_v_a: torch.Tensor | float,
    astigmatism_angle_deg: torch.Tensor | float,
    azimuth_rad: torch.Tensor,
) -> torch.Tensor:
    """Defocus (Å) seen along the frequency direction ``azimuth_rad`` (radians from +x, CCW)."""
    u = torch.as_tensor(defocus_u_a, dtype=azimuth_rad.dtype, device=azimuth_rad.device)
    v = torch.as_tensor(defocus_v_a, dtype=azimuth_rad.dtype, device=azimuth_rad.device)
    ang = torch.deg2rad(torch.as_tensor(astigmatism_angle_deg, dtype=azimuth_rad.dtype, device=azimuth_rad.device))
    return 0.5 * (u + v + (u - v) * torch.cos(2.0 * (azimuth_rad - ang)))


def ctf_2d(
    shape: tuple[int, int],
    optics: Optics,
    *,
    defocus_u_a: torch.Tensor | float,
    defocus_v_a: torch.Tensor | float,
    astigmatism_angle_deg: torch.Tensor | float,
    phase_shift_rad: torch.Tensor | float = 0.0,
    rfft: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Compute the CTF of an ``(h, w)`` image in rfft2 (or full fft) layout (DESIGN.md §2).

    ``-sin(chi + arcsin(A) + phase)`` with the relativistic wavelength; the defocus along each
    frequency's azimuth follows ``defocus_u_a`` at ``astigmatism_angle_deg`` (from +x,
    counter-clockwise) and ``defocus_v_a`` perpendicular. Batched over defocus tensors.

    Parameters
    ----------
    shape : tuple of int
        ``(h, w)`` of the image.
    optics : Optics
        Pixel size (Å/px), voltage (kV), Cs (mm), amplitude contrast.
    defocus_u_a, defocus_v_a : torch.Tensor or float
        Defocus along and across the astigmatism azimuth, Å, underfocus positive; ``(b,)`` tensors
        give ``b`` CTFs.
    astigmatism_angle_deg : torch.Tensor or float
        Azimuth of ``defocus_u_a``, degrees from +x, counter-clockwise.
    phase_shift_rad : torch.Tensor or float
        Phase-plate shift, radians.
    rfft : bool
        ``(h, w // 2 + 1)`` rfft2 layout, else the full ``(h, w)`` fft layout.
    device : torch.device or str, optional
        Device of the result.

    Returns
    -------
    torch.Tensor
        float32 ``(h, w // 2 + 1)`` (or ``(h, w)``), with a leading ``(b,)`` for batched defocus.

    Examples
    --------
    >>> ctf = ctf_2d((64, 64), Optics(pixel_size_a=2.0), defocus_u_a=2e4, defocus_v_a=2e4, astigmatism_angle_deg=0.0)
    >>> ctf.shape, round(float(ctf[0, 0]), 3)
    (torch.Size([64, 33]), -0.07)
    """
    pixel_size_a, voltage_kv, cs_mm = optics.pixel_size_a, optics.voltage_kv, optics.cs_mm
    ky, kx = frequency_grid_2d(shape, rfft=rfft, device=device)
    ky = ky.to(torch.float64) / pixel_size_a  # cycles/px / (Å/px) = 1/Å
    kx = kx.to(torch.float64) / pixel_size_a
    k2 = kx**2 + ky**2
    azimuth = torch.atan2(ky, kx)
    du = torch.as_tensor(defocus_u_a, dtype=torch.float64, device=kx.device)
    dv = torch.as_tensor(defocus_v_a, dtype=torch.float64, device=kx.device)
    da = torch.as_tensor(astigmatism_angle_deg, dtype=torch.float64, device=kx.device)
    ph = torch.as_tensor(phase_shift_rad, dtype=torch.float64, device=kx.device)
    batch = torch.broadcast_shapes(du.shape, dv.shape, da.shape, ph.shape)
    expand = (...,) + (None, None)
    df = (
        defocus_at_azimuth(du[expand], dv[expand], da[expand], azimuth)
        if batch
        else defocus_at_azimuth(du, dv, da, azimuth)
    )
    lam = electron_wavelength_a(voltage_kv)
    cs_a = cs_mm * 1e7
    chi = math.pi * lam * df * k2 - 0.5 * math.pi * cs_a * lam**3 * k2**2
    phase = ph[expand] if batch else ph
    out = -torch.sin(chi + math.asin(optics.amplitude_contrast) + phase)
    return out.to(torch.float32)


def ctf_1d(
    k_per_a: torch.Tensor,
    *,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    defocus_a: torch.Tensor | float,
    phase_shift_rad: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Radial CTF at spatial frequencies ``k_per_a`` (1/Å); broadcasts defocus over leading dims."""
    lam = electron_wavelength_a(voltage_kv)
    cs_a = cs_mm * 1e7
    df = torch.as_tensor(defocus_a, dtype=k_per_a.dtype, device=k_per_a.device)
    k2 = k_per_a**2
    chi = math.pi * lam * df * k2 - 0.5 * math.pi * cs_a * lam**3 * k2**2
    return -torch.sin(chi + math.asin(amplitude_contrast) + torch.as_tensor(phase_shift_rad, dtype=k_per_a.dtype))
