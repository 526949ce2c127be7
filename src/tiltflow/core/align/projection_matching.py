"""Feature-based tilt-series alignment by projection matching (AreTomo-style, no beads needed).

Geometry (``core/geometry.py``): a raw view shows the aligned image rotated by the tilt-axis angle
``a`` and displaced by ``s``: ``p_raw = c + R(a) p_aligned + s`` (IMOD centres); its ``.xf`` is
``A = R(-a)``, ``D = -A s``.  True tilt angle = given angle + ``tilt_offset_deg``.

Each iteration (after AreTomo, Zheng et al. 2022, doi:10.1016/j.yjsbx.2022.100068):

1. resample the binned, normalised views into aligned views with the current geometry;
2. reconstruct a slab ``align_z_px`` thick by WBP and reproject it at every angle without the
   view's own share (leave-one-out) and without every view within ``exclude_deg`` (wide), both
   exactly, by linearity of the matched projector pair (``core/backproject.py``);
3. cross-correlate each view with its references (band-passed, masked): x' (across the tilt axis)
   from the leave-one-out one, y' (along the axis) from the wide one.  Rows of the slab are
   independent, so y' is measured against far views too; across the axis a reprojection is sharp
   only from views within about ``feature / align_z`` rad, so x' is a local measurement and its
   slow trends over the tilt range (a cubic in the angle, which includes the volume's x and z
   position) are left as the initial shifts had them.

The tilt axis is refined by a 1-D search maximising the mean normalised cross-correlation with the
wide references; the tilt-angle offset and the specimen's height from the pitch of the specimen
slab in a thicker reconstruction (a flat specimen at 0° is level; like IMOD's ``tomopitch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.align.dark_views import detect_dark_views
from tiltflow.core.align.projection_matching_ops import (
    cross_correlation,
    peak_2d,
    peak_y,
    references,
    smooth_part,
    specimen_pitch,
    support_mask,
)
from tiltflow.core.reconstruct import apply_xf, bin_views
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["ProjectionMatchingResult", "projection_matching_align"]


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
    history: list[dict] = field(default_factory=list)  # one entry per iteration / search


@dataclass
class _Series:
    """The binned, normalised used (non-dark) views and the fixed settings."""

    views: torch.Tensor  # (n, hb, wb) zero mean, unit variance
    angles_deg: torch.Tensor  # (n,) float64, as given
    binning: int
    nz: int  # slab thickness, binned px
    out_shape: tuple[int, int]  # aligned view shape (binned)
    nx_volume: int
    exclude_deg: float
    max_shift_px: float  # binned px
    cache: dict = field(default_factory=dict)


def _aligned(s: _Series, axis_deg: float, shifts_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned binned views ``(n, ho, wo)`` and their soft CC masks."""
    xf = geometry_to_xf(axis_deg, shifts_px.to(torch.float64).cpu() / s.binning).to(s.views.device)
    aligned = apply_xf(s.views, xf, s.out_shape, mode="bilinear")
    return aligned, support_mask(xf, s.views.shape[-2:], s.out_shape).to(aligned.dtype)


