"""Known-answer tests for X-ray removal in movie frames (tiltflow.core.xray_frames), before the
frames are shifted and summed, and for the motion-corrected sums it gives.

The simulated movies (textured ice, gold beads with CTF fringes, sub-pixel beam-induced motion,
striped gain, Poisson counts, X-ray singles / pairs / streaks anywhere, and their hit-free twins)
come from :mod:`tiltflow.testing.xray_movies`.
"""

from __future__ import annotations

import pytest
import torch

from tiltflow.core.fourier import shift_image_2d
from tiltflow.core.xray_frames import remove_frame_xrays
from tiltflow.testing.xray_movies import XrayHits, hit_mask, hit_residuals_sd, motion_sum, simulate_movie

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dose", [0.3, 3.0])
def test_frame_removal_leaves_no_lobe_in_the_sum(dose):
    sim = simulate_movie(1 if dose < 1 else 2, dose=dose, n_frames=8, hits=XrayHits(per_frame=(3, 5)))
    res = remove_frame_xrays(sim["frames"])
    reference = motion_sum(sim["clean"], sim)
    z_raw = hit_residuals_sd(motion_sum(sim["frames"], sim), reference, sim)
    z = hit_residuals_sd(motion_sum(res.frames, sim), reference, sim)
    assert len(sim["hits"]) >= 24
    assert (z_raw >= 5.0).float().mean() > 0.9  # without removal the hits (and lobes) stay
    assert float(z.max()) < 5.0  # with it: no lobe >= 5 SD of the sum's noise
    # every injected pixel replaced, by a value close to the expectation
    truth = hit_mask(sim)
    got = torch.zeros_like(truth)
    got[res.frame, res.y, res.x] = True
    assert bool(got[truth].all())
    lam_f = shift_image_2d(sim["lam"].expand_as(sim["frames"]), sim["shifts"])
    expected = lam_f[res.frame, res.y, res.x]
    err = (res.replacement - expected) / expected.clamp_min(0.3).sqrt()
    assert float(err.abs().median()) < 0.5
    # other pixels: rarely touched (Poisson tails at 7 SD, gradients of the beads' edges)
    false = int((got & ~truth).sum())
    assert false <= 2, false


def test_hit_free_poisson_frames_are_left_untouched():
    """False-positive rate: 0 of 2.1 million frame pixels at 0.3, 1 and 3 e/px/frame."""
    total = 0
    for seed, dose in ((5, 0.3), (6, 1.0), (7, 3.0)):
        sim = simulate_movie(seed, shape=(256, 336), dose=dose, n_frames=8, n_beads=2)
        res = remove_frame_xrays(sim["clean"])
        total += res.n_replaced_px
        assert torch.equal(res.frames, sim["clean"]) == (res.n_replaced_px == 0)
    assert total == 0


def test_scaled_counts_and_inplace():
    """Counts scaled by 8 (another gain normalisation): same pixels; the noise scale follows."""
    sim = simulate_movie(3, dose=1.0, hits=XrayHits(per_frame=(2, 3)))
    a = remove_frame_xrays(sim["frames"])
    frames = sim["frames"] * 8.0
    b = remove_frame_xrays(frames, inplace=True)
    assert b.frames is frames
    assert 0.85 < a.noise_scale < 1.25 and 0.85 * 8 < b.noise_scale < 1.25 * 8
    assert torch.equal(a.frame, b.frame) and torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    torch.testing.assert_close(b.frames, a.frames * 8.0)
    assert not torch.equal(frames, sim["frames"] * 8.0)  # written in place


def test_bad_input():
    with pytest.raises(ValueError, match="floating-point"):
        remove_frame_xrays(torch.zeros(4, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="grow_sd"):
        remove_frame_xrays(torch.zeros(4, 32, 32), threshold_sd=2.0, grow_sd=3.0)
    with pytest.raises(ValueError, match="box_px"):
        remove_frame_xrays(torch.zeros(4, 32, 32), box_px=4)


def test_motion_ctf_parameter_is_on_by_default():
    from tiltflow.workflow.steps.motion_ctf import MotionCtfParams

    field = MotionCtfParams.model_fields["frame_xray_sd"]
    assert MotionCtfParams().frame_xray_sd == 7.0
    assert field.json_schema_extra == {"cli": "--frame-xray-sd"}
    assert MotionCtfParams(frame_xray_sd=0).frame_xray_sd == 0  # 0: off
    with pytest.raises(ValueError):
        MotionCtfParams(frame_xray_sd=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    sim = simulate_movie(9, dose=1.0)
    cpu = remove_frame_xrays(sim["frames"])
    gpu = remove_frame_xrays(sim["frames"].cuda())
    assert gpu.frames.is_cuda
    assert torch.equal(gpu.frame.cpu(), cpu.frame) and torch.equal(gpu.y.cpu(), cpu.y)
    torch.testing.assert_close(gpu.frames.cpu(), cpu.frames, atol=1e-3, rtol=1e-5)
