"""The fiducial route in one call: coarse alignment -> bead tracking -> bundle adjustment ->
gap filling around the solution -> final bundle adjustment.

Views are raw, sorted by tilt angle, at the binning the caller chose; every position, shift and
``.xf`` is in pixels of those views (scale ``DX, DY`` by the binning for an unbinned stack).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from tiltflow.core.align.bundle import FiducialSolution, solve_alignment
from tiltflow.core.align.coarse import CoarseResult, coarse_align
from tiltflow.core.align.tracking import Tracks, fill_gaps, track_beads
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["FiducialAlignment", "align_fiducial", "beadless_views", "fill_beadless_views", "resolve_fiducial"]


@dataclass(frozen=True)
class FiducialAlignment:
    """Every stage of :func:`align_fiducial`; ``solution.xf`` is the alignment."""

    coarse: CoarseResult | None  # None when re-solved from an existing model
    tracks: Tracks  # after gap filling around the first solution
    solution: FiducialSolution


def align_fiducial(
    views: torch.Tensor,  # (t, h, w) raw views sorted by tilt angle
    tilt_angles_deg: torch.Tensor,  # (t,) as stored
    *,
    tilt_axis_deg: float,  # starting value, e.g. from the mdoc
    bead_diameter_px: float,  # in pixels of ``views``
    seeds: torch.Tensor | None = None,  # (n, 2) beads in the view nearest 0°, default detected
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
    tracks = track_beads(
        views,
        angles,
        tilt_axis_deg=tilt_axis_deg,
        coarse_shifts_px=coarse.shifts_px,
        bead_diameter_px=bead_diameter_px,
        seeds=seeds,
    )
    options = {
        "image_shape": shape,
        "solve_tilt_offset": solve_tilt_offset,
        "solve_magnification": solve_magnification,
        "solve_tilt_angles": solve_tilt_angles,
        "group_size": group_size,
        "robust": robust,
    }
    first = fill_beadless_views(
        solve_alignment(tracks, angles, tilt_axis_deg_initial=tracks.tilt_axis_deg, **options), coarse.shifts_px, angles
    )
    pos, scores = fill_gaps(
        views,
        tracks.positions_px,
        tracks.scores,
        first.projected_px,
        bead_diameter_px=bead_diameter_px,
        tilt_axis_deg=first.tilt_axis_deg,
        keep_views=(tracks.seed_view,),
    )
    tracks = Tracks(
        positions_px=pos,
        scores=scores,
        predicted_px=first.projected_px,
        seed_view=tracks.seed_view,
        tilt_axis_deg=first.tilt_axis_deg,
    )
    solution = solve_alignment(tracks, angles, tilt_axis_deg_initial=first.tilt_axis_deg, **options)
    solution = fill_beadless_views(solution, coarse.shifts_px, angles)
    return FiducialAlignment(coarse=coarse, tracks=tracks, solution=solution)


def beadless_views(solution: FiducialSolution) -> torch.Tensor:  # (t,) bool
    """Views in which no bead was observed: the bundle cannot place them."""
    return ~torch.isfinite(solution.residuals_px).any(0)


def fill_beadless_views(
    solution: FiducialSolution,
    coarse_shifts_px: torch.Tensor,  # (t, 2) raw-image shifts of the coarse alignment
    tilt_angles_deg: torch.Tensor,  # (t,) ascending
) -> FiducialSolution:
    """Shifts for views without beads (the bundle leaves them at 0): the coarse shift plus the
    bundle-minus-coarse difference interpolated over tilt angle from the views with beads
    (constant beyond the last one); ``xf`` and ``projected_px`` follow.
    """
    empty = beadless_views(solution)
    if not bool(empty.any()) or bool(empty.all()):
        return solution
    s = solution.shifts_px.clone()
    coarse = coarse_shifts_px.to(s)
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).cpu().numpy()
    delta = (s - coarse).cpu().numpy()
    have, miss = (~empty).cpu().numpy(), empty.cpu().numpy()
    fill = np.stack([np.interp(angles[miss], angles[have], delta[have, k]) for k in range(2)], -1)
    s[empty] = coarse[empty] + torch.as_tensor(fill).to(s)
    projected = solution.projected_px + (s - solution.shifts_px)[None]
    xf = geometry_to_xf(solution.tilt_axis_deg, s, 1.0 / solution.magnification)
    return replace(solution, shifts_px=s, xf=xf, projected_px=projected)


def resolve_fiducial(
    positions_px: torch.Tensor,  # (n, t, 2) raw (x, y) bead positions, NaN where absent
    tilt_angles_deg: torch.Tensor,  # (t,) as stored
    *,
    tilt_axis_deg: float,  # starting value (e.g. the previous solution's)
    image_shape: tuple[int, int],  # (ny, nx) of the views the positions refer to
    solve_magnification: bool = True,
    solve_tilt_angles: bool = True,
    solve_tilt_offset: bool = True,
    group_size: int = 5,
    robust: bool = True,
) -> FiducialAlignment:
    """Bundle adjustment of an existing bead model, without coarse alignment or tracking: etomo's
    "fix the model and re-solve" after beads or views were dropped.
    """
    pos = torch.as_tensor(positions_px, dtype=torch.float64)
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64)
    found = torch.isfinite(pos).all(-1)
    tracks = Tracks(
        positions_px=pos,
        scores=found.to(torch.float64),
        predicted_px=pos.clone(),
        seed_view=int(torch.argmin(angles.abs())),
        tilt_axis_deg=float(tilt_axis_deg),
    )
    solution = solve_alignment(
        tracks,
        angles,
        tilt_axis_deg_initial=float(tilt_axis_deg),
        image_shape=image_shape,
        solve_tilt_offset=solve_tilt_offset,
        solve_magnification=solve_magnification,
        solve_tilt_angles=solve_tilt_angles,
        group_size=group_size,
        robust=robust,
    )
    return FiducialAlignment(coarse=None, tracks=tracks, solution=solution)
