"""The stages of projection matching (``projection_matching``).

The working series, the coarse
start, the specimen's centre and level, the shift iterations, dark views' shifts.
Conventions as ``projection_matching`` (raw unbinned px for shifts, binned aligned px inside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.align.coarse import coarse_align
from tiltflow.core.align.projection_matching_ops import (
    cross_correlation,
    peak_2d,
    peak_significance,
    ray_coverage,
    references,
    reproject_at,
    smooth_part,
    specimen_pitch,
    support_mask,
)
from tiltflow.core.geometry import rotation_matrix_2d
from tiltflow.core.reconstruct import apply_xf, bin_views
from tiltflow.core.transforms import geometry_to_xf

__all__ = [
    "DarkPlacement",
    "MatchSeries",
    "aligned_views",
    "centre_specimen",
    "coarse_start",
    "fill_dark_views",
    "measure_shifts",
    "place_dark_views",
    "refine_shifts",
]

_SMOOTH_DEGREE = 3  # shift trends over the tilt range not updated by projection matching
_DAMPING = 0.5  # of each correction: noise-driven ones (thick specimens) stop sooner
_MAX_PITCH_DEG = 6.0  # specimen pitch searched when levelling
_SLAB_ASPECT = 2.0 / 3.0  # level only specimens thinner than this fraction of the field used
_START_MIN_PX = 96  # the coarse start is also found at half the working sampling while views stay this wide
_START_AGREE_PX = 2.0  # working px: coarse starts closer than this (RMS) agree
DARK_MIN_SIGNIFICANCE = 5.0  # robust SDs: a dark view's correlation peak that places it (noise: 3.1-4.1)


@dataclass
class MatchSeries:
    """The binned, normalised used (non-dark) views and the fixed settings."""

    views: torch.Tensor  # (n, hb, wb) zero mean, unit variance
    angles_deg: torch.Tensor  # (n,) float64, as given
    binning: int
    nz: int  # slab thickness, binned px
    out_shape: tuple[int, int]  # aligned view shape (binned)
    nx_volume: int
    max_shift_px: float  # binned px, largest correction per iteration
    max_step_px: float = math.inf  # binned px, larger corrections may be ignored as wild
    cache: dict = field(default_factory=dict)  # share operators of the references
    projectors: dict = field(default_factory=dict)  # backprojection / projection matrices


def aligned_views(
    s: MatchSeries, axis_deg: float, shifts_px: torch.Tensor, views: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned binned views ``(n, ho, wo)`` and their soft correlation masks (``views``: default ``s.views``)."""
    views = s.views if views is None else views
    xf = geometry_to_xf(axis_deg, shifts_px.to(torch.float64).cpu() / s.binning).to(views.device)
    aligned = apply_xf(views, xf, s.out_shape, mode="bilinear")
    return aligned, support_mask(xf, (int(views.shape[-2]), int(views.shape[-1])), s.out_shape).to(aligned.dtype)


