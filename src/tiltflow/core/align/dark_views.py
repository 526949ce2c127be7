"""Dark (blanked, obstructed or grid-bar) views of a tilt series, found by their mean intensity.

Like AreTomo's ``-DarkTol``: a view through a slab of ice gets dimmer as the path length grows,
which the cosine law ``I(theta) ~ I_ref * cos(theta)`` bounds from below for ordinary specimens
(the inelastic loss ``exp(-t / (cos(theta) * mfp))`` falls more slowly for ice thinner than the
mean free path).  A view whose mean is below ``tolerance`` times that expectation is dark.

Stacks made elsewhere are often not counts: normalised, background-subtracted, signed (FEI's
int16 with a negative mean) or float. Their mean says nothing about the dose, so for them the
criterion is relative: each view's standard deviation (shot noise and contrast both scale with
the dose) against ``sqrt(cos(theta))`` times the reference's (:func:`dark_view_ratios`). A stack
normalised view by view then shows no dark views, which is the honest answer: the dose was
divided out.
"""

from __future__ import annotations

import torch

__all__ = ["dark_view_ratios", "detect_dark_views", "looks_like_counts"]


def dark_view_ratios(
    views: torch.Tensor,  # (t, h, w) raw counts, or a stack that is not counts; any order
    tilt_angles_deg,  # (t,) degrees
) -> torch.Tensor:  # (t,) float64 brightness / cosine-law expectation
    """Measure each view's brightness relative to the cosine-law expectation.

    Each view's brightness relative to the cosine-law expectation (1 = as expected): the mean
    over ``I_ref cos(theta)`` for counts, the spread over ``S_ref sqrt(cos(theta))`` otherwise.

    ``I_ref`` is the upper quartile of ``mean / cos(theta)`` over the half of the views nearest
    0°, so dark views, even a dark 0° view or half of that half, do not move it.
    """
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        raise ValueError(f"views must be a (t, h, w) tensor of tilt images, got {getattr(views, 'shape', type(views))}")
    t = views.shape[0]
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).to(views.device)
    if angles.numel() != t:
        raise ValueError(f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one per view")
    if not torch.isfinite(angles).all() or angles.abs().max() >= 90.0:
        raise ValueError("tilt_angles_deg must be finite degrees within (-90, 90)")
    x = views.to(torch.float64)
    cos = torch.cos(torch.deg2rad(angles))
    if looks_like_counts(x):
        normalised = x.mean(dim=(-2, -1)) / cos
    else:  # relative: spread against the shot-noise expectation sqrt(I) ~ sqrt(cos)
        normalised = x.std(dim=(-2, -1)) / cos.sqrt()
    near_zero = torch.argsort(angles.abs())[: max(1, (t + 1) // 2)]
    reference = normalised[near_zero].quantile(0.75)
    if not bool(reference > 0):  # every view near 0° constant: nothing to compare
        return torch.ones(t, dtype=torch.float64, device=views.device)
    return normalised / reference


def looks_like_counts(views: torch.Tensor) -> bool:
    """Tell whether ``views`` look like raw counts.

    True when ``views`` (t, h, w) look like raw counts: a positive mean in every view and
    at most 1% negative pixels (read noise on a dark-subtracted camera), so the mean measures
    the dose.
    """
    means = views.mean(dim=(-2, -1))
    negative = float((views < 0).to(torch.float32).mean())
    return bool((means > 0).all()) and negative <= 0.01


def detect_dark_views(
    views: torch.Tensor,  # (t, h, w) raw counts or any stack (module docstring)
    tilt_angles_deg,  # (t,) degrees
    *,
    tolerance: float = 0.7,
) -> torch.Tensor:  # (t,) bool, True = dark
    """Find views darker than ``tolerance`` x the cosine-law expectation (AreTomo ``DarkTol``).

    Views below ``tolerance`` x the cosine-law expectation (AreTomo ``DarkTol``): of the mean
    for counts, of the spread for stacks that are not counts (module docstring).
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be in (0, 1) (a fraction of the expected mean), got {tolerance}")
    return dark_view_ratios(views, tilt_angles_deg) < tolerance
