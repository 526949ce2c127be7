"""Alignments the data support, or a ``failed`` verdict.

The fiducial and patch routes followed by
the plausibility checks of :mod:`tiltflow.core.align.verdict`, with a fall-back that holds every
implausible or undetermined parameter (tilt offset, tilt angles, tilt axis, magnification) at the
value it was given and solves again.

The fiducial fall-back re-solves the same bead tracks (no new tracking); the patch fall-back
runs projection matching again without the refinement that wandered. What still fails the
checks after everything is held fixed gets a ``failed`` verdict and must not be used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from tiltflow.core.align.bundle import BundleOptions, FiducialSolution, solve_alignment
from tiltflow.core.align.fiducial import FiducialAlignment, beadless_views, fill_beadless_views
from tiltflow.core.align.projection_matching import (
    MatchingOptions,
    ProjectionMatchingResult,
    projection_matching_align,
)
from tiltflow.core.align.projection_matching_stages import DARK_MIN_SIGNIFICANCE, fill_dark_views
from tiltflow.core.align.verdict import (
    GeometryLimits,
    Verdict,
    fiducial_verdict,
    geometry_problems,
    inconsistent_tracks,
    patch_verdict,
)

__all__ = ["CheckedFiducial", "CheckedPatch", "check_fiducial", "checked_projection_matching"]

_FIDUCIAL_FLAGS = {
    "tilt_offset": "solve_tilt_offset",
    "tilt_angles": "solve_tilt_angles",
    "magnification": "solve_magnification",
    "tilt_axis": "solve_tilt_axis",
}


@dataclass(frozen=True)
class CheckedFiducial:
    """A fiducial alignment after the checks (:func:`check_fiducial`)."""

    alignment: FiducialAlignment  # ``solution`` is the one to use (after any fall-back)
    verdict: Verdict
    fixed: dict[str, str] = field(default_factory=dict)  # parameter -> why it was held


@dataclass(frozen=True)
class CheckedPatch:
    """A projection-matching alignment after the checks (:func:`checked_projection_matching`)."""

    result: ProjectionMatchingResult | None  # None: matching could not run (verdict 'failed')
    verdict: Verdict
    fixed: dict[str, str] = field(default_factory=dict)


def fiducial_problems(
    solution: FiducialSolution,
    tilt_angles_deg: torch.Tensor,
    *,
    tilt_axis_deg: float,
    limits: GeometryLimits | None = None,  # default GeometryLimits()
    solved: dict[str, bool] | None = None,
    min_beads: int = 5,
) -> dict[str, str]:
    """List the implausible or undetermined parameters of a bundle solution.

    :func:`geometry_problems` of a bundle solution, plus a tilt offset the beads leave free
    (jackknife SD above ``limits.max_offset_spread_deg``, or too few beads to tell), and grouped
    tilt angles / magnifications solved (``solved[name]``) from fewer than ``min_beads`` beads.
    """
    solved = {} if solved is None else solved
    limits = GeometryLimits() if limits is None else limits
    problems = geometry_problems(
        tilt_angles_deg,
        solution.tilt_angles_deg,
        axis_initial_deg=tilt_axis_deg,
        axis_deg=solution.tilt_axis_deg,
        offset_deg=solution.tilt_offset_deg,
        magnification=solution.magnification,
        limits=limits,
    )
    sd, offset = solution.tilt_offset_sd_deg, solution.tilt_offset_deg
    if "tilt_offset" not in problems and offset != 0.0:
        if not math.isfinite(sd):
            problems["tilt_offset"] = f"tilt offset {offset:.1f}° from 4 beads cannot be checked"
        elif sd > limits.max_offset_spread_deg:
            problems["tilt_offset"] = (
                f"tilt offset {offset:.1f}° not determined by the beads (±{sd:.1f}° leaving out one bead at a time)"
            )
    n_beads = int((torch.isfinite(solution.residuals_px).sum(1) >= 3).sum())
    if n_beads < min_beads:
        too_few = f"only {n_beads} beads (grouped tilt angles and magnifications need {min_beads})"
        for name in ("tilt_angles", "magnification"):
            if solved.get(name, True):
                problems.setdefault(name, too_few)
    return problems


def check_fiducial(
    alignment: FiducialAlignment,
    tilt_angles_deg: torch.Tensor,  # (t,) as given, tilt order
    *,
    tilt_axis_deg: float,  # as given (mdoc)
    image_shape: tuple[int, int],  # (ny, nx) of the tracked views
    bead_diameter_px: float,  # px of the tracked views
    bundle: BundleOptions | None = None,  # as solved; held parameters are switched off in it
    limits: GeometryLimits | None = None,  # default GeometryLimits()
) -> CheckedFiducial:
    """Check a fiducial alignment and re-solve it with implausible parameters held until plausible.

    The tracks are re-solved with the implausible parameters (:func:`fiducial_problems`) held at
    their given values, then with every one held; what still fails gets a ``failed`` verdict.

    Parameters
    ----------
    alignment : FiducialAlignment
        From :func:`~tiltflow.core.align.fiducial.align_fiducial` or ``resolve_fiducial``.
    tilt_angles_deg : torch.Tensor
        ``(t,)`` tilt angles as given (degrees), tilt order.
    tilt_axis_deg : float
        Tilt-axis angle as given (mdoc), degrees from +y, counter-clockwise.
    image_shape : tuple of int
        ``(ny, nx)`` of the tracked views.
    bead_diameter_px : float
        Bead diameter in pixels of the tracked views.
    bundle : BundleOptions, optional
        What was solved for; held parameters are switched off in it for the re-solves.
    limits : GeometryLimits, optional
        Plausibility limits (default ``GeometryLimits()``).

    Returns
    -------
    CheckedFiducial
        The alignment to use (``alignment.solution``), its ``verdict`` and the held parameters.

    Examples
    --------
    >>> import torch
    >>> from tiltflow.core.align import resolve_fiducial
    >>> from tiltflow.core.align.residuals import project_beads
    >>> angles = torch.arange(-30.0, 31.0, 10.0)
    >>> xyz = torch.tensor([[-20.0, -20, 5], [20, -15, -5], [-10, 25, 0], [15, 10, 8], [0, 0, -8]])
    >>> obs = project_beads(xyz, angles, tilt_axis_deg=85.0, shifts_px=torch.zeros(7, 2), image_shape=(128, 128))
    >>> fid = resolve_fiducial(obs, angles, tilt_axis_deg=85.0, image_shape=(128, 128))
    >>> check_fiducial(fid, angles, tilt_axis_deg=85.0, image_shape=(128, 128), bead_diameter_px=5.0).verdict.status
    'check'
    """
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64)
    limits = GeometryLimits() if limits is None else limits
    bundle = BundleOptions() if bundle is None else bundle
    solve_magnification, solve_tilt_angles = bundle.solve_magnification, bundle.solve_tilt_angles
    asked = {
        "solve_tilt_offset": bundle.solve_tilt_offset,
        "solve_tilt_angles": solve_tilt_angles,
        "solve_magnification": solve_magnification,
        "solve_tilt_axis": bundle.solve_tilt_axis,
    }
    solution = alignment.solution
    broken = inconsistent_tracks(
        angles,
        solution.tilt_angles_deg,
        solution.tilt_offset_deg,
        solution.magnification if solve_magnification else None,
        limits,
    )
    if broken:
        return CheckedFiducial(alignment, Verdict("failed", (broken,)), {})
    solved = {"tilt_angles": solve_tilt_angles, "magnification": solve_magnification}
    problems = fiducial_problems(solution, angles, tilt_axis_deg=tilt_axis_deg, limits=limits, solved=solved)
    fixed: dict[str, str] = {}
    for hold_all in (False, True):
        if not problems:
            break
        fixed.update(problems)
        if hold_all:
            fixed.update({k: "held with the others" for k in _FIDUCIAL_FLAGS if k not in fixed})
        flags = {flag: asked[flag] and name not in fixed for name, flag in _FIDUCIAL_FLAGS.items()}
        solution = solve_alignment(
            alignment.tracks.positions_px.to(angles.device),
            angles,
            tilt_axis_deg_initial=tilt_axis_deg,
            image_shape=image_shape,
            options=replace(bundle, **flags),
        )
        if alignment.coarse is not None:
            solution = fill_beadless_views(solution, alignment.coarse.shifts_px, angles)
        solved = {k: asked[_FIDUCIAL_FLAGS[k]] and k not in fixed for k in solved}
        problems = fiducial_problems(solution, angles, tilt_axis_deg=tilt_axis_deg, limits=limits, solved=solved)
    result = replace(alignment, solution=solution)
    if problems:
        return CheckedFiducial(result, Verdict("failed", tuple(problems.values())), fixed)
    found = torch.isfinite(solution.residuals_px)
    verdict = fiducial_verdict(
        mean_residual_px=solution.mean_residual_px,
        bead_diameter_px=bead_diameter_px,
        n_beads=int((found.sum(1) >= 3).sum()),
        n_views=int(angles.numel()),
        n_flagged_views=int(solution.flagged_views.numel()),
        fixed=fixed,
        n_beadless_views=int(beadless_views(solution).sum()),
        coarse_peak_significance=None if alignment.coarse is None else alignment.coarse.peak_significance,
    )
    return CheckedFiducial(result, verdict, fixed)


def checked_projection_matching(
    views: torch.Tensor,  # (t, h, w) as for :func:`projection_matching_align`
    tilt_angles_deg: torch.Tensor,
    *,
    tilt_axis_deg: float,
    align_z_px: float,
    binning: int = 2,
    pixel_size_a: float | None = None,
    options: MatchingOptions | None = None,
    limits: GeometryLimits | None = None,  # default GeometryLimits()
) -> CheckedPatch:
    """Align by projection matching and check the result; a wandering axis or offset is held.

    A tilt axis or offset that wandered beyond ``limits`` is held at its given value and the matching
    run again from a coarse alignment at the given geometry. ``ValueError`` (too few usable views)
    becomes a ``failed`` verdict without a result.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` raw views sorted by tilt angle.
    tilt_angles_deg : torch.Tensor
        ``(t,)`` tilt angles as given (degrees).
    tilt_axis_deg : float
        Tilt-axis angle as given, degrees from +y, counter-clockwise.
    align_z_px : float
        Slab thickness of the intermediate reconstructions, pixels of ``views``.
    binning : int
        Binning before the work (shifts stay in pixels of ``views``).
    pixel_size_a : float, optional
        Pixel size of ``views`` (Å/px); sets the working binning.
    options : MatchingOptions, optional
        Iterations, refinements and searches.
    limits : GeometryLimits, optional
        Plausibility limits (default ``GeometryLimits()``).

    Returns
    -------
    CheckedPatch
        The result (None when matching could not run), its ``verdict`` and the held parameters.

    Examples
    --------
    >>> import torch
    >>> views = torch.rand(4, 96, 96, generator=torch.Generator().manual_seed(0))
    >>> angles = torch.tensor([-9.0, -3.0, 3.0, 9.0])
    >>> out = checked_projection_matching(views, angles, tilt_axis_deg=85.0, align_z_px=30.0)
    >>> out.result is None, out.verdict.status
    (True, 'failed')
    """
    limits = GeometryLimits() if limits is None else limits
    run = _Matching(align_z_px=align_z_px, binning=binning, pixel_size_a=pixel_size_a, options=options)
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64)
    fixed: dict[str, str] = {}
    try:
        result = run(views, angles, tilt_axis_deg)
    except ValueError as err:
        return CheckedPatch(None, Verdict("failed", (str(err),)), fixed)
    problems = _patch_problems(result, angles, tilt_axis_deg, limits)
    if problems:
        fixed.update(problems)
        result = _matching_at_given_geometry(views, angles, tilt_axis_deg, result.dark_views, run)
        problems = _patch_problems(result, angles, tilt_axis_deg, limits)
    if problems:
        return CheckedPatch(result, Verdict("failed", tuple(problems.values())), fixed)
    verdict = patch_verdict(
        per_view_error=result.per_view_error,
        n_dark=int(result.dark_views.sum()),
        fixed=fixed,
        coarse_peak_significance=result.coarse_peak_significance,
        n_dark_unplaced=_unplaced_dark_views(result),
    )
    return CheckedPatch(result, verdict, fixed)


def _unplaced_dark_views(result: ProjectionMatchingResult) -> int:
    """Dark views whose correlation with the others' reprojection did not place them."""
    sig = result.dark_view_significance
    if sig is None:
        return 0
    return int((result.dark_views.cpu() & ~(sig >= DARK_MIN_SIGNIFICANCE)).sum())


@dataclass(frozen=True)
class _Matching:
    """The settings of one :func:`projection_matching_align` run, but the series and its axis."""

    align_z_px: float
    binning: int
    pixel_size_a: float | None
    options: MatchingOptions | None

    def __call__(
        self, views: torch.Tensor, angles: torch.Tensor, axis_deg: float, initial: torch.Tensor | None = None
    ) -> ProjectionMatchingResult:
        return projection_matching_align(
            views,
            angles,
            tilt_axis_deg=axis_deg,
            align_z_px=self.align_z_px,
            initial_shifts_px=initial,
            binning=self.binning,
            pixel_size_a=self.pixel_size_a,
            options=self.options,
        )


def _matching_at_given_geometry(views, angles, axis_deg: float, dark: torch.Tensor, run: _Matching):
    """Projection matching without axis or offset refinement, from a coarse start at the given geometry.

    The coarse alignment of the non-dark views at the given geometry is the start (it would
    otherwise start from zero shifts); dark views start from their neighbours' shifts.
    """
    from tiltflow.core.align.coarse import coarse_align

    use = ~dark.cpu()
    coarse = coarse_align(views[use.to(views.device)], angles[use], tilt_axis_deg=axis_deg)
    initial = torch.zeros(int(angles.numel()), 2, dtype=torch.float64)
    initial[use] = coarse.shifts_px.to(torch.float64).cpu()
    initial = fill_dark_views(initial, angles.to(torch.float64).cpu(), torch.nonzero(use).reshape(-1))
    significance = torch.full((int(angles.numel()),), math.nan, dtype=torch.float64)
    significance[use] = coarse.peak_significance
    options = MatchingOptions() if run.options is None else run.options
    held = replace(run, options=replace(options, refine_tilt_axis=False, refine_tilt_offset=False))
    result = held(views, angles, axis_deg, initial)
    return replace(result, coarse_peak_significance=significance)


def _patch_problems(
    result: ProjectionMatchingResult, angles: torch.Tensor, axis_deg: float, limits: GeometryLimits
) -> dict[str, str]:
    return geometry_problems(
        angles,
        result.tilt_angles_deg,
        axis_initial_deg=axis_deg,
        axis_deg=result.tilt_axis_deg,
        offset_deg=result.tilt_offset_deg,
        limits=limits,
    )
