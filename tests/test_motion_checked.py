"""Motion the data support, or none (issue 11): a trajectory that jumps by tens of Å between
frames is refused; frames are then aligned in groups, or summed without shifts."""

import pytest
import torch

from tiltflow.core.motion_checked import _interpolate_groups, estimate_motion_checked, implausible_motion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_jumps_and_spans_beyond_what_a_specimen_does_are_named():
    smooth = torch.cumsum(torch.full((20, 2), 0.3), 0)
    assert implausible_motion(smooth, 1.38) is None
    jumpy = smooth.clone()
    jumpy[7] += torch.tensor([60.0, -40.0])
    assert "jump" in implausible_motion(jumpy, 1.38)
    assert "spans" in implausible_motion(torch.cumsum(torch.full((200, 2), 1.5), 0), 1.38)
    assert implausible_motion(torch.tensor([[0.0, 0.0], [float("nan"), 0.0]]), 1.0) == "non-finite shifts"


def test_group_shifts_are_interpolated_to_every_frame():
    true = torch.stack([torch.linspace(-3, 3, 12), torch.linspace(2, -2, 12)], -1)
    groups = torch.stack([true[i * 4 : (i + 1) * 4].mean(0) for i in range(3)])  # centres 1.5, 5.5, 9.5
    out = _interpolate_groups(groups, 4, 12)
    inner = slice(2, 10)  # between the first and last centres
    torch.testing.assert_close(out[inner], (true - true.mean(0))[inner], atol=1e-5, rtol=0)


def test_pure_noise_gives_no_shifts_and_a_note_never_tens_of_angstrom():
    gen = torch.Generator().manual_seed(0)
    frames = torch.poisson(torch.full((16, 192, 192), 0.5), generator=gen)
    checked = estimate_motion_checked(frames, pixel_size_a=1.38)
    assert checked.note is not None
    assert implausible_motion(checked.motion.global_shifts, 1.38) is None
    assert float(checked.motion.global_shifts.abs().max()) * 1.38 <= 400.0
