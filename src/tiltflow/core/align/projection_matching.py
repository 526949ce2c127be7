"""Feature-based tilt-series alignment by projection matching (AreTomo-style, no beads needed).

Geometry (``core/geometry.py``): a raw view shows the aligned image rotated by the tilt-axis angle
``a`` and displaced by ``s``: ``p_raw = c + R(a) p_aligned + s`` (IMOD centres); its ``.xf`` is
``A = R(-a)``, ``D = -A s``.  True tilt angle = given angle + ``tilt_offset_deg``.

After AreTomo (Zheng et al. 2022, doi:10.1016/j.yjsbx.2022.100068), on binned, normalised views:

1. reconstruct a slab ``align_z_px`` thick (WBP) from the views aligned with the current geometry
   and reproject it at every angle without the view's own share (leave-one-out) and without every
   view within ``exclude_deg`` (wide); both exactly, by linearity of the matched projector pair;
2. shifts: x' (across the axis) from each view's correlation peak with its leave-one-out
   reference, y' (along the axis) from the wide one.  Slab rows are independent, so y' is pinned
   by far views; across the axis a reprojection is sharp only from nearby views (the rays of far
   views smear over the slab), so each x' peak is local and a slow x' trend over the tilt range
   does not move it.  Those trends (Legendre degrees 2-3 of the angle; 0-1 are the volume's x and
   z) are fitted globally instead, by Newton steps on the mean leave-one-out NCC, which they lower;
3. tilt axis: with the axis off by ``e``, features sit ``-e x'`` off along the axis, so each view
   shows a y' slope across x' against its wide reference; the axis where the fitted error
   crosses zero (a line through three trial axes, twice);
4. specimen height and tilt offset: the pitch and centre of the specimen slab in a reconstruction
   twice ``align_z_px`` thick (``specimen_pitch``; a flat specimen is level at 0° tilt, the same
   assumption as IMOD ``tomopitch`` and AreTomo's offset search).

``per_view_error`` is ``1 - NCC`` of each view with its final leave-one-out reprojection.

Limits (simulated series, see the tests): the specimen should be thinner than about a third of
the binned field across the axis; with 100 nm of ice on a 256-px (binned) field the result was
worse than the coarse alignment.  On 256-px fields the axis comes within about 0.6°.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.align.dark_views import detect_dark_views
from tiltflow.core.align.projection_matching_ops import (
    axis_error_from_strips,
    cross_correlation,
    legendre_basis,
    peak_2d,
    peak_y,
    references,
    smooth_part,
    specimen_pitch,
    strip_y_shifts,
    support_mask,
)
from tiltflow.core.geometry import rotation_matrix_2d
from tiltflow.core.reconstruct import apply_xf, bin_views
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["ProjectionMatchingResult", "projection_matching_align"]

_TREND_DEGREES = (2, 3)  # slow x' trends searched globally (0, 1: position of the volume)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift corrections ``(n, 2)`` (binned aligned px): x' against the leave-one-out reference,
    y' against the wide one; the leave-one-out NCC ``(n,)`` and the wide y' agreement ``(n,)``."""
    aligned, mask = _aligned(s, axis, shifts)
    loo, wide = references(
        aligned,
        s.angles_deg + offset,
        nz=s.nz,
        nx_volume=s.nx_volume,
        exclude_deg=s.exclude_deg,
        cache=s.cache,
        projectors=s.projectors,
    )
    d_loo, ncc_loo = peak_2d(cross_correlation(aligned, loo, mask), max_shift_px)
    dy, y_score = peak_y(
        cross_correlation(aligned, wide, mask), max_shift_px, x_halfwidth_px=s.max_shift_px
    )
    return torch.stack([d_loo[:, 0], dy], -1), ncc_loo, y_score


