"""Series-level CTF consistency: a robust defocus trend along the acquisition, one astigmatism
for the series, and re-fits of the tilts that disagree with them (Bayesian, trend as prior).

Per-tilt fits at high tilt and low dose often pick a wrong minimum: the Thon rings there are weak
(thicker ice, accumulated dose, defocus gradient) and noise or specimen structure correlates
better with some far-away defocus. Across a tilt series, however, the defocus varies smoothly
along the acquisition (autofocus to a target, slow drift) and the astigmatism is a property of
the microscope, nearly constant (Warp fits one per series). ``refine_series`` does:

1. ``series_trend``: a kernel-density mode of the per-tilt mean defoci (weights ``cos^2(tilt)``)
   keeps the consistent majority; a robust fit (Tukey biweight, precisions ``cos^2(tilt) *
   score^2``) of a constant, a drift along the acquisition and a ``sin(tilt)`` term (specimen off
   the eucentric height), each kept only when significant, gives the trend.
2. ``fit_series_astigmatism``: one astigmatism ``(a1, a2) = (u - v) / 2 * (cos 2θ, sin 2θ)``
   and the mean defoci of the most reliable consistent tilts, by L-BFGS of their summed 2-D
   correlations; their scatter about the trend is the prior's width ``sigma_a``.
3. Tilts far from the trend (``> max(2.5 sigma, 500 Å)``) or with an astigmatism far from the
   series' are re-fitted by ``fit_ctf_with_prior`` on their spectra rescaled to the trend: the
   1-D score of ``ctf_fit`` (per-ring normalised Pearson correlation with ``ctf^2``) of the
   equi-phase average, over the whole defocus range, becomes a significance ``z`` (robust
   z-score over that range) and ``z_weight * z + log prior`` a log posterior; the prior is a
   Gaussian around the trend mixed with a uniform over the range (``outlier_fraction``), so a
   far-away defocus wins only on clearly stronger rings (a real jump). Near the trend the
   posterior mean is taken: a tilt without rings stays on the trend. Astigmatism: the series'.

Conventions as ``ctf_fit`` (DESIGN.md §2): Å, degrees, underfocus positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core.ctf_fit import CtfFit, CtfParams, fit_resolution_a
from tiltflow.core.ctf_model import ctf_1d, ctf_2d, defocus_at_azimuth, electron_wavelength_a
from tiltflow.core.ctf_spectra import (
    defocus_phase,
    matching_k2,
    normalise_profile,
    pixel_radius,
    radial_bins,
    ring_window,
    subtract_background,
)
from tiltflow.core.fourier import frequency_grid_2d

__all__ = [
    "SeriesRefinement", "SeriesTrend", "fit_components", "fit_ctf_with_prior", "fit_from_components",
    "fit_series_astigmatism", "refine_series", "series_trend",
]


def fit_components(fit: CtfFit) -> tuple[float, float, float]:
    """(mean defocus, a1, a2) Å with ``(a1, a2) = (u - v) / 2 * (cos 2θ, sin 2θ)``."""
    half = 0.5 * (fit.defocus_u_a - fit.defocus_v_a)
    t = math.radians(2.0 * fit.astigmatism_angle_deg)
    return 0.5 * (fit.defocus_u_a + fit.defocus_v_a), half * math.cos(t), half * math.sin(t)


def fit_from_components(mean_a: float, a1: float, a2: float, *, phase_shift_rad: float = 0.0,
                        fit_resolution_a: float = float("nan"), score: float = float("nan")) -> CtfFit:
    """The CtfFit (u >= v, angle in [-90, 90)) of mean defocus and astigmatism components."""
    half = math.hypot(a1, a2)
    angle = 0.5 * math.degrees(math.atan2(a2, a1)) if half > 0 else 0.0
    angle = (angle + 90.0) % 180.0 - 90.0
    return CtfFit(mean_a + half, mean_a - half, angle, phase_shift_rad, fit_resolution_a, score)


@dataclass
class SeriesTrend:
    """What a tilt series agrees on. Per tilt (t,): ``defocus_a`` the trend's mean defocus,
    ``consistent`` (fit within 3 sigma of the trend), ``refit`` (to be re-fitted with the prior).
    ``sigma_a``: robust scatter about the trend of the most precise tilts (Å); ``astigmatism_a``:
    the series' ``(a1, a2)`` (Å); ``phase_shift_rad``: the series' phase shift."""

    defocus_a: torch.Tensor
    sigma_a: float
    astigmatism_a: tuple[float, float]
    phase_shift_rad: float
    consistent: torch.Tensor
    refit: torch.Tensor

    def reference(self, i: int) -> tuple[float, float, float]:
        """(u, v, angle) of tilt ``i`` on the trend with the consensus astigmatism."""
        f = fit_from_components(float(self.defocus_a[i]), *self.astigmatism_a)
        return f.defocus_u_a, f.defocus_v_a, f.astigmatism_angle_deg


@dataclass
class SeriesRefinement:
    """``refine_series``'s result: the fits (t,) (unchanged ones are the input objects), the trend,
    and the spectra of the changed tilts (index -> (n, n//2+1)), for pictures and profiles."""

    fits: list[CtfFit]
    trend: SeriesTrend
    spectra: dict[int, torch.Tensor]


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> float:
    order = values.argsort()
    v, w = values[order], weights[order]
    cum = w.cumsum(0)
    return float(v[int(torch.searchsorted(cum, 0.5 * cum[-1]))])


def _robust_fit(columns: list[torch.Tensor], y: torch.Tensor, w0: torch.Tensor, min_sigma: float,
                t_min: float = 4.0, iters: int = 20):
    """Tukey-biweight IRLS fit of ``y ~ b0 + sum_j b_j columns[j]`` with relative precisions ``w0``
    -> (fitted (t,), scale of a unit-precision residual). Terms less significant than ``t_min``
    standard errors are dropped, weakest first."""
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


def series_trend(
    mean_defocus_a,                      # (t,) per-tilt mean defocus, Å
    astigmatism_a,                       # (t, 2) per-tilt (a1, a2), Å
    tilt_angles_deg,                     # (t,) degrees
    acquisition_order,                   # (t,) any increasing numbering of the acquisition
    *,
    phase_shift_rad=None,                # (t,) radians, or None
    scores=None,                         # (t,) fit scores (higher: more reliable), or None
    bandwidth_a: float = 1000.0,
    min_sigma_a: float = 150.0,
    refit_sigmas: float = 2.5,
    min_refit_a: float = 500.0,
    min_astigmatism_tolerance_a: float = 150.0,
) -> SeriesTrend:
    """Robust defocus trend, scatter and consensus astigmatism of a series (module docstring)."""
    m = torch.as_tensor(mean_defocus_a, dtype=torch.float64).reshape(-1)
    astig = torch.as_tensor(astigmatism_a, dtype=torch.float64).reshape(-1, 2)
    theta = torch.deg2rad(torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1))
    order = torch.as_tensor(acquisition_order, dtype=torch.float64).reshape(-1)
    t = m.numel()
    if not (astig.shape[0] == theta.numel() == order.numel() == t):
        raise ValueError(f"series_trend: {t} defoci, {astig.shape[0]} astigmatisms, {theta.numel()} angles and "
                         f"{order.numel()} acquisition orders — pass one of each per tilt")
    w_tilt = torch.cos(theta) ** 2
    score = torch.ones_like(m) if scores is None else torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    precision = w_tilt * torch.nan_to_num(score, nan=0.0).clamp_min(0.0) ** 2  # ~ 1 / variance of each fit
    # 1) the mode of the mean defocus (weighted kernel density) picks the consistent majority
    grid = torch.arange(float(m.min()) - bandwidth_a, float(m.max()) + bandwidth_a, bandwidth_a / 20,
                        dtype=torch.float64)
    density = (w_tilt * torch.exp(-0.5 * ((grid[:, None] - m[None]) / bandwidth_a) ** 2)).sum(1)
    centre = float(grid[int(density.argmax())])
    near = (m - centre).abs() <= 3 * bandwidth_a
    # 2) a robust trend: constant, drift along the acquisition, and sin(tilt) (a specimen off the
    #    eucentric height), each term kept only where significant
    x = (order - order.mean()) / order.std().clamp_min(1e-9) if t > 1 else order * 0
    weights = precision * near if float((precision * near).sum()) > 0 else w_tilt * near  # no usable scores
    trend, sigma = _robust_fit([x, torch.sin(theta)], m, weights, min_sigma_a)
    resid = m - trend
    consistent = resid.abs() <= 3 * sigma
    # 3) consensus astigmatism (and phase) of the consistent tilts
    w_c = w_tilt * consistent
    if float(w_c.sum()) <= 0:
        w_c = w_tilt
    a1 = _weighted_median(astig[:, 0], w_c)
    a2 = _weighted_median(astig[:, 1], w_c)
    dev = torch.hypot(astig[:, 0] - a1, astig[:, 1] - a2)
    used = w_c > 0
    a_scale = 1.4826 * _weighted_median(dev[used], w_c[used])
    phase = 0.0
    if phase_shift_rad is not None:
        phase = _weighted_median(torch.as_tensor(phase_shift_rad, dtype=torch.float64).reshape(-1), w_c)
    far = resid.abs() > max(refit_sigmas * sigma, min_refit_a)
    odd_astig = dev > max(3.0 * a_scale, min_astigmatism_tolerance_a)
    return SeriesTrend(trend, float(sigma), (a1, a2), phase, consistent, far | odd_astig)


def _equiphase_power(spectrum: torch.Tensor, params: CtfParams, reference: tuple[float, float, float]):
    """Radial average (nb,) of the raw power, each pixel binned where a CTF of the reference's mean
    defocus has the phase the reference astigmatism gives it -> (profile, counts)."""
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


def _pearson(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    sw = w.sum(-1, keepdim=True)
    xc, yc = x - (w * x).sum(-1, keepdim=True) / sw, y - (w * y).sum(-1, keepdim=True) / sw
    return (w * xc * yc).sum(-1) / torch.sqrt((w * xc * xc).sum(-1) * (w * yc * yc).sum(-1)).clamp_min(1e-30)


def _profile_scores(profile, counts, params: CtfParams, defocus_a: torch.Tensor, phases: torch.Tensor):
    """``ctf_fit``'s 1-D score (per-ring normalised Pearson with ctf^2 over the fit band) of every
    defocus (C,), best over ``phases`` -> (C,)."""
    nb = profile.shape[-1]
    n = 2 * (nb - 1)
    k = torch.arange(nb, dtype=torch.float64, device=profile.device) / (n * params.pixel_size_a)
    low, high = params.resolution_range_a
    w = counts * ((k >= 1.0 / low) & (k <= 1.0 / high))
    best = torch.full((defocus_a.numel(),), -2.0, dtype=torch.float64, device=profile.device)
    lo, hi = ring_window(n, pixel_size_a=params.pixel_size_a, defocus_a=defocus_a, voltage_kv=params.voltage_kv,
                         cs_mm=params.cs_mm)
    obs = normalise_profile(profile.expand(defocus_a.numel(), -1), counts, lo, hi)
    for ph in phases.tolist():
        model = ctf_1d(k, voltage_kv=params.voltage_kv, cs_mm=params.cs_mm, amplitude_contrast=params.amplitude_contrast,
                       defocus_a=defocus_a[:, None], phase_shift_rad=ph) ** 2
        mod = normalise_profile(model, counts, lo, hi)
        best = torch.maximum(best, _pearson(obs, mod, w.expand_as(model)))
    return best


def _score_2d(spectrum: torch.Tensor, params: CtfParams, fit: CtfFit) -> float:
    """Pearson correlation of the background-subtracted spectrum with ctf^2 over the fit annulus
    (the score ``ctf_fit`` reports)."""
    n = spectrum.shape[-2]
    ky, kx = frequency_grid_2d((n, n), device=spectrum.device)
    k = torch.sqrt(kx.to(torch.float64) ** 2 + ky.to(torch.float64) ** 2) / params.pixel_size_a
    low, high = params.resolution_range_a
    band = (k >= 1.0 / low) & (k <= 1.0 / high)
    norm = subtract_background(spectrum, pixel_size_a=params.pixel_size_a, defocus_a=fit.defocus_mean_a,
                               voltage_kv=params.voltage_kv, cs_mm=params.cs_mm)
    model = ctf_2d((n, n), pixel_size_a=params.pixel_size_a, voltage_kv=params.voltage_kv, cs_mm=params.cs_mm,
                   amplitude_contrast=params.amplitude_contrast, defocus_u_a=fit.defocus_u_a,
                   defocus_v_a=fit.defocus_v_a, astigmatism_angle_deg=fit.astigmatism_angle_deg,
                   phase_shift_rad=fit.phase_shift_rad, device=spectrum.device).square()
    x, y = norm[band].to(torch.float64), model[band].to(torch.float64)
    return float(_pearson(x, y, torch.ones_like(x)))


def fit_ctf_with_prior(
    spectrum: torch.Tensor,              # (n, n//2+1) power, rfft layout (tilt-aware, rescaled to the prior)
    params: CtfParams,
    *,
    prior_defocus_a: float,              # expected mean defocus (the series trend), Å
    prior_sigma_a: float,                # its uncertainty, Å
    astigmatism_a: tuple[float, float] = (0.0, 0.0),   # (a1, a2) held fixed, Å
    phase_shift_rad: float | None = None,               # None: searched when params.fit_phase
    outlier_fraction: float = 0.005,
    z_weight: float = 1.5,
) -> CtfFit:
    """Mean defocus of one tilt given the series' expectation (module docstring, step 2)."""
    n = spectrum.shape[-2]
    if spectrum.ndim != 2 or spectrum.shape[-1] != n // 2 + 1:
        raise ValueError(f"fit_ctf_with_prior: expected an (n, n//2+1) rfft power spectrum, got {tuple(spectrum.shape)}")
    if prior_sigma_a <= 0:
        raise ValueError(f"fit_ctf_with_prior: prior_sigma_a={prior_sigma_a} must be > 0")
    dev, f64 = spectrum.device, torch.float64
    a1, a2 = astigmatism_a
    ref = fit_from_components(prior_defocus_a, a1, a2)
    profile, counts = _equiphase_power(spectrum, params, (ref.defocus_u_a, ref.defocus_v_a, ref.astigmatism_angle_deg))
    if phase_shift_rad is not None:
        phases = torch.tensor([phase_shift_rad], dtype=f64)
    elif params.fit_phase:
        phases = torch.arange(0.0, math.pi, math.pi / 12, dtype=f64)
    else:
        phases = torch.zeros(1, dtype=f64)
    lo_df, hi_df = params.defocus_range_um[0] * 1e4, params.defocus_range_um[1] * 1e4
    lam = electron_wavelength_a(params.voltage_kv)
    step = 0.1 * params.resolution_range_a[1] ** 2 / lam  # Å: ring phase at the band limit moves 0.1*pi

    def log_posterior(dfs: torch.Tensor, med: float, sd: float) -> torch.Tensor:
        z = (_profile_scores(profile, counts, params, dfs, phases) - med) / sd
        gauss = torch.exp(-0.5 * ((dfs - prior_defocus_a) / prior_sigma_a) ** 2) / (prior_sigma_a * math.sqrt(2 * math.pi))
        prior = (1.0 - outlier_fraction) * gauss + outlier_fraction / max(hi_df - lo_df, step)
        return z_weight * z + torch.log(prior)

    coarse = torch.arange(lo_df, hi_df + step, step, dtype=f64, device=dev)
    # the prior's centre is always a candidate, however coarse the grid
    coarse = torch.cat([coarse, torch.tensor([min(max(prior_defocus_a, lo_df), hi_df)], dtype=f64, device=dev)])
    raw = _profile_scores(profile, counts, params, coarse, phases)
    med = float(raw.median())
    sd = max(1.4826 * float((raw - med).abs().median()), 1e-6)
    post = log_posterior(coarse, med, sd)
    centre = float(coarse[int(post.argmax())])
    if abs(centre - prior_defocus_a) <= 3.0 * prior_sigma_a:
        # within the prior's reach: the posterior mean over it (a tilt without rings stays near the trend)
        half = 4.0 * prior_sigma_a
        fine = torch.arange(prior_defocus_a - half, prior_defocus_a + half, step / 5, dtype=f64, device=dev).clamp(lo_df, hi_df)
        post_f = log_posterior(fine, med, sd)
        weight = torch.exp(post_f - post_f.max())
        mean = float((weight * fine).sum() / weight.sum())
    else:
        fine = torch.linspace(centre - step, centre + step, 41, dtype=f64, device=dev).clamp(lo_df, hi_df)
        post_f = log_posterior(fine, med, sd)
        i = int(post_f.argmax())
        mean = float(fine[i])
        if 0 < i < fine.numel() - 1:  # parabola through the best point and its neighbours
            denom = float(post_f[i - 1] - 2 * post_f[i] + post_f[i + 1])
            if denom < 0:
                mean += max(-1.0, min(1.0, 0.5 * float(post_f[i - 1] - post_f[i + 1]) / denom)) * float(fine[1] - fine[0])
    phase = float(phases[0])
    if phases.numel() > 1:
        best = [float(_profile_scores(profile, counts, params, torch.tensor([mean], dtype=f64, device=dev),
                                      phases[j : j + 1])[0]) for j in range(phases.numel())]
        phase = float(phases[max(range(len(best)), key=best.__getitem__)])
    return _finish(fit_from_components(mean, a1, a2, phase_shift_rad=phase), spectrum, params)


def _annulus(spectrum: torch.Tensor, params: CtfParams, mean_defocus_a: float) -> dict:
    """Background-subtracted spectrum over the fit band: k (1/Å), azimuth (rad), values, each (p,)."""
    n = spectrum.shape[-2]
    ky, kx = frequency_grid_2d((n, n), device=spectrum.device)
    ky, kx = ky.to(torch.float64) / params.pixel_size_a, kx.to(torch.float64) / params.pixel_size_a
    k = torch.sqrt(kx**2 + ky**2)
    low, high = params.resolution_range_a
    band = (k >= 1.0 / low) & (k <= 1.0 / high)
    norm = subtract_background(spectrum, pixel_size_a=params.pixel_size_a, defocus_a=mean_defocus_a,
                               voltage_kv=params.voltage_kv, cs_mm=params.cs_mm)
    return {"k": k[band], "az": torch.atan2(ky, kx)[band], "y": norm.to(torch.float64)[band]}


def fit_series_astigmatism(
    spectra: list[torch.Tensor],         # each (n, n//2+1), tilt-aware, rescaled near its fit
    params: CtfParams,
    *,
    mean_defocus_a: list[float],         # per spectrum, Å
    phase_shift_rad: list[float] | None = None,
    start: tuple[float, float] = (0.0, 0.0),
    max_shift_a: float = 2000.0,
    max_iter: int = 80,
) -> tuple[tuple[float, float], list[float]]:
    """One astigmatism ``(a1, a2)`` shared by several tilts (each with its own mean defocus):
    L-BFGS of the summed 2-D Pearson correlations with ``ctf^2`` over the fit annulus (Warp fits
    the astigmatism of a tilt series this way). Returns ((a1, a2) Å, mean defoci Å)."""
    from scipy.optimize import minimize  # lazy, as in ctf_fit

    if not spectra or len(spectra) != len(mean_defocus_a):
        raise ValueError(f"fit_series_astigmatism: {len(spectra)} spectra, {len(mean_defocus_a)} defoci — one each")
    dev = spectra[0].device
    anns = [_annulus(s, params, m) for s, m in zip(spectra, mean_defocus_a)]
    phases = phase_shift_rad or [0.0] * len(spectra)
    base = torch.tensor([*start, *mean_defocus_a], dtype=torch.float64, device=dev)
    unit = 1000.0  # optimiser unit, Å

    def loss(v: torch.Tensor) -> torch.Tensor:
        x = base + unit * v
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for j, ann in enumerate(anns):
            df = x[2 + j] + x[0] * torch.cos(2 * ann["az"]) + x[1] * torch.sin(2 * ann["az"])
            model = ctf_1d(ann["k"], voltage_kv=params.voltage_kv, cs_mm=params.cs_mm,
                           amplitude_contrast=params.amplitude_contrast, defocus_a=df, phase_shift_rad=phases[j]) ** 2
            total = total - _pearson(model, ann["y"], torch.ones_like(model))
        return total

    def value_and_grad(v):
        t = torch.tensor(v, dtype=torch.float64, device=dev, requires_grad=True)
        value = loss(t)
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.detach().cpu().numpy()

    half = 0.5 * params.max_astigmatism_a / unit
    bounds = [(-half - start[0] / unit, half - start[0] / unit), (-half - start[1] / unit, half - start[1] / unit)]
    bounds += [(-max_shift_a / unit, max_shift_a / unit)] * len(spectra)
    res = minimize(value_and_grad, x0=[0.0] * (2 + len(spectra)), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter})
    x = base.cpu() + unit * torch.as_tensor(res.x, dtype=torch.float64)
    return (float(x[0]), float(x[1])), [float(m) for m in x[2:]]


def _finish(fit: CtfFit, spectrum: torch.Tensor, params: CtfParams) -> CtfFit:
    fit.score = _score_2d(spectrum, params, fit)
    fit.fit_resolution_a = fit_resolution_a(spectrum, params, fit)
    return fit


def refine_series(
    fits: list[CtfFit],
    spectrum_of,                          # (i, reference (u, v, angle)) -> (n, n//2+1) tilt-aware spectrum of tilt i
    params: CtfParams,
    *,
    tilt_angles_deg,                     # (t,) degrees
    acquisition_order,                   # (t,)
    joint_tilts: int = 8,
    refit_sigmas: float = 2.5,
    min_refit_a: float = 500.0,
    min_sigma_a: float = 150.0,
    min_astigmatism_tolerance_a: float = 150.0,
) -> SeriesRefinement:
    """Series pass over independent per-tilt fits (module docstring): the trend; one astigmatism
    fitted jointly on the ``joint_tilts`` most reliable consistent tilts (``cos^2(tilt) * score``),
    which take it with their refined mean defoci; then every tilt the trend marks, or whose
    astigmatism is far from the joint one, re-fitted by ``fit_ctf_with_prior`` on its spectrum
    rescaled to the trend. Fewer than 4 tilts: returned as they are."""
    comps = torch.tensor([fit_components(f) for f in fits], dtype=torch.float64).reshape(-1, 3)
    phases = [f.phase_shift_rad for f in fits] if params.fit_phase else None
    trend = series_trend(comps[:, 0], comps[:, 1:], tilt_angles_deg, acquisition_order, phase_shift_rad=phases,
                         scores=[f.score for f in fits], min_sigma_a=min_sigma_a, refit_sigmas=refit_sigmas,
                         min_refit_a=min_refit_a, min_astigmatism_tolerance_a=min_astigmatism_tolerance_a)
    out = list(fits)
    changed: dict[int, torch.Tensor] = {}
    if len(fits) < 4:
        trend.refit[:] = False
        return SeriesRefinement(out, trend, changed)
    theta = torch.deg2rad(torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1))
    scores = torch.tensor([max(f.score, 0.0) if math.isfinite(f.score) else 0.0 for f in fits], dtype=torch.float64)
    reliability = torch.cos(theta) ** 2 * scores * trend.consistent
    chosen = [i for i in reliability.argsort(descending=True).tolist()[:joint_tilts] if float(reliability[i]) > 0]
    if len(chosen) >= 2 and params.astigmatism:
        spectra = {i: spectrum_of(i, (fits[i].defocus_u_a, fits[i].defocus_v_a, fits[i].astigmatism_angle_deg))
                   for i in chosen}
        astig, means = fit_series_astigmatism(
            [spectra[i] for i in chosen], params, mean_defocus_a=[float(comps[i, 0]) for i in chosen],
            phase_shift_rad=[fits[i].phase_shift_rad for i in chosen], start=trend.astigmatism_a)
        trend.astigmatism_a = astig
        for i, m in zip(chosen, means):
            out[i] = _finish(fit_from_components(m, *astig, phase_shift_rad=fits[i].phase_shift_rad), spectra[i], params)
            changed[i] = spectra[i]
        dev = torch.hypot(comps[:, 1] - astig[0], comps[:, 2] - astig[1])
        w = torch.cos(theta) ** 2 * trend.consistent
        used = w > 0
        tol = max(3.0 * 1.4826 * _weighted_median(dev[used], w[used]), min_astigmatism_tolerance_a)
        far = (comps[:, 0] - trend.defocus_a).abs() > max(refit_sigmas * trend.sigma_a, min_refit_a)
        trend.refit = far | (dev > tol)
        trend.refit[chosen] = False
        # the scatter about the trend as the strongest tilts see it (their estimates are precise)
        resid = torch.tensor([means[j] - float(trend.defocus_a[i]) for j, i in enumerate(chosen)], dtype=torch.float64)
        trend.sigma_a = max(1.4826 * float(resid.abs().median()), min_sigma_a)
    sigma = max(trend.sigma_a, min_sigma_a)
    for i in trend.refit.nonzero()[:, 0].tolist():
        spectrum = changed[i] = spectrum_of(i, trend.reference(i))
        out[i] = fit_ctf_with_prior(spectrum, params, prior_defocus_a=float(trend.defocus_a[i]), prior_sigma_a=sigma,
                                    astigmatism_a=trend.astigmatism_a,
                                    phase_shift_rad=trend.phase_shift_rad if params.fit_phase else None)
    return SeriesRefinement(out, trend, changed)
