"""CTF fitting of one power spectrum: 1-D defocus search, 2-D refinement, fit resolution.

Conventions (DESIGN.md §2): defocus underfocus-positive in Å, ``defocus_u_a >= defocus_v_a``,
``astigmatism_angle_deg`` the azimuth of u from +x counter-clockwise in [-90, 90), phase shift in
radians; the CTF is ``ctf_model`` (``-sin(chi + arcsin(A) + phase)``). Spectra are rfft2 layout
``(n, n//2+1)`` as in ``ctf_spectra``.

Method (after CTFFIND4, Rohou & Grigorieff 2015, doi:10.1016/j.jsb.2015.08.008):
1. rotational average -> for every candidate defocus (and phase) remove the background and
   normalise the envelope over one Thon-ring period, and correlate with the equally treated
   ``ctf^2`` over the fit range; keep the best (coarse grid, then a 10x finer one);
2. 2-D: background-subtracted spectrum; grid search of the astigmatism (a1, a2) =
   ``(u-v)/2 * (cos 2θ, sin 2θ)``, then L-BFGS (torch autograd) of mean defocus, a1, a2 (and phase)
   maximising the Pearson correlation with ``ctf^2`` over the fit annulus (the score);
3. fit resolution: per-ring correlation of the astigmatism-corrected (equi-phase) average with
   the fitted ``ctf^2`` in a one-period sliding window; CTFFIND's rule (below 0.5 after > 3 bins
   above 0.66, or below 0.1 after > 3 bins above 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tiltflow.core.ctf_annulus import annulus, grid_scores, model_sq
from tiltflow.core.ctf_model import Optics, ctf_1d, electron_wavelength_a
from tiltflow.core.ctf_rings import fit_resolution_a
from tiltflow.core.ctf_spectra import (
    normalise_profile,
    pixel_radius,
    radial_bins,
    ring_window,
)


@dataclass(frozen=True, kw_only=True)
class CtfParams:
    """Optics and search settings; lengths in Å, defocus range in µm."""

    pixel_size_a: float
    window_px: int = 512
    resolution_range_a: tuple[float, float] = (30.0, 8.0)
    defocus_range_um: tuple[float, float] = (0.5, 8.0)
    fit_phase: bool = False
    astigmatism: bool = True
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    max_astigmatism_a: float = 2000.0

    @property
    def optics(self) -> Optics:
        """The microscope and sampling terms of these settings (:class:`~tiltflow.core.ctf_model.Optics`)."""
        return Optics(
            pixel_size_a=self.pixel_size_a,
            voltage_kv=self.voltage_kv,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
        )

    def __post_init__(self) -> None:
        """Refuse settings no fit can use (``ValueError`` naming the field)."""
        low, high = self.resolution_range_a
        if self.pixel_size_a <= 0:
            raise ValueError(f"CtfParams: pixel_size_a={self.pixel_size_a} must be > 0")
        if self.window_px < 64 or self.window_px % 2:
            raise ValueError(f"CtfParams: window_px={self.window_px} must be even and >= 64")
        if not low > high >= 2.0 * self.pixel_size_a:
            raise ValueError(
                f"CtfParams: resolution_range_a={self.resolution_range_a} must be (low, high) with "
                f"low > high >= Nyquist {2 * self.pixel_size_a:.2f} Å; raise the high-resolution limit"
            )
        if not 0 < self.defocus_range_um[0] < self.defocus_range_um[1]:
            raise ValueError(
                f"CtfParams: defocus_range_um={self.defocus_range_um} must be (min, max) with 0 < min < max"
            )
        if not 0 <= self.amplitude_contrast < 1:
            raise ValueError(f"CtfParams: amplitude_contrast={self.amplitude_contrast} must be in [0, 1)")


@dataclass
class CtfFit:
    """One tilt's CTF. ``defocus_grid_a`` (ny, nx): local defocus beyond the tilt plane (Å), or None."""

    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    phase_shift_rad: float
    fit_resolution_a: float
    score: float
    defocus_grid_a: torch.Tensor | None = None

    @property
    def defocus_mean_a(self) -> float:
        """Mean of ``defocus_u_a`` and ``defocus_v_a`` (Å)."""
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)

    @property
    def astigmatism_a(self) -> float:
        """``defocus_u_a - defocus_v_a`` (Å, >= 0)."""
        return self.defocus_u_a - self.defocus_v_a