def _refine_shifts(
    s: _Series,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    iterations: int,
    history: list[dict],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection-matching iterations; returns the shifts and the last leave-one-out NCC."""
    rot = rotation_matrix_2d(axis)
    ncc = torch.zeros(shifts.shape[0], dtype=torch.float64)
    angles = s.angles_deg + offset
    for it in range(iterations):
        d, ncc, _ = _measure(s, axis, offset, shifts, s.max_shift_px)
        d[:, 0] -= smooth_part(d[:, 0], angles, degree=max(_TREND_DEGREES))  # see _refine_trends
        d[:, 1] -= d[:, 1].mean()  # the volume's y position
        shifts = shifts + s.binning * d @ rot.T  # aligned binned px -> raw unbinned px
        step = float(d.norm(dim=1).max()) * s.binning
        history.append(
            {
                "stage": "shifts",
                "iteration": it,
                "mean_ncc": float(ncc.mean()),
                "max_step_px": step,
                "tilt_axis_deg": axis,
                "tilt_offset_deg": offset,
            }
        )
        if step < 0.1 * s.binning:
            break
    return shifts, ncc


def _refine_trends(
    s: _Series,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    history: list[dict],
    *,
    steps_px: tuple[float, ...],
) -> torch.Tensor:
    """Slow x' trends over the tilt range (Legendre degrees 2-3; 0-1 are the volume's x and z)
    by Newton steps on the mean leave-one-out NCC, which falls when the trends are off even
    though each view's own correlation peak does not move."""
    basis = legendre_basis(s.angles_deg + offset, _TREND_DEGREES)
    rot = rotation_matrix_2d(axis)

    def moved(coef: torch.Tensor) -> torch.Tensor:
        d = torch.stack([basis @ coef, torch.zeros(basis.shape[0], dtype=torch.float64)], -1)
        return shifts - s.binning * d @ rot.T  # view content moves by d (binned aligned px)

    def score(coef: torch.Tensor) -> float:
        return float(_measure(s, axis, offset, moved(coef), 2.0)[1].mean())

    total = torch.zeros(basis.shape[1], dtype=torch.float64)
    best = score(total)
    for h in steps_px:  # trial steps, binned px
        step = torch.zeros_like(total)
        for k in range(basis.shape[1]):
            e = torch.zeros_like(total)
            e[k] = h
            fp, fm = score(total + e), score(total - e)
            curv = (fp - 2.0 * best + fm) / h**2
            step[k] = -(fp - fm) / (2.0 * h * curv) if curv < 0 else h * math.copysign(1.0, fp - fm)
        step = step.clamp(-2.0 * h, 2.0 * h)
        trial = score(total + step)
        if trial > best:  # a Newton step on a noisy score is kept only if it helps
            total, best = total + step, trial
        history.append(
            {"stage": "trends", "coefficients_px": (total * s.binning).tolist(), "mean_ncc": best}
        )
    return moved(total)


def _axis_error_deg(s: _Series, axis: float, offset: float, shifts: torch.Tensor) -> float:
    """Estimated ``axis - true axis`` from the y' shifts of strips of each view across x'
    against its wide reference (``axis_error_from_strips``)."""
    aligned, mask = _aligned(s, axis, shifts)
    angles = s.angles_deg + offset
    _, wide = references(
        aligned,
        angles,
        nz=s.nz,
        nx_volume=s.nx_volume,
        exclude_deg=s.exclude_deg,
        cache=s.cache,
        projectors=s.projectors,
    )
    dy, height, xk = strip_y_shifts(aligned, wide, mask, n_strips=6, max_shift_px=s.max_shift_px)
    return axis_error_from_strips(dy, height, xk, angles, exclude_deg=s.exclude_deg)


def _refine_axis(
    s: _Series,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    half_range_deg: float,
    history: list[dict],
) -> float:
    """Root of :func:`_axis_error_deg` from a straight line through it at ``axis`` and
    ``axis +- half_range_deg`` (its slope is below 1: the far views are not all that far); no
    change if the line does not rise, at most ``2 half_range_deg`` away."""
    trials = torch.tensor([axis - half_range_deg, axis, axis + half_range_deg], dtype=torch.float64)
    errors = torch.tensor(
        [_axis_error_deg(s, float(a), offset, shifts) for a in trials], dtype=torch.float64
    )
    slope, mean = (
        torch.linalg.lstsq(
            torch.stack([trials - axis, torch.ones(3, dtype=torch.float64)], -1), errors[:, None]
        )
        .solution[:, 0]
        .tolist()
    )
    step = 0.0 if slope < 0.1 else max(-2 * half_range_deg, min(2 * half_range_deg, -mean / slope))
    history.append(
        {
            "stage": "tilt_axis",
            "trials_deg": trials.tolist(),
            "axis_error_deg": errors.tolist(),
            "tilt_axis_deg": axis + step,
        }
    )
    return axis + step


