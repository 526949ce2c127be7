"""Automatic quality flags (core.quality): known answers on simulated tilt-series statistics."""

import math

import pytest
import torch

from tiltflow.core.quality import (
    flag_blank_views,
    flag_dark_views,
    flag_defocus_outliers,
    flag_intensity_drops,
    flag_large_motion,
    flag_poor_fit_resolution,
    robust_sigma,
)

TILTS = torch.arange(-60.0, 61.0, 3.0, dtype=torch.float64)  # 41 views, tilt-angle order


def beer_lambert_means(thickness_mfp: float = 1.5, dose: float = 1000.0) -> torch.Tensor:
    """Mean counts of each view: I0 exp(-t / (mfp cos tilt)) — the normal fall-off with tilt."""
    return dose * torch.exp(-thickness_mfp / torch.cos(torch.deg2rad(TILTS)))


def test_robust_sigma_of_gaussian_and_outliers():
    g = torch.Generator().manual_seed(0)
    x = 5.0 + 2.0 * torch.randn(4001, generator=g, dtype=torch.float64)
    x[:200] = 1e6  # 5 % wild outliers barely move it
    assert robust_sigma(x).item() == pytest.approx(2.0, rel=0.1)
    assert robust_sigma(torch.tensor([1.0])).item() == 0.0


def test_dark_view_flagged_and_normal_falloff_not():
    means = beer_lambert_means()
    assert not flag_dark_views(means).flagged.any()  # 60° views are ~0.3x the median: normal
    means[7] = 0.02 * means[20]
    flags = flag_dark_views(means)
    assert torch.nonzero(flags.flagged).flatten().tolist() == [7]
    assert flags.score[7].item() == pytest.approx(means[7].item() / means.median().item(), rel=1e-9)


def test_dark_needs_positive_scale():
    zero_mean = torch.linspace(-1, 1, 9, dtype=torch.float64)
    assert not flag_dark_views(zero_mean).flagged.any()


def test_blank_view_flagged():
    std = torch.full((41,), 30.0, dtype=torch.float64) + torch.linspace(0, 5, 41, dtype=torch.float64)
    std[40] = 0.5
    assert torch.nonzero(flag_blank_views(std).flagged).flatten().tolist() == [40]


@pytest.mark.parametrize("noise", [0.0, 0.03])
@pytest.mark.parametrize("bad", [[12], [12, 13], [0], [40]])
def test_intensity_drops_against_neighbours(bad, noise):
    g = torch.Generator().manual_seed(3)
    means = beer_lambert_means() * (1 + noise * torch.randn(41, generator=g, dtype=torch.float64))
    assert not flag_intensity_drops(TILTS, means).flagged.any()
    clean = means.clone()
    for i in bad:
        means[i] *= 0.4
    flags = flag_intensity_drops(TILTS, means)
    assert torch.nonzero(flags.flagged).flatten().tolist() == bad
    for i in bad:  # the neighbours' trend predicts the undamaged value (exactly without noise:
        # log I is linear in 1/cos(tilt))
        expected = 0.4 * clean[i] / beer_lambert_means()[i] if noise else 0.4
        assert flags.score[i].item() == pytest.approx(float(expected), rel=1e-6 if not noise else 0.1)


def test_large_motion():
    g = torch.Generator().manual_seed(1)
    motion = 3.0 + 0.3 * torch.randn(41, generator=g, dtype=torch.float64)
    assert not flag_large_motion(motion).flagged.any()
    motion[5] = 15.0
    flags = flag_large_motion(motion)
    assert torch.nonzero(flags.flagged).flatten().tolist() == [5]
    assert flags.score[5].item() > 20
    flat = torch.full((10,), 2.0, dtype=torch.float64)
    flat[3] = 3.0  # 1 px above a perfectly flat series: below min_excess_px, not flagged
    assert not flag_large_motion(flat).flagged.any()
    assert torch.nonzero(flag_large_motion(flat, max_px=2.5).flagged).flatten().tolist() == [3]


@pytest.mark.parametrize("outlier", [0, 17, 40])
def test_defocus_outlier_on_a_trend(outlier):
    g = torch.Generator().manual_seed(2)
    defocus = 30000.0 + 20.0 * TILTS + 150.0 * torch.randn(41, generator=g, dtype=torch.float64)
    assert not flag_defocus_outliers(TILTS, defocus).flagged.any()
    defocus[outlier] += 5000.0
    flags = flag_defocus_outliers(TILTS, defocus)
    assert torch.nonzero(flags.flagged).flatten().tolist() == [outlier]
    assert flags.score[outlier].item() == pytest.approx(5000.0, abs=600.0)
    # input order does not matter: shuffled in, same answer out (mapped back)
    perm = torch.randperm(41, generator=g)
    shuffled = flag_defocus_outliers(TILTS[perm], defocus[perm])
    assert torch.equal(shuffled.flagged, flags.flagged[perm])


def test_defocus_outlier_needs_min_deviation():
    defocus = torch.full((41,), 30000.0, dtype=torch.float64)
    defocus[10] += 500.0  # a perfect series: infinite z, but within min_deviation_a
    assert not flag_defocus_outliers(TILTS, defocus).flagged.any()
    assert flag_defocus_outliers(TILTS, defocus, min_deviation_a=100.0).flagged[10]


def test_poor_fit_resolution_ignores_missing():
    res = torch.full((41,), 8.0, dtype=torch.float64) + 0.2 * torch.sin(torch.arange(41.0, dtype=torch.float64))
    res[3] = math.nan
    res[30] = 25.0
    flags = flag_poor_fit_resolution(res)
    assert torch.nonzero(flags.flagged).flatten().tolist() == [30]
    assert math.isnan(flags.score[3].item())
    assert torch.nonzero(flag_poor_fit_resolution(res, worst_a=8.1).flagged).numel() > 1


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="one value per view"):
        flag_dark_views(torch.ones(3, 3))
    with pytest.raises(ValueError, match="one each per view"):
        flag_defocus_outliers([0.0, 3.0], [1.0, 2.0, 3.0])