def fit_from_components(
    mean_a: float,
    a1: float,
    a2: float,
    *,
    phase_shift_rad: float = 0.0,
    fit_resolution_a: float = float("nan"),
    score: float = float("nan"),
) -> CtfFit:
    """Build the CtfFit of a mean defocus and astigmatism components.

    The CtfFit (u >= v, angle in [-90, 90), phase in [0, pi)) of a mean defocus and astigmatism
    components ``(a1, a2) = (u - v) / 2 * (cos 2θ, sin 2θ)`` (Å).
    """
    half = math.hypot(a1, a2)
    angle = 0.5 * math.degrees(math.atan2(a2, a1)) if half > 0 else 0.0
    angle = (angle + 90.0) % 180.0 - 90.0
    return CtfFit(mean_a + half, mean_a - half, angle, phase_shift_rad % math.pi, fit_resolution_a, score)


def fit_components(fit: CtfFit) -> tuple[float, float, float]:
    """(mean defocus, a1, a2) Å of a fit, ``(a1, a2) = (u - v) / 2 * (cos 2θ, sin 2θ)``."""
    half = 0.5 * fit.astigmatism_a
    t = math.radians(2.0 * fit.astigmatism_angle_deg)
    return fit.defocus_mean_a, half * math.cos(t), half * math.sin(t)


