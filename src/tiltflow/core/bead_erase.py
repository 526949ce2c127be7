"""Gold-bead erasing: beads of a 3-D model projected into the raw views, discs around them replaced by noise.

The noise matches the discs' surroundings (IMOD ``ccderaser`` with a bead model and
``-PolynomialOrder 0``; fidder's "local mean + noise").

Projection (``core/geometry.py``, DESIGN.md §2): a bead at (x, y, z) px (specimen frame, relative to
the aligned image centre, z along the beam) has aligned coordinates ``u = (x cos(theta) + z sin(theta),
y)`` at tilt ``theta``; the view's ``.xf`` maps raw to aligned, ``u = A (X - c) + D``, so the bead lies
at ``X = c + A^-1 (u - D)`` in the raw view (``c = ((nx-1)/2, (ny-1)/2)``).

Fill: every pixel within ``radius_px`` of a bead centre becomes ``mean + sd * n`` with ``n`` standard
normal noise, ``mean`` and ``sd`` those of the ring ``radius_px < r <= radius_px + ring_px`` around that
bead, leaving out pixels of any disc. No pixel outside the discs changes.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.geometry import image_centre

__all__ = ["bead_disc_mask", "beads_in_views", "erase_beads"]


def beads_in_views(
    xyz_px: torch.Tensor,  # (n, 3) bead positions, px of these views (module docstring)
    tilt_angles_deg,  # (t,) tilt angles the alignment solved (refined)
    xf,  # (t, 6) IMOD .xf rows aligning these raw views
    image_shape: tuple[int, int],  # (ny, nx) of the raw views
) -> torch.Tensor:  # (n, t, 2) raw pixel coordinates (x, y), 0-based
    """Where each bead of the model lies in each raw view (module docstring)."""
    xyz = torch.as_tensor(xyz_px, dtype=torch.float64).reshape(-1, 3)
    th = torch.deg2rad(torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)).to(xyz.device)
    xf = torch.as_tensor(xf, dtype=torch.float64).to(xyz.device)
    if xf.shape != (th.shape[0], 6):
        raise ValueError(
            f"beads_in_views: xf must be ({th.shape[0]}, 6) for {th.shape[0]} tilt angles, got {tuple(xf.shape)}"
        )
    u = torch.stack(
        [xyz[:, None, 0] * torch.cos(th) + xyz[:, None, 2] * torch.sin(th), xyz[:, None, 1].expand(-1, th.shape[0])], -1
    )  # (n, t, 2)
    a_inv = torch.linalg.inv(xf[:, :4].reshape(-1, 2, 2))
    cx, cy = image_centre(image_shape)
    raw = torch.einsum("tij,ntj->nti", a_inv, u - xf[None, :, 4:6])
    return raw + torch.tensor([cx, cy], dtype=torch.float64, device=xyz.device)


def _neighbourhood(xy: torch.Tensor, half: int, shape: tuple[int, int]):
    """Pixel indices (n, P) of the (2 half + 1)^2 box around each centre, distances, in-image flags."""
    h, w = shape
    off = torch.arange(-half, half + 1, device=xy.device)
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    base = torch.round(xy).long()
    px = base[:, 0:1] + dx.reshape(1, -1)
    py = base[:, 1:2] + dy.reshape(1, -1)
    dist = torch.sqrt((px - xy[:, 0:1]) ** 2 + (py - xy[:, 1:2]) ** 2)
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    return py.clamp(0, h - 1), px.clamp(0, w - 1), dist, inside


def bead_disc_mask(
    shape: tuple[int, int],  # (h, w)
    xy_px: torch.Tensor,  # (n, 2) bead centres (x, y), px; NaN rows ignored
    radius_px: float,
    *,
    device=None,
) -> torch.Tensor:  # (h, w) bool: within radius_px of a centre
    """Pixels whose centres lie within ``radius_px`` of a bead centre."""
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    xy = torch.as_tensor(xy_px, dtype=torch.float64, device=device).reshape(-1, 2)
    xy = xy[torch.isfinite(xy).all(-1)]
    if not xy.shape[0]:
        return mask
    py, px, dist, inside = _neighbourhood(xy, math.ceil(radius_px) + 1, shape)
    disc = inside & (dist <= radius_px)
    mask[py[disc], px[disc]] = True
    return mask


def erase_beads(
    image: torch.Tensor,  # (h, w) one view
    xy_px: torch.Tensor,  # (n, 2) bead centres (x, y), px; NaN rows ignored
    radius_px: float,  # erased radius, px (bead radius + expansion)
    *,
    ring_px: float | None = None,  # width of the ring giving the local statistics, px
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # erased image (h, w), erased-pixel mask (h, w) bool
    """Replace the discs around the beads by local noise (module docstring).

    ``ring_px`` defaults to ``max(2, radius_px / 2)``. A bead whose ring holds fewer than 4 pixels
    (surrounded by other beads, or at a corner) takes the statistics of all pixels outside the discs.

    Parameters
    ----------
    image : torch.Tensor
        ``(h, w)`` one view; never modified.
    xy_px : torch.Tensor
        ``(n, 2)`` bead centres (x, y), px, 0-based (:func:`beads_in_views`); NaN rows ignored.
    radius_px : float
        Erased radius, px (bead radius plus a margin).
    ring_px : float, optional
        Width, px, of the ring around each disc whose pixels give the local mean and SD.
    generator : torch.Generator, optional
        Random numbers for the noise (for reproducible results).

    Returns
    -------
    tuple of torch.Tensor
        The erased image ``(h, w)`` (dtype of ``image``) and the erased-pixel mask ``(h, w)`` bool.

    Raises
    ------
    ValueError
        If ``image`` is not ``(h, w)`` or ``radius_px`` is not positive.

    Examples
    --------
    >>> import torch
    >>> image = torch.rand(32, 32)
    >>> erased, mask = erase_beads(image, torch.tensor([[16.0, 16.0]]), 3.0)
    >>> erased.shape, int(mask.sum()), bool((erased[~mask] == image[~mask]).all())
    (torch.Size([32, 32]), 29, True)
    """
    if image.ndim != 2:
        raise ValueError(f"erase_beads: image must be (h, w), got {tuple(image.shape)}")
    if not radius_px > 0:
        raise ValueError(f"erase_beads: radius_px must be > 0, got {radius_px}")
    ring = max(2.0, 0.5 * radius_px) if ring_px is None else float(ring_px)
    h, w = image.shape
    dev, shape = image.device, (h, w)
    xy = torch.as_tensor(xy_px, dtype=torch.float64).to(dev).reshape(-1, 2)
    xy = xy[torch.isfinite(xy).all(-1)]
    mask = bead_disc_mask(shape, xy, radius_px, device=dev)
    out = image.clone()
    if not xy.shape[0] or not bool(mask.any()):
        return out, mask
    py, px, dist, inside = _neighbourhood(xy, math.ceil(radius_px + ring) + 1, shape)
    vals = image[py, px].to(torch.float64)
    disc = inside & (dist <= radius_px)
    ann = (inside & (dist > radius_px) & (dist <= radius_px + ring) & ~mask[py, px]).to(torch.float64)
    count = ann.sum(1)
    mean = (vals * ann).sum(1) / count.clamp_min(1)
    sd = torch.sqrt((((vals - mean[:, None]) ** 2) * ann).sum(1) / count.clamp_min(1))
    few = count < 4
    if bool(few.any()):
        rest = image[~mask].to(torch.float64)
        g_mean, g_sd = (rest.mean(), rest.std(correction=0)) if rest.numel() else (vals.mean(), vals.std())
        mean = torch.where(few, g_mean, mean)
        sd = torch.where(few, g_sd, sd)
    noise = torch.randn(vals.shape, generator=generator, dtype=torch.float64, device=dev)
    fill = (mean[:, None] + sd[:, None] * noise).to(image.dtype)
    out[py[disc], px[disc]] = fill[disc]
    return out, mask
