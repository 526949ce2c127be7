"""A noisy simulated tilt series with its ground truth, for alignment tests and benchmarks: the
demo simulator's noise-free tilts (``render_truth_tilt``) given Poisson noise at a whole tilt's
dose, in tilt-angle order."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltflow.testing.acquisition import plan_series
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import render_truth_tilt, series_rng

__all__ = ["NoisyTiltSeries", "noisy_tilt_series"]


@dataclass(frozen=True)
class NoisyTiltSeries:
    views: torch.Tensor  # (t, h, w) float32 counts, tilt order
    proj: torch.Tensor  # (n, t, 2) TRUE raw bead positions (x, y) px, NaN where out of the image
    truth: dict  # the simulator's plan (``plan_series``): axis, offset, tilts, ...
    mdoc: torch.Tensor  # (t,) tilt angles as the mdoc states them, degrees
    true: torch.Tensor  # (t,) true tilt angles, degrees


def noisy_tilt_series(config: DemoConfig, index: int = 0) -> NoisyTiltSeries:
    """Series ``index`` of ``config``, with noise drawn from ``config.seed``."""
    truth = plan_series(config, index, series_rng(config, index))
    order = truth["tilt_order_by_angle"]
    tilts = [truth["tilts"][i] for i in order]
    gen = torch.Generator().manual_seed(config.seed)
    clean = torch.stack([render_truth_tilt(truth, i) for i in order]).double() * config.n_frames
    views = torch.poisson(clean.clamp_min(0), generator=gen).float()
    proj = torch.tensor([t["bead_projections_px"] for t in tilts], dtype=torch.float64).reshape(len(tilts), -1, 2)
    if proj.shape[1]:
        proj[~torch.tensor([t["bead_in_image"] for t in tilts])] = torch.nan
    return NoisyTiltSeries(
        views=views,
        proj=proj.permute(1, 0, 2),
        truth=truth,
        mdoc=torch.tensor([t["mdoc_tilt_angle_deg"] for t in tilts], dtype=torch.float64),
        true=torch.tensor([t["true_tilt_angle_deg"] for t in tilts], dtype=torch.float64),
    )
