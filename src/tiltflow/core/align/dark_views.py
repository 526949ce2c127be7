"""Dark (blanked, obstructed or grid-bar) views of a tilt series, found by their mean intensity.

Like AreTomo's ``-DarkTol``: a view through a slab of ice gets dimmer as the path length grows,
which the cosine law ``I(theta) ~ I_ref * cos(theta)`` bounds from below for ordinary specimens
(the inelastic loss ``exp(-t / (cos(theta) * mfp))`` falls more slowly for ice thinner than the
mean free path).  A view whose mean is below ``tolerance`` times that expectation is dark.
"""

from __future__ import annotations

import torch

__all__ = ["dark_view_ratios", "detect_dark_views"]


def dark_view_ratios(
    views: torch.Tensor,  # (t, h, w) raw counts (positive mean), any order
    tilt_angles_deg,  # (t,) degrees
) -> torch.Tensor:  # (t,) float64 mean / (I_ref * cos(theta))
    """Each view's mean intensity relative to the cosine-law expectation (1 = as expected).

    ``I_ref`` is the upper quartile of ``mean / cos(theta)`` over the half of the views nearest
    0°, so dark views, even a dark 0° view or half of that half, do not move it.
    """
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        raise ValueError(
            "views must be a (t, h, w) tensor of tilt images, got "
            f"{getattr(views, 'shape', type(views))}"
        )
    t = views.shape[0]
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).to(views.device)
    if angles.numel() != t:
        raise ValueError(
            f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one per view"
        )
    if not torch.isfinite(angles).all() or angles.abs().max() >= 90.0:
        raise ValueError("tilt_angles_deg must be finite degrees within (-90, 90)")
    means = views.to(torch.float64).mean(dim=(-2, -1))
    expected_shape = torch.cos(torch.deg2rad(angles))
    normalised = means / expected_shape
    near_zero = torch.argsort(angles.abs())[: max(1, (t + 1) // 2)]
    reference = normalised[near_zero].quantile(0.75)
    if not bool(reference > 0):
        raise ValueError(
            "detect_dark_views needs raw counts with a positive mean intensity; these views have a "
            "mean <= 0 (normalised or background-subtracted?) - pass the views before normalising"
        )
    return normalised / reference


def detect_dark_views(
    views: torch.Tensor,  # (t, h, w) raw counts
    tilt_angles_deg,  # (t,) degrees
    *,
    tolerance: float = 0.7,
) -> torch.Tensor:  # (t,) bool, True = dark
    """Views with a mean below ``tolerance`` x the cosine-law expectation (AreTomo ``DarkTol``)."""
    if not 0.0 < tolerance < 1.0:
        raise ValueError(
            f"tolerance must be in (0, 1) (a fraction of the expected mean), got {tolerance}"
        )
    return dark_view_ratios(views, tilt_angles_deg) < tolerance
