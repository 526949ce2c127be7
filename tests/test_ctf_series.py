"""The CTF series pass (core.ctf_series) against known answers.

A whole simulated tilt series (the demo simulator: 512 px, 21 tilts to ±60°, 3 e/Å² per tilt,
dose-symmetric, damage and thicker ice at high tilt) where the independent per-tilt fits pick
wrong minima at high tilt (8 of 21 off by > 1000 Å with this seed), and small synthetic cases of
each piece: the robust trend, the prior-weighted re-fit (a real jump is kept, a ring-less tilt
falls back to the trend), the trend in tilt angle from summed evidence (``ctf_trend``), and a
synthetic series whose defocus drifts 40 Å per degree with one astigmatism, where the series pass
meets issue 11's medians (100 Å for |tilt| <= 30°, 250 Å above) from per-tilt fits half of which
are microns off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiltflow.core.ctf import CtfParams, fit_ctf_series
from tiltflow.core.ctf_model import Optics, ctf_2d
from tiltflow.core.ctf_series import fit_ctf_with_prior, fit_from_components, series_trend
from tiltflow.core.fourier import frequency_grid_2d


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _angle_error(a_deg: float, b_deg: float) -> float:
    return abs((a_deg - b_deg + 90.0) % 180.0 - 90.0)


def _series_errors(seed: int) -> tuple[list[float], list[float], list[float], list[float], list[float], dict]:
    """A 21-tilt series at 2.76 Å/px and 3 e/Å² per tilt (the tutorial's dose), fitted by ``fit_ctf_series``:
    |mean defocus error| (Å) for |tilt| <= 30° and above, astigmatism and its angle errors, the angles, the truth."""
    from tiltflow.testing.acquisition import plan_series
    from tiltflow.testing.config import DemoConfig
    from tiltflow.testing.demo import render_truth_tilt, series_rng

    cfg = DemoConfig(
        n_series=1, n_tilts=21, tilt_step_deg=6.0, size=(512, 512), n_frames=4, seed=seed, local_motion=False
    )
    truth = plan_series(cfg, 0, series_rng(cfg, 0))
    rng = np.random.default_rng(seed)
    images = torch.stack(
        [  # the motion-corrected sum: expected counts per frame x frames, Poisson
            torch.from_numpy(
                rng.poisson(render_truth_tilt(truth, i).double().numpy() * cfg.n_frames).astype(np.float32)
            )
            for i in range(len(truth["tilts"]))
        ]
    )
    params = CtfParams(pixel_size_a=2.76, window_px=256, resolution_range_a=(30.0, 7.0))
    angles = [t["mdoc_tilt_angle_deg"] for t in truth["tilts"]]  # images in acquisition order
    fits = fit_ctf_series(images, params, tilt_angles_deg=angles, tilt_axis_deg=cfg.tilt_axis_deg)
    low, high, astig, angle = [], [], [], []
    for t, f in zip(truth["tilts"], fits, strict=False):
        error = abs(f.defocus_mean_a - 0.5 * (t["defocus_u_a"] + t["defocus_v_a"]))
        (low if abs(t["mdoc_tilt_angle_deg"]) <= 30 else high).append(error)
        astig.append(abs(f.astigmatism_a - (t["defocus_u_a"] - t["defocus_v_a"])))
        angle.append(_angle_error(f.astigmatism_angle_deg, t["astigmatism_angle_deg"]))
    return low, high, astig, angle, angles, truth


def test_series_pass_meets_the_medians_over_draws():
    """Issue 11's medians (<= 100 Å up to 30°, <= 250 Å above) over six drawn series: the median of
    their per-series medians (one draw may miss: seed 21 gives 341 Å above 30°; the six give 70 / 156 Å)."""
    per_series = [_series_errors(seed)[:2] for seed in range(16, 22)]
    low = float(np.median([np.median(lo) for lo, _ in per_series]))
    high = float(np.median([np.median(hi) for _, hi in per_series]))
    assert low <= 100.0 and high <= 250.0, (low, high)


def test_series_pass_removes_wrong_minima_on_a_simulated_tilt_series():
    low, high, astig, angle, angles, truth = _series_errors(16)
    assert truth["astigmatism_a"] > 300 and max(abs(a) for a in angles) >= 59
    # no gross outlier; the low tilts within issue 3's 100 Å (the medians over draws: the test above)
    assert max(low + high) <= 1000.0, (low, high)
    assert np.median(low) <= 100.0, low
    # astigmatism (1462 Å here) recovered in magnitude and angle
    assert np.median(astig) <= 250.0 and np.median(angle) <= 10.0, (astig, angle)


def test_series_trend_finds_the_majority_and_marks_the_wrong_minima():
    g = torch.Generator().manual_seed(3)
    angles = torch.tensor([0.0, 3, -3, -6, 6, 9, -9, -12, 12, 15, -15, -18, 18, 21, -21, -24, 24, 27, -27, -30, 30])
    order = torch.arange(21)
    truth = 30000.0 + 40.0 * order  # a drift along the acquisition, 800 Å
    measured = truth + 80.0 * torch.randn(21, generator=g, dtype=torch.float64)
    wrong = [7, 11, 14, 17, 18, 19, 20]  # a third of the tilts, all late ones
    measured[wrong] = torch.tensor([12000.0, 45000.0, 21000.0, 52000.0, 9000.0, 38000.0, 26000.0], dtype=torch.float64)
    astig = torch.tensor([[400.0, -300.0]]).repeat(21, 1) + 50 * torch.randn(21, 2, generator=g)
    astig[wrong] = torch.tensor([[-700.0, 200.0]])
    trend = series_trend(measured, astig, angles, order, scores=torch.full((21,), 0.1))
    keep = [i for i in range(21) if i not in wrong]
    assert (trend.defocus_a - truth).abs().max() <= 120.0  # the drift is found (significant here)
    assert trend.refit[wrong].all() and not trend.refit[keep].any()
    assert trend.consistent[keep].all() and not trend.consistent[wrong].any()
    assert trend.astigmatism_a == pytest.approx((400.0, -300.0), abs=60.0)
    assert 40.0 <= trend.sigma_a <= 150.0 + 1e-9
    # no drift in the data: a constant trend (the slope is not significant)
    flat = series_trend(30000.0 + 80.0 * torch.randn(21, generator=g, dtype=torch.float64), astig, angles, order)
    assert float(flat.defocus_a.max() - flat.defocus_a.min()) < 1e-6


def _synthetic_spectrum(n, px, mean_a, astig, ring_amplitude, seed, tiles=20):
    """Mean periodogram of ``tiles`` tiles: smooth background + amplitude * ctf^2, each pixel an
    average of exponential draws (a periodogram's statistics)."""
    ky, kx = frequency_grid_2d((n, n))
    k2 = (kx**2 + ky**2).double() / px**2
    u, v, ang = astig
    ctf2 = (
        ctf_2d(
            (n, n),
            Optics(pixel_size_a=px, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07),
            defocus_u_a=mean_a + u,
            defocus_v_a=mean_a + v,
            astigmatism_angle_deg=ang,
        )
        .square()
        .double()
    )
    expected = 1e3 / (1 + k2 / 4e-4) + 20.0 + ring_amplitude * torch.exp(-60.0 * k2) * ctf2
    gamma = torch.distributions.Gamma(torch.full_like(expected, float(tiles)), torch.full_like(expected, float(tiles)))
    torch.manual_seed(seed)
    return (expected * gamma.sample()).float()


def test_fit_ctf_with_prior_keeps_a_real_jump_and_falls_back_to_the_trend_without_rings():
    params = CtfParams(pixel_size_a=2.76, window_px=256, resolution_range_a=(30.0, 7.0))
    astig = fit_from_components(0.0, 300.0, 200.0)  # (a1, a2) -> (u, v, angle) about 0
    offsets = (astig.defocus_u_a, astig.defocus_v_a, astig.astigmatism_angle_deg)
    # strong rings 3000 Å away from the series' expectation: the data win
    strong = _synthetic_spectrum(256, 2.76, 33000.0, offsets, ring_amplitude=40.0, seed=1)
    fit = fit_ctf_with_prior(strong, params, prior_defocus_a=30000.0, prior_sigma_a=200.0, astigmatism_a=(300.0, 200.0))
    assert fit.defocus_mean_a == pytest.approx(33000.0, abs=100.0)
    assert fit.astigmatism_a == pytest.approx(2 * math.hypot(300.0, 200.0), abs=1.0)  # held at the series'
    # no rings at all: the expectation, not a noise peak somewhere in 0.5-8 µm
    for seed in range(3):
        empty = _synthetic_spectrum(256, 2.76, 33000.0, offsets, ring_amplitude=0.0, seed=10 + seed)
        fit = fit_ctf_with_prior(
            empty, params, prior_defocus_a=30000.0, prior_sigma_a=200.0, astigmatism_a=(300.0, 200.0)
        )
        assert fit.defocus_mean_a == pytest.approx(30000.0, abs=300.0)
    with pytest.raises(ValueError, match="prior_sigma_a"):
        fit_ctf_with_prior(strong, params, prior_defocus_a=30000.0, prior_sigma_a=0.0)


def test_series_trend_without_usable_scores_and_bad_input():
    # every fit scored <= 0 (no rings anywhere): tilt weights alone, the majority still wins
    trend = series_trend(
        [30000.0, 30100.0, 29900.0, 30050.0, 52000.0],
        torch.zeros(5, 2),
        [0.0, 3.0, -3.0, 6.0, -6.0],
        range(5),
        scores=[0.0, -0.01, 0.0, -0.2, 0.0],
    )
    assert trend.defocus_a[0].item() == pytest.approx(30000.0, abs=100.0)
    assert trend.refit.tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="one of each per tilt"):
        series_trend([30000.0, 31000.0], [[0.0, 0.0]], [0.0, 3.0], [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_ctf_with_prior_same_on_cuda():
    params = CtfParams(pixel_size_a=2.76, window_px=256, resolution_range_a=(30.0, 7.0))
    spectrum = _synthetic_spectrum(256, 2.76, 31000.0, (150.0, -150.0, 20.0), ring_amplitude=20.0, seed=2)
    kw = {"prior_defocus_a": 30000.0, "prior_sigma_a": 300.0, "astigmatism_a": (140.0, 100.0)}
    cpu = fit_ctf_with_prior(spectrum, params, **kw)
    gpu = fit_ctf_with_prior(spectrum.cuda(), params, **kw)
    assert gpu.defocus_mean_a == pytest.approx(cpu.defocus_mean_a, abs=5.0)
    assert gpu.score == pytest.approx(cpu.score, abs=1e-3)


def _drift_truth(angles: torch.Tensor, seed: int, slope_a_per_deg: float = 40.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        30000.0
        + slope_a_per_deg * angles
        + 300.0 * (2 * torch.rand(angles.numel(), generator=g, dtype=torch.float64) - 1)
    )


def test_fit_defocus_trend_follows_a_drift_in_tilt_through_noise_and_decoys():
    from tiltflow.core.ctf_trend import fit_defocus_trend

    g = torch.Generator().manual_seed(5)
    angles = torch.arange(-60.0, 60.1, 5.0, dtype=torch.float64)
    order = torch.tensor(sorted(range(angles.numel()), key=lambda i: abs(float(angles[i]))), dtype=torch.float64)
    grid = torch.arange(5000.0, 80000.0, 50.0, dtype=torch.float64)
    truth = _drift_truth(angles, 5)
    strength = (10.0 * (1 - angles.abs() / 45.0)).clamp_min(0.0)  # no signal at all above 45°
    evidence = torch.randn(angles.numel(), grid.numel(), generator=g, dtype=torch.float64)
    evidence += strength[:, None] * torch.exp(-0.5 * ((grid[None] - truth[:, None]) / 150.0) ** 2)
    decoys = torch.randint(0, grid.numel(), (angles.numel(),), generator=g)
    evidence[torch.arange(angles.numel()), decoys] += 6.0  # a strong wrong peak in every tilt
    found = fit_defocus_trend(evidence, grid, angles, order)
    line = 30000.0 + 40.0 * angles
    assert (found.defocus_a - line).abs().max() <= 250.0, found.defocus_a - line
    slope = float(
        torch.linalg.lstsq(torch.stack([torch.ones_like(angles), angles], -1), found.defocus_a[:, None]).solution[1, 0]
    )
    assert slope == pytest.approx(40.0, abs=5.0)
    strong = strength >= 4
    assert (found.peak_a - truth)[strong].abs().max() <= 150.0
    assert 100.0 <= found.sigma_a <= 300.0
    # no drift: a flat trend, not a slope made of noise
    flat = fit_defocus_trend(
        torch.randn(angles.numel(), grid.numel(), generator=g, dtype=torch.float64)
        + strength[:, None] * torch.exp(-0.5 * ((grid[None] - 30000.0) / 150.0) ** 2),
        grid,
        angles,
        order,
    )
    assert float(flat.defocus_a.max() - flat.defocus_a.min()) <= 150.0
    with pytest.raises(ValueError, match="pass"):
        fit_defocus_trend(evidence[:, :10], grid, angles, order)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fit_defocus_trend_lets_weak_rings_at_high_tilt_pin_the_slope(seed):
    """Clear rings only at 0° and ±10° (their jitter suggests 10 Å/° instead of 40), weak rings (z 2.5,
    below the single-tilt detection level) at every other tilt, on the true line: summed along the
    line, the weak tilts fix the slope (with the evidence floored at z 3 the trend was 800-1200 Å off
    at ±60°)."""
    from tiltflow.core.ctf_trend import fit_defocus_trend

    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(-60.0, 60.1, 10.0, dtype=torch.float64)
    order = torch.tensor(sorted(range(angles.numel()), key=lambda i: abs(float(angles[i]))), dtype=torch.float64)
    grid = torch.arange(5000.0, 80000.0, 50.0, dtype=torch.float64)
    line = 30000.0 + 40.0 * angles
    truth = line + torch.where(angles == -10, 150.0, 0.0) + torch.where(angles == 10, -150.0, 0.0)
    strength = torch.where(angles.abs() <= 10, 10.0, 2.5).to(torch.float64)
    evidence = torch.randn(angles.numel(), grid.numel(), generator=g, dtype=torch.float64)
    evidence += strength[:, None] * torch.exp(-0.5 * ((grid[None] - truth[:, None]) / 150.0) ** 2)
    found = fit_defocus_trend(evidence, grid, angles, order)
    assert (found.defocus_a - line).abs().max() <= 250.0, found.defocus_a - line


def _synthetic_series(device="cpu"):
    """Synthetic tilt spectra: defocus 30000 + 40 Å/° x tilt ± 300 Å, one astigmatism (560 Å at 30°),
    rings fading with tilt (gone above 45°); per-tilt fits wrong by microns at half the tilts."""
    from tiltflow.core.ctf_fit import CtfFit

    angles = torch.arange(-60.0, 60.1, 7.5, dtype=torch.float64)
    truth = _drift_truth(angles, 7)
    astig = fit_from_components(0.0, 140.0, 242.5)  # |a| = 280 Å: 560 Å, 30°
    offsets = (astig.defocus_u_a, astig.defocus_v_a, astig.astigmatism_angle_deg)
    amplitude = (12.0 * (1 - angles.abs() / 50.0)).clamp_min(0.0)
    spectra = [
        _synthetic_spectrum(256, 2.76, float(truth[i]), offsets, float(amplitude[i]), seed=100 + i).to(device)
        for i in range(angles.numel())
    ]
    g = torch.Generator().manual_seed(8)
    fits = []
    for i in range(angles.numel()):
        wrong = i % 2 == 1
        mean = float(truth[i]) + (float(torch.empty(1).uniform_(-15000, 15000, generator=g)) if wrong else 50.0)
        a1, a2 = (float(v) for v in torch.empty(2).uniform_(-500, 500, generator=g))
        f = fit_from_components(mean, a1, a2, score=0.05 if wrong else 0.3)
        fits.append(CtfFit(f.defocus_u_a, f.defocus_v_a, f.astigmatism_angle_deg, 0.0, 10.0, f.score))
    order = sorted(range(angles.numel()), key=lambda i: abs(float(angles[i])))
    return angles, truth, amplitude, spectra, fits, [order.index(i) for i in range(angles.numel())]


def test_series_pass_keeps_one_astigmatism_and_follows_a_drift_from_wrong_per_tilt_fits():
    from tiltflow.core.ctf_series import refine_series

    params = CtfParams(pixel_size_a=2.76, window_px=256, resolution_range_a=(30.0, 7.0))
    angles, truth, amplitude, spectra, fits, order = _synthetic_series()
    refined = refine_series(fits, lambda i, ref: spectra[i], params, tilt_angles_deg=angles, acquisition_order=order)
    err = torch.tensor([f.defocus_mean_a for f in refined.fits], dtype=torch.float64) - truth
    low = angles.abs() <= 30
    assert float(err[low].abs().median()) <= 100.0, err
    assert float(err[~low].abs().median()) <= 250.0, err
    assert float(err.abs().max()) <= 800.0, err  # above 50° no rings: jitter + extrapolation
    # one astigmatism for the series, the true one
    assert len({(round(f.astigmatism_a, 6), round(f.astigmatism_angle_deg, 6)) for f in refined.fits}) == 1
    assert refined.fits[0].astigmatism_a == pytest.approx(560.0, abs=80.0)
    assert _angle_error(refined.fits[0].astigmatism_angle_deg, 30.0) <= 8.0
    # the trend follows the drift: its slope is that of the true defoci of the tilts with rings
    # (40 Å/° + what their jitter adds)
    rings = amplitude > 0
    design = torch.stack([torch.ones_like(angles), angles], -1)[rings]
    true_slope = float(torch.linalg.lstsq(design, truth[rings, None]).solution[1, 0])
    trend_slope = float(torch.linalg.lstsq(design, refined.trend.defocus_a[rings, None]).solution[1, 0])
    assert trend_slope == pytest.approx(true_slope, abs=4.0) and abs(true_slope - 40.0) < 8.0
    # the tilts with rings show them (ring evidence well above noise): the verdict is good
    from tiltflow.core.ctf_verdict import RINGS_Z, ctf_series_verdict

    assert int((refined.trend.strength[amplitude >= 6.0] >= RINGS_Z).sum()) >= 5, refined.trend.strength
    assert ctf_series_verdict(refined.trend.strength, angles).status == "good"


@pytest.mark.parametrize("rings_at", [(), (0.0, 7.5)])
def test_series_without_rings_is_failed_and_with_two_is_checked(rings_at):
    """Spectra of noise (no Thon rings: each fit a chance peak) get a 'failed' CTF verdict, never
    a defocus reported as found; rings in only two tilts give 'check'."""
    from tiltflow.core.ctf_series import refine_series
    from tiltflow.core.ctf_verdict import ctf_series_verdict

    params = CtfParams(pixel_size_a=2.76, window_px=256, resolution_range_a=(30.0, 7.0))
    angles, truth, _, _, fits, order = _synthetic_series()
    astig = fit_from_components(0.0, 140.0, 242.5)
    offsets = (astig.defocus_u_a, astig.defocus_v_a, astig.astigmatism_angle_deg)
    spectra = [
        _synthetic_spectrum(256, 2.76, float(truth[i]), offsets, 12.0 if float(a) in rings_at else 0.0, seed=300 + i)
        for i, a in enumerate(angles)
    ]
    refined = refine_series(fits, lambda i, ref: spectra[i], params, tilt_angles_deg=angles, acquisition_order=order)
    verdict = ctf_series_verdict(refined.trend.strength, angles)
    assert verdict.status == ("failed" if not rings_at else "check"), (verdict, refined.trend.strength)
    assert "Thon rings" in verdict.reasons[0]


def test_ctf_verdict_rules():
    from tiltflow.core.ctf_verdict import ctf_series_verdict

    angles = [-40.0, -20.0, 0.0, 20.0, 40.0]
    assert ctf_series_verdict([9.0, 12.0, 15.0, 7.0, 2.0], angles).status == "good"
    assert (
        ctf_series_verdict([1.0, 3.9, 2.0, 0.5, 3.0], angles)
        .line()
        .startswith("failed: no tilt shows Thon rings above the noise (strongest z 3.9 at -20°")
    )
    assert ctf_series_verdict([1.0, 3.9, 8.0, 0.5, 3.0], angles).status == "check"
    assert ctf_series_verdict([math.nan] * 5, angles).status == "check"
    wide = [-60.0, -50.0, -40.0, -30.0, -20.0, 0.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    rings_low = [1.0, 2.0, 1.5, 3.0, 8.0, 15.0, 9.0, 4.0, 2.0, 1.0, 0.5]
    assert (
        ctf_series_verdict(rings_low, wide)
        .line()
        .startswith(
            "check: no tilt beyond ±20° shows Thon rings: the defocus of the 8 tilts up to ±60° is extrapolated"
        )
    )
    assert ctf_series_verdict([1.0, 2.0, 1.5, 7.0, 8.0, 15.0, 9.0, 4.0, 2.0, 1.0, 0.5], wide).status == "good"
    with pytest.raises(ValueError, match="5 strengths for 4 tilt angles"):
        ctf_series_verdict([1.0] * 5, angles[:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_series_pass_same_on_cuda():
    from tiltflow.core.ctf_series import refine_series

    params = CtfParams(pixel_size_a=2.76, window_px=256, resolution_range_a=(30.0, 7.0))
    results = []
    for device in ("cpu", "cuda"):
        angles, _, _, spectra, fits, order = _synthetic_series(device)
        results.append(
            refine_series(fits, lambda i, ref, s=spectra: s[i], params, tilt_angles_deg=angles, acquisition_order=order)
        )
    cpu, gpu = results
    assert gpu.fits[0].astigmatism_a == pytest.approx(cpu.fits[0].astigmatism_a, abs=10.0)
    for a, b in zip(cpu.fits, gpu.fits, strict=False):
        assert b.defocus_mean_a == pytest.approx(a.defocus_mean_a, abs=20.0)
