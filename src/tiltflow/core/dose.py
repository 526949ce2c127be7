"""Dose weighting of tilt-series views: Grant & Grigorieff's exposure filter, one view at a time.

A view recorded after an accumulated exposure ``N`` (e/Å²) has lost signal amplitude
``exp(-N / (2 Ne(k)))`` at spatial frequency ``k``, ``Ne`` being the critical exposure
(Grant & Grigorieff, eLife 4:e06980 (2015), doi:10.7554/eLife.06980; ``core.motion_sum``).
Filtering each view by that same factor weights its frequencies by their expected signal before
back-projection (matched filter), so late, damaged views add less noise at high resolution;
the mean (k = 0) is kept.  The exposure of a view whose frames were summed is taken at the middle
of its own exposure, ``prior + dose / 2`` (``view_exposure_e_a2(..., at="mid")``, what ``reconstruct
--dose-weight`` uses), or at its end, ``prior + dose`` = the accumulated dose (``at="end"``, what IMOD's
mtffilter and unblur use).
"""

from __future__ import annotations

import torch

from tiltflow.core.fourier import frequency_grid_2d
from tiltflow.core.motion_sum import critical_exposure_e_a2


def view_exposure_e_a2(dose_prior_e_a2, dose_e_a2, *, at: str = "mid") -> torch.Tensor:
    """Exposure ``(t,)`` e/Å² of views with these prior and own doses.

    Mid-exposure ``prior + dose / 2`` (``at="mid"``) or the accumulated dose ``prior + dose``
    (``at="end"``).
    """
    if at not in ("mid", "end"):
        raise ValueError(f"dose weighting: at must be 'mid' or 'end', got {at!r}")
    prior = torch.as_tensor(dose_prior_e_a2, dtype=torch.float64).reshape(-1)
    own = torch.as_tensor(dose_e_a2, dtype=torch.float64).reshape(-1)
    if prior.shape != own.shape or bool((prior < 0).any() | (own < 0).any()):
        raise ValueError("dose weighting: need one non-negative prior dose and dose per view (e/Å²)")
    return prior + (0.5 if at == "mid" else 1.0) * own


def exposure_filter_2d(
    shape: tuple[int, int],  # (h, w) of the views
    exposure_e_a2,  # (t,) e/Å² per view
    *,
    pixel_size_a: float,
    voltage_kv: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (t, h, w // 2 + 1) float32, rfft2 layout
    """``exp(-N_i / (2 Ne(k)))`` per view (module docstring); 1 at k = 0."""
    if not pixel_size_a > 0:
        raise ValueError(f"dose weighting: pixel_size_a must be > 0 Å/px, got {pixel_size_a}")
    exposure = torch.as_tensor(exposure_e_a2, dtype=torch.float64, device=device).reshape(-1, 1, 1)
    if bool((exposure < 0).any()) or not bool(torch.isfinite(exposure).all()):
        raise ValueError("dose weighting: exposures must be finite and non-negative (e/Å²)")
    ky, kx = frequency_grid_2d(shape, device=device)
    k_a = torch.sqrt(kx.double() ** 2 + ky.double() ** 2) / pixel_size_a  # cycles/px / (Å/px) = 1/Å
    ne = critical_exposure_e_a2(k_a, voltage_kv)
    return torch.exp(-exposure / (2.0 * ne)).to(torch.float32)


def dose_weight_views(
    views: torch.Tensor,  # (t, h, w)
    exposure_e_a2,  # (t,) e/Å² per view
    *,
    pixel_size_a: float,  # of these views (binned)
    voltage_kv: float,
) -> torch.Tensor:  # (t, h, w) filtered views
    """Filter each view by its exposure filter (module docstring); mean and positions unchanged.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` views; never modified.
    exposure_e_a2 : sequence of float or torch.Tensor
        ``(t,)`` exposure of each view, e/Å² (:func:`view_exposure_e_a2`).
    pixel_size_a : float
        Pixel size of these (binned) views, Å/px.
    voltage_kv : float
        Acceleration voltage, kV (200-300, the range of the critical-exposure fit).

    Returns
    -------
    torch.Tensor
        ``(t, h, w)`` filtered views, dtype of ``views``.

    Raises
    ------
    ValueError
        If the views are not ``(t, h, w)``, there is not one finite, non-negative exposure per
        view, or the pixel size or voltage is out of range.

    Examples
    --------
    >>> import torch
    >>> weighted = dose_weight_views(torch.ones(2, 16, 16), [10.0, 40.0], pixel_size_a=2.0, voltage_kv=300.0)
    >>> weighted.shape, round(float(weighted.mean()), 4)
    (torch.Size([2, 16, 16]), 1.0)
    """
    if views.ndim != 3:
        raise ValueError(f"dose weighting: views must be (t, h, w), got {tuple(views.shape)}")
    t, h, w = views.shape
    exposure = torch.as_tensor(exposure_e_a2, dtype=torch.float64).reshape(-1)
    if exposure.numel() != t:
        raise ValueError(f"dose weighting: {exposure.numel()} exposures for {t} views; give one per view")
    out = torch.empty_like(views)
    for i in range(t):  # one view at a time: bounded memory
        filt = exposure_filter_2d(
            (h, w), exposure[i : i + 1], pixel_size_a=pixel_size_a, voltage_kv=voltage_kv, device=views.device
        )[0]
        out[i] = torch.fft.irfft2(torch.fft.rfft2(views[i]) * filt, s=(h, w)).to(views.dtype)
    return out
