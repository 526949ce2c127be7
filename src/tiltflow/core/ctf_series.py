"""Series-level CTF consistency.

The defocus as a smooth function of tilt found from all tilts'
spectra at once, one astigmatism for the series, and every tilt re-fitted with the trend as prior.

Per-tilt fits at high tilt and low dose often pick a wrong minimum: the Thon rings there are weak
(thicker ice, accumulated dose, defocus gradient) and noise or specimen structure correlates
better with some far-away defocus; at small pixel sizes even low tilts do. Across a tilt series,
however, the defocus varies smoothly with the tilt (specimen off the eucentric height, autofocus
drift) and the astigmatism is a property of the microscope (Warp fits one per series).
``refine_series`` does:

1. ``series_trend``: the per-tilt fits' consensus (kernel-density mode, robust fit of a constant,
   a drift along the acquisition and ``sin(tilt)``; weighted-median astigmatism): the first
   references for rescaling the tiles and the starting astigmatism.
2. ``ctf_trend``: each tilt's evidence (robust z-score of the 1-D score along a fine defocus grid)
   summed along candidate lines in tilt angle, then a robust fit of the tilts' peaks near the best
   line (constant, tilt, tilt², acquisition order; each term only where significant): the trend.
3. ``fit_series_astigmatism``: one astigmatism ``(a1, a2) = (u - v) / 2 * (cos 2θ, sin 2θ)`` by
   L-BFGS of the summed 2-D correlations of the strongest tilts at their peaks. Steps 2-3 are done
   twice, spectra re-rescaled to the trend where it moved.
4. Every tilt re-fitted by ``fit_ctf_with_prior`` on its spectrum rescaled to the trend: the 1-D
   score of its equi-phase average over the whole defocus range becomes a significance ``z``
   (robust z-score over that range) and ``z_weight * z + log prior`` a log posterior; the prior is
   a Gaussian around the trend (width: the strong tilts' scatter about it) mixed with a uniform
   over the range (``outlier_fraction``), so a far-away defocus wins only on clearly stronger rings
   (a real jump). Near the trend the posterior mean is taken: a tilt without rings stays on the
   trend. Astigmatism: the series'.

Conventions as ``ctf_fit`` (DESIGN.md §2): Å, degrees, underfocus positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.ctf_annulus import annulus
from tiltflow.core.ctf_fit import CtfFit, CtfParams, fit_components, fit_from_components, pearson
from tiltflow.core.ctf_model import ctf_1d, ctf_2d, electron_wavelength_a
from tiltflow.core.ctf_rings import fit_resolution_a
from tiltflow.core.ctf_spectra import subtract_background
from tiltflow.core.ctf_trend import (
    TrendSearch,
    defocus_evidence,
    equiphase_power,
    fit_defocus_trend,
    profile_scores,
    robust_fit,
    weighted_median,
)
from tiltflow.core.fourier import frequency_grid_2d

__all__ = [
    "PriorWeights",
    "SeriesPassOptions",
    "SeriesRefinement",
    "TrendTolerances",
    "SeriesTrend",
    "fit_components",
    "fit_ctf_with_prior",
    "fit_from_components",
    "fit_series_astigmatism",
    "refine_series",
    "series_trend",
]


@dataclass
class SeriesTrend:
    """What a tilt series agrees on.

    What a tilt series agrees on. Per tilt (t,): ``defocus_a`` the trend's mean defocus,
    ``consistent`` (fit within 3 sigma of the trend), ``refit`` (to be re-fitted with the prior).
    ``sigma_a``: robust scatter about the trend of the most precise tilts (Å); ``astigmatism_a``:
    the series' ``(a1, a2)`` (Å); ``phase_shift_rad``: the series' phase shift; ``strength`` (t,):
    after ``refine_series``, each tilt's ring evidence near the trend (robust z over the defocus
    range; noise alone reaches about 3-4), else None.
    """

    defocus_a: torch.Tensor
    sigma_a: float
    astigmatism_a: tuple[float, float]
    phase_shift_rad: float
    consistent: torch.Tensor
    refit: torch.Tensor
    strength: torch.Tensor | None = None

    def reference(self, i: int) -> tuple[float, float, float]:
        """(u, v, angle) of tilt ``i`` on the trend with the consensus astigmatism."""
        f = fit_from_components(float(self.defocus_a[i]), *self.astigmatism_a)
        return f.defocus_u_a, f.defocus_v_a, f.astigmatism_angle_deg


@dataclass
class SeriesRefinement:
    """The result of :func:`refine_series`.

    ``refine_series``'s result: the fits (t,) (unchanged ones are the input objects), the trend,
    and the spectra of the changed tilts (index -> (n, n//2+1)), for pictures and profiles.
    """

    fits: list[CtfFit]
    trend: SeriesTrend
    spectra: dict[int, torch.Tensor]


@dataclass(frozen=True)
class TrendTolerances:
    """Widths and limits of :func:`series_trend` (Å)."""

    bandwidth_a: float = 1000.0  # kernel-density bandwidth of the mean defocus
    min_sigma_a: float = 150.0  # floor of the scatter about the trend
    refit_sigmas: float = 2.5  # tilts further than this many sigma from the trend are re-fitted
    min_refit_a: float = 500.0  # ... and further than this
    min_astigmatism_tolerance_a: float = 150.0  # astigmatism this far from the consensus is re-fitted


@dataclass(frozen=True)
class PriorWeights:
    """How :func:`fit_ctf_with_prior` weighs the rings against the prior (module docstring, step 4)."""

    outlier_fraction: float = 0.005  # uniform share of the prior over the defocus range
    z_weight: float = 1.5  # weight of the ring significance z in the log posterior
    z_floor: float | None = None  # use the matched filter's 0.5 * max(z - z_floor, 0)^2 instead of z


@dataclass(frozen=True)
class SeriesPassOptions:
    """Settings of :func:`refine_series` (its docstring)."""

    joint_tilts: int = 8  # strongest tilts fitting the series' astigmatism
    min_sigma_a: float = 150.0  # floor of the scatter about the trend, Å
    max_slope_a_per_deg: float = 150.0
    rounds: int = 2  # trend + astigmatism rounds
    refresh_a: float = 600.0  # re-rescale a tilt's tiles when its reference moved by more (Å)
    prior: PriorWeights = field(default_factory=lambda: PriorWeights(z_weight=1.0, z_floor=3.0))


def series_trend(
    mean_defocus_a,  # (t,) per-tilt mean defocus, Å
    astigmatism_a,  # (t, 2) per-tilt (a1, a2), Å
    tilt_angles_deg,  # (t,) degrees
    acquisition_order,  # (t,) any increasing numbering of the acquisition
    *,
    phase_shift_rad=None,  # (t,) radians, or None
    scores=None,  # (t,) fit scores (higher: more reliable), or None
    tolerances: TrendTolerances | None = None,
) -> SeriesTrend:
    """Robust defocus trend, scatter and consensus astigmatism of a series (module docstring)."""
    tol = TrendTolerances() if tolerances is None else tolerances
    bandwidth_a, min_sigma_a = tol.bandwidth_a, tol.min_sigma_a
    m = torch.as_tensor(mean_defocus_a, dtype=torch.float64).reshape(-1)
    astig = torch.as_tensor(astigmatism_a, dtype=torch.float64).reshape(-1, 2)
    theta = torch.deg2rad(torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1))
    order = torch.as_tensor(acquisition_order, dtype=torch.float64).reshape(-1)
    t = m.numel()
    if not (astig.shape[0] == theta.numel() == order.numel() == t):
        raise ValueError(
            f"series_trend: {t} defoci, {astig.shape[0]} astigmatisms, {theta.numel()} angles and "
            f"{order.numel()} acquisition orders — pass one of each per tilt"
        )
    w_tilt = torch.cos(theta) ** 2
    score = torch.ones_like(m) if scores is None else torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    precision = w_tilt * torch.nan_to_num(score, nan=0.0).clamp_min(0.0) ** 2  # ~ 1 / variance of each fit
    # 1) the mode of the mean defocus (weighted kernel density) picks the consistent majority
    grid = torch.arange(
        float(m.min()) - bandwidth_a, float(m.max()) + bandwidth_a, bandwidth_a / 20, dtype=torch.float64
    )
    density = (w_tilt * torch.exp(-0.5 * ((grid[:, None] - m[None]) / bandwidth_a) ** 2)).sum(1)
    centre = float(grid[int(density.argmax())])
    near = (m - centre).abs() <= 3 * bandwidth_a
    # 2) a robust trend: constant, drift along the acquisition, and sin(tilt) (a specimen off the
    #    eucentric height), each term kept only where significant
    x = (order - order.mean()) / order.std().clamp_min(1e-9) if t > 1 else order * 0
    weights = precision * near if float((precision * near).sum()) > 0 else w_tilt * near  # no usable scores
    trend, sigma = robust_fit([x, torch.sin(theta)], m, weights, min_sigma_a)
    resid = m - trend
    consistent = resid.abs() <= 3 * sigma
    # 3) consensus astigmatism (and phase) of the consistent tilts
    w_c = w_tilt * consistent
    if float(w_c.sum()) <= 0:
        w_c = w_tilt
    a1 = weighted_median(astig[:, 0], w_c)
    a2 = weighted_median(astig[:, 1], w_c)
    dev = torch.hypot(astig[:, 0] - a1, astig[:, 1] - a2)
    used = w_c > 0
    a_scale = 1.4826 * weighted_median(dev[used], w_c[used])
    phase = 0.0
    if phase_shift_rad is not None:
        phase = weighted_median(torch.as_tensor(phase_shift_rad, dtype=torch.float64).reshape(-1), w_c)
    far = resid.abs() > max(tol.refit_sigmas * sigma, tol.min_refit_a)
    odd_astig = dev > max(3.0 * a_scale, tol.min_astigmatism_tolerance_a)
    return SeriesTrend(trend, float(sigma), (a1, a2), phase, consistent, far | odd_astig)


def _score_2d(spectrum: torch.Tensor, params: CtfParams, fit: CtfFit) -> float:
    """Correlate the background-subtracted spectrum with ctf^2 over the fit annulus.

    Pearson correlation of the background-subtracted spectrum with ctf^2 over the fit annulus
    (the score ``ctf_fit`` reports).
    """
    n = spectrum.shape[-2]
    ky, kx = frequency_grid_2d((n, n), device=spectrum.device)
    k = torch.sqrt(kx.to(torch.float64) ** 2 + ky.to(torch.float64) ** 2) / params.pixel_size_a
    low, high = params.resolution_range_a
    band = (k >= 1.0 / low) & (k <= 1.0 / high)
    norm = subtract_background(
        spectrum,
        pixel_size_a=params.pixel_size_a,
        defocus_a=fit.defocus_mean_a,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
    )
    model = ctf_2d(
        (n, n),
        params.optics,
        defocus_u_a=fit.defocus_u_a,
        defocus_v_a=fit.defocus_v_a,
        astigmatism_angle_deg=fit.astigmatism_angle_deg,
        phase_shift_rad=fit.phase_shift_rad,
        device=spectrum.device,
    ).square()
    x, y = norm[band].to(torch.float64), model[band].to(torch.float64)
    return float(pearson(x, y, torch.ones_like(x)))


def fit_ctf_with_prior(
    spectrum: torch.Tensor,  # (n, n//2+1) power, rfft layout (tilt-aware, rescaled to the prior)
    params: CtfParams,
    *,
    prior_defocus_a: float,  # expected mean defocus (the series trend), Å
    prior_sigma_a: float,  # its uncertainty, Å
    astigmatism_a: tuple[float, float] = (0.0, 0.0),  # (a1, a2) held fixed, Å
    phase_shift_rad: float | None = None,  # None: searched when params.fit_phase
    weights: PriorWeights | None = None,
) -> CtfFit:
    """Mean defocus of one tilt given the series' expectation (module docstring, step 4)."""
    w = PriorWeights() if weights is None else weights
    outlier_fraction, z_weight, z_floor = w.outlier_fraction, w.z_weight, w.z_floor
    n = spectrum.shape[-2]
    if spectrum.ndim != 2 or spectrum.shape[-1] != n // 2 + 1:
        raise ValueError(
            f"fit_ctf_with_prior: expected an (n, n//2+1) rfft power spectrum, got {tuple(spectrum.shape)}"
        )
    if prior_sigma_a <= 0:
        raise ValueError(f"fit_ctf_with_prior: prior_sigma_a={prior_sigma_a} must be > 0")
    dev, f64 = spectrum.device, torch.float64
    a1, a2 = astigmatism_a
    ref = fit_from_components(prior_defocus_a, a1, a2)
    profile, counts = equiphase_power(spectrum, params, (ref.defocus_u_a, ref.defocus_v_a, ref.astigmatism_angle_deg))
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
        z = (profile_scores(profile, counts, params, dfs, phases) - med) / sd
        if z_floor is not None:  # a matched filter's log-likelihood; peaks no higher than a ring-less
            z = 0.5 * (z - z_floor).clamp_min(0.0) ** 2  # curve's (about z_floor) pull nothing
        gauss = torch.exp(-0.5 * ((dfs - prior_defocus_a) / prior_sigma_a) ** 2) / (
            prior_sigma_a * math.sqrt(2 * math.pi)
        )
        prior = (1.0 - outlier_fraction) * gauss + outlier_fraction / max(hi_df - lo_df, step)
        return z_weight * z + torch.log(prior)

    coarse = torch.arange(lo_df, hi_df + step, step, dtype=f64, device=dev)
    # the prior's centre is always a candidate, however coarse the grid
    coarse = torch.cat([coarse, torch.tensor([min(max(prior_defocus_a, lo_df), hi_df)], dtype=f64, device=dev)])
    raw = profile_scores(profile, counts, params, coarse, phases)
    med = float(raw.median())
    sd = max(1.4826 * float((raw - med).abs().median()), 1e-6)
    post = log_posterior(coarse, med, sd)
    centre = float(coarse[int(post.argmax())])
    if abs(centre - prior_defocus_a) <= 3.0 * prior_sigma_a:
        # within the prior's reach: the posterior mean over it (a tilt without rings stays near the trend)
        half = 4.0 * prior_sigma_a
        fine = torch.arange(prior_defocus_a - half, prior_defocus_a + half, step / 20, dtype=f64, device=dev).clamp(
            lo_df, hi_df
        )
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
                mean += max(-1.0, min(1.0, 0.5 * float(post_f[i - 1] - post_f[i + 1]) / denom)) * float(
                    fine[1] - fine[0]
                )
    phase = float(phases[0])
    if phases.numel() > 1:
        best = [
            float(
                profile_scores(profile, counts, params, torch.tensor([mean], dtype=f64, device=dev), phases[j : j + 1])[
                    0
                ]
            )
            for j in range(phases.numel())
        ]
        phase = float(phases[max(range(len(best)), key=best.__getitem__)])
    return _finish(fit_from_components(mean, a1, a2, phase_shift_rad=phase), spectrum, params)


def fit_series_astigmatism(
    spectra: list[torch.Tensor],  # each (n, n//2+1), tilt-aware, rescaled near its fit
    params: CtfParams,
    *,
    mean_defocus_a: list[float],  # per spectrum, Å
    phase_shift_rad: list[float] | None = None,
    start: tuple[float, float] = (0.0, 0.0),
    max_shift_a: float = 2000.0,
    max_iter: int = 80,
) -> tuple[tuple[float, float], list[float]]:
    """Fit one astigmatism shared by several tilts.

    One astigmatism ``(a1, a2)`` shared by several tilts (each with its own mean defocus):
    L-BFGS of the summed 2-D Pearson correlations with ``ctf^2`` over the fit annulus (Warp fits
    the astigmatism of a tilt series this way). Returns ((a1, a2) Å, mean defoci Å).
    """
    from scipy.optimize import minimize  # lazy, as in ctf_fit

    if not spectra or len(spectra) != len(mean_defocus_a):
        raise ValueError(f"fit_series_astigmatism: {len(spectra)} spectra, {len(mean_defocus_a)} defoci — one each")
    dev = spectra[0].device
    anns = [annulus(s, params, m) for s, m in zip(spectra, mean_defocus_a, strict=False)]
    phases = phase_shift_rad or [0.0] * len(spectra)
    base = torch.tensor([*start, *mean_defocus_a], dtype=torch.float64, device=dev)
    unit = 1000.0  # optimiser unit, Å

    def loss(v: torch.Tensor) -> torch.Tensor:
        x = base + unit * v
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for j, ann in enumerate(anns):
            df = x[2 + j] + x[0] * torch.cos(2 * ann.az) + x[1] * torch.sin(2 * ann.az)
            model = (
                ctf_1d(
                    ann.k,
                    voltage_kv=params.voltage_kv,
                    cs_mm=params.cs_mm,
                    amplitude_contrast=params.amplitude_contrast,
                    defocus_a=df,
                    phase_shift_rad=phases[j],
                )
                ** 2
            )
            total = total - pearson(model, ann.y, torch.ones_like(model))
        return total

    def value_and_grad(v):
        t = torch.tensor(v, dtype=torch.float64, device=dev, requires_grad=True)
        value = loss(t)
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.detach().cpu().numpy()

    half = 0.5 * params.max_astigmatism_a / unit
    bounds = [(-half - start[0] / unit, half - start[0] / unit), (-half - start[1] / unit, half - start[1] / unit)]
    bounds += [(-max_shift_a / unit, max_shift_a / unit)] * len(spectra)
    res = minimize(
        value_and_grad,
        x0=[0.0] * (2 + len(spectra)),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter},
    )
    x = base.cpu() + unit * torch.as_tensor(res.x, dtype=torch.float64)
    return (float(x[0]), float(x[1])), [float(m) for m in x[2:]]


def _finish(fit: CtfFit, spectrum: torch.Tensor, params: CtfParams) -> CtfFit:
    fit.score = _score_2d(spectrum, params, fit)
    fit.fit_resolution_a = fit_resolution_a(spectrum, params, fit)
    return fit


def _phases(params: CtfParams, phase_shift_rad: float) -> torch.Tensor:
    if params.fit_phase:
        return torch.arange(0.0, math.pi, math.pi / 12, dtype=torch.float64)
    return torch.tensor([phase_shift_rad], dtype=torch.float64)


def refine_series(
    fits: list[CtfFit],
    spectrum_of,  # (i, reference (u, v, angle)) -> (n, n//2+1) tilt-aware spectrum of tilt i
    params: CtfParams,
    *,
    tilt_angles_deg,  # (t,) degrees
    acquisition_order,  # (t,)
    options: SeriesPassOptions | None = None,
) -> SeriesRefinement:
    """Refine per-tilt CTF fits together: the series pass (module docstring).

    Series pass over independent per-tilt fits (module docstring): the per-tilt fits' consensus
    gives the first references (tile rescaling, astigmatism); then ``rounds`` times the defocus
    trend in tilt angle from the summed evidence of all tilts (``ctf_trend``) and one astigmatism
    fitted jointly on the ``joint_tilts`` strongest tilts at their peaks near the trend; finally every
    tilt re-fitted by ``fit_ctf_with_prior`` (trend as prior, the series' astigmatism) on its
    spectrum rescaled to the trend. Fewer than 4 tilts: returned as they are.
    """
    o = SeriesPassOptions() if options is None else options
    min_sigma_a, refresh_a = o.min_sigma_a, o.refresh_a
    comps = torch.tensor([fit_components(f) for f in fits], dtype=torch.float64).reshape(-1, 3)
    phases = [f.phase_shift_rad for f in fits] if params.fit_phase else None
    trend = series_trend(
        comps[:, 0],
        comps[:, 1:],
        tilt_angles_deg,
        acquisition_order,
        phase_shift_rad=phases,
        scores=[f.score for f in fits],
        tolerances=TrendTolerances(min_sigma_a=min_sigma_a),
    )
    out = list(fits)
    if len(fits) < 4:
        trend.refit[:] = False
        return SeriesRefinement(out, trend, {})
    lo, hi = params.defocus_range_um[0] * 1e4, params.defocus_range_um[1] * 1e4
    step = 0.02 * params.resolution_range_a[1] ** 2 / electron_wavelength_a(params.voltage_kv)  # 0.02 pi at the limit
    grid = torch.arange(lo, hi + 0.5 * step, step, dtype=torch.float64)
    spectra: dict[int, torch.Tensor] = {}
    refs: dict[int, tuple[float, float, float]] = {}

    def update_spectra() -> None:  # re-rescale the tiles of tilts whose reference moved by > refresh_a
        for i in range(len(fits)):
            ref = trend.reference(i)
            if i not in refs or max(abs(a - b) for a, b in zip(ref[:2], refs[i][:2], strict=False)) > refresh_a:
                spectra[i], refs[i] = spectrum_of(i, ref), ref

    for _ in range(o.rounds):
        update_spectra()
        evidence = defocus_evidence(
            [spectra[i] for i in range(len(fits))],
            params,
            references=[refs[i] for i in range(len(fits))],
            defocus_grid_a=grid,
            phases_rad=_phases(params, trend.phase_shift_rad),
        )
        found = fit_defocus_trend(
            evidence,
            grid,
            tilt_angles_deg,
            acquisition_order,
            search=TrendSearch(
                max_slope_a_per_deg=o.max_slope_a_per_deg,
                jitters_a=tuple(min_sigma_a * f for f in (1.0, 5 / 3, 8 / 3, 16 / 3)),
            ),
        )
        trend.defocus_a, trend.sigma_a = found.defocus_a.clone(), found.sigma_a
        trend.consistent = (found.peak_a - found.defocus_a).abs() <= 2.0 * found.sigma_a
        trend.strength = found.strength.clone()
        chosen = [
            i for i in found.strength.argsort(descending=True).tolist()[: o.joint_tilts] if bool(trend.consistent[i])
        ]
        if len(chosen) >= 2 and params.astigmatism:
            trend.astigmatism_a, _ = fit_series_astigmatism(
                [spectra[i] for i in chosen],
                params,
                mean_defocus_a=[float(found.peak_a[i]) for i in chosen],
                phase_shift_rad=[trend.phase_shift_rad] * len(chosen),
                start=trend.astigmatism_a,
                max_shift_a=max(2.0 * found.sigma_a, 300.0),
            )
    update_spectra()
    trend.refit[:] = True
    sigma = max(trend.sigma_a, min_sigma_a)
    for i in range(len(fits)):
        out[i] = fit_ctf_with_prior(
            spectra[i],
            params,
            prior_defocus_a=float(trend.defocus_a[i]),
            prior_sigma_a=sigma,
            astigmatism_a=trend.astigmatism_a,
            weights=o.prior,
            phase_shift_rad=trend.phase_shift_rad if params.fit_phase else None,
        )
    return SeriesRefinement(out, trend, dict(spectra))
