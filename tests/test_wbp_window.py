"""tomo3d's Hamming window for WBP (core.wbp_window, reconstruct --hamming): the window's values, ramp x
window equal to the windowed views back-projected with a plain ramp, and the option's checks."""

import math

import pytest
import torch

from tiltflow.core.radial_filter import filter_views, padded_length, radial_filter
from tiltflow.core.reconstruct import wbp
from tiltflow.core.wbp_window import hamming_filter_views, hamming_window
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.steps.checks import validate_cli
from tiltflow.workflow.steps.reconstruct import ReconstructParams


def test_window_values():
    w = hamming_window(200, 0.0).double()
    k = torch.arange(101, dtype=torch.float64) / 200
    torch.testing.assert_close(w, 0.54 + 0.46 * torch.cos(math.pi * k / 0.5), atol=1e-6, rtol=0)
    assert w[0] == 1 and abs(float(w[-1]) - 0.08) < 1e-6
    w = hamming_window(200, 0.25)
    assert bool((w[:51] == 1).all()) and bool((w[51:] < 1).all()) and abs(float(w[-1]) - 0.08) < 1e-6
    assert bool((hamming_window(200, 0.5) == 1).all())
    with pytest.raises(ValueError, match="start must be in"):
        hamming_window(200, 0.6)


def test_windowed_views_with_a_plain_ramp_are_tomo3d_wbp():
    g = torch.Generator().manual_seed(0)
    views = torch.randn(5, 8, 40, generator=g, dtype=torch.float64)
    angles = torch.tensor([-40.0, -20.0, 0.0, 20.0, 40.0])
    n_pad = padded_length(40)
    ramp = radial_filter(n_pad, cutoff=0.5).double()
    got = filter_views(hamming_filter_views(views, 0.1), ramp, n_pad=n_pad)  # window, then the ramp
    want = filter_views(views, ramp * hamming_window(n_pad, 0.1).double(), n_pad=n_pad)  # one filter
    inner = (got - want)[..., 8:32].abs().max()  # the edges differ: each filter pads its own input
    assert float(inner) < 0.02 * float(want.abs().max())
    plain = wbp(views, angles, thickness_px=12, radial_cutoff=0.5)
    torch.testing.assert_close(wbp(hamming_filter_views(views, 0.5), angles, thickness_px=12, radial_cutoff=0.5), plain)
    windowed = wbp(hamming_filter_views(views, 0.0), angles, thickness_px=12, radial_cutoff=0.5)

    def high(v):
        return torch.fft.rfft(v, dim=-1)[..., 10:].abs().pow(2).sum()

    assert float(high(windowed)) < 0.5 * float(high(plain))


def test_option_checks():
    with pytest.raises(InputError, match="--hamming 0.2: a filter of weighted back-projection"):
        validate_cli(ReconstructParams, {"method": "sirt", "hamming_start": 0.2})
    with pytest.raises(InputError, match="--hamming 0.7: must be at most 0.5"):
        validate_cli(ReconstructParams, {"hamming_start": 0.7})
    assert ReconstructParams(hamming_start=0.0).hamming_start == 0.0
