"""Tilt-series alignment: coarse cross-correlation and the fiducial (gold bead) route.

``coarse_align`` (cosine-stretched cross-correlation) -> ``detect_beads`` -> ``track_beads`` ->
``solve_alignment`` (bundle adjustment, robust) -> ``FiducialSolution.xf``; ``align_fiducial``
chains them. ``alignment_residual_against_truth`` is the honest measure used by the tests.
Conventions: ``core/geometry.py`` and DESIGN.md §2 (IMOD ``.xf``, axis from +y, CCW).
"""

from tiltflow.core.align.beads import BeadDetections, bead_template, detect_beads
from tiltflow.core.align.bundle import BundleOptions, FiducialSolution, solve_alignment, tukey_weights
from tiltflow.core.align.coarse import CoarseOptions, CoarseResult, coarse_align
from tiltflow.core.align.fiducial import FiducialAlignment, align_fiducial, resolve_fiducial
from tiltflow.core.align.residuals import (
    ResidualSummary,
    alignment_residual_against_truth,
    fit_bead_positions_3d,
    summarize_residuals,
    transform_points_xf,
)
from tiltflow.core.align.tracking import (
    TrackingOptions,
    Tracks,
    fill_gaps,
    locate_beads,
    refine_tilt_axis,
    track_beads,
)

__all__ = [
    "BeadDetections",
    "BundleOptions",
    "CoarseOptions",
    "CoarseResult",
    "FiducialAlignment",
    "FiducialSolution",
    "ResidualSummary",
    "TrackingOptions",
    "Tracks",
    "align_fiducial",
    "resolve_fiducial",
    "alignment_residual_against_truth",
    "bead_template",
    "coarse_align",
    "detect_beads",
    "fill_gaps",
    "fit_bead_positions_3d",
    "locate_beads",
    "refine_tilt_axis",
    "solve_alignment",
    "summarize_residuals",
    "track_beads",
    "transform_points_xf",
    "tukey_weights",
]
