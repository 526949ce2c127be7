"""Tomogram reconstruction from aligned tilt series: view alignment (.xf), binning, WBP and SIRT.

Geometry and volume layout: see ``core/geometry.py`` and ``core/backproject.py`` (volumes are
``(nz, ny, nx)`` with z the beam / thickness axis, views ``(t, ny, nx)``).  The pieces live in
``backproject.py`` (matched projector pair), ``radial_filter.py`` (IMOD-style weighting) and
``sirt_solver.py``; this module is the public entry point.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.backproject import VolumeOffset, _angles_rad, _as_float, backproject, project_volume
from tiltflow.core.fourier import fourier_crop_2d, shift_image_2d
from tiltflow.core.phase_flip import ctf_phase_flip_strips
from tiltflow.core.radial_filter import (
    filter_views,
    padded_length,
    radial_filter,
    tilt_increment_weights,
)
from tiltflow.core.sirt_solver import sirt

__all__ = [
    "VolumeOffset",
    "aligned_shape",
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
    views: torch.Tensor,  # (..., t, ny, nx) aligned views
    tilt_angles_deg,  # (t,)
    *,
    thickness_px: int,
    radial_cutoff: float = 0.35,  # cycles/px
    radial_falloff: float = 0.035,  # cycles/px (Gaussian sigma)
    fake_sirt_iterations: int | None = None,
    offset: VolumeOffset | None = None,  # specimen coordinates of the volume's centre; None: (0, 0)
    weight_by_increment: bool = True,
) -> torch.Tensor:  # (..., nz, ny, nx)
    """Reconstruct by weighted backprojection: radial filter along x' (IMOD ``RADIAL``), then backproject.

    Each view is weighted by its angular increment in radians (``weight_by_increment``; else by
    ``pi / t``), so with full angular coverage the volume reproduces the specimen's density.
    ``fake_sirt_iterations`` switches to the SIRT-like filter (IMOD ``FakeSIRTiterations``).
    Geometry as :func:`backproject` (z is the beam axis; views aligned, tilt axis along y).

    Parameters
    ----------
    views : torch.Tensor
        ``(..., t, ny, nx)`` aligned views; never modified.
    tilt_angles_deg : sequence of float or torch.Tensor
        ``(t,)`` tilt angles, degrees within [-90, 90].
    thickness_px : int
        Number of z planes ``nz`` of the volume.
    radial_cutoff, radial_falloff : float
        Cycles/px where the Gaussian fall-off of the ramp starts (0.5: a plain ramp), and its sigma.
    fake_sirt_iterations : int, optional
        Use the filter that mimics this many SIRT iterations instead of the ramp.
    offset : VolumeOffset, optional
        Specimen coordinates (px) of the volume's centre (default: 0, 0).
    weight_by_increment : bool
        Weight views by their angular increment (else all by ``pi / t``).

    Returns
    -------
    torch.Tensor
        ``(..., nz, ny, nx)`` volume, dtype of ``views`` (float32 for integer input).

    Raises
    ------
    ValueError
        If the angles do not match the views or lie outside [-90, 90] degrees.

    Examples
    --------
    >>> import torch
    >>> views = torch.ones(3, 4, 16)
    >>> wbp(views, [-30.0, 0.0, 30.0], thickness_px=8).shape
    torch.Size([8, 4, 16])
    """
    views = _as_float(views, "views", 3)
    t, _, nx = views.shape[-3:]
    _angles_rad(tilt_angles_deg, t, views.device)
    offset = VolumeOffset() if offset is None else offset
    n_pad = padded_length(nx)
    weights_k = radial_filter(
        n_pad,
        cutoff=radial_cutoff,
        falloff=radial_falloff,
        sirt_like_iterations=fake_sirt_iterations,
        device=views.device,
    )
    filtered = filter_views(views, weights_k.to(views.dtype), n_pad=n_pad)
    if weight_by_increment:
        view_w = tilt_increment_weights(tilt_angles_deg)
    else:
        view_w = torch.full((t,), math.pi / t, dtype=torch.float64)
    return backproject(
        filtered,
        tilt_angles_deg,
        thickness_px=thickness_px,
        z_offset_px=offset.z_px,
        x_offset_px=offset.x_px,
        weights=view_w.to(device=views.device, dtype=views.dtype),
    )


def aligned_shape(raw_shape: tuple[int, int], xf: torch.Tensor) -> tuple[int, int]:
    """Shape (h', w') of the aligned views: the raw (h, w), swapped when the ``.xf`` turns the image by over 45°.

    A tilt axis near ±90° becomes y after alignment, so the field along the axis is kept whole
    (etomo does the same for its aligned stack).
    """
    xf = torch.as_tensor(xf, dtype=torch.float64)
    turn = torch.atan2(xf[:, 2], xf[:, 0]).median()  # A = R(-axis) / mag: angle of the first column
    h, w = int(raw_shape[0]), int(raw_shape[1])
    return (w, h) if abs(math.sin(float(turn))) > abs(math.cos(float(turn))) else (h, w)


def apply_xf(
    images: torch.Tensor,  # (..., t, h, w) raw views
    xf: torch.Tensor,  # (t, 6) IMOD .xf rows: A11 A12 A21 A22 DX DY
    out_shape: tuple[int, int] | None = None,  # (h', w'), default (h, w)
    *,
    mode: str = "bicubic",  # or "bilinear"
) -> torch.Tensor:  # (..., t, h', w') aligned views
    """Transform raw views into aligned ones with IMOD ``.xf`` rows, like ``newstack -xform``.

    ``X' = A (X - c_in) + D + c_out`` maps raw to aligned pixels (DESIGN.md §2; centres
    ``(n-1)/2``), so each aligned pixel samples the raw image at ``A^-1 (X' - c_out - D) + c_in``.
    Areas outside the raw image are filled with the view's mean.

    Parameters
    ----------
    images : torch.Tensor
        ``(..., t, h, w)`` raw views; never modified.
    xf : torch.Tensor
        ``(t, 6)`` IMOD ``.xf`` rows ``A11 A12 A21 A22 DX DY``, shifts in pixels of these views.
    out_shape : tuple of int, optional
        ``(h', w')`` of the aligned views (default ``(h, w)``; see :func:`aligned_shape`).
    mode : str
        Interpolation, ``"bicubic"`` or ``"bilinear"``.

    Returns
    -------
    torch.Tensor
        ``(..., t, h', w')`` aligned views, dtype of ``images`` (float32 for integer input).

    Raises
    ------
    ValueError
        If ``xf`` is not ``(t, 6)``, a 2x2 part is singular, or ``mode`` is unknown.

    Examples
    --------
    >>> import torch
    >>> views = torch.rand(2, 8, 8)
    >>> identity = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]] * 2)
    >>> torch.allclose(apply_xf(views, identity), views, atol=1e-5)
    True
    """
    images = _as_float(images, "images", 3)
    t, h, w = images.shape[-3:]
    xf = torch.as_tensor(xf, dtype=torch.float64).to(images.device)
    if xf.shape != (t, 6):
        raise ValueError(f"xf must have shape ({t}, 6) for {t} views (A11 A12 A21 A22 DX DY), got {tuple(xf.shape)}")
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
    out_xy = torch.stack([xo, yo], -1)  # (h', w', 2)
    centre_in = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64, device=dev)
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64, device=dev)
    flat = images.reshape(-1, t, h, w)
    out = torch.empty((flat.shape[0], t, ho, wo), dtype=images.dtype, device=dev)
    for i in range(t):  # one view at a time: the sampling grid is (h', w', 2) float64, not t of them
        raw = (out_xy - xf[i, 4:6]) @ a_inv[i].T + centre_in
        # grid_sample with align_corners=True: -1 and 1 are the centres of the first and last pixels
        grid = (raw * scale - 1.0).to(images.dtype)[None].expand(flat.shape[0], ho, wo, 2)
        mean = flat[:, i].mean(dim=(-2, -1), keepdim=True)
        sampled = torch.nn.functional.grid_sample(
            (flat[:, i] - mean)[:, None],
            grid,
            mode=mode,
            padding_mode="zeros",
            align_corners=True,
        )
        out[:, i] = sampled[:, 0] + mean
    return out.reshape(*images.shape[:-3], t, ho, wo)


def bin_views(
    views: torch.Tensor,  # (..., h, w)
    factor: int,
) -> torch.Tensor:  # (..., h // factor, w // factor)
    """Bin by Fourier cropping keeping IMOD's centre: ``(x_b - (n_b-1)/2) * f == x - (n-1)/2``.

    Rows / columns beyond a multiple of ``factor`` are trimmed first and a sub-pixel shift puts the
    binned pixels at the right place (pixel ``j`` covers original pixels ``j*f .. j*f + f-1`` when
    ``n`` is a multiple of ``f``, like IMOD's ``binvol`` / ``newstack -bin``). The mean is kept.

    Parameters
    ----------
    views : torch.Tensor
        ``(..., h, w)`` images; never modified.
    factor : int
        Binning factor, a positive integer.

    Returns
    -------
    torch.Tensor
        ``(..., h // factor, w // factor)`` binned images (a copy for ``factor=1``).

    Raises
    ------
    ValueError
        If ``factor`` is not a positive integer or the images are smaller than it.

    Examples
    --------
    >>> import torch
    >>> binned = bin_views(torch.ones(3, 16, 12), 2)
    >>> binned.shape, round(float(binned.mean()), 4)
    (torch.Size([3, 8, 6]), 1.0)
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
    trimmed = views[..., sy : sy + f * hb, sx : sx + f * wb]
    binned = fourier_crop_2d(trimmed, (hb, wb))
    # feature at original x sits at (x - s) / f; IMOD's centres want (x - (n-1)/2) / f + (n_b-1)/2
    dx = -(w - 1) / (2.0 * f) + (wb - 1) / 2.0 + sx / f
    dy = -(h - 1) / (2.0 * f) + (hb - 1) / 2.0 + sy / f
    shift = torch.tensor([dx, dy], dtype=binned.dtype, device=binned.device)
    return shift_image_2d(binned, shift.expand(*binned.shape[:-2], 2))
