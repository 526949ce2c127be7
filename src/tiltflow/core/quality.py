"""Automatic quality flags for tilt series and their CTF: suggestions for the viewer, never applied.

Every detector takes per-view values of one tilt series, shape ``(n,)``, and returns
:class:`Flags`: ``flagged`` ``(n,)`` bool and ``score`` ``(n,)`` float64, the statistic that was
thresholded (its meaning is given per detector). Robust statistics throughout: the median and the
MAD scaled by 1.4826 to a Gaussian sigma. Missing values (NaN) are ignored by the statistics and
never flagged. The device follows the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAD_TO_SIGMA = 1.4826


@dataclass
class Flags:
    """Result of a detector: which views are flagged, and the statistic that was thresholded."""

    flagged: torch.Tensor  # (n,) bool
    score: torch.Tensor  # (n,) float64, detector-specific (ratio, robust z, residual in Å)


def _as_1d(values: torch.Tensor | list[float], name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.ndim != 1:
        raise ValueError(f"{name}: expected one value per view, shape (n,), got {tuple(t.shape)}")
    return t


def robust_sigma(values: torch.Tensor) -> torch.Tensor:
    """1.4826 * median(|x - median(x)|) over the finite values; 0 when fewer than two."""
    v = values[torch.isfinite(values)]
    if v.numel() < 2:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return MAD_TO_SIGMA * (v - v.median()).abs().median()


def _finite_median(values: torch.Tensor) -> torch.Tensor:
    v = values[torch.isfinite(values)]
    return v.median() if v.numel() else torch.full((), float("nan"), dtype=values.dtype, device=values.device)


def flag_dark_views(mean: torch.Tensor | list[float], *, dark_fraction: float = 0.1) -> Flags:
    """Flag views whose mean is below ``dark_fraction`` of the series median (beam blanked, lost frames).

    ``score`` = mean / median(mean). Needs intensities on a positive scale (counts, e⁻/px); when the
    series median is not positive (e.g. normalised stacks) nothing is flagged.
    """
    m = _as_1d(mean, "mean")
    med = _finite_median(m)
    if not torch.isfinite(med) or med <= 0:
        return Flags(torch.zeros_like(m, dtype=torch.bool), torch.full_like(m, float("nan")))
    score = m / med
    return Flags(torch.isfinite(score) & (score < dark_fraction), score)


def flag_blank_views(std: torch.Tensor | list[float], *, blank_fraction: float = 0.1) -> Flags:
    """Featureless views: standard deviation below ``blank_fraction`` of the series median.

    ``score`` = std / median(std).
    """
    s = _as_1d(std, "std")
    med = _finite_median(s)
    if not torch.isfinite(med) or med <= 0:
        return Flags(torch.zeros_like(s, dtype=torch.bool), torch.full_like(s, float("nan")))
    score = s / med
    return Flags(torch.isfinite(score) & (score < blank_fraction), score)


def _neighbours(n: int, i: int, count: int) -> list[int]:
    """Return the ``count`` positions nearest to ``i`` (excluding it), the window sliding at the ends."""
    lo = max(0, min(i - count // 2, n - 1 - count))
    return [j for j in range(lo, min(n, lo + count + 1)) if j != i][:count]


def _theil_sen_at(x: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Value at ``x0`` of the Theil–Sen line through (x, y) (median slope, median intercept)."""
    if x.numel() == 1:
        return y[0]
    dx = x[None, :] - x[:, None]
    dy = y[None, :] - y[:, None]
    upper = torch.triu(torch.ones_like(dx, dtype=torch.bool), diagonal=1) & (dx != 0)
    slope = (dy[upper] / dx[upper]).median() if upper.any() else torch.zeros((), dtype=y.dtype)
    intercept = (y - slope * x).median()
    return intercept + slope * x0


