"""Tilt-series projection geometry shared by the simulator, CTF, alignment and reconstruction.

Frames and conventions (DESIGN.md §2):

- **Specimen frame**: (x, y, z) in pixels of the tilt images, origin at the volume centre, the tilt
  axis along +y, z along the beam at 0° tilt, pointing towards the electron source.
- **Tilting** by the true angle ``theta`` (nominal angle + tilt-angle offset) rotates about +y:
  ``x' = x cos(theta) + z sin(theta)``, ``z' = -x sin(theta) + z cos(theta)``, ``y' = y``.
- **Aligned image** coordinates are (x', y') relative to the image centre ``c = ((nx-1)/2, (ny-1)/2)``
  (IMOD's centre, 0-based pixel indices, x = column, y = row).
- **Raw image**: the tilt axis lies at ``tilt_axis_deg`` from +y, counter-clockwise positive (x right,
  y = row index up as in IMOD), and each view is displaced by a shift ``s`` (px):
  ``p_raw = c + R(tilt_axis_deg) @ (x', y') + s``.  The IMOD ``.xf`` that aligns this view is
  ``A = R(-tilt_axis_deg)``, ``(DX, DY) = -A @ s``.
- **Defocus** at a point: the objective is focused above the specimen in underfocus, so a point
  higher in the beam (larger z') is *less* underfocused: ``df = df_centre - z' * pixel_size_a``.
  For the specimen plane (z = 0) this gives ``df = df_centre + x' * tan(theta) * pixel_size_a``.
"""

from __future__ import annotations

import math

import torch


def rotation_matrix_2d(angle_deg: torch.Tensor | float) -> torch.Tensor:
    """Counter-clockwise rotation ``(..., 2, 2)`` acting on column vectors (x, y)."""
    a = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float64))
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def image_centre(image_shape: tuple[int, int]) -> tuple[float, float]:
    """IMOD's centre ``((nx-1)/2, (ny-1)/2)`` as (x, y) for an ``(ny, nx)`` image shape."""
    ny, nx = image_shape
    return (nx - 1) / 2.0, (ny - 1) / 2.0


def tilt_points(points_xyz: torch.Tensor, tilt_angles_deg: torch.Tensor) -> torch.Tensor:
    """Tilt specimen points ``(n, 3)`` by each angle ``(t,)`` about +y -> ``(t, n, 3)`` (x', y', z')."""
    th = torch.deg2rad(torch.as_tensor(tilt_angles_deg, dtype=torch.float64))[:, None]
    p = points_xyz.to(torch.float64)[None]
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    xt = x * torch.cos(th) + z * torch.sin(th)
    zt = -x * torch.sin(th) + z * torch.cos(th)
    return torch.stack([xt, y.expand_as(xt), zt], -1)


def project_points(
    points_xyz: torch.Tensor,  # (n, 3) specimen frame, px
    *,
    tilt_angles_deg: torch.Tensor,  # (t,) true tilt angles
    tilt_axis_deg: float,
    shifts_px: torch.Tensor | None,  # (t, 2) raw-image shifts (x, y), or None
    image_shape: tuple[int, int],  # (ny, nx)
) -> torch.Tensor:  # (t, n, 2) raw pixel coordinates (x, y), 0-based
    """Project 3-D points into raw tilt images (module docstring conventions)."""
    tilted = tilt_points(points_xyz, tilt_angles_deg)[..., :2]
    rot = rotation_matrix_2d(tilt_axis_deg)
    raw = tilted @ rot.T
    cx, cy = image_centre(image_shape)
    raw = raw + torch.tensor([cx, cy], dtype=torch.float64)
    if shifts_px is not None:
        raw = raw + shifts_px.to(torch.float64)[:, None, :]
    return raw


def raw_to_aligned(
    points_xy: torch.Tensor, *, tilt_axis_deg: float, shift_px: torch.Tensor | None, image_shape: tuple[int, int]
) -> torch.Tensor:
    """Raw pixel coordinates ``(..., 2)`` -> aligned (x', y') relative to the centre (px)."""
    cx, cy = image_centre(image_shape)
    p = points_xy.to(torch.float64) - torch.tensor([cx, cy], dtype=torch.float64)
    if shift_px is not None:
        p = p - shift_px.to(torch.float64)
    return p @ rotation_matrix_2d(-tilt_axis_deg).T


def defocus_offset_a(
    points_xy: torch.Tensor,  # (..., 2) raw pixel coordinates (x, y)
    *,
    tilt_angle_deg: float,
    tilt_axis_deg: float,
    pixel_size_a: float,
    image_shape: tuple[int, int],
    shift_px: torch.Tensor | None = None,
) -> torch.Tensor:  # (...,) Å to add to the defocus at the image centre
    """Compute the defocus change across a tilted specimen plane: ``x' * tan(theta) * pixel_size_a``.

    ``x'`` is the aligned coordinate perpendicular to the tilt axis, from IMOD's image centre.

    Parameters
    ----------
    points_xy : torch.Tensor
        ``(..., 2)`` raw pixel coordinates (x, y).
    tilt_angle_deg : float
        Tilt angle, degrees.
    tilt_axis_deg : float
        Tilt-axis angle, degrees from +y, counter-clockwise.
    pixel_size_a : float
        Pixel size, Å/px.
    image_shape : tuple of int
        ``(ny, nx)`` of the image.
    shift_px : torch.Tensor, optional
        ``(2,)`` raw-image shift of the view.

    Returns
    -------
    torch.Tensor
        ``(...,)`` Å to add to the defocus at the image centre.

    Examples
    --------
    >>> import torch
    >>> pts = torch.tensor([[0.0, 50.0], [99.0, 50.0]])
    >>> defocus_offset_a(pts, tilt_angle_deg=45.0, tilt_axis_deg=0.0, pixel_size_a=2.0, image_shape=(100, 100)).round()
    tensor([-99.,  99.], dtype=torch.float64)
    """
    aligned = raw_to_aligned(points_xy, tilt_axis_deg=tilt_axis_deg, shift_px=shift_px, image_shape=image_shape)
    return aligned[..., 0] * math.tan(math.radians(tilt_angle_deg)) * pixel_size_a


def xf_from_geometry(tilt_axis_deg: float, shifts_px: torch.Tensor) -> torch.Tensor:
    """IMOD ``.xf`` rows ``(t, 6)`` = A11 A12 A21 A22 DX DY aligning raw views with these shifts."""
    a = rotation_matrix_2d(-tilt_axis_deg)
    d = -(shifts_px.to(torch.float64) @ a.T)
    t = shifts_px.shape[0]
    return torch.cat([a.reshape(1, 4).expand(t, 4), d], dim=1)
