"""Tomogram reconstruction from aligned tilt series: view alignment (.xf), binning, WBP and SIRT.

Geometry and volume layout: see ``core/geometry.py`` and ``core/backproject.py`` (volumes are
``(nz, ny, nx)`` with z the beam / thickness axis, views ``(t, ny, nx)``).  The pieces live in
``backproject.py`` (matched projector pair), ``radial_filter.py`` (IMOD-style weighting) and
``sirt.py``; this module is the public entry point.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.backproject import _angles_rad, _as_float, backproject, project_volume
from tiltflow.core.fourier import fourier_crop_2d, shift_image_2d
from tiltflow.core.radial_filter import (
    filter_views,
    padded_length,
    radial_filter,
    tilt_increment_weights,
)
from tiltflow.core.sirt import sirt

__all__ = [
    "apply_xf",
    "backproject",
    "bin_views",
    "ctf_phase_flip_strips",
    "project_volume",
    "radial_filter",
    "sirt",
    "wbp",
]


def wbp(
    views: torch.Tensor,                 # (..., t, ny, nx) aligned views
    tilt_angles_deg,                     # (t,)
    *,
    thickness_px: int,
    radial_cutoff: float = 0.35,         # cycles/px
    radial_falloff: float = 0.035,       # cycles/px (Gaussian sigma)
    fake_sirt_iterations: int | None = None,
    z_offset_px: float = 0.0,
    x_offset_px: float = 0.0,
    weight_by_increment: bool = True,
) -> torch.Tensor:                       # (..., nz, ny, nx)
    """Weighted backprojection: radial filter along x' (IMOD ``RADIAL``), then :func:`backproject`.

    Each view is weighted by its angular increment in radians (``weight_by_increment``; else by
    ``pi / t``), so with full angular coverage the volume reproduces the specimen's density.
    ``fake_sirt_iterations`` switches to the SIRT-like filter (IMOD ``FakeSIRTiterations``).
    """
    views = _as_float(views, "views", 3)
    t, _, nx = views.shape[-3:]
    _angles_rad(tilt_angles_deg, t, views.device)
    n_pad = padded_length(nx)
    weights_k = radial_filter(
        n_pad, cutoff=radial_cutoff, falloff=radial_falloff,
        sirt_like_iterations=fake_sirt_iterations, device=views.device,
    )
    filtered = filter_views(views, weights_k.to(views.dtype), n_pad=n_pad)
    if weight_by_increment:
        view_w = tilt_increment_weights(tilt_angles_deg)
    else:
        view_w = torch.full((t,), math.pi / t, dtype=torch.float64)
    return backproject(
        filtered, tilt_angles_deg, thickness_px=thickness_px, z_offset_px=z_offset_px,
        x_offset_px=x_offset_px, weights=view_w.to(device=views.device, dtype=views.dtype),
    )


def apply_xf(
    images: torch.Tensor,                # (..., t, h, w) raw views
    xf: torch.Tensor,                    # (t, 6) IMOD .xf rows: A11 A12 A21 A22 DX DY
    out_shape: tuple[int, int] | None = None,  # (h', w'), default (h, w)
    *,
    mode: str = "bicubic",               # or "bilinear"
) -> torch.Tensor:                       # (..., t, h', w') aligned views
    """Transform raw views into aligned ones with IMOD ``.xf`` rows, like ``newstack -xform``.

    ``X' = A (X - c_in) + D + c_out`` maps raw to aligned pixels (DESIGN.md §2; centres
    ``(n-1)/2``), so each aligned pixel samples the raw image at ``A^-1 (X' - c_out - D) + c_in``.
    Areas outside the raw image are filled with the view's mean.
    """
    images = _as_float(images, "images", 3)
    t, h, w = images.shape[-3:]
    xf = torch.as_tensor(xf, dtype=torch.float64).to(images.device)
    if xf.shape != (t, 6):
        raise ValueError(
            f"xf must have shape ({t}, 6) for {t} views (A11 A12 A21 A22 DX DY), "
            f"got {tuple(xf.shape)}"
        )
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"apply_xf: mode must be 'bilinear' or 'bicubic', got {mode!r}")
    ho, wo = (h, w) if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
    a = xf[:, :4].reshape(t, 2, 2)
    if (torch.linalg.det(a).abs() < 1e-9).any():
        raise ValueError("xf has a singular 2x2 matrix; each view needs invertible A11 A12 A21 A22")
    a_inv = torch.linalg.inv(a)
    dev = images.device
    yo, xo = torch.meshgrid(
        torch.arange(ho, dtype=torch.float64, device=dev) - (ho - 1) / 2.0,
        torch.arange(wo, dtype=torch.float64, device=dev) - (wo - 1) / 2.0,
        indexing="ij",
    )
    d = torch.stack([xo, yo], -1)[None] - xf[:, None, None, 4:6]       # (t, h', w', 2)
    raw = torch.einsum("tij,tyxj->tyxi", a_inv, d)
    raw = raw + torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64, device=dev)
    # grid_sample with align_corners=True: -1 and 1 are the centres of the first and last pixels
    gx = 2.0 * raw[..., 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * raw[..., 1] / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], -1)
    flat = images.reshape(-1, t, h, w)
    mean = flat.mean(dim=(-2, -1), keepdim=True)
    out = torch.empty((flat.shape[0], t, ho, wo), dtype=images.dtype, device=dev)
    for b in range(flat.shape[0]):
        sampled = torch.nn.functional.grid_sample(
            (flat[b] - mean[b])[:, None], grid.to(images.dtype), mode=mode,
            padding_mode="zeros", align_corners=True,
        )
        out[b] = sampled[:, 0] + mean[b]
    return out.reshape(*images.shape[:-3], t, ho, wo)


def bin_views(
    views: torch.Tensor,                 # (..., h, w)
    factor: int,
) -> torch.Tensor:                       # (..., h // factor, w // factor)
    """Bin by Fourier cropping keeping IMOD's centre: ``(x_b - (n_b-1)/2) * f == x - (n-1)/2``.

    Rows / columns beyond a multiple of ``factor`` are trimmed first and a sub-pixel shift puts the
    binned pixels at the right place (pixel ``j`` covers original pixels ``j*f .. j*f + f-1`` when
    ``n`` is a multiple of ``f``, like IMOD's ``binvol`` / ``newstack -bin``).
    """
    views = _as_float(views, "views", 2)
    f = int(factor)
    if f < 1 or f != factor:
        raise ValueError(f"bin_views: factor must be a positive integer, got {factor}")
    if f == 1:
        return views.clone()
    h, w = views.shape[-2:]
    hb, wb = h // f, w // f
    if hb < 1 or wb < 1:
        raise ValueError(f"bin_views: images of {h} x {w} px are too small to bin by {f}")
    sy, sx = (h - f * hb) // 2, (w - f * wb) // 2
    trimmed = views[..., sy:sy + f * hb, sx:sx + f * wb]
    binned = fourier_crop_2d(trimmed, (hb, wb))
    # feature at original x sits at (x - s) / f; IMOD's centres want (x - (n-1)/2) / f + (n_b-1)/2
    dx = -(w - 1) / (2.0 * f) + (wb - 1) / 2.0 + sx / f
    dy = -(h - 1) / (2.0 * f) + (hb - 1) / 2.0 + sy / f
    shift = torch.tensor([dx, dy], dtype=binned.dtype, device=binned.device)
    return shift_image_2d(binned, shift.expand(*binned.shape[:-2], 2))


def ctf_phase_flip_strips(
    views: torch.Tensor,                 # (t, h, w) ALIGNED views (tilt axis along y)
    tilt_angles_deg,                     # (t,)
    *,
    defocus_u_a,                         # (t,) Å at the view centre, underfocus positive
    defocus_v_a=None,                    # (t,) Å, default = defocus_u_a (no astigmatism)
    astigmatism_angle_deg=0.0,           # (t,) or float, in the frame of these views
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_rad=0.0,
    strip_width_px: int = 64,
    strips_per_batch: int = 8,
) -> torch.Tensor:                       # (t, h, w)
    """Phase-flip tilted views in strips parallel to the tilt axis (like IMOD ``ctfphaseflip``).

    Each strip of ``strip_width_px`` columns is corrected with the defocus at its centre,
    ``df + x' tan(theta) * pixel_size_a`` (``geometry.defocus_offset_a``; x' from the view centre).
    The image is multiplied by ``-sign(CTF)`` so low frequencies keep their sign: contrast stays
    as in the images (dark protein, DESIGN.md §2) and every frequency band agrees with it.
    """
    from tiltflow.core.ctf_model import ctf_2d
    from tiltflow.core.geometry import defocus_offset_a

    views = _as_float(views, "views", 3)
    t, h, w = views.shape
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)
    if angles.numel() != t:
        raise ValueError(
            f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one angle per view"
        )
    du = torch.as_tensor(defocus_u_a, dtype=torch.float64).reshape(-1).expand(t)
    dv = du
    if defocus_v_a is not None:
        dv = torch.as_tensor(defocus_v_a, dtype=torch.float64).reshape(-1).expand(t)
    da = torch.as_tensor(astigmatism_angle_deg, dtype=torch.float64).reshape(-1).expand(t)
    if strip_width_px < 1:
        raise ValueError(f"strip_width_px must be a positive pixel count, got {strip_width_px}")
    starts = list(range(0, w, int(strip_width_px)))
    ends = [min(s + strip_width_px, w) for s in starts]
    centres = torch.tensor([(s + e - 1) / 2.0 for s, e in zip(starts, ends)], dtype=torch.float64)
    points = torch.stack([centres, torch.full_like(centres, (h - 1) / 2.0)], -1)
    out = torch.empty_like(views)
    for i in range(t):
        spectrum = torch.fft.rfft2(views[i])
        offsets = defocus_offset_a(points, tilt_angle_deg=float(angles[i]), tilt_axis_deg=0.0,
                                   pixel_size_a=pixel_size_a, image_shape=(h, w))
        for b0 in range(0, len(starts), strips_per_batch):
            sl = slice(b0, b0 + strips_per_batch)
            ctf = ctf_2d(
                (h, w), pixel_size_a=pixel_size_a, voltage_kv=voltage_kv, cs_mm=cs_mm,
                amplitude_contrast=amplitude_contrast, defocus_u_a=du[i] + offsets[sl],
                defocus_v_a=dv[i] + offsets[sl],
                astigmatism_angle_deg=da[i].expand(offsets[sl].shape),
                phase_shift_rad=phase_shift_rad, device=views.device,
            )
            flipped = torch.fft.irfft2(spectrum * -torch.sign(ctf).to(views.dtype), s=(h, w))
            for j, s in enumerate(starts[sl]):
                out[i, :, s:s + strip_width_px] = flipped[j, :, s:s + strip_width_px]
    return out
