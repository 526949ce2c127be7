"""Whether an alignment is supported by the data.

Plausibility limits on the refined geometry, the
spread of a bead-levelled tilt offset, and a per-series verdict (good / check / failed) with
its reasons.

An alignment refines more than shifts: a tilt-axis angle, a tilt offset, grouped tilt-angle
changes and magnifications. Each is determined only when the beads or patches constrain it; a
few beads on one surface, a narrow field or a thin specimen leave some free, and a free
parameter wanders (a 384-px demo field gave offsets of 26° and 79°). The caller refines, asks
:func:`geometry_problems`, and where there are any re-solves with those parameters fixed at the
values it was given; what still fails is a ``failed`` verdict, never a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core.verdict import Verdict

__all__ = [
    "GeometryLimits",
    "Verdict",
    "fiducial_verdict",
    "geometry_problems",
    "held_reasons",
    "inconsistent_tracks",
    "weak_correlation",
    "offset_spread_deg",
    "patch_verdict",
]


@dataclass(frozen=True)
class GeometryLimits:
    """What a microscope's geometry can be (degrees; magnification relative to the 0° view)."""

    max_abs_tilt_deg: float = 90.0  # any refined |tilt| at or beyond is impossible
    max_abs_offset_deg: float = 10.0  # a stage offset beyond is a mislabelled tilt scheme
    max_axis_change_deg: float = 5.0  # from the mdoc's (or the caller's) axis
    max_tilt_change_deg: float = 5.0  # grouped per-view change, beyond the offset
    magnification_range: tuple[float, float] = (0.9, 1.1)
    max_offset_spread_deg: float = 1.5  # jackknife SD of a bead-levelled offset
    # beyond these the tracks themselves are inconsistent (they followed different beads): no
    # fall-back can rescue the solution
    gross_magnification_range: tuple[float, float] = (0.75, 1.33)
    gross_tilt_change_deg: float = 15.0


def inconsistent_tracks(
    nominal_deg: torch.Tensor,  # (t,) as given
    refined_deg: torch.Tensor,  # (t,) refined, offset included
    offset_deg: float,
    magnification: torch.Tensor | None,  # (t,)
    limits: GeometryLimits = GeometryLimits(),
) -> str | None:
    """Name bead tracks that cannot belong to one rigid specimen.

    A reason when grouped magnifications or tilt changes are so far off that the bead tracks
    cannot belong to one rigid specimen; None otherwise.
    """
    if magnification is not None:
        mag = torch.as_tensor(magnification, dtype=torch.float64).cpu()
        low, high = limits.gross_magnification_range
        if not bool(torch.isfinite(mag).all()) or float(mag.min()) < low or float(mag.max()) > high:
            return (
                f"the bead tracks are inconsistent: they need magnifications {float(mag.min()):.2f}-"
                f"{float(mag.max()):.2f} (a rigid specimen stays near 1); tracking followed different beads"
            )
    change = torch.as_tensor(refined_deg, dtype=torch.float64).cpu() - torch.as_tensor(nominal_deg).cpu() - offset_deg
    if (
        math.isfinite(offset_deg)
        and bool(torch.isfinite(change).all())
        and float(change.abs().max()) > limits.gross_tilt_change_deg
    ):
        return (
            f"the bead tracks are inconsistent: they need tilt changes of {float(change.abs().max()):.0f}°; "
            "tracking followed different beads"
        )
    return None


