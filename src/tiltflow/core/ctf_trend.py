"""The defocus of a tilt series as a smooth function of tilt, found from all tilts' spectra at once.

Per-tilt fits at high tilt, low dose or small pixels pick wrong minima: their Thon rings are weak and
a far-away defocus correlates as well by chance. Their spectra still hold evidence near the true
defocus, and the defocus of a series is smooth in the tilt angle (specimen height off the
eucentric point, autofocus drift), so the evidence of all tilts is summed along candidate trends:

1. ``defocus_evidence``: for each tilt, the 1-D score of ``ctf_fit`` (per-ring normalised Pearson
   correlation of the astigmatism-corrected average with ``ctf^2``) over a fine defocus grid, as a
   robust z-score over the grid (a tilt without rings gives noise of unit scale everywhere);
2. ``fit_defocus_trend``: ``max(z - 1.5, 0)^2 / 2`` is taken as each tilt's log-likelihood of its
   defocus (a floor well below the single-tilt detection level of about 3-4: a weak tilt's rings, one
   noise peak among many on its own, still add up along the right trend, while noise peaks of
   different tilts do not line up), and the tilts scatter about the trend as a Gaussian (width: the
   most likely of a few); the trend maximises the summed marginal log-likelihoods (each tilt's likelihood convolved with
   the scatter) plus a weak prior on the slope: the best line ``c0 + c1 * tilt`` on a grid,
   refined, then the squared tilt and the acquisition order added where they raise the total
   clearly. A tilt without rings adds a flat curve; one whose best peak is elsewhere (a wrong
   minimum) adds only its evidence near the trend.

Conventions as ``ctf_fit`` (DESIGN.md §2): Å, degrees, underfocus positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tiltflow.core.ctf_fit import CtfParams, pearson
from tiltflow.core.ctf_model import ctf_1d, defocus_at_azimuth, electron_wavelength_a
from tiltflow.core.ctf_spectra import (
    defocus_phase,
    matching_k2,
    normalise_profile,
    pixel_radius,
    radial_bins,
    ring_window,
)
from tiltflow.core.fourier import frequency_grid_2d

__all__ = ["DefocusTrend", "TrendSearch", "defocus_evidence", "equiphase_power", "fit_defocus_trend", "profile_scores"]


def equiphase_power(spectrum: torch.Tensor, params: CtfParams, reference: tuple[float, float, float]):
    """Average the raw power radially along equal CTF phase of a reference.

    Radial average (nb,) of the raw power ``(n, n//2+1)``, each pixel binned where a CTF of the
    reference's mean defocus has the phase the reference astigmatism (u, v, angle) gives it
    -> (profile, counts).
    """
    n = spectrum.shape[-2]
    nb = n // 2 + 1
    dev = spectrum.device
    lam, cs_a = electron_wavelength_a(params.voltage_kv), params.cs_mm * 1e7
    ky, kx = frequency_grid_2d((n, n), device=dev)
    ky, kx = ky.to(torch.float64) / params.pixel_size_a, kx.to(torch.float64) / params.pixel_size_a  # 1/Å
    k2 = kx**2 + ky**2
    u, v, ang = reference
    chi = defocus_phase(k2, defocus_at_azimuth(u, v, ang, torch.atan2(ky, kx)), wavelength_a=lam, cs_a=cs_a)
    mean = torch.full_like(k2, 0.5 * (u + v))
    r_eq = torch.sqrt(matching_k2(chi, mean, wavelength_a=lam, cs_a=cs_a)) * n * params.pixel_size_a  # px
    r_eq = torch.where(pixel_radius(n, device=dev) <= nb - 1, r_eq, torch.full_like(r_eq, float(nb + 1)))
    return radial_bins(spectrum, r_eq, nb)


def profile_scores(
    profile, counts, params: CtfParams, defocus_a: torch.Tensor, phases: torch.Tensor, chunk: int = 512
) -> torch.Tensor:
    """Score a radial profile at every defocus (``ctf_fit``'s 1-D score).

    ``ctf_fit``'s 1-D score (per-ring normalised Pearson with ctf^2 over the fit band) of a radial
    profile (nb,) at every defocus (C,) Å, best over ``phases`` (rad) -> (C,).
    """
    nb = profile.shape[-1]
    n = 2 * (nb - 1)
    dev = profile.device
    k = torch.arange(nb, dtype=torch.float64, device=dev) / (n * params.pixel_size_a)
    low, high = params.resolution_range_a
    w = counts * ((k >= 1.0 / low) & (k <= 1.0 / high))
    out = []
    for c0 in range(0, defocus_a.numel(), chunk):
        df = defocus_a[c0 : c0 + chunk].to(device=dev, dtype=torch.float64)
        lo, hi = ring_window(
            n, pixel_size_a=params.pixel_size_a, defocus_a=df, voltage_kv=params.voltage_kv, cs_mm=params.cs_mm
        )
        obs = normalise_profile(profile.expand(df.numel(), -1), counts, lo, hi)
        best = torch.full((df.numel(),), -2.0, dtype=torch.float64, device=dev)
        for ph in phases.tolist():
            model = (
                ctf_1d(
                    k,
                    voltage_kv=params.voltage_kv,
                    cs_mm=params.cs_mm,
                    amplitude_contrast=params.amplitude_contrast,
                    defocus_a=df[:, None],
                    phase_shift_rad=ph,
                )
                ** 2
            )
            mod = normalise_profile(model, counts, lo, hi)
            best = torch.maximum(best, pearson(obs, mod, w.expand_as(model)))
        out.append(best)
    return torch.cat(out)


def robust_z(scores: torch.Tensor) -> torch.Tensor:
    """(scores - median) / (1.4826 MAD) along the last dim."""
    med = scores.median(-1, keepdim=True).values
    mad = (scores - med).abs().median(-1, keepdim=True).values
    return (scores - med) / (1.4826 * mad).clamp_min(1e-6)


def defocus_evidence(
    spectra: list[torch.Tensor],  # t x (n, n//2+1) tilt-aware power spectra
    params: CtfParams,
    *,
    references: list[tuple[float, float, float]],  # per tilt (u, v, angle): astigmatism of the average
    defocus_grid_a: torch.Tensor,  # (C,) Å
    phases_rad: torch.Tensor,  # (p,) candidate phase shifts
) -> torch.Tensor:  # (t, C) robust z-scores
    """Each tilt's 1-D score along the defocus grid as a robust z-score (module docstring, step 1)."""
    rows = []
    for spectrum, ref in zip(spectra, references, strict=False):
        profile, counts = equiphase_power(spectrum, params, ref)
        rows.append(robust_z(profile_scores(profile, counts, params, defocus_grid_a.to(spectrum.device), phases_rad)))
    return torch.stack([r.cpu() for r in rows])


@dataclass(frozen=True)
class TrendSearch:
    """Likelihood and search settings of :func:`fit_defocus_trend` (its docstring)."""

    z_weight: float = 1.0
    # evidence below this z pulls nothing; the highest noise peaks of a ring-less curve reach 3-4, but
    # those of different tilts do not line up, while weak rings (z 1.5-3) along the true trend add up
    # (accuracy matrix and ctf_series_accuracy: 1.5 better than 3, 2 or 0)
    noise_z: float = 1.5
    jitters_a: tuple[float, ...] = (100.0, 200.0, 400.0, 800.0)  # candidate scatters about the trend
    max_slope_a_per_deg: float = 150.0
    slope_sigma_a_per_deg: float = 50.0  # width of the Gaussian prior on the slope
    min_gain: float = 6.0  # log-likelihood a squared-tilt or acquisition term must add


@dataclass
class DefocusTrend:
    """The result of :func:`fit_defocus_trend`.

    ``fit_defocus_trend``'s result, per tilt (t,): ``defocus_a`` the trend, ``peak_a`` the tilt's
    own best defocus within ``2 sigma_a`` of it, ``strength`` that peak's z-score; ``sigma_a`` the
    most likely scatter of the tilts about the trend (Å).
    """

    defocus_a: torch.Tensor
    peak_a: torch.Tensor
    strength: torch.Tensor
    sigma_a: float


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> float:
    order = values.argsort()
    v, w = values[order], weights[order]
    cum = w.cumsum(0)
    return float(v[int(torch.searchsorted(cum, 0.5 * cum[-1]))])


def robust_fit(
    columns: list[torch.Tensor],
    y: torch.Tensor,
    w0: torch.Tensor,
    min_sigma: float,
    t_min: float = 4.0,
    iters: int = 20,
):
    """Fit ``y`` robustly (Tukey-biweight IRLS) on significant terms only.

    Tukey-biweight IRLS fit of ``y ~ b0 + sum_j b_j columns[j]`` with relative precisions ``w0``
    -> (fitted (t,), scale of a unit-precision residual). Terms less significant than ``t_min``
    standard errors are dropped, weakest first.
    """
    used = w0 > 0
    p = w0 / w0.max().clamp_min(1e-30)
    cols = [c for c in columns if int(used.sum()) >= 3 + 3 * len(columns) and float(c[used].std()) > 0]
    while True:
        design = torch.stack([torch.ones_like(y), *cols], -1)
        w = p.clone()
        for _ in range(iters):
            sw = w.sqrt()[:, None]
            beta = torch.linalg.lstsq(design * sw, y[:, None] * sw).solution[:, 0]
            standard = (y - design @ beta) * p.sqrt()
            scale = max(1.4826 * float(standard[used].abs().median()), min_sigma)
            u = standard / (4.685 * scale)
            w = p * torch.where(u.abs() < 1, (1 - u * u) ** 2, torch.zeros_like(u))
            if float(w.sum()) <= 0:
                w = p.clone()
        if not cols:
            return design @ beta, scale
        cov = torch.linalg.pinv((design * w[:, None]).T @ design) * scale**2
        t_stat = beta[1:].abs() / cov.diagonal()[1:].clamp_min(1e-30).sqrt()
        weakest = int(t_stat.argmin())
        if float(t_stat[weakest]) >= t_min:
            return design @ beta, scale
        cols.pop(weakest)


def _marginal(loglik: torch.Tensor, step_a: float, sigma_a: float, z_weight: float) -> torch.Tensor:
    """``log ∫ exp(z_weight * loglik(d)) N(d - g; sigma) dd`` at every grid point g -> (t, C)."""
    half = max(int(math.ceil(4.0 * sigma_a / step_a)), 1)
    x = torch.arange(-half, half + 1, dtype=torch.float64) * step_a
    kernel = torch.exp(-0.5 * (x / sigma_a) ** 2)
    kernel = kernel / kernel.sum()
    top = (z_weight * loglik).max(1, keepdim=True).values
    like = torch.exp(z_weight * loglik - top)
    smooth = F.conv1d(like[:, None], kernel.flip(0)[None, None], padding=half)[:, 0]
    return torch.log(smooth.clamp_min(1e-300)) + top


def _line_search(
    m: torch.Tensor,
    grid: torch.Tensor,
    theta_deg: torch.Tensor,
    max_slope: float,
    slope_step: float,
    slope_sigma: float,
) -> tuple[float, float]:
    """Find the line in tilt angle best supported by the evidence.

    (c0, c1) of the line ``c0 + c1 * tilt`` over the grid maximising ``sum_i m[i, line_i]`` plus
    the slope's log prior ``-(c1 / slope_sigma)^2 / 2``.
    """
    c, step = grid.numel(), float(grid[1] - grid[0])
    slopes = torch.arange(-max_slope, max_slope + 1e-9, slope_step, dtype=torch.float64)
    floor = m.min(1).values  # (t,) outside the grid
    total = torch.zeros(slopes.numel(), c, dtype=torch.float64)
    for i in range(m.shape[0]):
        idx = torch.arange(c)[None, :] + torch.round(slopes[:, None] * theta_deg[i] / step).long()
        inside = (idx >= 0) & (idx < c)
        total += torch.where(inside, m[i][idx.clamp(0, c - 1)], floor[i])
    total -= 0.5 * (slopes[:, None] / slope_sigma) ** 2
    s, j = divmod(int(total.argmax()), c)
    return float(grid[j]), float(slopes[s])


def _total(m: torch.Tensor, grid: torch.Tensor, design: torch.Tensor, coef) -> float:
    """``sum_i m_i(trend_i)``, linear interpolation along the grid, the row's minimum outside it."""
    trend = design @ torch.as_tensor(coef, dtype=torch.float64)
    pos = (trend - grid[0]) / (grid[1] - grid[0])
    lo = pos.floor().long().clamp(0, grid.numel() - 2)
    frac = (pos - lo).clamp(0.0, 1.0)
    rows = torch.arange(m.shape[0])
    val = m[rows, lo] * (1 - frac) + m[rows, lo + 1] * frac
    inside = (pos >= 0) & (pos <= grid.numel() - 1)
    return float(torch.where(inside, val, m.min(1).values).sum())


def _refine(m, grid, design, start, scales, slope_sigma) -> tuple[list[float], float]:
    """Refine the trend's coefficients by Nelder-Mead.

    Nelder-Mead of ``_total`` plus the slope's log prior over the coefficients (scaled by
    ``scales``) from ``start``.
    """
    from scipy.optimize import minimize  # lazy, as in ctf_fit

    res = minimize(
        lambda v: (
            0.5 * (v[1] * scales[1] / slope_sigma) ** 2
            - _total(m, grid, design, [a * b for a, b in zip(v, scales, strict=False)])
        ),
        [a / b for a, b in zip(start, scales, strict=False)],
        method="Nelder-Mead",
        options={"xatol": 1e-3, "fatol": 1e-3, "maxiter": 400},
    )
    return [a * b for a, b in zip(res.x, scales, strict=False)], -float(res.fun)


def _trend_at(m, grid, theta, extra, max_slope, min_gain, slope_sigma) -> tuple[torch.Tensor, float]:
    """Best line, then each ``extra`` column added where it raises the total by ``min_gain``."""
    step = max(2.0, 100.0 / max(float(theta.abs().max()), 1.0))
    c0, c1 = _line_search(m, grid, theta, max_slope, step, slope_sigma)
    design = torch.stack([torch.ones_like(theta), theta], -1)
    coef, total = _refine(m, grid, design, [c0, c1], [100.0, 1.0], slope_sigma)
    for col in extra:
        trial = torch.cat([design, col[:, None]], -1)
        span = float(col.abs().max()) or 1.0
        c, t = _refine(m, grid, trial, [*coef, 0.0], [100.0] + [1.0] * (len(coef) - 1) + [100.0 / span], slope_sigma)
        if t >= total + min_gain:
            design, coef, total = trial, c, t
    return design @ torch.as_tensor(coef, dtype=torch.float64), total


def fit_defocus_trend(
    evidence: torch.Tensor,  # (t, C) robust z-scores (defocus_evidence)
    defocus_grid_a: torch.Tensor,  # (C,) Å, evenly spaced
    tilt_angles_deg,  # (t,)
    acquisition_order,  # (t,)
    *,
    search: TrendSearch | None = None,
) -> DefocusTrend:
    """Find the series' defocus trend from the summed evidence of its tilts (module docstring, step 2).

    Each tilt's log-likelihood of its defocus is ``z_weight * max(z - noise_z, 0)^2 / 2`` (a matched
    filter's, floored: evidence below ``noise_z`` pulls nothing; module docstring, step 2);
    its defocus scatters about the trend as a Gaussian of width ``sigma`` (one of ``jitters_a``, the
    most likely); the trend
    maximises the summed marginal log-likelihoods plus a Gaussian log prior on the slope (width
    ``slope_sigma_a_per_deg``: a slope the few tilts with rings cannot pin down stays moderate): a
    line in tilt angle, plus the squared tilt and the acquisition order where either raises the
    total by ``min_gain``.
    """
    o = TrendSearch() if search is None else search
    grid = defocus_grid_a.to(torch.float64).cpu()
    z = evidence.to(torch.float64).cpu()
    theta = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)
    order = torch.as_tensor(acquisition_order, dtype=torch.float64).reshape(-1)
    t, c = z.shape
    if not (theta.numel() == order.numel() == t) or grid.numel() != c or c < 3:
        raise ValueError(
            f"fit_defocus_trend: evidence {tuple(z.shape)}, grid {grid.numel()}, {theta.numel()} angles, "
            f"{order.numel()} acquisition orders — pass (t, C), (C,), (t,), (t,)"
        )
    step = float(grid[1] - grid[0])
    extra = [theta * theta, order - order.mean()]
    best: tuple[torch.Tensor, float, float] | None = None
    for sigma in o.jitters_a:
        m = _marginal(0.5 * (z - o.noise_z).clamp_min(0.0) ** 2, step, sigma, o.z_weight)
        trend, total = _trend_at(m, grid, theta, extra, o.max_slope_a_per_deg, o.min_gain, o.slope_sigma_a_per_deg)
        if best is None or total > best[1]:
            best = (trend, total, sigma)
    if best is None:
        raise ValueError("fit_defocus_trend: no jitters_a to try; pass at least one scatter (Å)")
    trend, _, sigma = best
    near = (grid[None, :] - trend[:, None]).abs() <= 2.0 * sigma
    masked = torch.where(near, z, torch.full_like(z, -1e9))
    j = masked.argmax(1)
    return DefocusTrend(trend, grid[j], masked.gather(1, j[:, None])[:, 0].clamp_min(-10.0), float(sigma))
