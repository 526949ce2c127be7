"""Feature-based tilt-series alignment by projection matching (AreTomo-style, no beads needed).

Geometry (``core/geometry.py``): a raw view shows the aligned image rotated by the tilt-axis angle
``a`` and displaced by ``s``: ``p_raw = c + R(a) p_aligned + s`` (IMOD centres); its ``.xf`` is
``A = R(-a)``, ``D = -A s``.  True tilt angle = given angle + ``tilt_offset_deg``.

After AreTomo (Zheng et al. 2022, doi:10.1016/j.yjsbx.2022.100068), on binned, normalised views:

1. tilt axis and tilt offset of the whole series: the geometry where the cosine-stretched
   correlation of the series peaks (``geometry_search.search_tilt_geometry``), then the shifts of
   that coarse alignment at the views' binning (``coarse.coarse_align``);
2. the specimen's height from a tall reconstruction (``specimen_pitch``): the volume is
   centred on it;
3. projection matching: reconstruct a slab ``align_z_px`` thick (WBP; at most 3/4 of the
   field's width across the axis) from the views aligned with the current shifts and reproject
   it at every angle without the view's own share (leave-one-out, exact by linearity of the
   matched projector pair); each view's shift from its correlation peak with that reference
   (both x' and y').  The reference follows slow trends of
   the shifts over the tilt range (nearby views carry them too), so those (Legendre degrees 0-3
   of the angle, per axis) are left to step 1 and only the rest is updated, damped by half;
   corrections far beyond the others (a wrong peak) are ignored, and iterations stop when the
   updates are small or stop shrinking.  On specimens thicker than the slab the references hold
   ghosts of the features outside it and the corrections are noisy (a slab as thick as the
   specimen is worse: its faces cut through the strongest features, the surface gold); the
   damping keeps the result there near the coarse alignment's (280 nm ice: 0.20-0.34 px against
   0.17-0.29), while on thin specimens projection matching improves it (0.17-0.50 px against
   0.33-0.73);
4. tilt offset: the pitch of the specimen slab in the final reconstruction levels it (a flat
   specimen is level at 0° tilt, as IMOD ``tomopitch`` assumes).

``per_view_error`` is ``1 - NCC`` of each view with its leave-one-out reprojection (last
iteration).

Measured on simulated series (41 views, ±60°, 512 px at bin 2, 120 and 280 nm ice, 4 seeds
each; honest residuals in px of the 512-px stack): the axis within 0.37° of the truth from mdoc
axes up to 1.9° off, residuals above; 14-17 s on one CPU thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.align.coarse import coarse_align
from tiltflow.core.align.dark_views import detect_dark_views
from tiltflow.core.align.geometry_search import search_tilt_geometry
from tiltflow.core.align.projection_matching_ops import (
    cross_correlation,
    peak_2d,
    references,
    smooth_part,
    specimen_pitch,
    support_mask,
)
from tiltflow.core.geometry import rotation_matrix_2d
from tiltflow.core.reconstruct import apply_xf, bin_views
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["ProjectionMatchingResult", "projection_matching_align", "working_binning"]

_SMOOTH_DEGREE = 3  # shift trends over the tilt range not updated by projection matching
_SEARCH_PX = 128  # the geometry search works on views binned to about this size
_DAMPING = 0.5  # of each correction: noise-driven ones (thick specimens) stop sooner
_WORK_PX = 320  # without a pixel size: larger views are binned by 2, 4, ... to this size
_WORK_PIXEL_A = 10.0  # with one: views are binned by 2, 4, ... while their pixel is finer than this
_WORK_MAX_PX = 640  # or while they are larger than this, but never below _WORK_MIN_PX
_WORK_MIN_PX = 256
_SLAB_FIELD_FRACTION = 0.75  # thickest slab, of the aligned field's width across the axis
_MAX_PITCH_DEG = 6.0  # specimen pitch searched when levelling
_SLAB_ASPECT = 2.0 / 3.0  # level only specimens thinner than this fraction of the field used
_START_MIN_PX = 96  # the coarse start is also found at half the working sampling while views stay this wide
_START_AGREE_PX = 2.0  # working px: coarse starts closer than this (RMS) agree


@dataclass(frozen=True)
class ProjectionMatchingResult:
    """Alignment of the raw views (all views; dark ones keep their initial shifts)."""

    xf: torch.Tensor  # (t, 6) IMOD .xf rows, raw -> aligned, px of the input views
    shifts_px: torch.Tensor  # (t, 2) raw-image shifts s (x, y), px of the input views
    tilt_axis_deg: float  # refined, degrees from +y, counter-clockwise
    tilt_offset_deg: float  # added to the given angles
    tilt_angles_deg: torch.Tensor  # (t,) given angles + tilt_offset_deg
    dark_views: torch.Tensor  # (t,) bool, excluded from the alignment
    per_view_error: torch.Tensor  # (t,) 1 - NCC(view, leave-one-out reprojection); nan if dark
    history: list[dict] = field(default_factory=list)  # one entry per stage / iteration
    # (t,) significance of the coarse start's correlation peaks (``CoarseResult``); NaN for dark
    # views, None when the coarse start was given (``initial_shifts_px``)
    coarse_peak_significance: torch.Tensor | None = None


@dataclass
class _Series:
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


def _aligned(
    s: _Series, axis_deg: float, shifts_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned binned views ``(n, ho, wo)`` and their soft correlation masks."""
    xf = geometry_to_xf(axis_deg, shifts_px.to(torch.float64).cpu() / s.binning).to(s.views.device)
    aligned = apply_xf(s.views, xf, s.out_shape, mode="bilinear")
    return aligned, support_mask(xf, s.views.shape[-2:], s.out_shape).to(aligned.dtype)