def geometry_problems(
    nominal_deg: torch.Tensor,  # (t,) tilt angles as given (mdoc)
    refined_deg: torch.Tensor,  # (t,) refined tilt angles (offset included)
    *,
    axis_initial_deg: float,
    axis_deg: float,
    offset_deg: float,
    magnification: torch.Tensor | None = None,  # (t,) or None
    limits: GeometryLimits = GeometryLimits(),
) -> dict[str, str]:
    """List the refined values beyond ``limits``.

    Refined values beyond ``limits``: ``{parameter: reason}`` with parameter one of
    ``tilt_offset``, ``tilt_angles``, ``tilt_axis``, ``magnification``; empty when plausible.
    Non-finite values are problems too.
    """
    nominal = torch.as_tensor(nominal_deg, dtype=torch.float64).cpu()
    refined = torch.as_tensor(refined_deg, dtype=torch.float64).cpu()
    problems: dict[str, str] = {}
    if not math.isfinite(offset_deg) or abs(offset_deg) > limits.max_abs_offset_deg:
        problems["tilt_offset"] = f"tilt offset {offset_deg:.1f}° beyond ±{limits.max_abs_offset_deg:g}°"
    if not bool(torch.isfinite(refined).all()) or float(refined.abs().max()) >= limits.max_abs_tilt_deg:
        problems["tilt_angles"] = (
            f"refined tilt angles reach {float(refined.abs().max()):.1f}° "
            f"(|tilt| ≥ {limits.max_abs_tilt_deg:g}° is impossible)"
        )
    else:
        change = float((refined - nominal - offset_deg).abs().max()) if math.isfinite(offset_deg) else math.inf
        if change > limits.max_tilt_change_deg:
            problems["tilt_angles"] = (
                f"tilt angles changed by up to {change:.1f}° beyond the offset (> {limits.max_tilt_change_deg:g}°)"
            )
    moved = _angle_difference_deg(axis_deg, axis_initial_deg)
    if not math.isfinite(moved) or abs(moved) > limits.max_axis_change_deg:
        problems["tilt_axis"] = (
            f"tilt axis moved {moved:+.1f}° from {axis_initial_deg:.1f}° (> {limits.max_axis_change_deg:g}°)"
        )
    if magnification is not None:
        mag = torch.as_tensor(magnification, dtype=torch.float64).cpu()
        low, high = limits.magnification_range
        if not bool(torch.isfinite(mag).all()) or float(mag.min()) < low or float(mag.max()) > high:
            problems["magnification"] = (
                f"magnification {float(mag.min()):.3f}-{float(mag.max()):.3f} outside {low:g}-{high:g}"
            )
    return problems


def offset_spread_deg(
    bead_xyz_px: torch.Tensor,  # (n, 3) beads used to level the specimen
    level_fn,  # (m, 3) -> offset in degrees, e.g. bundle's levelling
) -> float:
    """Estimate the jackknife standard error (degrees) of a bead-levelled tilt offset.

    Jackknife standard error (degrees) of a tilt offset found by levelling beads: each bead
    left out once, ``sqrt((n - 1) / n * sum((o_i - mean)^2))``. Large when few beads, or beads
    on one surface, leave the offset free (4 beads: 24°, -6°, 30°, 30°); small when every subset
    agrees. NaN with fewer than 5 beads (each subset needs 4).
    """
    n = int(bead_xyz_px.shape[0])
    if n < 5:
        return math.nan
    keep = torch.ones(n, dtype=torch.bool)
    values = []
    for i in range(n):
        keep[i] = False
        values.append(float(level_fn(bead_xyz_px[keep.to(bead_xyz_px.device)])))
        keep[i] = True
    v = torch.tensor(values, dtype=torch.float64)
    return float(((n - 1) / n * ((v - v.mean()) ** 2).sum()).sqrt())


_HELD = {
    "tilt_offset": "tilt offset held at 0°",
    "tilt_angles": "tilt angles held at the given ones",
    "tilt_axis": "tilt axis held at the given angle",
    "magnification": "magnification held at 1",
}


def held_reasons(fixed: dict[str, str]) -> list[str]:
    """``tilt offset held at 0°: tilt offset 27.0° beyond ±10°`` for each parameter held."""
    return [f"{_HELD.get(what, what + ' held')}: {why}" for what, why in fixed.items()]


def fiducial_verdict(
    *,
    mean_residual_px: float,  # in px of the aligned (binned) views
    bead_diameter_px: float,  # same px
    n_beads: int,
    n_views: int,
    n_flagged_views: int,
    fixed: dict[str, str],  # parameters held at their given value, and why
    n_beadless_views: int = 0,  # views placed by the coarse alignment alone
    coarse_peak_significance: torch.Tensor | None = None,  # (t,), the tracking's coarse start
) -> Verdict:
    """Judge a fiducial alignment: ``good``, ``check`` or ``failed``.

    good: residual ≤ 1 px (or a quarter bead) with ≥ 5 beads; check: a larger residual, few
    beads, many flagged views, views without beads or a parameter held fixed; failed: a residual beyond half a bead
    (the model does not explain the tracks) or fewer than 3 beads.
    """
    half_bead = 0.5 * bead_diameter_px
    if n_beads < 3:
        return Verdict("failed", (f"{n_beads} beads tracked; the solve needs at least 3",))
    if not math.isfinite(mean_residual_px) or mean_residual_px > max(half_bead, 2.0):
        return Verdict(
            "failed",
            (
                f"mean residual {mean_residual_px:.2f} px, more than half a bead "
                f"({half_bead:.1f} px): the model does not explain the tracks",
            ),
        )
    reasons = held_reasons(fixed)
    if mean_residual_px > max(1.0, 0.25 * bead_diameter_px):
        reasons.append(f"mean residual {mean_residual_px:.2f} px (> 1 px)")
    if n_beads < 5:
        reasons.append(f"only {n_beads} beads")
    if n_flagged_views > 0.2 * n_views:
        reasons.append(f"{n_flagged_views} of {n_views} views flagged")
    if n_beadless_views:
        reasons.append(f"{n_beadless_views} views without tracked beads (placed by the coarse alignment)")
    weak, _ = weak_correlation(coarse_peak_significance)
    if weak:
        reasons.append(weak.replace("the coarse alignment may have drifted", "bead tracks may have jumped"))
    return Verdict("check" if reasons else "good", tuple(reasons))


