"""Whole-series alignments in the terms of IMOD, AreTomo, RELION 5 and Warp (pure functions).

A :class:`SeriesAlignment` holds what our sets store per view, in tilt-angle order: the IMOD
``.xf`` row (DESIGN.md §2), the tilt angle to reconstruct with (refined when aligned) and the
``enabled`` flag. The per-view conventions live in :mod:`tiltflow.core.transforms`; here:

- **AreTomo** ``.aln``: one global row per enabled view (``ROT``, ``GMAG``, ``TX``, ``TY``,
  ``TILT``), excluded views listed as dark frames. ``A = GMAG R(-ROT)``, ``D = -A (TX, TY)``.
  AreTomo itself writes ``GMAG = 1``; we write the ``.xf`` magnification ``sqrt(det A)`` there and
  read it back the same way, so our own files round-trip exactly.
- **Warp** (``AxisAngle``, ``AxisOffsetX/Y`` in Å): what WarpTools ``ts_import_alignments`` makes
  of an ``.xf``: the axis angle is the ``.xf`` rotation's tilt axis and the offsets the raw-image
  shift ``s = -A^-1 D`` times the pixel size. Warp has no magnification; it is dropped with a warning.

Outputs are float64 on the device of the input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from tiltflow.core.geometry import image_centre
from tiltflow.core.transforms import geometry_to_xf, xf_to_geometry

__all__ = [
    "AlnRows",
    "SeriesAlignment",
    "WarpGeometry",
    "aln_rows_to_series",
    "series_to_aln_rows",
    "warp_to_xf",
    "xf_point_difference_px",
    "xf_to_warp",
]

_SIMILARITY_TOL = 1e-3  # a 2x2 part further than this from m R(-a) loses information


@dataclass(frozen=True)
class SeriesAlignment:
    """One tilt series' alignment, every view in tilt-angle order."""

    xf: torch.Tensor  # (t, 6) raw -> aligned, px of the stack
    tilt_angles_deg: torch.Tensor  # (t,) angles to reconstruct with
    enabled: torch.Tensor  # (t,) bool


@dataclass(frozen=True)
class AlnRows:
    """The global rows of an ``.aln`` (enabled views only) and where they sit in the raw stack."""

    rot_deg: torch.Tensor  # (k,) ROT, tilt-axis angle
    gmag: torch.Tensor  # (k,) GMAG
    shifts_px: torch.Tensor  # (k, 2) TX, TY
    tilt_deg: torch.Tensor  # (k,) TILT
    raw_indices: torch.Tensor  # (k,) long, 0-based section of the raw stack


@dataclass(frozen=True)
class WarpGeometry:
    """A tilt series' alignment in Warp's terms (per view)."""

    axis_angle_deg: torch.Tensor  # (t,) Warp AxisAngle
    offsets_a: torch.Tensor  # (t, 2) Warp AxisOffsetX, AxisOffsetY, Å


def _check_series(al: SeriesAlignment) -> int:
    t = al.xf.shape[0]
    if al.xf.shape != (t, 6) or al.tilt_angles_deg.shape != (t,) or al.enabled.shape != (t,):
        raise ValueError(
            f"SeriesAlignment needs xf (t, 6), tilt_angles_deg (t,), enabled (t,); got "
            f"{tuple(al.xf.shape)}, {tuple(al.tilt_angles_deg.shape)}, {tuple(al.enabled.shape)}"
        )
    return t


def _warn_lost(xf: torch.Tensor, keep_magnification: bool, what: str) -> None:
    geo = xf_to_geometry(xf)
    mag = geo.magnification if keep_magnification else None
    rebuilt = geometry_to_xf(geo.tilt_axis_deg, geo.shifts_px, mag)
    lost = (rebuilt[:, :4] - xf[:, :4]).abs().max().item() if xf.shape[0] else 0.0
    if lost > _SIMILARITY_TOL:
        kept = "rotation and magnification" if keep_magnification else "rotation"
        warnings.warn(
            f"{what}: the .xf 2x2 part differs from a {kept} by up to {lost:.2g}; "
            f"only the {kept} and the shift are kept",
            stacklevel=3,
        )


def series_to_aln_rows(al: SeriesAlignment) -> AlnRows:
    """``.aln`` global rows for the enabled views (skew/stretch dropped with a warning)."""
    _check_series(al)
    xf = torch.as_tensor(al.xf, dtype=torch.float64)
    keep = torch.nonzero(al.enabled.to(torch.bool)).reshape(-1)
    sel = xf[keep]
    _warn_lost(sel, True, "series_to_aln_rows")
    geo = xf_to_geometry(sel)
    tilts = torch.as_tensor(al.tilt_angles_deg, dtype=torch.float64, device=xf.device)[keep]
    return AlnRows(geo.tilt_axis_deg, geo.magnification, geo.shifts_px, tilts, keep)


