"""Bead-model fits and honest alignment measures shared by tracking, the bundle solve and tests.

Geometry (``core/geometry.py``): a specimen point (x, y, z) px seen at tilt ``theta`` has aligned
coordinates ``(x cos(theta) + z sin(theta), y)`` relative to the image centre, and raw coordinates
``c + m R(tilt_axis) @ aligned + s`` (IMOD's centre ``c = ((nx-1)/2, (ny-1)/2)``, shift ``s``).
Missing observations are NaN throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core.geometry import image_centre, rotation_matrix_2d

__all__ = [
    "ResidualSummary",
    "alignment_residual_against_truth",
    "fit_bead_positions_3d",
    "fit_beads_and_shifts",
    "project_beads",
    "summarize_residuals",
    "transform_points_xf",
]


def _check_points(points: torch.Tensor, t: int, name: str) -> torch.Tensor:
    points = torch.as_tensor(points)
    if points.ndim != 3 or points.shape[1:] != (t, 2):
        raise ValueError(f"{name} must have shape (n_beads, {t}, 2) = x, y per view, got {tuple(points.shape)}")
    return points.to(torch.float64)


def _angles(tilt_angles_deg, device) -> torch.Tensor:
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).to(device)
    if not bool(torch.isfinite(angles).all()) or bool((angles.abs() >= 90).any()):
        raise ValueError("tilt_angles_deg must be finite degrees within (-90, 90)")
    return angles


def transform_points_xf(
    xf: torch.Tensor,  # (t, 6) IMOD .xf rows
    points_px: torch.Tensor,  # (n, t, 2) raw pixel coordinates (x, y), NaN = missing
    image_shape: tuple[int, int],  # (ny, nx) of the stack the .xf applies to
) -> torch.Tensor:  # (n, t, 2) aligned (x', y') relative to the centre
    """Apply ``.xf`` rows to raw points: ``A (X - c) + D`` (same size in and out, DESIGN.md §2)."""
    xf = torch.as_tensor(xf, dtype=torch.float64)
    points = _check_points(points_px, xf.shape[0], "points_px")
    if xf.ndim != 2 or xf.shape[1] != 6:
        raise ValueError(f"xf must have shape (t, 6), got {tuple(xf.shape)}")
    xf = xf.to(points.device)
    cx, cy = image_centre(image_shape)
    rel = points - torch.tensor([cx, cy], dtype=torch.float64, device=points.device)
    a = xf[:, :4].reshape(-1, 2, 2)
    return torch.einsum("tij,ntj->nti", a, rel) + xf[None, :, 4:6]


def fit_bead_positions_3d(
    aligned_px: torch.Tensor,  # (n, t, 2) aligned coordinates, NaN = missing
    tilt_angles_deg: torch.Tensor,  # (t,)
    weights: torch.Tensor | None = None,  # (n, t) >= 0, default 1 where observed
) -> tuple[torch.Tensor, torch.Tensor]:  # xyz (n, 3) px, residuals (n, t, 2) px (NaN missing)
    """Least-squares 3-D bead positions from aligned coordinates at known tilt angles.

    ``x' = x cos(theta) + z sin(theta)``, ``y' = y``. Beads seen in fewer than two distinct
    views get z = 0 (and NaN when never seen).
    """
    aligned = _check_points(aligned_px, aligned_px.shape[1], "aligned_px")
    th = torch.deg2rad(_angles(tilt_angles_deg, aligned.device))
    if th.shape[0] != aligned.shape[1]:
        raise ValueError(f"{th.shape[0]} tilt angles for {aligned.shape[1]} views")
    seen = torch.isfinite(aligned).all(-1)
    w = seen.to(torch.float64) if weights is None else torch.as_tensor(weights).to(aligned) * seen
    xp = torch.where(seen, aligned[..., 0], 0.0)
    yp = torch.where(seen, aligned[..., 1], 0.0)
    c, s = torch.cos(th)[None], torch.sin(th)[None]
    sw = w.sum(1)
    y = (w * yp).sum(1) / sw
    a11, a12, a22 = (w * c * c).sum(1), (w * c * s).sum(1), (w * s * s).sum(1)
    b1, b2 = (w * c * xp).sum(1), (w * s * xp).sum(1)
    det = a11 * a22 - a12 * a12
    good = det > 1e-9 * (a11 * a22).clamp_min(1e-300)
    safe = torch.where(good, det, torch.ones_like(det))
    x = torch.where(good, (a22 * b1 - a12 * b2) / safe, b1 / a11)
    z = torch.where(good, (a11 * b2 - a12 * b1) / safe, torch.zeros_like(det))
    xyz = torch.stack([x, y, z], -1)
    model = torch.stack([x[:, None] * c + z[:, None] * s, y[:, None].expand_as(xp)], -1)
    return xyz, aligned - model


def project_beads(
    xyz_px: torch.Tensor,  # (n, 3) specimen frame
    tilt_angles_deg: torch.Tensor,  # (t,)
    *,
    tilt_axis_deg: float,
    shifts_px: torch.Tensor,  # (t, 2) raw-image shifts
    image_shape: tuple[int, int],  # (ny, nx)
    magnification: torch.Tensor | None = None,  # (t,) view magnification, default 1
) -> torch.Tensor:  # (n, t, 2) raw pixel coordinates
    """Raw positions ``c + m R(axis) (x cos + z sin, y) + s`` of beads in every view."""
    xyz = xyz_px.to(torch.float64)
    th = torch.deg2rad(_angles(tilt_angles_deg, xyz.device))
    u = torch.stack(
        [xyz[:, None, 0] * torch.cos(th) + xyz[:, None, 2] * torch.sin(th), xyz[:, None, 1].expand(-1, th.shape[0])], -1
    )
    if magnification is not None:
        u = u * magnification.to(u)[None, :, None]
    raw = u @ rotation_matrix_2d(tilt_axis_deg).to(u).T
    cx, cy = image_centre(image_shape)
    return raw + torch.tensor([cx, cy]).to(u) + shifts_px.to(u)[None]


def fit_beads_and_shifts(
    positions_px: torch.Tensor,  # (n, t, 2) raw bead positions, NaN = missing
    tilt_angles_deg: torch.Tensor,  # (t,)
    *,
    tilt_axis_deg: float,
    image_shape: tuple[int, int],
    shifts_px: torch.Tensor | None = None,  # (t, 2) starting shifts, default 0
    weights: torch.Tensor | None = None,  # (n, t)
    iterations: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:  # xyz (n, 3), shifts (t, 2)
    """Alternate 3-D bead fits and per-view shifts (weighted median offsets) at a fixed axis.

    The shift of a view with no observed beads keeps its starting value.
    """
    pos = positions_px.to(torch.float64)
    t = pos.shape[1]
    s = torch.zeros(t, 2, dtype=torch.float64, device=pos.device) if shifts_px is None else shifts_px.to(pos).clone()
    seen = torch.isfinite(pos).all(-1)
    rot = rotation_matrix_2d(-tilt_axis_deg).to(pos)
    cx, cy = image_centre(image_shape)
    centre = torch.tensor([cx, cy]).to(pos)
    xyz = torch.zeros(pos.shape[0], 3).to(pos)
    for _ in range(iterations):
        aligned = (pos - centre - s[None]) @ rot.T
        xyz, _ = fit_bead_positions_3d(aligned, tilt_angles_deg, weights)
        pred = project_beads(xyz, tilt_angles_deg, tilt_axis_deg=tilt_axis_deg, shifts_px=s, image_shape=image_shape)
        diff = torch.where(seen[..., None], pos - pred, torch.nan)
        step = torch.nanmedian(diff, dim=0).values
        s = s + torch.nan_to_num(step, nan=0.0)
    return xyz, s


def alignment_residual_against_truth(
    xf: torch.Tensor,  # (t, 6) our .xf rows
    tilt_angles_deg: torch.Tensor,  # (t,) our tilt angles
    true_bead_projections_px: torch.Tensor,  # (n, t, 2) TRUE raw bead positions, NaN = not seen
    image_shape: tuple[int, int],  # (ny, nx) of the stack the .xf applies to
) -> float:  # RMS residual, px
    """Measure an alignment honestly against the true 2-D bead positions (RMS, px).

    The honest measure: our ``.xf`` applied to the TRUE 2-D bead positions, each bead's 3-D
    position fitted to those aligned positions at our tilt angles (least squares), RMS of the
    2-D residuals over all observed points of beads seen in at least 3 views.

    Gauge freedoms of an alignment (a common translation of the specimen, a constant tilt
    offset) cost nothing; a wrong axis angle, a misplaced axis or wrong shifts do.
    """
    aligned = transform_points_xf(xf, true_bead_projections_px, image_shape)
    seen = torch.isfinite(aligned).all(-1)
    keep = seen.sum(1) >= 3
    if not bool(keep.any()):
        raise ValueError("alignment_residual_against_truth: no bead is seen in 3 or more views")
    _, res = fit_bead_positions_3d(aligned[keep], tilt_angles_deg)
    r2 = (res**2).sum(-1)[seen[keep]]
    return float(r2.mean().sqrt())


@dataclass(frozen=True)
class ResidualSummary:
    """Bead residual statistics (IMOD ``tiltalign``'s "residual error mean and sd")."""

    mean_px: float
    sd_px: float
    rms_px: float
    mean_nm: float | None  # mean_px * pixel size, when a pixel size was given
    per_view_px: torch.Tensor  # (t,) mean residual of each view (NaN when no bead)
    per_bead_px: torch.Tensor  # (n,) mean residual of each bead (NaN when never seen)


def summarize_residuals(
    residuals_px: torch.Tensor,  # (n, t) residual magnitudes, NaN = missing
    *,
    pixel_size_a: float | None = None,  # Å/px of the images the residuals are in
) -> ResidualSummary:
    """Mean, sd and RMS of residual magnitudes, per view and per bead; nm via ``pixel_size_a``."""
    r = torch.as_tensor(residuals_px, dtype=torch.float64)
    if r.ndim != 2:
        raise ValueError(f"residuals_px must have shape (n_beads, t), got {tuple(r.shape)}")
    seen = torch.isfinite(r)
    vals = r[seen]
    if vals.numel() == 0:
        raise ValueError("summarize_residuals: no finite residual")
    mean = float(vals.mean())
    sd = float(vals.std()) if vals.numel() > 1 else 0.0
    nm = None if pixel_size_a is None else mean * pixel_size_a / 10.0  # px * Å/px / (Å/nm)
    return ResidualSummary(
        mean_px=mean,
        sd_px=sd,
        rms_px=math.sqrt(float((vals**2).mean())),
        mean_nm=nm,
        per_view_px=torch.nanmean(r, dim=0),
        per_bead_px=torch.nanmean(r, dim=1),
    )
