"""Noise-free image formation of one tilt: weak-phase CTF with the tilted-plane defocus gradient,
dose-dependent damage, and the gold beads' amplitude contrast.

``intensity = mean_counts * exp(-t_gold / 120 Å) * (1 + CTF ⊛ damage ⊛ phase)``, clipped to
``>= 0.02 * mean_counts``. With the CTF ``-sin(chi + arcsin(A))`` (DESIGN.md §2) a positive phase
(protein) is dark. The defocus at raw pixel p is
``defocus_centre + geometry.defocus_offset_a(p, shift_px=None)`` (the specimen mid-plane, z = 0),
applied by rendering through defocus nodes (about 0.5 rad of CTF phase apart at Nyquist) and
interpolating per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tiltflow.core import geometry
from tiltflow.core.ctf_model import Optics, ctf_2d, electron_wavelength_a
from tiltflow.core.fourier import frequency_grid_2d
from tiltflow.testing.phantom import GOLD_ABSORPTION_LENGTH_A, Specimen, project_specimen

MIN_INTENSITY_FRACTION = 0.02


@dataclass(frozen=True)
class TiltView:
    """Where a tilt image is taken: the true tilt angle (nominal + offset) and tilt-axis angle
    (degrees from +y, CCW), the raw image shape ``(ny, nx)``, the stage shift ``(x, y)`` px of this
    view and the margin (px) of canvas rendered around the image."""

    tilt_angle_deg: float
    tilt_axis_deg: float
    image_shape: tuple[int, int]
    shift_px: tuple[float, float] = (0.0, 0.0)
    margin_px: int = 0


@dataclass(frozen=True)
class ImageCtf:
    """The microscope's CTF for one image: defocus (Å, underfocus positive) at the raw image centre,
    astigmatism, optics, and whether the tilted plane's defocus gradient is applied."""

    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float = 0.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_gradient: bool = True


@dataclass(frozen=True)
class ImageExposure:
    """The dose side of an image: pre-exposure (e/Å²) for the damage filter (0: no damage), the
    flux of the empty field, and the std (rad) of a white random phase (amorphous ice) per pixel
    drawn from ``texture_seed``."""

    exposure_e_a2: float = 0.0
    mean_counts: float = 1.0
    ice_texture_rad: float = 0.0
    texture_seed: int = 0


def critical_exposure_e_a2(k_per_a: torch.Tensor, *, voltage_kv: float) -> torch.Tensor:
    """Grant & Grigorieff (2015, doi:10.7554/eLife.06980) critical exposure (e/Å²) at k (1/Å).

    ``Ne = 0.245 k^-1.665 + 2.81`` at 300 kV, times 0.8 at 200 kV and below.
    """
    ne = 0.245 * k_per_a.clamp_min(1e-6) ** -1.665 + 2.81
    return ne * (0.8 if voltage_kv < 250 else 1.0)


