"""tiltflow.testing: the simulated cryo-ET session behind ``tiltflow demo-data`` and the tests'
ground truth (``DemoConfig``, ``write_demo_dataset``, ``simulate_series``, ``render_tilt_image``)."""

from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import (
    expected_frames,
    render_truth_tilt,
    simulate_series,
    write_demo_dataset,
)
from tiltflow.testing.imaging import render_tilt_image

__all__ = [
    "DemoConfig",
    "expected_frames",
    "render_tilt_image",
    "render_truth_tilt",
    "simulate_series",
    "write_demo_dataset",
]