def measure_shifts(
    s: MatchSeries, axis: float, offset: float, shifts: torch.Tensor, max_shift_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Measure shift corrections from the correlation peaks with the leave-one-out references.

    Shift corrections ``(n, 2)`` (binned aligned px) from the correlation peaks with the
    leave-one-out references, and those peaks' NCC ``(n,)``.
    """
    aligned, mask = aligned_views(s, axis, shifts)
    loo, _ = references(
        aligned,
        s.angles_deg + offset,
        nz=s.nz,
        nx_volume=s.nx_volume,
        exclude_deg=0.0,
        cache=s.cache,
        projectors=s.projectors,
    )
    return peak_2d(cross_correlation(aligned, loo, mask), max_shift_px)


def refine_shifts(
    s: MatchSeries,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    iterations: int,
    history: list[dict],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection-matching iterations (module docstring, 3); the shifts and the last NCC."""
    rot = rotation_matrix_2d(axis)
    angles = s.angles_deg + offset
    ncc = torch.zeros(shifts.shape[0], dtype=torch.float64)
    previous = math.inf
    for it in range(iterations):
        d, ncc = measure_shifts(s, axis, offset, shifts, s.max_shift_px)
        # a correction well beyond the others is a wrong peak (a ghost of the slab): ignored
        size = d.norm(dim=1)
        wild = size > max(s.max_step_px, 4.0 * float(size.median()))
        d[wild] = 0.0
        for k in range(2):
            d[:, k] -= smooth_part(d[:, k], angles, degree=_SMOOTH_DEGREE)
        d = d * _DAMPING
        shifts = shifts + s.binning * d @ rot.T  # aligned binned px -> raw unbinned px
        mean_step = float(d.norm(dim=1).mean())
        history.append(
            {
                "stage": "shifts",
                "iteration": it,
                "mean_ncc": float(ncc.mean()),
                "mean_step_px": mean_step * s.binning,
                "max_step_px": float(d.norm(dim=1).max()) * s.binning,
                "ignored_views": int(wild.sum()),
            }
        )
        if mean_step < 0.02 or mean_step > 0.8 * previous:  # converged, or drifting
            break
        previous = mean_step
    return shifts, ncc


def centre_specimen(
    s: MatchSeries,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    history: list[dict],
    *,
    nz: int,
    level: bool,
) -> tuple[float, torch.Tensor]:
    """Centre the specimen in z and, if ``level``, level it by a tilt offset.

    Shifts that centre the specimen in z and the tilt offset that levels it if ``level``,
    from a reconstruction ``nz`` thick.
    """
    aligned, _ = aligned_views(s, axis, shifts)
    pitch_deg, z_centre, thickness = specimen_pitch(
        aligned, s.angles_deg + offset, nz=nz, x_extent_px=s.out_shape[1], max_pitch_deg=_MAX_PITCH_DEG
    )
    # a level slab reconstructed with angles short by e appears as z = c - x tan(e); the pitch is
    # not measured when it sits at the search's edge or the specimen is not a slab across this
    # field (thicker than 2/3 of the width used): then the offset stays
    seen = abs(pitch_deg) < _MAX_PITCH_DEG - 0.25 and thickness < _SLAB_ASPECT * 0.9 * s.out_shape[1]
    new_offset = offset - pitch_deg if level and seen else offset
    th = torch.deg2rad(s.angles_deg + new_offset)
    rot = rotation_matrix_2d(axis)
    # moving the volume by -z_centre moves view content by -z sin(theta) across the axis
    d = torch.stack([-z_centre * torch.sin(th), torch.zeros_like(th)], -1)
    history.append(
        {
            "stage": "level" if level else "centre",
            "specimen_pitch_deg": pitch_deg,
            "specimen_z_px": z_centre * s.binning,
            "specimen_thickness_px": thickness * s.binning,
            "tilt_offset_deg": new_offset,
            **(
                {"level_skipped": "pitch at the search's edge or the specimen too thick for this field"}
                if level and not seen
                else {}
            ),
        }
    )
    return new_offset, shifts - s.binning * d @ rot.T


def coarse_start(s: MatchSeries, axis: float, offset: float, history: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse shifts (raw px) to start projection matching from, and their peak significances.

    The cross-correlation chain runs at the working sampling and at half of it. At low dose and
    fine sampling the chain can follow noise far off while its peaks still look significant (a
    41-view 320-px series at 18.6 Å/px under 286 nm of ice: 20 px off at 320 px, 0.1 px at 160);
    where the two disagree by more than ``_START_AGREE_PX`` (RMS, working px), the one whose views
    match their leave-one-out reprojections better (mean NCC at the half sampling) is taken.
    """
    fine = coarse_align(s.views, s.angles_deg + offset, tilt_axis_deg=axis)
    start, significance = fine.shifts_px.cpu().to(torch.float64) * s.binning, fine.peak_significance
    if min(s.views.shape[-2:]) // 2 < _START_MIN_PX:
        return start, significance
    half = bin_views(s.views, 2)
    coarse = coarse_align(half, s.angles_deg + offset, tilt_axis_deg=axis)
    alt = coarse.shifts_px.cpu().to(torch.float64) * (2 * s.binning)
    diff = start - alt
    disagreement = float((diff - diff.mean(0)).norm(dim=1).pow(2).mean().sqrt()) / s.binning
    if disagreement <= _START_AGREE_PX:
        return start, significance
    out_shape = (s.out_shape[0] // 2, s.out_shape[1] // 2)
    judge = MatchSeries(
        views=half,
        angles_deg=s.angles_deg,
        binning=2 * s.binning,
        nz=max(4, s.nz // 2),
        out_shape=out_shape,
        nx_volume=max(2, s.nx_volume // 2),
        max_shift_px=2.0,
    )
    ncc_fine = float(measure_shifts(judge, axis, offset, start, judge.max_shift_px)[1].mean())
    ncc_half = float(measure_shifts(judge, axis, offset, alt, judge.max_shift_px)[1].mean())
    take_half = ncc_half > ncc_fine
    history.append(
        {
            "stage": "coarse_start",
            "disagreement_px": disagreement * s.binning,
            "ncc_working": ncc_fine,
            "ncc_half_sampling": ncc_half,
            "chosen": "half sampling" if take_half else "working sampling",
        }
    )
    return (alt, coarse.peak_significance) if take_half else (start, significance)


@dataclass(frozen=True)
class DarkPlacement:
    """Shifts of views left out of the matching, from their correlation with the others' reprojection."""

    shifts_px: torch.Tensor  # (d, 2) raw px; the start where the peak is not significant
    significance: torch.Tensor  # (d,) robust SDs of the first correlation peak above its map
    placed: torch.Tensor  # (d,) bool, shift measured (significance >= DARK_MIN_SIGNIFICANCE)


def place_dark_views(
    s: MatchSeries,
    dark_views: torch.Tensor,  # (d, hb, wb) binned, normalised as s.views
    dark_angles_deg: torch.Tensor,  # (d,) as given
    geometry: tuple[float, float],  # axis, tilt offset (deg)
    shifts: torch.Tensor,  # (n, 2) raw px of the used views
    start: torch.Tensor,  # (d, 2) raw px, e.g. interpolated from the neighbours in angle
    *,
    nz: tuple[int, ...],  # slabs of the candidate references, binned px
) -> DarkPlacement:
    """Place views left out of the matching (dark) on the reconstruction of the others.

    A dark view's shift is otherwise a guess from its neighbours (the darkest views are the
    highest tilts, so a guess from one side), wrong by its own stage error (5-10 px on simulated
    series). Its correlation with the used views' slab reprojected at its angle is searched
    within ``w / 8`` of the start, then refined twice within 2 px, each column weighted by the
    share of the others that sampled its rays (``ray_coverage``). Each slab in ``nz`` gives a
    reference; the one whose first peak stands out most is kept (a slab thinner than the
    specimen misplaces the features outside it at high tilt: a strong peak 4-5 px off; a tall
    one adds the noise of the empty volume). A best peak below ``DARK_MIN_SIGNIFICANCE`` robust
    SDs above its map keeps the start.
    """
    axis, offset = geometry
    rot = rotation_matrix_2d(axis)
    aligned, _ = aligned_views(s, axis, shifts)
    begin = start.to(torch.float64).cpu()
    best, significance = begin.clone(), torch.full((begin.shape[0],), -math.inf, dtype=torch.float64)
    for thickness in nz:
        reference = reproject_at(
            aligned, s.angles_deg + offset, dark_angles_deg + offset, nz=thickness, nx_volume=s.nx_volume
        )
        cover = ray_coverage(s.angles_deg, dark_angles_deg, nz=thickness, width=s.out_shape[1])
        cover = cover.to(device=reference.device, dtype=reference.dtype)[:, None, :]
        out = begin.clone()
        for k, radius in enumerate((s.out_shape[1] / 8.0, 2.0, 2.0)):
            view, mask = aligned_views(s, axis, out, dark_views)
            cc = cross_correlation(view, reference, mask * cover)
            d, _ = peak_2d(cc, radius)
            if k == 0:
                sig = peak_significance(cc, d, radius).nan_to_num(nan=-math.inf)
            out = out + s.binning * d @ rot.T  # aligned binned px -> raw unbinned px
        better = sig > significance
        best[better], significance[better] = out[better], sig[better]
    placed = significance >= DARK_MIN_SIGNIFICANCE
    significance[significance == -math.inf] = math.nan
    return DarkPlacement(torch.where(placed[:, None], best, begin), significance, placed)


def fill_dark_views(shifts: torch.Tensor, angles: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """Shifts of the views not in ``use`` linearly interpolated in angle (ends: nearest)."""
    out = shifts.clone()
    ua = angles[use]
    for i in range(shifts.shape[0]):
        if bool((use == i).any()):
            continue
        k = int(torch.searchsorted(ua, angles[i]))
        lo, hi = max(k - 1, 0), min(k, ua.numel() - 1)
        if lo == hi:
            out[i] = shifts[use[lo]]
        else:
            f = float((angles[i] - ua[lo]) / (ua[hi] - ua[lo]).clamp_min(1e-9))
            out[i] = (1 - f) * shifts[use[lo]] + f * shifts[use[hi]]
    return out