def damage_filter_2d(
    shape: tuple[int, int],
    *,
    pixel_size_a: float,
    exposure_e_a2: float,
    voltage_kv: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (h, w//2+1)
    """Amplitude attenuation ``exp(-N / (2 Ne(k)))`` after exposure N (e/Å²), rfft2 layout."""
    ky, kx = frequency_grid_2d(shape, device=device)
    k = torch.sqrt(kx.double() ** 2 + ky.double() ** 2) / pixel_size_a  # cycles/px / (Å/px) = 1/Å
    ne = critical_exposure_e_a2(k, voltage_kv=voltage_kv)
    return torch.exp(-exposure_e_a2 / (2.0 * ne)).to(torch.float32)


def defocus_offset_map_a(
    canvas_shape: tuple[int, int],
    *,
    margin_px: int,
    image_shape: tuple[int, int],
    tilt_angle_deg: float,
    tilt_axis_deg: float,
    pixel_size_a: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (H, W) Å to add to the defocus at the raw image centre
    """``geometry.defocus_offset_a`` on every canvas pixel (canvas [y+m, x+m] = raw (x, y))."""
    cx, cy = geometry.image_centre(image_shape)
    probe = torch.tensor([[cx, cy], [cx + 1.0, cy], [cx, cy + 1.0]], dtype=torch.float64)
    off = geometry.defocus_offset_a(
        probe,
        tilt_angle_deg=tilt_angle_deg,
        tilt_axis_deg=tilt_axis_deg,
        pixel_size_a=pixel_size_a,
        image_shape=image_shape,
        shift_px=None,
    )
    gx, gy = float(off[1] - off[0]), float(off[2] - off[0])  # the offset is linear in (x, y)
    h, w = canvas_shape
    x = torch.arange(w, dtype=torch.float32, device=device) - margin_px - cx
    y = torch.arange(h, dtype=torch.float32, device=device) - margin_px - cy
    return gy * y[:, None] + gx * x[None, :]


def nyquist_strip_step_a(pixel_size_a: float, voltage_kv: float, max_phase_rad: float = 0.5) -> float:
    """Defocus step (Å) whose CTF phase change at Nyquist is ``max_phase_rad``."""
    lam = electron_wavelength_a(voltage_kv)
    k2 = (0.5 / pixel_size_a) ** 2  # (1/Å)^2 at Nyquist
    return max_phase_rad / (math.pi * lam * k2)


def apply_ctf_with_gradient(
    phase_rad: torch.Tensor,  # (H, W)
    offset_a: torch.Tensor | None,  # (H, W) defocus offsets (Å), or None for a uniform CTF
    *,
    pixel_size_a: float,
    ctf: ImageCtf,  # its defocus_gradient is the caller's: offset_a is applied as given
    spectral_filter: torch.Tensor | None = None,  # (H, W//2+1) e.g. the damage filter
    strip_step_a: float | None = None,
    max_strips: int = 48,
) -> torch.Tensor:  # (H, W) contrast, mean zero
    """``CTF ⊛ phase`` with a spatially varying defocus: images rendered at defocus nodes spanning
    the offsets are blended with linear (hat) weights per pixel. Nodes are at most
    ``strip_step_a`` apart (default: 0.5 rad of CTF phase at Nyquist) unless ``max_strips`` caps
    them. The phase's mean is removed (contrast relative to the field)."""
    shape = (phase_rad.shape[-2], phase_rad.shape[-1])
    dev = phase_rad.device
    spectrum = torch.fft.rfft2(phase_rad.to(torch.float32))
    spectrum[..., 0, 0] = 0
    if spectral_filter is not None:
        spectrum = spectrum * spectral_filter
    lens = Optics(
        pixel_size_a=pixel_size_a, voltage_kv=ctf.voltage_kv, cs_mm=ctf.cs_mm, amplitude_contrast=ctf.amplitude_contrast
    )

    def lens_ctf(phase_shift_rad: float) -> torch.Tensor:
        return ctf_2d(
            shape,
            lens,
            defocus_u_a=ctf.defocus_u_a,
            defocus_v_a=ctf.defocus_v_a,
            astigmatism_angle_deg=ctf.astigmatism_angle_deg,
            phase_shift_rad=phase_shift_rad,
            device=dev,
        )

    ctf0 = lens_ctf(0.0)  # -sin(a), a = chi + arcsin(A) at the centre's defocus
    lo = float(offset_a.min()) if offset_a is not None else 0.0
    hi = float(offset_a.max()) if offset_a is not None else 0.0
    if offset_a is None or hi - lo < 1.0:
        return torch.fft.irfft2(spectrum * ctf0, s=shape)
    # -sin(a + b) = ctf0 cos(b) + ctf90 sin(b), b = pi lambda dz k^2: the same model, any offset dz
    ctf90 = lens_ctf(math.pi / 2)  # -cos(a)
    ky, kx = frequency_grid_2d(shape, device=dev)
    k2 = (kx**2 + ky**2) / pixel_size_a**2  # 1/Å^2
    lam = electron_wavelength_a(ctf.voltage_kv)
    step_max = strip_step_a or nyquist_strip_step_a(pixel_size_a, ctf.voltage_kv)
    n = min(max(math.ceil((hi - lo) / step_max) + 1, 2), max_strips)
    step = (hi - lo) / (n - 1)
    out = torch.zeros(shape, dtype=torch.float32, device=dev)
    for node in torch.linspace(lo, hi, n, dtype=torch.float64).tolist():
        weight = (1.0 - (offset_a - node).abs() / step).clamp_min(0.0)
        b = (math.pi * lam * node) * k2  # Å * Å * 1/Å^2 = rad
        node_ctf = ctf0 * torch.cos(b) + ctf90 * torch.sin(b)
        out += weight * torch.fft.irfft2(spectrum * node_ctf, s=shape)
    return out


def render_tilt_image(
    specimen: Specimen,
    view: TiltView,
    ctf: ImageCtf,
    exposure: ImageExposure = ImageExposure(),
    *,
    pixel_size_a: float | None = None,  # default: the specimen's
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (ny + 2m, nx + 2m) float32 expected intensity, m = view.margin_px
    """Noise-free image of one tilt at the frame-average geometry (see the module docstring).

    Canvas pixel ``[y + m, x + m]`` is raw image pixel (x, y); the margin lets callers shift the
    image (frame motion) without wrapping. A bead at 3-D position P appears at
    ``geometry.project_points(P, ...)`` as its darkest spot.
    """
    px = specimen.pixel_size_a if pixel_size_a is None else pixel_size_a
    if abs(px - specimen.pixel_size_a) > 1e-9:
        raise ValueError(
            f"pixel_size_a {px} differs from the specimen's {specimen.pixel_size_a}; "
            "build the specimen at the pixel size you render"
        )
    proj = project_specimen(
        specimen,
        tilt_angle_deg=view.tilt_angle_deg,
        tilt_axis_deg=view.tilt_axis_deg,
        shift_px=view.shift_px,
        image_shape=view.image_shape,
        margin_px=view.margin_px,
    )
    phase = proj.phase_rad.to(device=device, dtype=torch.float32)
    canvas_shape = (phase.shape[-2], phase.shape[-1])
    if exposure.ice_texture_rad > 0:
        noise = np.random.default_rng(exposure.texture_seed).standard_normal(canvas_shape, np.float32)
        phase = phase + exposure.ice_texture_rad * torch.from_numpy(noise).to(phase)
    damage = None
    if exposure.exposure_e_a2 > 0:
        damage = damage_filter_2d(
            canvas_shape,
            pixel_size_a=px,
            exposure_e_a2=exposure.exposure_e_a2,
            voltage_kv=ctf.voltage_kv,
            device=phase.device,
        )
    offset = None
    if ctf.defocus_gradient and abs(view.tilt_angle_deg) > 1e-6:
        offset = defocus_offset_map_a(
            canvas_shape,
            margin_px=view.margin_px,
            image_shape=view.image_shape,
            tilt_angle_deg=view.tilt_angle_deg,
            tilt_axis_deg=view.tilt_axis_deg,
            pixel_size_a=px,
            device=phase.device,
        )
    contrast = apply_ctf_with_gradient(phase, offset, pixel_size_a=px, ctf=ctf, spectral_filter=damage)
    transmission = torch.exp(-proj.gold_thickness_a.to(contrast) / GOLD_ABSORPTION_LENGTH_A)
    image = exposure.mean_counts * transmission * (1.0 + contrast)
    return image.clamp_min(MIN_INTENSITY_FRACTION * exposure.mean_counts)