def weak_correlation(
    peak_significance: torch.Tensor | None, *, check_below: float = 8.0, fail_median_below: float = 5.0
) -> tuple[str | None, bool]:
    """Judge the coarse alignment's peak significances: (reason, fatal).

    (reason, fatal) from the coarse alignment's peak significances (robust SDs above the
    correlation map's median, ``CoarseResult.peak_significance``): views below ``check_below``
    may have drifted; a median below ``fail_median_below`` means the views do not correlate at
    all (noise gives 3.7-4.1; a 7-view 128 x 112 px series of a real specimen 5.7). Calibration
    on simulated series (256-384 px): coarse starts 8-22 px off
    had weakest views of 7.7-8.9, those within 2 px stayed above 14 (9.6 on a 192-px field), so
    the check catches only the clearer cases.
    """
    if peak_significance is None:
        return None, False
    sig = torch.as_tensor(peak_significance, dtype=torch.float64).cpu()
    sig = sig[~torch.isnan(sig) & ~torch.isinf(sig)]
    if not sig.numel():
        return None, False
    if float(sig.median()) < fail_median_below:
        return (
            f"the views do not correlate with their neighbours (median peak {float(sig.median()):.1f} "
            "robust SD above the background)"
        ), True
    weak = int((sig < check_below).sum())
    if weak:
        return (
            f"{weak} views correlate weakly with their neighbours (peak < {check_below:g} robust SD): "
            "the coarse alignment may have drifted"
        ), False
    return None, False


def patch_verdict(
    *,
    per_view_error: torch.Tensor,  # (t,) 1 - NCC, NaN for dark views
    n_dark: int,
    fixed: dict[str, str],
    coarse_peak_significance: torch.Tensor | None = None,  # (t,)
    n_dark_unplaced: int = 0,  # dark views whose shifts are their neighbours' (no correlation peak)
) -> Verdict:
    """Judge a projection-matching alignment: ``good``, ``check`` or ``failed``.

    failed: fewer than 5 matched views or no correlation left (median error ≥ 0.95);
    check: a parameter held fixed, more than a quarter of the views dark, dark views not placed
    by their correlation with the others' reprojection (their shifts are their neighbours': a
    guess, off by their own stage error), or views whose error is an outlier (above median + 5
    MAD, at least 0.1 above the median).
    """
    err = torch.as_tensor(per_view_error, dtype=torch.float64).cpu()
    ok = err[torch.isfinite(err)]
    t = int(err.numel())
    if ok.numel() < 5:
        return Verdict("failed", (f"{ok.numel()} views matched; projection matching needs 5",))
    med = float(ok.median())
    if med >= 0.95:
        return Verdict(
            "failed", (f"median projection-matching error {med:.2f}: the views do not match their reprojections",)
        )
    weak, fatal = weak_correlation(coarse_peak_significance)
    if fatal and weak is not None:
        return Verdict("failed", (weak,))
    reasons = held_reasons(fixed) + ([weak] if weak else [])
    if n_dark > 0.25 * t:
        reasons.append(f"{n_dark} of {t} views dark")
    if n_dark_unplaced:
        reasons.append(
            f"{n_dark_unplaced} dark views not placed (no significant correlation with the others' "
            "reprojection): their shifts are guessed from their neighbours'"
        )
    mad = float((ok - med).abs().median())
    outliers = int((ok > med + max(5.0 * 1.4826 * mad, 0.1)).sum())
    if outliers:
        reasons.append(f"{outliers} views match poorly (error > median + 5 MAD)")
    return Verdict("check" if reasons else "good", tuple(reasons))


def _angle_difference_deg(a: float, b: float) -> float:
    """Return a - b wrapped to (-180, 180]."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    return (a - b + 180.0) % 360.0 - 180.0