def aln_rows_to_series(
    rows: AlnRows,
    *,
    n_views: int,
    raw_tilt_angles_deg: torch.Tensor,  # (n_views,) angles of the views without a row (dark)
    shift_scale: float = 1.0,  # px of our stack per px of the .aln stack
) -> SeriesAlignment:
    """Place ``.aln`` rows into a series of ``n_views``.

    Place ``.aln`` rows into a series of ``n_views``; views without a row are disabled and
    keep the identity ``.xf`` and their raw tilt angle.
    """
    idx = torch.as_tensor(rows.raw_indices, dtype=torch.long)
    k = idx.shape[0]
    if bool((idx < 0).any()) or bool((idx >= n_views).any()) or len(set(idx.tolist())) != k:
        raise ValueError(f"raw_indices must be {k} distinct indices in [0, {n_views})")
    shifts = torch.as_tensor(rows.shifts_px, dtype=torch.float64) * shift_scale
    xf_rows = geometry_to_xf(
        torch.as_tensor(rows.rot_deg, dtype=torch.float64), shifts, torch.as_tensor(rows.gmag, dtype=torch.float64)
    )
    xf = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64).repeat(n_views, 1)
    xf[idx] = xf_rows
    tilts = torch.as_tensor(raw_tilt_angles_deg, dtype=torch.float64).clone().reshape(-1)
    if tilts.shape != (n_views,):
        raise ValueError(f"raw_tilt_angles_deg must have shape ({n_views},), got {tuple(tilts.shape)}")
    tilts[idx] = torch.as_tensor(rows.tilt_deg, dtype=torch.float64)
    enabled = torch.zeros(n_views, dtype=torch.bool)
    enabled[idx] = True
    return SeriesAlignment(xf, tilts, enabled)


def xf_to_warp(xf: torch.Tensor, *, pixel_size_a: float) -> WarpGeometry:
    """``.xf`` rows ``(t, 6)`` -> Warp ``AxisAngle`` and ``AxisOffsetX/Y`` (Å)."""
    if pixel_size_a <= 0:
        raise ValueError(f"pixel_size_a must be > 0 Å/px, got {pixel_size_a}")
    xf = torch.as_tensor(xf, dtype=torch.float64)
    _warn_lost(xf, False, "xf_to_warp")
    geo = xf_to_geometry(xf)
    return WarpGeometry(geo.tilt_axis_deg, geo.shifts_px * pixel_size_a)  # px * Å/px = Å


def warp_to_xf(
    axis_angle_deg: torch.Tensor,  # (t,)
    offsets_a: torch.Tensor,  # (t, 2) Å
    *,
    pixel_size_a: float,
) -> torch.Tensor:  # (t, 6)
    """Inverse of :func:`xf_to_warp`."""
    if pixel_size_a <= 0:
        raise ValueError(f"pixel_size_a must be > 0 Å/px, got {pixel_size_a}")
    offsets = torch.as_tensor(offsets_a, dtype=torch.float64)
    return geometry_to_xf(torch.as_tensor(axis_angle_deg, dtype=torch.float64), offsets / pixel_size_a)


def xf_point_difference_px(
    xf_a: torch.Tensor,  # (t, 6)
    xf_b: torch.Tensor,  # (t, 6)
    image_shape: tuple[int, int],  # (ny, nx) of the raw views
) -> torch.Tensor:  # (t,)
    """Largest distance (px) between where two ``.xf`` put the corners and centre of each view."""
    a, b = (torch.as_tensor(x, dtype=torch.float64) for x in (xf_a, xf_b))
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 6:
        raise ValueError(f"xf_a and xf_b must both be (t, 6), got {tuple(a.shape)} and {tuple(b.shape)}")
    ny, nx = image_shape
    cx, cy = image_centre(image_shape)
    pts = torch.tensor(
        [[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1], [cx, cy]], dtype=torch.float64, device=a.device
    ) - torch.tensor([cx, cy], device=a.device)

    def apply(x: torch.Tensor) -> torch.Tensor:  # (t, 5, 2) aligned positions rel. centre
        return pts @ x[:, :4].reshape(-1, 2, 2).transpose(-1, -2) + x[:, None, 4:6]

    return (apply(a) - apply(b)).norm(dim=-1).amax(dim=-1)
