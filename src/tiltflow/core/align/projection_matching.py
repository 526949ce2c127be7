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
   updates are small or stop shrinking.  The slab is narrowed to 1.3x the specimen thickness
   measured in step 2 where the specimen is thinner (the ice around it adds only noise to the
   references), never widened: on specimens thicker than the slab the references hold ghosts of
   the features outside it and the corrections are noisy (a slab as thick as the specimen is
   worse: its faces cut through the strongest features, the surface gold), and the damping keeps
   the result there near the coarse alignment's;
4. tilt offset: the pitch of the specimen slab in the final reconstruction levels it (a flat
   specimen is level at 0° tilt, as IMOD ``tomopitch`` assumes);
5. dark views (left out of 1-4): each placed by its correlation with the final slab of the
   others reprojected at its angle (``place_dark_views``), where that peak stands out of its map
   (``DARK_MIN_SIGNIFICANCE`` robust SDs; noise gives 3-4), else its neighbours' shifts are kept
   (a guess: the darkest views are the highest tilts, their stage errors their own).

``per_view_error`` is ``1 - NCC`` of each view with its leave-one-out reprojection (last
iteration). Accuracy and timings: ``benchmarks/README.md`` (align_conditions, accuracy_matrix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.align.dark_views import detect_dark_views
from tiltflow.core.align.geometry_search import search_tilt_geometry
from tiltflow.core.align.projection_matching_stages import (
    MatchSeries,
    centre_specimen,
    coarse_start,
    fill_dark_views,
    place_dark_views,
    refine_shifts,
)
from tiltflow.core.reconstruct import bin_views
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["MatchingOptions", "ProjectionMatchingResult", "projection_matching_align", "working_binning"]

_SEARCH_PX = 128  # the geometry search works on views binned to about this size
_WORK_PX = 320  # without a pixel size: larger views are binned by 2, 4, ... to this size
_WORK_PIXEL_A = 10.0  # with one: views are binned by 2, 4, ... while their pixel is finer than this
_WORK_MAX_PX = 640  # or while they are larger than this, but never below _WORK_MIN_PX
_WORK_MIN_PX = 256
_SLAB_FIELD_FRACTION = 0.75  # thickest slab, of the aligned field's width across the axis
_SLAB_SPECIMEN_FACTOR = 1.3  # thickest slab, of the specimen's measured thickness


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
    # (t,) significance of each dark view's correlation with the others' reprojection (robust SDs;
    # placed by it when >= DARK_MIN_SIGNIFICANCE, else by its neighbours); NaN for the used views
    dark_view_significance: torch.Tensor | None = None


@dataclass(frozen=True)
class MatchingOptions:
    """Iterations, refinements and searches of :func:`projection_matching_align`."""

    iterations: int = 4
    refine_tilt_axis: bool = True
    refine_tilt_offset: bool = True
    exclude_dark: bool = True  # leave out views much darker than their tilt explains
    dark_tolerance: float = 0.7
    axis_search_deg: float = 3.0  # largest change of the axis from the initial one
    offset_search_deg: float = 4.5  # largest tilt offset searched
    # per iteration, px of the input views (default w / 16; 3 binned px from the coarse start)
    max_shift_px: float | None = None


def working_binning(side_px: int, pixel_size_a: float | None) -> int:
    """Choose the further binning (1, 2, 4, ...) of views for projection matching.

    Further binning (1, 2, 4, ...) of views ``side_px`` wide (their shorter side) for projection
    matching: while their pixel is finer than 10 Å or they are wider than 640 px, never below 256
    px; without a pixel size, until they are at most 320 px (the sizes that measured best:
    ``benchmarks/README.md``).
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


def _normalised(views: torch.Tensor, idx: torch.Tensor, binning: int) -> torch.Tensor:
    """Bin views ``idx`` by ``binning`` and bring each to zero mean and unit variance."""
    x = views[idx.to(views.device)]
    x = bin_views(x if x.is_floating_point() else x.float(), binning)
    return (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def _narrow_slab(low: MatchSeries, history: list[dict]) -> None:
    """Narrow the slab to the specimen: at most ``_SLAB_SPECIMEN_FACTOR`` x the thickness just measured.

    The slab of the references is never widened (the measure can overestimate a thick specimen)
    but narrowed where the specimen is thinner: the ice or vacuum around a thin specimen adds only
    noise to the references (``benchmarks/README.md``, accuracy matrix).
    """
    measured_px = history[-1]["specimen_thickness_px"] / low.binning  # the centring's measure
    narrowed = max(4, min(low.nz, round(_SLAB_SPECIMEN_FACTOR * measured_px)))
    if narrowed < low.nz:
        low.nz = narrowed
        history.append({"stage": "slab", "align_z_px": narrowed * low.binning, "narrowed_to_specimen": True})


def projection_matching_align(
    views: torch.Tensor,  # (t, h, w) raw views (counts), sorted by tilt angle
    tilt_angles_deg,  # (t,) as stored by the microscope
    *,
    tilt_axis_deg: float,  # initial tilt-axis angle (mdoc)
    align_z_px: float,  # slab thickness of the intermediate reconstructions, input px
    initial_shifts_px: torch.Tensor | None = None,  # (t, 2) raw-image shifts, e.g. coarse
    binning: int = 2,
    pixel_size_a: float | None = None,  # of ``views`` (Å); sets the working binning (below)
    options: MatchingOptions | None = None,
) -> ProjectionMatchingResult:
    """Align a tilt series by projection matching, without beads (AreTomo-style; module docstring).

    Shifts and ``align_z_px`` are in pixels of ``views``; the work runs on views binned by ``binning``
    and by 2, 4, ... more: with ``pixel_size_a``, while their pixel is finer than 10 Å or they are
    larger than 640 px (never below 256 px), else until they are at most 320 px; the geometry search
    on about 128 px. Projection matching starts from the coarse alignment at the searched geometry,
    or from ``initial_shifts_px`` when neither the axis nor the offset is refined (then dark views start
    from those; else from shifts interpolated from their neighbours in angle); dark views are then
    placed on the others' reprojection where it correlates (module docstring, 5). Pure; device of ``views``.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` raw views (counts), sorted by tilt angle.
    tilt_angles_deg : array_like
        ``(t,)`` tilt angles in degrees, as stored by the microscope.
    tilt_axis_deg : float
        Initial tilt-axis angle (mdoc), degrees from +y, counter-clockwise.
    align_z_px : float
        Slab thickness of the intermediate reconstructions, pixels of ``views``.
    initial_shifts_px : torch.Tensor, optional
        ``(t, 2)`` raw-image shifts (x, y) to start from, e.g. a coarse alignment's.
    binning : int
        Binning before the work.
    pixel_size_a : float, optional
        Pixel size of ``views`` (Å/px); sets the further working binning.
    options : MatchingOptions, optional
        Iterations, refinements, dark-view exclusion and search ranges.

    Returns
    -------
    ProjectionMatchingResult
        ``xf`` ``(t, 6)`` IMOD rows and ``shifts_px`` ``(t, 2)`` in pixels of ``views``, refined axis
        and tilt offset, dark views, per-view errors and the history of the stages.

    Raises
    ------
    ValueError
        For malformed input or fewer than 5 usable (non-dark) views.

    Examples
    --------
    >>> import torch
    >>> views = torch.rand(7, 64, 64, generator=torch.Generator().manual_seed(0)) + 1.0
    >>> angles = torch.arange(-30.0, 31.0, 10.0)
    >>> fixed = MatchingOptions(iterations=1, refine_tilt_axis=False, refine_tilt_offset=False)
    >>> projection_matching_align(views, angles, tilt_axis_deg=0.0, align_z_px=16.0, binning=1, options=fixed).xf.shape
    torch.Size([7, 6])
    """
    o = MatchingOptions() if options is None else options
    iterations, refine_tilt_axis, refine_tilt_offset = o.iterations, o.refine_tilt_axis, o.refine_tilt_offset
    max_shift_px = o.max_shift_px
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        raise ValueError(f"views must be a (t, h, w) tensor, got {getattr(views, 'shape', type(views))}")
    t, h, w = views.shape
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).cpu()
    if angles.numel() != t:
        raise ValueError(f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one per view")
    if bool((angles[1:] < angles[:-1]).any()):
        raise ValueError("views must be sorted by tilt angle (ascending), as in tilt-series stacks")
    if int(binning) != binning or binning < 1 or min(h, w) // binning < 32:
        raise ValueError(f"binning must be a positive integer leaving >= 32 px, got {binning} for {h}x{w}")
    if align_z_px <= 0 or iterations < 1:
        raise ValueError(f"align_z_px must be > 0 px and iterations >= 1, got {align_z_px}, {iterations}")
    shifts = torch.zeros(t, 2, dtype=torch.float64)
    if initial_shifts_px is not None:
        shifts = torch.as_tensor(initial_shifts_px, dtype=torch.float64).cpu().clone()
        if shifts.shape != (t, 2):
            raise ValueError(f"initial_shifts_px must have shape ({t}, 2), got {tuple(shifts.shape)}")
    dark = (
        detect_dark_views(views, angles, tolerance=o.dark_tolerance).cpu()
        if o.exclude_dark
        else torch.zeros(t, dtype=torch.bool)
    )
    use = torch.nonzero(~dark).reshape(-1)
    if use.numel() < 5:
        raise ValueError(f"only {use.numel()} usable (non-dark) views; projection matching needs >= 5")

    x = _normalised(views, use, int(binning))
    axis = float(tilt_axis_deg)
    used = angles[use]
    cos_max = max(math.cos(math.radians(float(used.abs().max()))), 0.5)
    sideways = abs(math.sin(math.radians(axis))) > abs(math.cos(math.radians(axis)))

    extra = working_binning(min(x.shape[-2:]), None if not pixel_size_a else pixel_size_a * binning)
    v = bin_views(x, extra) if extra > 1 else x
    b = extra * int(binning)
    out_shape = (int(v.shape[-1]), int(v.shape[-2])) if sideways else (int(v.shape[-2]), int(v.shape[-1]))
    # a slab about as thick as the field is wide spans it at high tilt, where few views see the
    # slab's edges: its references mislead (21 views of 128 px, 150 nm ice: a 136-px slab gave
    # 7-9 px honest residual, 80-100 px slabs 1-2 px)
    nz_slab = min(round(align_z_px / b), math.floor(_SLAB_FIELD_FRACTION * out_shape[1]))
    low = MatchSeries(
        views=v,
        angles_deg=used,
        binning=b,
        nz=max(4, nz_slab),
        out_shape=out_shape,
        nx_volume=2 * math.ceil(out_shape[1] / cos_max / 2),
        max_shift_px=(max_shift_px / b) if max_shift_px else out_shape[1] / 16,
    )

    history: list[dict] = [
        {"stage": "slab", "align_z_px": low.nz * b, "requested_align_z_px": float(align_z_px), "working_binning": b}
    ]
    offset = 0.0
    search = refine_tilt_axis or refine_tilt_offset
    if search:
        k = max(1, round(min(x.shape[-2:]) / _SEARCH_PX))
        g = search_tilt_geometry(
            bin_views(x, k) if k > 1 else x,
            used,
            tilt_axis_deg=axis,
            axis_range_deg=o.axis_search_deg if refine_tilt_axis else 0.0,
            offset_range_deg=o.offset_search_deg if refine_tilt_offset else 0.0,
        )
        axis, offset = g.tilt_axis_deg, g.tilt_offset_deg
        history.append(
            {
                "stage": "geometry_search",
                "tilt_axis_deg": axis,
                "tilt_offset_deg": offset,
                "score": g.score,
                "trials": len(g.trials),
            }
        )
        sub, peak_significance = coarse_start(low, axis, offset, history)
        significance = torch.full((t,), math.nan, dtype=torch.float64)
        significance[use] = peak_significance
        low.max_step_px = 1.0  # the coarse shifts are within a pixel or so
        if not max_shift_px:
            low.max_shift_px = min(low.max_shift_px, 3.0)
    else:
        sub, significance = shifts[use], None
    nz_tall = max(2 * low.nz, low.out_shape[1] // 2)
    offset, sub = centre_specimen(low, axis, offset, sub, history, nz=nz_tall, level=False)
    _narrow_slab(low, history)
    sub, ncc = refine_shifts(low, axis, offset, sub, iterations, history)
    if refine_tilt_offset:
        offset, sub = centre_specimen(low, axis, offset, sub, history, nz=nz_tall, level=True)

    shifts[use] = sub
    if search or initial_shifts_px is None:
        shifts = fill_dark_views(shifts, angles, use)
    dark_significance = torch.full((t,), math.nan, dtype=torch.float64)
    if bool(dark.any()):
        idx = torch.nonzero(dark).reshape(-1)
        dv = _normalised(views, idx, int(binning))
        placed = place_dark_views(
            low,
            bin_views(dv, extra) if extra > 1 else dv,
            angles[idx],
            (axis, offset),
            sub,
            shifts[idx],
            nz=(low.nz, nz_tall),
        )
        shifts[idx], dark_significance[idx] = placed.shifts_px, placed.significance
        history.append({"stage": "dark_views", "placed": int(placed.placed.sum()), "of": int(idx.numel())})
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
        dark_view_significance=dark_significance,
    )
