"""Dark views in projection matching: placed on the others' reprojection, or said to be guessed.

The darkest views of a series (a grid bar) are the highest tilts; they are left out of the
matching, and their shifts used to be their neighbours' (a one-sided guess, off by their own stage
error: 2.7-9.8 px on the accuracy matrix's S04, S07, S08, whose patch residuals were 1.0-1.8 px
with a 'good' verdict). The series: 25 tilts (5° steps, ±60°) of 256 px at 8 Å/px, 50 nm of ice,
~10 counts/px per tilt; the two ±60° views at 5 % of that dose.
"""

import math

import pytest
import torch

from tiltflow.core.align import alignment_residual_against_truth
from tiltflow.core.align.checked import checked_projection_matching
from tiltflow.core.align.projection_matching import projection_matching_align
from tiltflow.core.align.projection_matching_ops import cross_correlation, peak_significance
from tiltflow.core.align.residuals import fit_bead_positions_3d, transform_points_xf
from tiltflow.core.align.verdict import patch_verdict
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.tilt_series import noisy_tilt_series

DARK = (0, 24)  # the ±60° views
ALIGN_Z_PX = 70


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def series() -> dict:
    """25 views to ±60°, the two highest-|tilt| darkened to 5% of the dose by a grid bar."""
    cfg = DemoConfig(
        n_series=1,
        n_tilts=25,
        tilt_step_deg=5.0,
        size=(256, 256),
        pixel_size_a=8.0,
        ice_thickness_nm=50.0,
        n_beads=20,
        n_vesicles=4,
        n_dark_views=len(DARK),
        seed=5,
    )
    s = noisy_tilt_series(cfg)
    return {"views": s.views, "proj": s.proj, "angles": s.mdoc, "axis": s.truth["mdoc_tilt_axis_deg"]}


def _view_residuals(xf: torch.Tensor, angles: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """RMS honest residual (px) of each view: the true beads under ``xf``, their 3-D positions fitted."""
    aligned = transform_points_xf(xf, proj, (256, 256))
    _, res = fit_bead_positions_3d(aligned, angles)
    return res.square().sum(-1).nanmean(0).sqrt()


def test_dark_views_are_placed_on_the_reprojection_of_the_others(series):
    out = projection_matching_align(
        series["views"], series["angles"], tilt_axis_deg=series["axis"], align_z_px=ALIGN_Z_PX, binning=1
    )
    assert out.dark_views.nonzero().reshape(-1).tolist() == list(DARK)
    per_view = _view_residuals(out.xf, out.tilt_angles_deg, series["proj"])
    # each dark view's own stage error (5 px steps) is measured, not guessed from its neighbour
    sig = out.dark_view_significance
    print(f"dark views: residual {per_view[list(DARK)].tolist()} px, significance {sig[list(DARK)].tolist()}")
    assert bool((sig[list(DARK)] >= 5.0).all())
    assert float(per_view[list(DARK)].max()) <= 1.0
    assert bool(sig[~out.dark_views].isnan().all())
    res = alignment_residual_against_truth(out.xf, out.tilt_angles_deg, series["proj"], (256, 256))
    assert res <= 0.8


def test_a_dark_view_without_signal_keeps_its_guess_and_the_verdict_says_so(series):
    views = series["views"].clone()
    views[DARK[1]] = torch.poisson(torch.full_like(views[DARK[1]], 0.5), generator=torch.Generator().manual_seed(1))
    checked = checked_projection_matching(
        views, series["angles"], tilt_axis_deg=series["axis"], align_z_px=ALIGN_Z_PX, binning=1
    )
    assert checked.result is not None
    sig = checked.result.dark_view_significance
    assert sig is not None and float(sig[DARK[1]]) < 5.0 <= float(sig[DARK[0]])
    # the blank view keeps its neighbour's shift (the guess), and the verdict names it
    torch.testing.assert_close(checked.result.shifts_px[DARK[1]], checked.result.shifts_px[DARK[1] - 1])
    assert checked.verdict.status == "check"
    assert any("1 dark views not placed" in r for r in checked.verdict.reasons)


def test_peak_significance_of_noise_and_of_a_shifted_copy():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 96, 96, generator=gen)
    views = torch.stack([torch.roll(ref[0], (3, -2), (0, 1)), torch.randn(96, 96, generator=gen)])
    cc = cross_correlation(views, ref, torch.ones(2, 96, 96))
    sig = peak_significance(cc, torch.tensor([[-2.0, 3.0], [0.0, 0.0]]), 12.0)
    assert float(sig[0]) > 20.0
    assert float(sig[1]) < 3.0  # zero shift of unrelated noise: no peak there
    assert math.isnan(float(peak_significance(cc, torch.zeros(2, 2), 1.0)[0]))  # too few background pixels


def test_patch_verdict_names_unplaced_dark_views():
    err = torch.full((9,), 0.6, dtype=torch.float64)
    err[0] = math.nan
    assert patch_verdict(per_view_error=err, n_dark=1, fixed={}).status == "good"
    v = patch_verdict(per_view_error=err, n_dark=1, fixed={}, n_dark_unplaced=1)
    assert v.status == "check" and "guessed from their neighbours" in v.reasons[0]
