"""Fourier helpers shared by the core algorithms.

Conventions: images are ``(..., h, w)``; the Fourier origin is at index 0 (unshifted, ``rfft2``
layout unless a name says ``fft``); spatial frequencies are in cycles per pixel; the real-space
centre used for rotations and shifts is ``n // 2``.
"""

from __future__ import annotations

import torch


def frequency_grid_2d(
    shape: tuple[int, int], *, rfft: bool = True, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(ky, kx)`` spatial frequency grids in cycles/px for an (h, w) image.

    With ``rfft=True`` the grids have shape ``(h, w // 2 + 1)`` to match ``torch.fft.rfft2``.
    """
    h, w = shape
    ky = torch.fft.fftfreq(h, device=device)
    kx = torch.fft.rfftfreq(w, device=device) if rfft else torch.fft.fftfreq(w, device=device)
    ky_grid, kx_grid = torch.meshgrid(ky, kx, indexing="ij")
    return ky_grid, kx_grid


def phase_shift_2d(spectrum: torch.Tensor, shifts_px: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
    """Shift images given as rfft2 spectra ``(..., h, w//2+1)`` by ``shifts_px`` ``(..., 2)`` (x, y).

    A feature at p moves to p + shift (sub-pixel, periodic boundary).
    """
    ky, kx = frequency_grid_2d(image_shape, device=spectrum.device)
    sx = shifts_px[..., 0, None, None].to(ky.dtype)
    sy = shifts_px[..., 1, None, None].to(ky.dtype)
    # cycles/px * px = cycles; * -2 pi = rad
    phase = -2.0 * torch.pi * (kx * sx + ky * sy)
    return spectrum * torch.polar(torch.ones_like(phase), phase)


def shift_image_2d(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift real images ``(..., h, w)`` by ``shifts_px`` ``(..., 2)`` (x, y) with a Fourier shift."""
    shape = (images.shape[-2], images.shape[-1])
    spectrum = torch.fft.rfft2(images)
    return torch.fft.irfft2(phase_shift_2d(spectrum, shifts_px, shape), s=shape)


def fourier_crop_2d(images: torch.Tensor, new_shape: tuple[int, int]) -> torch.Tensor:
    """Bin real images ``(..., h, w)`` to ``new_shape`` by cropping their spectrum (no aliasing).

    The mean intensity is preserved.
    """
    h, w = images.shape[-2:]
    nh, nw = new_shape
    if (nh, nw) == (h, w):
        return images.clone()
    if nh > h or nw > w:
        raise ValueError(f"fourier_crop_2d: new shape {new_shape} is larger than {(h, w)}")
    spectrum = torch.fft.rfft2(images)
    top = (nh + 1) // 2
    bottom = nh // 2
    rows = (
        torch.cat([spectrum[..., :top, :], spectrum[..., h - bottom :, :]], dim=-2)
        if bottom
        else spectrum[..., :top, :]
    )
    cropped = rows[..., : nw // 2 + 1]
    out = torch.fft.irfft2(cropped, s=(nh, nw))
    return out * (nh * nw) / (h * w)


def bandpass_2d(
    shape: tuple[int, int],
    *,
    low_cut_px: float | None,
    high_cut_px: float | None,
    falloff: float = 0.02,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Soft band-pass in rfft2 layout, ``(h, w//2+1)``; cut-offs as periods in pixels.

    ``low_cut_px`` removes structure larger than that period, ``high_cut_px`` finer than that
    period; cosine edges ``falloff`` cycles/px wide.
    """
    ky, kx = frequency_grid_2d(shape, device=device)
    k = torch.sqrt(kx**2 + ky**2)
    mask = torch.ones_like(k)
    if high_cut_px:
        kc = 1.0 / high_cut_px
        edge = torch.clamp((k - kc) / falloff, 0.0, 1.0)
        mask = mask * 0.5 * (1.0 + torch.cos(torch.pi * edge))
    if low_cut_px:
        kc = 1.0 / low_cut_px
        edge = torch.clamp((kc - k) / falloff, 0.0, 1.0)
        mask = mask * 0.5 * (1.0 + torch.cos(torch.pi * edge))
    return mask


def bfactor_weight_2d(shape: tuple[int, int], *, pixel_size_a: float, bfactor_a2: float, device=None) -> torch.Tensor:
    """exp(B k^2 / 4) in rfft2 layout, k in 1/Å; negative B dampens high frequencies."""
    ky, kx = frequency_grid_2d(shape, device=device)
    k2 = (kx**2 + ky**2) / pixel_size_a**2  # (cycles/px)^2 / (Å/px)^2 = 1/Å^2
    return torch.exp(bfactor_a2 * k2 / 4.0)