def flag_intensity_drops(
    tilt_angle_deg: torch.Tensor | list[float],
    mean: torch.Tensor | list[float],
    *,
    window: int = 3,
    min_ratio: float = 0.6,
) -> Flags:
    """Flag views whose mean falls far below their neighbours' trend (ice, grid bar, shutter).

    Beer–Lambert: ``log(mean) = a - b / cos(tilt)`` for a slab, so a robust (Theil–Sen) line in
    ``1 / cos(tilt)`` through the ``2 * window`` nearest views in tilt order (not the view itself)
    predicts each view's mean, following the normal fall-off with tilt also at the ends of the range.
    ``score`` = mean / predicted mean; flagged when below ``min_ratio``. Non-positive means are
    ignored. Inputs may be in any order; outputs follow the input order.
    """
    t = _as_1d(tilt_angle_deg, "tilt_angle_deg")
    m = _as_1d(mean, "mean").to(t.device)
    if t.shape != m.shape:
        raise ValueError(f"flag_intensity_drops: {t.numel()} tilt angles but {m.numel()} means — one each per view")
    order = torch.argsort(t)
    x = 1.0 / torch.cos(torch.deg2rad(t[order]))
    ms = m[order]
    log_m = torch.where(ms > 0, ms.clamp_min(1e-300).log(), torch.full_like(ms, float("nan")))
    idx = torch.nonzero(torch.isfinite(log_m)).flatten().tolist()
    score_sorted = torch.full_like(ms, float("nan"))
    for k, i in enumerate(idx):
        nb = [idx[j] for j in _neighbours(len(idx), k, 2 * window)]
        if nb:
            score_sorted[i] = torch.exp(log_m[i] - _theil_sen_at(x[nb], log_m[nb], x[i]))
    score = torch.empty_like(score_sorted)
    score[order] = score_sorted
    return Flags(torch.isfinite(score) & (score < min_ratio), score)


def _flag_high(values: torch.Tensor, k_sigma: float, min_excess: float, limit: float | None) -> Flags:
    med = _finite_median(values)
    sigma = robust_sigma(values)
    excess = values - med
    z = excess / sigma if sigma > 0 else torch.where(excess > 0, torch.inf, 0.0).to(values.dtype)
    flagged = torch.isfinite(values) & (z > k_sigma) & (excess > min_excess)
    if limit is not None:
        flagged |= torch.isfinite(values) & (values > limit)
    z = torch.where(torch.isfinite(values), z, torch.full_like(values, float("nan")))
    return Flags(flagged, z)


def flag_large_motion(
    total_motion_px: torch.Tensor | list[float],
    *,
    k_sigma: float = 4.0,
    min_excess_px: float = 2.0,
    max_px: float | None = None,
) -> Flags:
    """Flag views whose total frame motion (px) stands out.

    Flagged: robust z above ``k_sigma`` and more than ``min_excess_px`` above the series median,
    or above ``max_px`` when given. ``score`` = robust z.
    """
    return _flag_high(_as_1d(total_motion_px, "total_motion_px"), k_sigma, min_excess_px, max_px)


def flag_poor_fit_resolution(
    fit_resolution_a: torch.Tensor | list[float],
    *,
    k_sigma: float = 4.0,
    min_excess_a: float = 2.0,
    worst_a: float | None = None,
) -> Flags:
    """Flag CTF fits whose resolution (Å, larger is worse) stands out from the series.

    Also those worse than ``worst_a`` when given. ``score`` = robust z.
    """
    return _flag_high(_as_1d(fit_resolution_a, "fit_resolution_a"), k_sigma, min_excess_a, worst_a)


def flag_defocus_outliers(
    tilt_angle_deg: torch.Tensor | list[float],
    defocus_a: torch.Tensor | list[float],
    *,
    window: int = 3,
    k_sigma: float = 4.0,
    min_deviation_a: float = 2000.0,
) -> Flags:
    """CTF fits whose defocus (Å) lies far from its neighbours' trend.

    For each view, a robust (Theil–Sen) line through the ``2 * window`` nearest views in tilt order
    (not the view itself) predicts its defocus; ``score`` = defocus - prediction (Å). Flagged when
    ``|score|`` exceeds both ``k_sigma`` robust sigmas of all residuals and ``min_deviation_a``.
    Inputs may be in any order; outputs follow the input order.
    """
    t = _as_1d(tilt_angle_deg, "tilt_angle_deg")
    d = _as_1d(defocus_a, "defocus_a").to(t.device)
    if t.shape != d.shape:
        raise ValueError(f"flag_defocus_outliers: {t.numel()} tilt angles but {d.numel()} defoci — one each per view")
    order = torch.argsort(t)
    ts, ds = t[order], d[order]
    good = torch.isfinite(ds)
    idx = torch.nonzero(good).flatten().tolist()
    resid_sorted = torch.full_like(ds, float("nan"))
    for pos, i in enumerate(idx):
        nb = [idx[j] for j in _neighbours(len(idx), pos, 2 * window)]
        if nb:
            resid_sorted[i] = ds[i] - _theil_sen_at(ts[nb], ds[nb], ts[i])
    score = torch.empty_like(resid_sorted)
    score[order] = resid_sorted
    limit = torch.clamp(k_sigma * robust_sigma(score), min=min_deviation_a)
    return Flags(torch.isfinite(score) & (score.abs() > limit), score)
