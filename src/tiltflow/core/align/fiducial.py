"""The fiducial route in one call: coarse alignment -> bead tracking -> bundle adjustment ->
gap filling around the solution -> final bundle adjustment.

Views are raw, sorted by tilt angle, at the binning the caller chose; every position, shift and
``.xf`` is in pixels of those views (scale ``DX, DY`` by the binning for an unbinned stack).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltflow.core.align.bundle import FiducialSolution, solve_alignment
from tiltflow.core.align.coarse import CoarseResult, coarse_align
from tiltflow.core.align.tracking import Tracks, fill_gaps, track_beads

__all__ = ["FiducialAlignment", "align_fiducial", "resolve_fiducial"]


@dataclass(frozen=True)
class FiducialAlignment:
    """Every stage of :func:`align_fiducial`; ``solution.xf`` is the alignment."""

    coarse: CoarseResult | None  # None when re-solved from an existing model
    tracks: Tracks               # after gap filling around the first solution
    solution: FiducialSolution


def align_fiducial(
    views: torch.Tensor,                 # (t, h, w) raw views sorted by tilt angle
    tilt_angles_deg: torch.Tensor,       # (t,) as stored
    *,
    tilt_axis_deg: float,                # starting value, e.g. from the mdoc
    bead_diameter_px: float,             # in pixels of ``views``
    seeds: torch.Tensor | None = None,   # (n, 2) beads in the view nearest 0°, default detected
    coarse_reference: str = "cumulative",
    solve_magnification: bool = True,
    solve_tilt_angles: bool = True,
    solve_tilt_offset: bool = True,
    group_size: int = 5,
    robust: bool = True,
) -> FiducialAlignment:
    """Fiducial alignment of one tilt series (module docstring); see the stages' functions."""
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64)
    shape = (int(views.shape[-2]), int(views.shape[-1]))
    coarse = coarse_align(views, angles, tilt_axis_deg=tilt_axis_deg, reference=coarse_reference)
    tracks = track_beads(views, angles, tilt_axis_deg=tilt_axis_deg,
                         coarse_shifts_px=coarse.shifts_px, bead_diameter_px=bead_diameter_px,
                         seeds=seeds)
    options = {"image_shape": shape, "solve_tilt_offset": solve_tilt_offset,
                   "solve_magnification": solve_magnification, "solve_tilt_angles": solve_tilt_angles,
                   "group_size": group_size, "robust": robust}
    first = solve_alignment(tracks, angles, tilt_axis_deg_initial=tracks.tilt_axis_deg, **options)
    pos, scores = fill_gaps(views, tracks.positions_px, tracks.scores, first.projected_px,
                            bead_diameter_px=bead_diameter_px, tilt_axis_deg=first.tilt_axis_deg,
                            keep_views=(tracks.seed_view,))
    tracks = Tracks(positions_px=pos, scores=scores, predicted_px=first.projected_px,
                    seed_view=tracks.seed_view, tilt_axis_deg=first.tilt_axis_deg)
    solution = solve_alignment(tracks, angles, tilt_axis_deg_initial=first.tilt_axis_deg, **options)
    return FiducialAlignment(coarse=coarse, tracks=tracks, solution=solution)


def resolve_fiducial(
    positions_px: torch.Tensor,          # (n, t, 2) raw (x, y) bead positions, NaN where absent
    tilt_angles_deg: torch.Tensor,       # (t,) as stored
    *,
    tilt_axis_deg: float,                # starting value (e.g. the previous solution's)
    image_shape: tuple[int, int],        # (ny, nx) of the views the positions refer to
    solve_magnification: bool = True,
    solve_tilt_angles: bool = True,
    solve_tilt_offset: bool = True,
    group_size: int = 5,
    robust: bool = True,
) -> FiducialAlignment:
    """Bundle adjustment of an existing bead model, without coarse alignment or tracking: etomo's
    "fix the model and re-solve" after beads or views were dropped."""
    pos = torch.as_tensor(positions_px, dtype=torch.float64)
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64)
    found = torch.isfinite(pos).all(-1)
    tracks = Tracks(positions_px=pos, scores=found.to(torch.float64), predicted_px=pos.clone(),
                    seed_view=int(torch.argmin(angles.abs())), tilt_axis_deg=float(tilt_axis_deg))
    solution = solve_alignment(tracks, angles, tilt_axis_deg_initial=float(tilt_axis_deg), image_shape=image_shape,
                               solve_tilt_offset=solve_tilt_offset, solve_magnification=solve_magnification,
                               solve_tilt_angles=solve_tilt_angles, group_size=group_size, robust=robust)
    return FiducialAlignment(coarse=None, tracks=tracks, solution=solution)