def _measure(s: _Series, axis: float, offset: float, shifts: torch.Tensor, max_shift_px: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift corrections ``(n, 2)`` (binned aligned px): x' against the leave-one-out reference,
    y' against the wide one; the leave-one-out NCC ``(n,)`` and the wide y' agreement ``(n,)``."""
    aligned, mask = _aligned(s, axis, shifts)
    loo, wide = references(aligned, s.angles_deg + offset, nz=s.nz, nx_volume=s.nx_volume,
                           exclude_deg=s.exclude_deg, cache=s.cache)
    d_loo, ncc_loo = peak_2d(cross_correlation(aligned, loo, mask), max_shift_px)
    dy, y_score = peak_y(cross_correlation(aligned, wide, mask), max_shift_px,
                         x_halfwidth_px=s.max_shift_px)
    return torch.stack([d_loo[:, 0], dy], -1), ncc_loo, y_score


def _refine_shifts(s: _Series, axis: float, offset: float, shifts: torch.Tensor, iterations: int,
                   history: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection-matching iterations; returns the shifts and the last leave-one-out NCC."""
    c, sn = math.cos(math.radians(axis)), math.sin(math.radians(axis))
    rot = torch.tensor([[c, -sn], [sn, c]], dtype=torch.float64)
    ncc = torch.zeros(shifts.shape[0], dtype=torch.float64)
    angles = s.angles_deg + offset
    for it in range(iterations):
        d, ncc, _ = _measure(s, axis, offset, shifts, s.max_shift_px)
        d[:, 0] -= smooth_part(d[:, 0], angles, degree=3)  # x' trends are not observed
        d[:, 1] -= d[:, 1].mean()  # the volume's y position
        shifts = shifts + s.binning * d @ rot.T  # aligned binned px -> raw unbinned px
        step = float(d.norm(dim=1).max()) * s.binning
        history.append({"stage": "shifts", "iteration": it, "mean_ncc": float(ncc.mean()),
                        "max_step_px": step, "tilt_axis_deg": axis, "tilt_offset_deg": offset})
        if step < 0.1 * s.binning:
            break
    return shifts, ncc


def _search_1d(score, centre: float, half_range: float, step: float) -> tuple[float, list]:
    """Maximise ``score(x)`` on a grid around ``centre``, then a parabola through the best 3 points."""
    n = max(1, round(half_range / step))
    xs = [centre + step * k for k in range(-n, n + 1)]
    values = [score(x) for x in xs]
    k = max(range(len(xs)), key=lambda i: values[i])
    best = xs[k]
    if 0 < k < len(xs) - 1:
        m1, c0, p1 = values[k - 1], values[k], values[k + 1]
        den = m1 - 2.0 * c0 + p1
        if den < 0:
            best += step * max(-0.5, min(0.5, 0.5 * (m1 - p1) / den))
    return best, list(zip(xs, values))


def _centre_specimen(s: _Series, axis: float, offset: float, shifts: torch.Tensor, history: list[dict],
                     *, level: bool) -> tuple[float, torch.Tensor]:
    """Shifts that centre the specimen in z and, if ``level``, the tilt offset that levels it."""
    aligned, _ = _aligned(s, axis, shifts)
    pitch_deg, z_centre = specimen_pitch(aligned, s.angles_deg + offset, nz=2 * s.nz,
                                         x_extent_px=s.out_shape[1])
    # a level slab reconstructed with angles short by e appears as z = c - x tan(e)
    new_offset = offset - pitch_deg if level else offset
    th = torch.deg2rad(s.angles_deg + new_offset)
    c, sn = math.cos(math.radians(axis)), math.sin(math.radians(axis))
    rot = torch.tensor([[c, -sn], [sn, c]], dtype=torch.float64)
    # moving the volume by -z_centre moves view content by -z sin(theta) across the axis
    d = torch.stack([-z_centre * torch.sin(th), torch.zeros_like(th)], -1)
    history.append({"stage": "level" if level else "centre", "specimen_pitch_deg": pitch_deg,
                    "specimen_z_px": z_centre * s.binning, "tilt_offset_deg": new_offset})
    return new_offset, shifts - s.binning * d @ rot.T


def projection_matching_align(
    views: torch.Tensor,  # (t, h, w) raw views (counts), sorted by tilt angle
    tilt_angles_deg,  # (t,) as stored by the microscope
    *,
    tilt_axis_deg: float,  # initial tilt-axis angle (mdoc / coarse)
    align_z_px: float,  # slab thickness for the intermediate reconstruction, px of the input views
    initial_shifts_px: torch.Tensor | None = None,  # (t, 2) raw-image shifts, e.g. coarse
    binning: int = 2,
    iterations: int = 4,
    refine_tilt_axis: bool = True,
    refine_tilt_offset: bool = True,
    exclude_dark: bool = True,
    dark_tolerance: float = 0.7,
    axis_search_deg: float = 3.0,  # searched +- around the initial axis
    exclude_deg: float = 10.0,  # views this close in angle are left out of the wide references
    max_shift_px: float | None = None,  # per iteration, px of the input views (default w / 16)
) -> ProjectionMatchingResult:
    """Align a tilt series by projection matching (module docstring); pure, device of ``views``.

    Shifts and ``align_z_px`` are in pixels of ``views``; the work runs on views binned by
    ``binning``.  Raises ``ValueError`` for malformed input or too few usable views.
    """
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
    dark = (detect_dark_views(views, angles, tolerance=dark_tolerance).cpu() if exclude_dark
            else torch.zeros(t, dtype=torch.bool))
    use = torch.nonzero(~dark).reshape(-1)
    if use.numel() < 5:
        raise ValueError(f"only {use.numel()} usable (non-dark) views; projection matching needs >= 5")

    x = views[use.to(views.device)]
    x = bin_views(x if x.is_floating_point() else x.float(), int(binning))
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    hb, wb = x.shape[-2:]
    axis = float(tilt_axis_deg)
    sideways = abs(math.sin(math.radians(axis))) > abs(math.cos(math.radians(axis)))
    out_shape = (wb, hb) if sideways else (hb, wb)
    used = angles[use]
    cos_max = max(math.cos(math.radians(float(used.abs().max()))), 0.5)
    s = _Series(views=x, angles_deg=used, binning=int(binning), nz=max(4, round(align_z_px / binning)),
                out_shape=out_shape, nx_volume=2 * math.ceil(out_shape[1] / cos_max / 2),
                exclude_deg=float(exclude_deg),
                max_shift_px=(max_shift_px / binning) if max_shift_px else out_shape[1] / 16)

    history: list[dict] = []
    offset = 0.0
    sub = shifts[use]
    offset, sub = _centre_specimen(s, axis, offset, sub, history, level=False)
    sub, _ = _refine_shifts(s, axis, offset, sub, iterations, history)
    if refine_tilt_axis:
        def axis_score(a: float) -> float:
            # features far from the axis move along it when the axis turns: score how well y'
            # agrees with far views (x' errors summed out), each view at its best y' shift
            return float(_measure(s, a, offset, sub, s.max_shift_px)[2].mean())
        axis, grid = _search_1d(axis_score, axis, axis_search_deg, 1.0)
        axis, grid2 = _search_1d(axis_score, axis, 0.5, 0.25)
        history.append({"stage": "tilt_axis", "tilt_axis_deg": axis, "grid": grid + grid2})
        sub, _ = _refine_shifts(s, axis, offset, sub, iterations, history)
    if refine_tilt_offset:
        offset, sub = _centre_specimen(s, axis, offset, sub, history, level=True)
        sub, _ = _refine_shifts(s, axis, offset, sub, max(1, iterations // 2), history)
    _, ncc, _ = _measure(s, axis, offset, sub, 2.0)

    shifts[use] = sub
    error = torch.full((t,), math.nan, dtype=torch.float64)
    error[use] = 1.0 - ncc
    return ProjectionMatchingResult(
        xf=geometry_to_xf(axis, shifts), shifts_px=shifts, tilt_axis_deg=axis,
        tilt_offset_deg=offset, tilt_angles_deg=angles + offset, dark_views=dark,
        per_view_error=error, history=history,
    )