def pearson(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation along the last dim, optionally weighted by ``w``."""
    if w is None:
        xc, yc = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
        return (xc * yc).sum(-1) / torch.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1)).clamp_min(1e-30)
    sw = w.sum(-1, keepdim=True)
    xc, yc = x - (w * x).sum(-1, keepdim=True) / sw, y - (w * y).sum(-1, keepdim=True) / sw
    return (w * xc * yc).sum(-1) / torch.sqrt((w * xc * xc).sum(-1) * (w * yc * yc).sum(-1)).clamp_min(1e-30)


def _k_limits(params: CtfParams) -> tuple[float, float]:
    low, high = params.resolution_range_a
    return 1.0 / low, 1.0 / high


def search_defocus_1d(
    spectrum: torch.Tensor, params: CtfParams, *, defocus_range_a: tuple[float, float] | None = None
) -> tuple[float, float, float]:
    """Best (mean defocus Å, phase rad, score) of the rotational average; coarse then fine grid."""
    n = spectrum.shape[-2]
    nb = n // 2 + 1
    dev = spectrum.device
    profile, counts = radial_bins(spectrum, pixel_radius(n, device=dev), nb)
    k = torch.arange(nb, dtype=torch.float64, device=dev) / (n * params.pixel_size_a)
    kmin, kmax = _k_limits(params)
    in_range = (k >= kmin) & (k <= kmax)
    w = counts * in_range
    lam = electron_wavelength_a(params.voltage_kv)
    lo_df, hi_df = defocus_range_a or (params.defocus_range_um[0] * 1e4, params.defocus_range_um[1] * 1e4)
    step = 0.1 / (lam * kmax**2)  # Å: ring phase at kmax moves by 0.1*pi per step
    phases = (
        torch.arange(0.0, math.pi, math.pi / 12, dtype=torch.float64, device=dev)
        if params.fit_phase
        else torch.zeros(1, dtype=torch.float64, device=dev)
    )

    def scores(dfs: torch.Tensor, phs: torch.Tensor) -> torch.Tensor:
        df = dfs[:, None].expand(-1, phs.numel()).reshape(-1)
        ph = phs[None, :].expand(dfs.numel(), -1).reshape(-1)
        lo, hi = ring_window(
            n, pixel_size_a=params.pixel_size_a, defocus_a=df, voltage_kv=params.voltage_kv, cs_mm=params.cs_mm
        )
        model = (
            ctf_1d(
                k,
                voltage_kv=params.voltage_kv,
                cs_mm=params.cs_mm,
                amplitude_contrast=params.amplitude_contrast,
                defocus_a=df[:, None],
                phase_shift_rad=ph[:, None],
            )
            ** 2
        )
        obs = normalise_profile(profile.expand_as(model), counts, lo, hi)
        mod = normalise_profile(model, counts, lo, hi)
        return pearson(obs, mod, w.expand_as(model)).reshape(dfs.numel(), phs.numel())

    coarse = torch.arange(lo_df, hi_df + step, step, dtype=torch.float64, device=dev)
    sc = scores(coarse, phases)
    best = int(sc.max(dim=1).values.argmax())
    fine = torch.linspace(coarse[best] - step, coarse[best] + step, 21, dtype=torch.float64, device=dev)
    fine = fine.clamp(lo_df, hi_df)
    sf = scores(fine, phases)
    flat = int(sf.argmax())
    i, j = divmod(flat, phases.numel())
    return float(fine[i]), float(phases[j]), float(sf[i, j])


def refine_2d(
    spectrum: torch.Tensor,
    params: CtfParams,
    *,
    mean_defocus_a: float,
    phase_rad: float = 0.0,
    astigmatism_starts: Sequence[tuple[float, float]] = (),
    max_iter: int = 60,
) -> tuple[float, float, float, float, float]:
    """2-D refinement -> (mean defocus Å, a1 Å, a2 Å, phase rad, correlation).

    The astigmatism starts from the best of a grid (steps of max_astigmatism_a / 10) and the
    extra ``astigmatism_starts`` (a1, a2), at ``mean_defocus_a`` and ``phase_rad``.
    """
    ann = annulus(spectrum, params, mean_defocus_a)
    dev, f64 = spectrum.device, torch.float64
    a1, a2 = 0.0, 0.0
    if params.astigmatism:
        half, step = 0.5 * params.max_astigmatism_a, 0.1 * params.max_astigmatism_a
        g = torch.arange(-half, half + 1e-6, step, dtype=f64, device=dev)
        ga1, ga2 = torch.meshgrid(g, g, indexing="ij")
        keep = ga1**2 + ga2**2 <= half**2 + 1e-6
        cands = torch.stack([ga1[keep], ga2[keep]], -1)
        if astigmatism_starts:
            cands = torch.cat([cands, torch.tensor(list(astigmatism_starts), dtype=f64, device=dev)])
        means = torch.full((cands.shape[0],), mean_defocus_a, dtype=f64, device=dev)
        i = int(grid_scores(ann, means, cands[:, 0], cands[:, 1], torch.full_like(means, phase_rad)).argmax())
        a1, a2 = float(cands[i, 0]), float(cands[i, 1])
    start = torch.tensor([mean_defocus_a, a1, a2, phase_rad], dtype=f64, device=dev)
    x = _lbfgs(lambda v: -pearson(model_sq(ann, params, *_unpack(v, start, params)), ann.y), max_iter, dev)
    with torch.no_grad():
        best = _unpack(torch.as_tensor(x, dtype=f64, device=dev), start, params)
        score = float(pearson(model_sq(ann, params, *best), ann.y))
    m, b1, b2, ph = (float(t) for t in best)
    return m, b1, b2, ph, score


_SCALE = (1000.0, 1000.0, 1000.0, 1.0)  # optimiser unit: 1000 Å for defocus terms, 1 rad for phase


def _unpack(v: torch.Tensor, start: torch.Tensor, params: CtfParams) -> tuple[torch.Tensor, ...]:
    free = (1.0, float(params.astigmatism), float(params.astigmatism), float(params.fit_phase))
    return tuple(start[i] + _SCALE[i] * free[i] * v[i] for i in range(4))


def _lbfgs(loss_fn, max_iter: int, device: torch.device) -> list[float]:
    """Minimise ``loss_fn`` over 4 scaled parameters by L-BFGS-B on autograd gradients.

    Minimise ``loss_fn(v)`` over 4 scaled parameters from 0: scipy's L-BFGS-B on torch autograd
    gradients (only the 4 numbers leave the device).
    """
    from scipy.optimize import minimize  # lazy: keeps `import tiltflow.core` light

    def value_and_grad(v):
        t = torch.tensor(v, dtype=torch.float64, device=device, requires_grad=True)
        loss = loss_fn(t)
        (grad,) = torch.autograd.grad(loss, t)
        return float(loss.detach()), grad.detach().cpu().numpy()

    res = minimize(
        value_and_grad,
        x0=[0.0] * 4,
        jac=True,
        method="L-BFGS-B",
        bounds=[(-20.0, 20.0)] * 3 + [(-4.0, 4.0)],
        options={"maxiter": max_iter},
    )
    return list(res.x)


def search_defocus_local(
    spectrum: torch.Tensor, params: CtfParams, fit: CtfFit, *, mean_defocus_a: float, halfwidth_a: float = 1500.0
) -> float:
    """Mean defocus (Å) near ``mean_defocus_a`` with the astigmatism and phase of ``fit`` held fixed.

    2-D correlation on a grid (ring phase at the high-resolution limit moves 0.02*pi per step;
    every 4th point first, then the points around the best of those), then a parabola through
    the best point and its neighbours.
    """
    ann = annulus(spectrum, params, mean_defocus_a)
    dev, f64 = spectrum.device, torch.float64
    lam = electron_wavelength_a(params.voltage_kv)
    step = 0.02 / (lam * _k_limits(params)[1] ** 2)
    _, a1, a2 = fit_components(fit)

    def scores(m: torch.Tensor) -> torch.Tensor:
        return grid_scores(
            ann, m, torch.full_like(m, a1), torch.full_like(m, a2), torch.full_like(m, fit.phase_shift_rad)
        )

    # every 4th point of the fine grid first, then the fine grid around the best of those
    m = torch.arange(mean_defocus_a - halfwidth_a, mean_defocus_a + halfwidth_a + step, step, dtype=f64, device=dev)
    coarse = m[::4]
    j = 4 * int(scores(coarse).argmax())
    lo, hi = max(j - 4, 0), min(j + 5, m.numel())
    m = m[lo:hi]
    sc = scores(m)
    i = min(max(int(sc.argmax()), 1), m.numel() - 2)
    denom = float(sc[i - 1] - 2 * sc[i] + sc[i + 1])
    shift = 0.5 * float(sc[i - 1] - sc[i + 1]) / denom if denom < 0 else 0.0
    return float(m[i]) + max(-1.0, min(1.0, shift)) * step


def fit_ctf_spectrum(
    spectrum: torch.Tensor,  # (n, n//2+1) power, rfft layout
    params: CtfParams,
    *,
    initial: CtfFit | None = None,
    search_halfwidth_a: float = 15000.0,
) -> CtfFit:
    """Fit one spectrum; with ``initial`` the 1-D search spans its mean defocus ± ``search_halfwidth_a``."""
    n = spectrum.shape[-2]
    if spectrum.ndim != 2 or spectrum.shape[-1] != n // 2 + 1:
        raise ValueError(f"fit_ctf_spectrum: expected an (n, n//2+1) rfft power spectrum, got {tuple(spectrum.shape)}")
    lo, hi = params.defocus_range_um[0] * 1e4, params.defocus_range_um[1] * 1e4
    starts: list[tuple[float, float]] = []
    if initial is not None:
        c = initial.defocus_mean_a
        lo, hi = max(lo, c - search_halfwidth_a), min(hi, c + search_halfwidth_a)
        if lo >= hi:
            lo, hi = sorted((params.defocus_range_um[0] * 1e4, params.defocus_range_um[1] * 1e4))
        starts.append(fit_components(initial)[1:])
    m0, ph0, _ = search_defocus_1d(spectrum, params, defocus_range_a=(lo, hi))
    m, a1, a2, ph, score = refine_2d(spectrum, params, mean_defocus_a=m0, phase_rad=ph0, astigmatism_starts=starts)
    fit = fit_from_components(m, a1, a2, phase_shift_rad=ph if params.fit_phase else 0.0, score=score)
    fit.fit_resolution_a = fit_resolution_a(spectrum, params, fit)
    return fit