def _measure(
    s: _Series, axis: float, offset: float, shifts: torch.Tensor, max_shift_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift corrections ``(n, 2)`` (binned aligned px) from the correlation peaks with the
    leave-one-out references, and those peaks' NCC ``(n,)``."""
    aligned, mask = _aligned(s, axis, shifts)
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


def _refine_shifts(
    s: _Series,
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
        d, ncc = _measure(s, axis, offset, shifts, s.max_shift_px)
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


def _specimen(
    s: _Series,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    history: list[dict],
    *,
    nz: int,
    level: bool,
) -> tuple[float, torch.Tensor]:
    """Shifts that centre the specimen in z and the tilt offset that levels it if ``level``,
    from a reconstruction ``nz`` thick."""
    aligned, _ = _aligned(s, axis, shifts)
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
            **({"level_skipped": "pitch at the search's edge or the specimen too thick for this field"}
               if level and not seen else {}),
        }
    )
    return new_offset, shifts - s.binning * d @ rot.T


def _coarse_start(s: _Series, axis: float, offset: float, history: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse shifts (raw px) to start projection matching from, and their peak significances.

    The cross-correlation chain runs at the working sampling and at half of it. At low dose and
    fine sampling the chain can follow noise far off while its peaks still look significant (a
    41-view 320-px series at 18.6 Å/px under 286 nm of ice: 20 px off at 320 px, 0.1 px at 160);
    where the two disagree by more than ``_START_AGREE_PX`` (RMS, working px), the one whose views
    match their leave-one-out reprojections better (mean NCC at the half sampling) is taken."""
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
    judge = _Series(views=half, angles_deg=s.angles_deg, binning=2 * s.binning, nz=max(4, s.nz // 2),
                    out_shape=out_shape, nx_volume=max(2, s.nx_volume // 2), max_shift_px=2.0)
    ncc_fine = float(_measure(judge, axis, offset, start, judge.max_shift_px)[1].mean())
    ncc_half = float(_measure(judge, axis, offset, alt, judge.max_shift_px)[1].mean())
    take_half = ncc_half > ncc_fine
    history.append({"stage": "coarse_start", "disagreement_px": disagreement * s.binning, "ncc_working": ncc_fine,
                    "ncc_half_sampling": ncc_half, "chosen": "half sampling" if take_half else "working sampling"})
    return (alt, coarse.peak_significance) if take_half else (start, significance)


def _fill_dark(shifts: torch.Tensor, angles: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
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


def working_binning(side_px: int, pixel_size_a: float | None) -> int:
    """Further binning (1, 2, 4, ...) of views ``side_px`` wide (their shorter side) for projection
    matching: while their pixel is finer than 10 Å or they are wider than 640 px, never below 256
    px; without a pixel size, until they are at most 320 px.

    On 41 x 4092 x 5760 simulations at 2.76 Å/px (bin 4: 1023 x 1440 px, 11 Å) matching at
    512 x 720 px gave 0.61 px honest residual (raw px), at 1023 x 1440 0.77 (and 6x the time), at
    256 x 360 1.51; on 512-px views at 5.5 Å/px, 256 px at 11 Å/px was better than 512 px.
    """
    extra = 1
    if pixel_size_a:
        while side_px / (extra * 2) >= _WORK_MIN_PX and (
            pixel_size_a * extra < _WORK_PIXEL_A or side_px / extra > _WORK_MAX_PX
        ):
            extra *= 2
    else:
        while side_px / extra > _WORK_PX:
            extra *= 2
    return extra


def projection_matching_align(
    views: torch.Tensor,  # (t, h, w) raw views (counts), sorted by tilt angle
    tilt_angles_deg,  # (t,) as stored by the microscope
    *,
    tilt_axis_deg: float,  # initial tilt-axis angle (mdoc)
    align_z_px: float,  # slab thickness of the intermediate reconstructions, input px
    initial_shifts_px: torch.Tensor | None = None,  # (t, 2) raw-image shifts, e.g. coarse
    binning: int = 2,
    iterations: int = 4,
    refine_tilt_axis: bool = True,
    refine_tilt_offset: bool = True,
    exclude_dark: bool = True,
    dark_tolerance: float = 0.7,
    axis_search_deg: float = 3.0,  # largest change of the axis from the initial one
    offset_search_deg: float = 4.5,  # largest tilt offset searched
    max_shift_px: float | None = None,  # per iteration, input px (default w / 16; 3 binned px
    # from the coarse start)
    pixel_size_a: float | None = None,  # of ``views`` (Å); sets the working binning (below)
) -> ProjectionMatchingResult:
    """Align a tilt series by projection matching (module docstring); pure, device of ``views``.

    Shifts and ``align_z_px`` are in pixels of ``views``; the work runs on views binned by
    ``binning`` and by 2, 4, ... more: with ``pixel_size_a``, while their pixel is finer than 10 Å
    or they are larger than 640 px (never below 256 px), else until they are at most 320 px; the
    geometry search on about 128 px.  Projection matching starts from the coarse alignment at
    the searched geometry, or from ``initial_shifts_px`` when neither the axis nor the offset is
    refined (then dark views keep those; else they get shifts interpolated from their
    neighbours in angle).  Raises ``ValueError`` for malformed input or too few usable views.
    """
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        raise ValueError(
            f"views must be a (t, h, w) tensor, got {getattr(views, 'shape', type(views))}"
        )
    t, h, w = views.shape
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).cpu()
    if angles.numel() != t:
        raise ValueError(
            f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one per view"
        )
    if bool((angles[1:] < angles[:-1]).any()):
        raise ValueError("views must be sorted by tilt angle (ascending), as in tilt-series stacks")
    if int(binning) != binning or binning < 1 or min(h, w) // binning < 32:
        raise ValueError(
            f"binning must be a positive integer leaving >= 32 px, got {binning} for {h}x{w}"
        )
    if align_z_px <= 0 or iterations < 1:
        raise ValueError(
            f"align_z_px must be > 0 px and iterations >= 1, got {align_z_px}, {iterations}"
        )
    shifts = torch.zeros(t, 2, dtype=torch.float64)
    if initial_shifts_px is not None:
        shifts = torch.as_tensor(initial_shifts_px, dtype=torch.float64).cpu().clone()
        if shifts.shape != (t, 2):
            raise ValueError(
                f"initial_shifts_px must have shape ({t}, 2), got {tuple(shifts.shape)}"
            )
    dark = (
        detect_dark_views(views, angles, tolerance=dark_tolerance).cpu()
        if exclude_dark
        else torch.zeros(t, dtype=torch.bool)
    )
    use = torch.nonzero(~dark).reshape(-1)
    if use.numel() < 5:
        raise ValueError(
            f"only {use.numel()} usable (non-dark) views; projection matching needs >= 5"
        )

    x = views[use.to(views.device)]
    x = bin_views(x if x.is_floating_point() else x.float(), int(binning))
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(
        1e-12
    )
    axis = float(tilt_axis_deg)
    used = angles[use]
    cos_max = max(math.cos(math.radians(float(used.abs().max()))), 0.5)
    sideways = abs(math.sin(math.radians(axis))) > abs(math.cos(math.radians(axis)))

    extra = working_binning(min(x.shape[-2:]), None if not pixel_size_a else pixel_size_a * binning)
    v = bin_views(x, extra) if extra > 1 else x
    b = extra * int(binning)
    out_shape = (v.shape[-1], v.shape[-2]) if sideways else tuple(v.shape[-2:])
    # a slab about as thick as the field is wide spans it at high tilt, where few views see the
    # slab's edges: its references mislead (21 views of 128 px, 150 nm ice: a 136-px slab gave
    # 7-9 px honest residual, 80-100 px slabs 1-2 px)
    nz_slab = min(round(align_z_px / b), math.floor(_SLAB_FIELD_FRACTION * out_shape[1]))
    low = _Series(
        views=v,
        angles_deg=used,
        binning=b,
        nz=max(4, nz_slab),
        out_shape=out_shape,
        nx_volume=2 * math.ceil(out_shape[1] / cos_max / 2),
        max_shift_px=(max_shift_px / b) if max_shift_px else out_shape[1] / 16,
    )

    history: list[dict] = [
        {"stage": "slab", "align_z_px": low.nz * b, "requested_align_z_px": float(align_z_px),
         "working_binning": b}
    ]
    offset = 0.0
    search = refine_tilt_axis or refine_tilt_offset
    if search:
        k = max(1, round(min(x.shape[-2:]) / _SEARCH_PX))
        g = search_tilt_geometry(
            bin_views(x, k) if k > 1 else x,
            used,
            tilt_axis_deg=axis,
            axis_range_deg=axis_search_deg if refine_tilt_axis else 0.0,
            offset_range_deg=offset_search_deg if refine_tilt_offset else 0.0,
        )
        axis, offset = g.tilt_axis_deg, g.tilt_offset_deg
        history.append(
            {"stage": "geometry_search", "tilt_axis_deg": axis, "tilt_offset_deg": offset,
             "score": g.score, "trials": len(g.trials)}
        )
        sub, peak_significance = _coarse_start(low, axis, offset, history)
        significance = torch.full((t,), math.nan, dtype=torch.float64)
        significance[use] = peak_significance
        low.max_step_px = 1.0  # the coarse shifts are within a pixel or so
        if not max_shift_px:
            low.max_shift_px = min(low.max_shift_px, 3.0)
    else:
        sub, significance = shifts[use], None
    nz_tall = max(2 * low.nz, low.out_shape[1] // 2)
    offset, sub = _specimen(low, axis, offset, sub, history, nz=nz_tall, level=False)
    sub, ncc = _refine_shifts(low, axis, offset, sub, iterations, history)
    if refine_tilt_offset:
        offset, sub = _specimen(low, axis, offset, sub, history, nz=nz_tall, level=True)

    shifts[use] = sub
    if search or initial_shifts_px is None:
        shifts = _fill_dark(shifts, angles, use)
    error = torch.full((t,), math.nan, dtype=torch.float64)
    error[use] = 1.0 - ncc
    return ProjectionMatchingResult(
        xf=geometry_to_xf(axis, shifts),
        shifts_px=shifts,
        tilt_axis_deg=axis,
        tilt_offset_deg=offset,
        tilt_angles_deg=angles + offset,
        dark_views=dark,
        per_view_error=error,
        history=history,
        coarse_peak_significance=significance,
    )
