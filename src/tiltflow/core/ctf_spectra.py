"""Power spectra for CTF estimation: tiled periodograms, background removal, radial profiles.

Layout: a spectrum is ``(..., n, n // 2 + 1)`` in rfft2 order with the origin at index 0 (as in
``fourier.py``); pixel ``(iy, ix)`` holds spatial frequency ``(ky, kx) = frequency_grid_2d`` in
cycles/px, i.e. ``k / pixel_size_a`` in 1/Å, azimuth ``atan2(ky, kx)`` (from +x, counter-clockwise).
Radial profiles have ``n // 2 + 1`` one-pixel bins: bin ``i`` is ``k = i / (n * pixel_size_a)``.

Thon rings are periodic in ``s = k^2`` with period ``1 / (lambda * df)`` (rings of sin^2), so the
smoothing windows here are one ring period wide in ``s`` and follow the defocus.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tiltflow.core.ctf_model import defocus_at_azimuth, electron_wavelength_a
from tiltflow.core.fourier import frequency_grid_2d
from tiltflow.core.geometry import defocus_offset_a

if TYPE_CHECKING:  # ctf_fit imports this module
    from tiltflow.core.ctf_fit import CtfParams

Reference = float | tuple[float, float, float]  # mean defocus, or (u, v, angle_deg), Å
RESCALE_PHASE_STEP_RAD = 0.2  # offset bins for tile rescaling: ring phase at Nyquist moves this much


def _taper_2d(n: int, *, device, dtype) -> torch.Tensor:
    """Separable Tukey window: flat centre, cosine edges n/10 px wide."""
    edge = max(n // 10, 1)
    w = torch.ones(n, device=device, dtype=dtype)
    ramp = 0.5 * (1 - torch.cos(torch.pi * (torch.arange(edge, device=device, dtype=dtype) + 0.5) / edge))
    w[:edge] = ramp
    w[n - edge :] = ramp.flip(0)
    return w[:, None] * w[None, :]


def _tile_starts(length: int, window: int, step: int) -> list[int]:
    count = (length - window) // step + 1
    first = (length - ((count - 1) * step + window)) // 2  # centre the tile grid on the image
    return [first + i * step for i in range(count)]


def tile_grid(
    image_shape: tuple[int, int], *, window_px: int, overlap: float = 0.5
) -> tuple[list[int], list[int], torch.Tensor]:
    """Tile origins ``(ys, xs)`` and tile centres ``(t, 2)`` (x, y) in 0-based raw pixel indices."""
    h, w = image_shape
    if window_px > min(h, w):
        raise ValueError(f"tile_grid: image {h}x{w} px is smaller than window_px={window_px}; pass a smaller window_px")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile_grid: overlap={overlap} must be in [0, 1)")
    step = max(round(window_px * (1.0 - overlap)), 1)
    ys, xs = _tile_starts(h, window_px, step), _tile_starts(w, window_px, step)
    half = (window_px - 1) / 2.0
    cy, cx = torch.meshgrid(
        torch.tensor(ys, dtype=torch.float64) + half, torch.tensor(xs, dtype=torch.float64) + half, indexing="ij"
    )
    return ys, xs, torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=-1)


def matching_k2(
    chi_k2: torch.Tensor, target_defocus_a: torch.Tensor, *, wavelength_a: float, cs_a: float
) -> torch.Tensor:
    """``k^2`` (1/Å^2) where a CTF of defocus ``target_defocus_a`` reaches the phase ``chi_k2``.

    Solves ``pi*lam*df*k^2 - pi/2*Cs*lam^3*k^4 = chi`` on the low-frequency branch (stable form).
    """
    a = math.pi * wavelength_a * target_defocus_a.clamp_min(1.0)
    b = 0.5 * math.pi * cs_a * wavelength_a**3
    c = chi_k2.clamp_min(0.0)
    return 2.0 * c / (a + torch.sqrt((a * a - 4.0 * b * c).clamp_min(0.0)))


def defocus_phase(k2: torch.Tensor, defocus_a: torch.Tensor, *, wavelength_a: float, cs_a: float) -> torch.Tensor:
    """``chi`` without constant terms: ``pi*lam*df*k^2 - pi/2*Cs*lam^3*k^4`` (rad; k^2 in 1/Å^2)."""
    return math.pi * wavelength_a * defocus_a * k2 - 0.5 * math.pi * cs_a * wavelength_a**3 * k2 * k2


def _reference_tuple(reference: Reference) -> tuple[float, float, float]:
    if isinstance(reference, (int, float)):
        return float(reference), float(reference), 0.0
    u, v, ang = reference
    return float(u), float(v), float(ang)


def tiled_power_spectrum(
    image: torch.Tensor,  # (h, w) one tilt image
    params: CtfParams,  # window_px, pixel_size_a, voltage_kv and cs_mm are used
    *,
    overlap: float = 0.5,
    tilt_angle_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    reference_defocus_a: Reference | None = None,
    max_offset_a: float | None = None,
    chunk: int = 16,
) -> torch.Tensor:  # (window_px, window_px // 2 + 1) mean power, rfft layout
    """Average periodogram of tapered, mean-subtracted tiles (Welch), tilt-aware.

    A tile centred at raw pixel p sits at the defocus offset ``geometry.defocus_offset_a(p)`` from
    the image centre. With ``reference_defocus_a`` (the centre defocus: a mean, or ``(u, v, angle)``)
    every tile spectrum is resampled radially so that its Thon rings land where a CTF of the
    reference defocus puts them (CTFFIND-tilt / Warp style; exact in defocus and Cs, per azimuth).
    Without it, tiles are averaged as they are. ``max_offset_a`` keeps only tiles whose |offset|
    is at most that (always at least the 4 tiles closest to the tilt axis).
    """
    if image.ndim != 2:
        raise ValueError(f"tiled_power_spectrum: expected one (h, w) image, got shape {tuple(image.shape)}")
    n, pixel_size_a, voltage_kv, cs_mm = params.window_px, params.pixel_size_a, params.voltage_kv, params.cs_mm
    shape = (int(image.shape[0]), int(image.shape[1]))
    ys, xs, centres = tile_grid(shape, window_px=n, overlap=overlap)
    offsets = defocus_offset_a(
        centres,
        tilt_angle_deg=tilt_angle_deg,
        tilt_axis_deg=tilt_axis_deg,
        pixel_size_a=pixel_size_a,
        image_shape=shape,
    )
    keep = torch.ones_like(offsets, dtype=torch.bool)
    if max_offset_a is not None:
        keep = offsets.abs() <= max_offset_a
        if int(keep.sum()) < min(4, keep.numel()):
            keep[offsets.abs().argsort()[: min(4, keep.numel())]] = True
    img = image.to(torch.float32)
    dev = img.device
    taper = _taper_2d(n, device=dev, dtype=img.dtype)
    scale_map = None
    if reference_defocus_a is not None:
        scale_map = _rescale_setup(n, pixel_size_a, _reference_tuple(reference_defocus_a), voltage_kv, cs_mm, dev)
    chosen = keep.nonzero()[:, 0].tolist()
    buf = torch.empty((min(chunk, len(chosen)), n, n), dtype=torch.float32, device=dev)
    total = torch.zeros(n, n // 2 + 1, dtype=torch.float64, device=dev)
    bins = None
    if scale_map is not None:
        # rescaling is linear in the power: tiles are pooled into offset bins (each tile split
        # between its two nearest bins), and each bin is rescaled once
        step_a = RESCALE_PHASE_STEP_RAD / (math.pi * electron_wavelength_a(voltage_kv) * (0.5 / pixel_size_a) ** 2)
        pos = offsets[chosen].to(torch.float64) / step_a
        floor = pos.floor()
        used = torch.unique(torch.cat([floor, floor + 1.0]))  # bins holding tiles, sorted
        lower = torch.searchsorted(used, floor).to(dev)  # index of a tile's lower bin
        frac = (pos - floor).to(device=dev, dtype=torch.float32)
        bins = torch.zeros((used.numel(), n, n // 2 + 1), dtype=torch.float32, device=dev)
    for c0 in range(0, len(chosen), chunk):
        ids = chosen[c0 : c0 + chunk]
        block = buf[: len(ids)]
        for k, t in enumerate(ids):
            y0, x0 = ys[t // len(xs)], xs[t % len(xs)]
            block[k].copy_(img[y0 : y0 + n, x0 : x0 + n])
        block.sub_(block.mean(dim=(-2, -1), keepdim=True)).mul_(taper)
        spec = torch.fft.rfft2(block)
        power = spec.real.square().addcmul_(spec.imag, spec.imag)
        if bins is None:
            total += power.sum(0)
            continue
        w = frac[c0 : c0 + len(ids), None, None]
        bins.index_add_(0, lower[c0 : c0 + len(ids)] + 1, power * w)
        bins.index_add_(0, lower[c0 : c0 + len(ids)], power.mul_(1.0 - w))
    if bins is not None and scale_map is not None:
        bin_offsets = (used * step_a).to(dev)
        for c0 in range(0, used.numel(), chunk):
            total += _rescale_tiles(bins[c0 : c0 + chunk], bin_offsets[c0 : c0 + chunk], scale_map).sum(0)
    return (total / (len(chosen) * taper.square().sum())).to(torch.float32)


def _rescale_setup(n, pixel_size_a, reference, voltage_kv, cs_mm, device) -> dict:
    """Per-pixel terms (float32) of the ring-matching map for the reference defocus."""
    ky, kx = frequency_grid_2d((n, n), device=device)
    ky, kx = ky.to(torch.float64), kx.to(torch.float64)
    k2 = (kx**2 + ky**2) / pixel_size_a**2  # 1/Å^2
    u, v, ang = reference
    df = defocus_at_azimuth(u, v, ang, torch.atan2(ky, kx))
    lam, cs_a = electron_wavelength_a(voltage_kv), cs_mm * 1e7
    inv_k2 = torch.where(k2 > 0, 1.0 / k2.clamp_min(1e-30), torch.zeros_like(k2))
    c = defocus_phase(k2, df, wavelength_a=lam, cs_a=cs_a)
    b = 0.5 * math.pi * cs_a * lam**3
    f32 = {
        "a": math.pi * lam * df,
        "four_bc": 4.0 * b * c,
        "two_c_inv_k2": 2.0 * c * inv_k2,
        "gxy": torch.stack([kx * n / (n // 2) * 2.0, ky * n / (n - 1) * 2.0], dim=-1),
    }
    out = {key: val.to(torch.float32) for key, val in f32.items()}
    out.update(
        a_per_a=math.pi * lam,
        g0=torch.tensor([-1.0, (n // 2) / (n - 1) * 2.0 - 1.0], dtype=torch.float32, device=device),
    )
    return out


def _rescale_tiles(power: torch.Tensor, offsets_a: torch.Tensor, setup: dict) -> torch.Tensor:
    """Resample tile spectra ``(t, n, n//2+1)`` so rings of defocus df+offset sit where df puts them.

    The source radius solves chi(k_src; df + offset) = chi(k; df) (``matching_k2``, inlined here in
    float32 for speed); the source lies on the same azimuth, sampled bilinearly.
    """
    a = setup["a"] + (setup["a_per_a"] * offsets_a.to(torch.float32))[:, None, None]  # (t, n, n//2+1)
    root = a.square().sub_(setup["four_bc"]).clamp_min_(0.0).sqrt_().add_(a)
    ratio = torch.div(setup["two_c_inv_k2"], root, out=root).sqrt_()  # k_src / k = sqrt(k2_src / k2)
    grid = (ratio[..., None] * setup["gxy"]).add_(setup["g0"])
    shifted = torch.fft.fftshift(power, dim=-2)[:, None]
    return F.grid_sample(shifted, grid.to(power.dtype), mode="bilinear", padding_mode="border", align_corners=True)[
        :, 0
    ]


def pixel_radius(n: int, *, device=None) -> torch.Tensor:
    """Radius in Fourier pixels ``(n, n//2+1)`` of each rfft2 pixel of an n x n spectrum."""
    ky, kx = frequency_grid_2d((n, n), device=device)
    return torch.sqrt(kx.to(torch.float64) ** 2 + ky.to(torch.float64) ** 2) * n


def radial_bins(values: torch.Tensor, radius_px: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values (..., h, w)`` in one-pixel bins of ``radius_px (h, w)`` -> (mean, count).

    Linear interpolation between neighbouring bins; pixels beyond the last bin are ignored.
    """
    r = radius_px.reshape(-1)
    lo = r.floor().long()
    frac = r - lo
    flat = values.reshape(*values.shape[:-2], -1).to(torch.float64)
    sums = torch.zeros(*flat.shape[:-1], n_bins + 1, dtype=torch.float64, device=flat.device)
    counts = torch.zeros(n_bins + 1, dtype=torch.float64, device=flat.device)
    for idx, wgt in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = idx < n_bins
        i = torch.where(ok, idx, torch.full_like(idx, n_bins))
        wv = torch.where(ok, wgt, torch.zeros_like(wgt))
        sums.index_add_(-1, i, flat * wv)
        counts.index_add_(0, i, wv)
    counts = counts[:n_bins]
    return sums[..., :n_bins] / counts.clamp_min(1e-12), counts


def ring_window(
    n: int,
    *,
    pixel_size_a: float,
    defocus_a: torch.Tensor | float,
    voltage_kv: float,
    cs_mm: float,
    periods: float = 1.0,
    min_half_bins: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin ranges ``[lo, hi)`` ``(..., n//2+1)`` spanning ``periods`` Thon-ring periods around each bin."""
    nb = n // 2 + 1
    lam, cs_a = electron_wavelength_a(voltage_kv), cs_mm * 1e7
    df = torch.as_tensor(defocus_a, dtype=torch.float64)
    device = df.device
    i = torch.arange(nb, dtype=torch.float64, device=device)
    s = i * i  # px^2
    k2 = s / (n * pixel_size_a) ** 2  # 1/Å^2
    rate = lam * df[..., None] - cs_a * lam**3 * k2  # d(chi/pi)/d(k^2), Å
    period = (n * pixel_size_a) ** 2 / rate.clamp_min(1e-3)  # px^2 per ring
    half = 0.5 * periods * period
    lo = torch.searchsorted(s, (s - half).contiguous(), right=False)
    hi = torch.searchsorted(s, (s + half).contiguous(), right=True)
    ii = i.long().expand_as(lo)
    lo = torch.minimum(lo, (ii - min_half_bins).clamp_min(0))
    hi = torch.maximum(hi, (ii + min_half_bins + 1).clamp_max(nb))
    return lo, hi


def _window_sum(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sum ``values (..., nb)`` over bins ``[lo, hi)``; leading dims of values or bounds broadcast."""
    csum = F.pad(torch.cumsum(values, dim=-1), (1, 0))
    batch = lo.shape[:-1] if lo.dim() >= csum.dim() else csum.shape[:-1]
    csum = csum.expand(*batch, csum.shape[-1])
    lo, hi = lo.expand(*batch, lo.shape[-1]), hi.expand(*batch, hi.shape[-1])
    return torch.gather(csum, -1, hi) - torch.gather(csum, -1, lo)


def local_mean(values, weights, lo, hi) -> torch.Tensor:
    """Weighted mean of ``values (..., nb)`` over the bin windows ``[lo, hi)``."""
    return _window_sum(values * weights, lo, hi) / _window_sum(weights, lo, hi).clamp_min(1e-12)


def local_linear(values, weights, lo, hi) -> torch.Tensor:
    """Weighted local linear fit in ``s = i^2`` of ``values (..., nb)``, evaluated at each bin."""
    nb = values.shape[-1]
    s = torch.arange(nb, dtype=torch.float64, device=values.device) ** 2 / nb**2
    s0, s1, s2 = (_window_sum(weights * s**p, lo, hi) for p in (0, 1, 2))
    t0, t1 = _window_sum(weights * values, lo, hi), _window_sum(weights * s * values, lo, hi)
    det = s0 * s2 - s1 * s1
    ok = det > 1e-9 * (s0 * s2).clamp_min(1e-30)
    slope = torch.where(ok, (s0 * t1 - s1 * t0) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    intercept = (t0 - slope * s1) / s0.clamp_min(1e-12)
    return intercept + slope * s


def normalise_profile(values, weights, lo, hi) -> torch.Tensor:
    """Remove the local background (local linear fit) and divide by the local RMS of what remains."""
    resid = values - local_linear(values, weights, lo, hi)
    rms = torch.sqrt(local_mean(resid * resid, weights, lo, hi).clamp_min(1e-30))
    return resid / rms


def subtract_background(
    spectrum: torch.Tensor,  # (n, n//2+1) power, rfft layout
    *,
    pixel_size_a: float,
    defocus_a: float,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    periods: float = 1.0,
) -> torch.Tensor:  # (n, n//2+1) background-free, envelope-normalised
    """Remove the smooth background and normalise the Thon-ring envelope.

    The rotational average is fitted, bin by bin, by a straight line in ``k^2`` over a window of
    ``periods`` Thon-ring periods of a CTF with ``defocus_a``; that background is subtracted in 2-D
    and the result divided by the local RMS (same window), so every ring has unit amplitude.
    Pixels beyond Nyquist in the corners are set to 0.
    """
    n = spectrum.shape[-2]
    if spectrum.shape[-1] != n // 2 + 1:
        raise ValueError(f"subtract_background: expected an (n, n//2+1) rfft spectrum, got {tuple(spectrum.shape)}")
    nb = n // 2 + 1
    radius = pixel_radius(n, device=spectrum.device)
    profile, counts = radial_bins(spectrum, radius, nb)
    lo, hi = ring_window(
        n,
        pixel_size_a=pixel_size_a,
        defocus_a=torch.tensor(float(defocus_a), device=spectrum.device),
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        periods=periods,
    )
    background = local_linear(profile, counts, lo, hi)
    resid2, _ = radial_bins((spectrum.to(torch.float64) - interp_profile(background, radius)) ** 2, radius, nb)
    rms = torch.sqrt(local_mean(resid2, counts, lo, hi).clamp_min(1e-30))
    out = (spectrum.to(torch.float64) - interp_profile(background, radius)) / interp_profile(rms, radius)
    return torch.where(radius <= nb - 1, out, torch.zeros_like(out)).to(torch.float32)


def interp_profile(profile: torch.Tensor, radius_px: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of a radial profile ``(nb,)`` at radii ``radius_px`` (px, clamped)."""
    nb = profile.shape[-1]
    r = radius_px.clamp(0, nb - 1)
    lo = r.floor().long().clamp_max(nb - 2)
    frac = r - lo
    return profile[lo] * (1 - frac) + profile[lo + 1] * frac