def _centre_specimen(
    s: _Series,
    axis: float,
    offset: float,
    shifts: torch.Tensor,
    history: list[dict],
    *,
    level: bool,
) -> tuple[float, torch.Tensor]:
    """Shifts that centre the specimen in z and, if ``level``, the tilt offset that levels it."""
    aligned, _ = _aligned(s, axis, shifts)
    pitch_deg, z_centre = specimen_pitch(
        aligned, s.angles_deg + offset, nz=2 * s.nz, x_extent_px=s.out_shape[1]
    )
    # a level slab reconstructed with angles short by e appears as z = c - x tan(e)
    new_offset = offset - pitch_deg if level else offset
    th = torch.deg2rad(s.angles_deg + new_offset)
    rot = rotation_matrix_2d(axis)
    # moving the volume by -z_centre moves view content by -z sin(theta) across the axis
    d = torch.stack([-z_centre * torch.sin(th), torch.zeros_like(th)], -1)
    history.append(
        {
            "stage": "level" if level else "centre",
            "specimen_pitch_deg": pitch_deg,
            "specimen_z_px": z_centre * s.binning,
            "tilt_offset_deg": new_offset,
        }
    )
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
    axis_search_deg: float = 3.0,  # largest change of the axis from the initial one
    exclude_deg: float = 10.0,  # views this close in angle are left out of the wide references
    max_shift_px: float | None = None,  # per iteration, px of the input views (default w / 16)
) -> ProjectionMatchingResult:
    """Align a tilt series by projection matching (module docstring); pure, device of ``views``.

    Shifts and ``align_z_px`` are in pixels of ``views``; the work runs on views binned by
    ``binning``.  Raises ``ValueError`` for malformed input or too few usable views.
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
    hb, wb = x.shape[-2:]
    axis = float(tilt_axis_deg)
    sideways = abs(math.sin(math.radians(axis))) > abs(math.cos(math.radians(axis)))
    out_shape = (wb, hb) if sideways else (hb, wb)
    used = angles[use]
    cos_max = max(math.cos(math.radians(float(used.abs().max()))), 0.5)
    s = _Series(
        views=x,
        angles_deg=used,
        binning=int(binning),
        nz=max(4, round(align_z_px / binning)),
        out_shape=out_shape,
        nx_volume=2 * math.ceil(out_shape[1] / cos_max / 2),
        exclude_deg=float(exclude_deg),
        max_shift_px=(max_shift_px / binning) if max_shift_px else out_shape[1] / 16,
    )

    history: list[dict] = []
    offset = 0.0
    sub = shifts[use]
    offset, sub = _centre_specimen(s, axis, offset, sub, history, level=False)
    sub, _ = _refine_shifts(s, axis, offset, sub, iterations, history)
    sub = _refine_trends(s, axis, offset, sub, history, steps_px=(2.0,))
    start = axis
    for half_range_deg in (1.0, 0.5) if refine_tilt_axis else ():
        axis = _refine_axis(s, axis, offset, sub, half_range_deg, history)
        axis = min(max(axis, start - axis_search_deg), start + axis_search_deg)
        sub, _ = _refine_shifts(s, axis, offset, sub, max(1, iterations // 2), history)
    sub = _refine_trends(s, axis, offset, sub, history, steps_px=(1.0,))
    if refine_tilt_offset:
        offset, sub = _centre_specimen(s, axis, offset, sub, history, level=True)
        sub, _ = _refine_shifts(s, axis, offset, sub, max(1, iterations // 2), history)
    _, ncc, _ = _measure(s, axis, offset, sub, 2.0)

    shifts[use] = sub
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
    )
