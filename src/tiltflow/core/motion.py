"""Motion correction of tilt movies (Warp's motion step): the public API in one place.

- :func:`prepare_frames` (``core.frames``): raw frames to gain-corrected float32, gain orientation.
- :func:`estimate_global_shifts` (``core.motion_global``): one sub-pixel shift per frame.
- :func:`estimate_local_motion` (``core.motion_local``): a smooth residual field on a control grid.
- :func:`align_and_sum` (``core.motion_sum``): total, even/odd sums, dose weighting, binning.

Shift convention (DESIGN.md §2): per frame, in unbinned pixels, the displacement of the specimen in
that frame relative to the aligned sum (a feature at p in the sum lies at p + shift in the frame),
mean zero over frames.
"""

from tiltflow.core.frames import (
    GainOrientation,
    gain_orientations_matching,
    orient_gain,
    prepare_frames,
)
from tiltflow.core.motion_global import estimate_global_shifts, total_motion_px
from tiltflow.core.motion_local import LocalMotion, automatic_grid, estimate_local_motion
from tiltflow.core.motion_sum import DoseWeighting, MotionSum, align_and_sum, warp_frame_2d

__all__ = [
    "DoseWeighting",
    "GainOrientation",
    "LocalMotion",
    "MotionSum",
    "align_and_sum",
    "automatic_grid",
    "estimate_global_shifts",
    "estimate_local_motion",
    "gain_orientations_matching",
    "orient_gain",
    "prepare_frames",
    "total_motion_px",
    "warp_frame_2d",
]
