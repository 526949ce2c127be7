"""The fiducial route in one call.

Coarse alignment -> bead tracking -> bundle adjustment ->
gap filling around the solution -> final bundle adjustment.

Views are raw, sorted by tilt angle, at the binning the caller chose; every position, shift and
``.xf`` is in pixels of those views (scale ``DX, DY`` by the binning for an unbinned stack).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from tiltflow.core.align.bundle import BundleOptions, FiducialSolution, solve_alignment
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
    coarse_reference: Literal["neighbour", "cumulative"] = "cumulative",
    bundle: BundleOptions | None = None,  # what the bundle adjustment solves for
) -> FiducialAlignment:
    """Align one tilt series on its gold beads (module docstring), from raw views to ``.xf``.

    Coarse alignment, bead tracking, bundle adjustment, gap filling around the first solution and a
    final bundle adjustment; views without beads take the coarse shift.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` raw views sorted by tilt angle.
    tilt_angles_deg : torch.Tensor
        ``(t,)`` tilt angles in degrees, as stored.
    tilt_axis_deg : float
        Starting tilt-axis angle (e.g. the mdoc's), degrees from +y, counter-clockwise.
    bead_diameter_px : float
        Bead diameter in pixels of ``views``.
    seeds : torch.Tensor, optional
        ``(n, 2)`` bead positions (x, y) in the view nearest 0°; default detected.
    coarse_reference : {"neighbour", "cumulative"}
        Reference of the coarse alignment (:func:`~tiltflow.core.align.coarse.coarse_align`).
    bundle : BundleOptions, optional
        What the bundle adjustment solves for (default: everything, robust).

    Returns
    -------
    FiducialAlignment
        The coarse result, the tracks and the ``solution`` (``solution.xf``: ``(t, 6)`` IMOD rows in
        pixels of ``views``).

    Raises
    ------
    ValueError
        For fewer than 3 beads to seed or to solve with.

    Examples
    --------
    >>> import torch
    >>> from tiltflow.core.align.residuals import project_beads
    >>> angles = torch.arange(-30.0, 31.0, 10.0)
    >>> xyz = torch.tensor([[-20.0, -20, 5], [20, -15, -5], [-10, 25, 0], [15, 10, 8], [0, 0, -8]])
    >>> p = project_beads(xyz, angles, tilt_axis_deg=85.0, shifts_px=torch.zeros(7, 2), image_shape=(128, 128))
    >>> yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    >>> views = 100 - 50 * torch.exp(-((xx - p[..., :1, None]) ** 2 + (yy - p[..., 1:, None]) ** 2) / 8).sum(0)
    >>> align_fiducial(views, angles, tilt_axis_deg=85.0, bead_diameter_px=5.0).solution.xf.shape
    torch.Size([7, 6])
    """
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
    first = fill_beadless_views(
        solve_alignment(tracks, angles, tilt_axis_deg_initial=tracks.tilt_axis_deg, image_shape=shape, options=bundle),
        coarse.shifts_px,
        angles,
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
    solution = solve_alignment(
        tracks, angles, tilt_axis_deg_initial=first.tilt_axis_deg, image_shape=shape, options=bundle
    )
    solution = fill_beadless_views(solution, coarse.shifts_px, angles)
    return FiducialAlignment(coarse=coarse, tracks=tracks, solution=solution)


def beadless_views(solution: FiducialSolution) -> torch.Tensor:  # (t,) bool
    """Find the views in which no bead was observed: the bundle cannot place them."""
    return ~torch.isfinite(solution.residuals_px).any(0)


def fill_beadless_views(
    solution: FiducialSolution,
    coarse_shifts_px: torch.Tensor,  # (t, 2) raw-image shifts of the coarse alignment
    tilt_angles_deg: torch.Tensor,  # (t,) ascending
) -> FiducialSolution:
    """Give views without beads shifts from the coarse alignment, in the bundle's frame.

    Shifts for views without beads (the bundle leaves them at 0): the coarse shift plus the
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
    bundle: BundleOptions | None = None,  # what the bundle adjustment solves for
) -> FiducialAlignment:
    """Re-solve an existing bead model by bundle adjustment, without coarse alignment or tracking.

    Bundle adjustment of an existing bead model, without coarse alignment or tracking: etomo's
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
        options=bundle,
    )
    return FiducialAlignment(coarse=None, tracks=tracks, solution=solution)
