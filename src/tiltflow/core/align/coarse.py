"""Coarse tilt-series alignment by cosine-stretched cross-correlation (like IMOD ``tiltxcorr``).

Geometry (``core/geometry.py``): raw view k shows the aligned image rotated by the tilt-axis angle
and displaced by ``s_k``: ``p = c + R(axis) u + s_k``. For a flat specimen (z = 0) aligned
coordinates of views j and k differ by a stretch perpendicular to the axis,
``u_j = diag(cos(theta_j) / cos(theta_k), 1) u_k``. Each view is resampled into its lower-tilt
neighbour's frame (view k about ``c + s_k0``, a guess, onto the neighbour's ``c + s_j``), so a
measured displacement ``d`` gives ``s_k = s_k0 + B d`` exactly,
``B = R diag(cos theta_k / cos theta_j, 1) R^T``; a second pass from that estimate removes the
peak-fit bias. Shifts chain outwards from the view nearest 0°, whose shift is 0 (the
alignment's free translation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from tiltflow.core.fourier import bandpass_2d
from tiltflow.core.geometry import image_centre, rotation_matrix_2d
from tiltflow.core.reconstruct import bin_views
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["CoarseOptions", "CoarseResult", "coarse_align", "warp_affine"]


@dataclass(frozen=True)
class CoarseResult:
    """Coarse alignment of a tilt series sorted by tilt angle."""

    shifts_px: torch.Tensor  # (t, 2) raw-image shifts s (x, y), px of the input views
    xf: torch.Tensor  # (t, 6) IMOD .xf rows = geometry_to_xf(tilt_axis_deg, shifts_px)
    peak_scores: torch.Tensor  # (t,) normalised cross-correlation at the peak (1 for reference)
    reference_index: int  # the view nearest 0°, shift (0, 0)
    tilt_axis_deg: float
    # (t,) the peak's height above the correlation map's median in robust SDs (1.4826 MAD) over
    # the searched disc away from the peak: below ~5 the peak may be noise (inf for the reference)
    peak_significance: torch.Tensor


@dataclass(frozen=True)
class CoarseOptions:
    """Filter and search settings of :func:`coarse_align` (defaults in its docstring)."""

    lowpass_px: float | None = None  # period (px of the input) below which to filter out
    highpass_px: float | None = None  # period (px of the input) above which to filter out
    n_cumulative: int = 10  # aligned views summed into a cumulative reference
    max_shift_px: float | None = None  # largest displacement between neighbours, input px
    taper_fraction: float = 0.1  # edge taper, of the binned image's smaller side


def warp_affine(
    image: torch.Tensor,  # (h, w) or (n, h, w)
    matrix: torch.Tensor,  # (2, 2) B, or (n, 2, 2)
    src_centre: torch.Tensor,  # (2,) x, y px, or (n, 2)
    dst_centre: torch.Tensor,  # (2,) x, y px, or (n, 2)
    *,
    mode: str = "bicubic",
) -> torch.Tensor:  # (h, w) or (n, h, w)
    """Resample ``out(p) = image(src_centre + B (p - dst_centre))``; outside = the mean.

    Batched over a leading dimension (one ``grid_sample`` call); the sampling grid is built in
    normalised coordinates (``align_corners=True``: pixel ``p`` is ``2 p / (n - 1) - 1``).
    """
    single = image.ndim == 2
    img = image[None] if single else image
    n, h, w = img.shape
    dev = img.device
    b = matrix.to(dev, torch.float64).reshape(-1, 2, 2).expand(n, 2, 2)
    src = src_centre.to(dev, torch.float64).reshape(-1, 2).expand(n, 2)
    dst = dst_centre.to(dev, torch.float64).reshape(-1, 2).expand(n, 2)
    half = torch.tensor([max(w - 1, 1) / 2.0, max(h - 1, 1) / 2.0], dtype=torch.float64, device=dev)
    lin = b * half[None, None, :] / half[None, :, None]  # D^-1 B D
    off = (src + torch.einsum("nij,nj->ni", b, half - dst) - half) / half
    lin, off = lin.to(img.dtype)[:, :, :, None, None], off.to(img.dtype)[:, :, None, None]
    xn = torch.linspace(-1.0, 1.0, w, dtype=img.dtype, device=dev)[None, :]
    yn = torch.linspace(-1.0, 1.0, h, dtype=img.dtype, device=dev)[:, None]
    grid = torch.stack(
        [lin[:, 0, 0] * xn + (lin[:, 0, 1] * yn + off[:, 0]), lin[:, 1, 0] * xn + (lin[:, 1, 1] * yn + off[:, 1])], -1
    )
    mean = img.mean(dim=(-2, -1), keepdim=True)
    out = F.grid_sample((img - mean)[:, None], grid, mode=mode, padding_mode="zeros", align_corners=True)[:, 0] + mean
    return out[0] if single else out


def _edge_taper(shape: tuple[int, int], width_px: int, device) -> torch.Tensor:
    """Cosine ramp from 0 at the border to 1 at ``width_px`` inside, ``(h, w)``."""

    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32, device=device)
        d = torch.minimum(i, n - 1 - i) / max(width_px, 1)
        return 0.5 - 0.5 * torch.cos(torch.pi * d.clamp(0, 1))

    return ramp(shape[0])[:, None] * ramp(shape[1])[None, :]


def _parabola_offset(m1: torch.Tensor, c0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    den = m1 - 2 * c0 + p1
    safe = torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
    off = torch.where(den.abs() > 1e-12, 0.5 * (m1 - p1) / safe, torch.zeros_like(den))
    return off.clamp(-0.5, 0.5)


def _xcorr_peak(
    moving: torch.Tensor, reference: torch.Tensor, band: torch.Tensor, taper: torch.Tensor, max_shift_px: float
) -> tuple[torch.Tensor, float, float]:
    """Find the displacement between two images from their cross-correlation peak.

    Displacement d (x, y) with ``moving(p + d) ~ reference(p)``, the normalised peak and its
    significance (``CoarseResult.peak_significance``).
    """
    h, w = moving.shape
    fm = torch.fft.rfft2((moving - moving.mean()) * taper) * band
    fr = torch.fft.rfft2((reference - reference.mean()) * taper) * band
    cc = torch.fft.irfft2(fm * fr.conj(), s=(h, w))
    norm = torch.sqrt((torch.fft.irfft2(fm, s=(h, w)) ** 2).sum() * (torch.fft.irfft2(fr, s=(h, w)) ** 2).sum())
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=cc.device)
    kx = torch.fft.fftfreq(w, d=1.0 / w, device=cc.device)
    allowed = (ky[:, None] ** 2 + kx[None, :] ** 2) <= max_shift_px**2
    masked = torch.where(allowed, cc, torch.full_like(cc, -torch.inf))
    idx = int(torch.argmax(masked))
    iy, ix = divmod(idx, w)
    c0 = cc[iy, ix]
    dx = _parabola_offset(cc[iy, (ix - 1) % w], c0, cc[iy, (ix + 1) % w])
    dy = _parabola_offset(cc[(iy - 1) % h, ix], c0, cc[(iy + 1) % h, ix])
    d = torch.stack([kx[ix] + dx, ky[iy] + dy]).to(torch.float64).cpu()
    return d, float(c0 / norm.clamp_min(1e-30)), _significance(cc, allowed, ky[iy], kx[ix])


def _significance(cc: torch.Tensor, allowed: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> float:
    """Measure a correlation peak's height above the map's background in robust SDs.

    (peak - median) / (1.4826 MAD) of ``cc`` over ``allowed`` beyond 3 px of the peak
    (wrapped coordinates ``ky``/``kx`` as in :func:`_xcorr_peak`).
    """
    h, w = cc.shape
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=cc.device)
    kx = torch.fft.fftfreq(w, d=1.0 / w, device=cc.device)
    dy = torch.remainder(ky[:, None] - py + h / 2, h) - h / 2
    dx = torch.remainder(kx[None, :] - px + w / 2, w) - w / 2
    background = cc[allowed & ((dy**2 + dx**2) > 9.0)]
    if background.numel() < 16:
        return float("nan")
    med = background.median()
    mad = (background - med).abs().median().clamp_min(1e-30)
    return float((cc[int(py) % h, int(px) % w] - med) / (1.4826 * mad))


def _check_inputs(views: torch.Tensor, tilt_angles_deg) -> torch.Tensor:
    if views.ndim != 3:
        raise ValueError(f"views must have shape (t, h, w), got {tuple(views.shape)}")
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).cpu()
    if angles.numel() != views.shape[0]:
        raise ValueError(f"{angles.numel()} tilt angles for {views.shape[0]} views; pass one per view")
    if not bool(torch.isfinite(angles).all()) or bool((angles.abs() >= 85).any()):
        raise ValueError("tilt_angles_deg must be finite and within (-85, 85) degrees")
    if angles.numel() > 1 and not bool((angles[1:] > angles[:-1]).all()):
        raise ValueError("views must be sorted by increasing tilt angle (restack them in tilt order)")
    return angles


def coarse_align(
    views: torch.Tensor,  # (t, h, w) raw views sorted by tilt angle
    tilt_angles_deg: torch.Tensor,  # (t,)
    *,
    tilt_axis_deg: float,
    binning: int = 1,
    reference: Literal["neighbour", "cumulative"] = "cumulative",
    options: CoarseOptions | None = None,
) -> CoarseResult:
    """Align a tilt series coarsely by cosine-stretched cross-correlation (IMOD ``tiltxcorr``).

    Each view is correlated with its lower-tilt neighbour (module docstring), chained outwards from
    the view nearest 0°; views are visited alternately on both sides. ``reference="cumulative"``
    correlates with the mean of the ``options.n_cumulative`` aligned views nearest in angle (both
    sides), each resampled into the neighbour's frame (IMOD's cumulative correlation); sharing views
    across 0° keeps both sides on the same depth when strong features (gold) sit at several depths,
    where ``"neighbour"`` may follow the top surface on one side and the bottom on the other.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` raw views sorted by increasing tilt angle.
    tilt_angles_deg : torch.Tensor
        ``(t,)`` tilt angles in degrees, within (-85, 85).
    tilt_axis_deg : float
        Tilt-axis angle in degrees from the image +y axis, counter-clockwise.
    binning : int
        Work on views binned by this factor; shifts are returned in pixels of ``views``.
    reference : {"neighbour", "cumulative"}
        What each view is correlated with.
    options : CoarseOptions, optional
        Filter and search settings. Defaults: ``lowpass_px = 4 * binning`` (0.25 cycles/binned px),
        ``highpass_px`` and ``max_shift_px`` a quarter of the binned image's smaller side.

    Returns
    -------
    CoarseResult
        ``shifts_px`` ``(t, 2)`` raw-image shifts (x, y) in pixels of ``views`` (0 for the view
        nearest 0°), their IMOD ``.xf`` rows ``(t, 6)``, peak scores and significances.

    Raises
    ------
    ValueError
        For views that are not ``(t, h, w)``, one angle per view, sorted and within (-85, 85)°.

    Examples
    --------
    >>> import torch
    >>> yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    >>> views = torch.stack([torch.exp(-((xx - 30 - dx) ** 2 + (yy - 34) ** 2) / 40) for dx in (1.0, 0.0, -2.0)])
    >>> coarse_align(views, torch.tensor([-3.0, 0.0, 3.0]), tilt_axis_deg=0.0).shifts_px[:, 0].round()
    tensor([ 1.,  0., -2.], dtype=torch.float64)
    """
    o = CoarseOptions() if options is None else options
    lowpass_px, highpass_px, max_shift_px = o.lowpass_px, o.highpass_px, o.max_shift_px
    angles = _check_inputs(views, tilt_angles_deg)
    if reference not in ("neighbour", "cumulative"):
        raise ValueError(f"reference must be 'neighbour' or 'cumulative', got {reference!r}")
    if binning < 1 or int(binning) != binning:
        raise ValueError(f"binning must be a positive integer, got {binning}")
    b = int(binning)
    work = bin_views(views.float(), b) if b > 1 else views.float()
    t, h, w = work.shape
    dev = work.device
    band = bandpass_2d(
        (h, w),
        low_cut_px=(highpass_px / b) if highpass_px else min(h, w) / 4.0,
        high_cut_px=(lowpass_px / b) if lowpass_px else 4.0,
        falloff=0.03,
        device=dev,
    ).to(work.dtype)
    taper = _edge_taper((h, w), max(int(o.taper_fraction * min(h, w)), 1), dev)
    max_shift = (max_shift_px / b) if max_shift_px else min(h, w) / 4.0
    rot = rotation_matrix_2d(tilt_axis_deg)
    centre = torch.tensor(image_centre((h, w)), dtype=torch.float64)
    cos = torch.cos(torch.deg2rad(angles))
    ref = int(torch.argmin(angles.abs()))
    shifts = torch.zeros(t, 2, dtype=torch.float64)
    scores = torch.ones(t, dtype=torch.float64)
    significance = torch.full((t,), torch.inf, dtype=torch.float64)

    def stretch(ratio: float) -> torch.Tensor:  # R diag(ratio, 1) R^T
        return rot @ torch.diag(torch.tensor([ratio, 1.0], dtype=torch.float64)) @ rot.T

    done = [ref]
    for k in [v for i in range(1, t) for v in (ref + i, ref - i) if 0 <= v < t]:
        j = k - 1 if k > ref else k + 1  # the aligned neighbour towards 0°
        target = centre + shifts[j]
        if reference == "neighbour":
            ref_img = work[j]
        else:  # the aligned views nearest in angle, from both sides, in j's frame
            members = sorted(done, key=lambda i: abs(float(angles[i] - angles[k])))[: o.n_cumulative]
            others = [i for i in members if i != j]
            ref_img = work[j].clone() if j in members else torch.zeros_like(work[j])
            if others:
                mats = torch.stack([stretch(float(cos[i] / cos[j])) for i in others])
                ref_img += warp_affine(work[others], mats, centre + shifts[others], target).sum(0)
            ref_img /= len(members)
        bmat = stretch(float(cos[k] / cos[j]))
        shifts[k] = shifts[j]
        for limit in (max_shift, 2.0):  # the second pass brings the peak to ~0 (no fit bias)
            moving = warp_affine(work[k], bmat, centre + shifts[k], target)
            d, score, sig = _xcorr_peak(moving, ref_img, band, taper, limit)
            significance[k] = sig if limit == max_shift else significance[k]
            shifts[k] = shifts[k] + bmat @ d
        scores[k] = score
        done.append(k)
    shifts = (shifts * b).to(dev)
    return CoarseResult(
        shifts_px=shifts,
        xf=geometry_to_xf(tilt_axis_deg, shifts),
        peak_scores=scores.to(dev),
        reference_index=ref,
        tilt_axis_deg=float(tilt_axis_deg),
        peak_significance=significance,
    )
