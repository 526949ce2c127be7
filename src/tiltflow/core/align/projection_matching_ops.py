"""Building blocks of projection matching (``projection_matching.py``): references, masks, peaks.

Views here are ALIGNED binned views ``(n, h, w)`` (tilt axis along y, IMOD centres), volumes and
projections use ``core/backproject.py``'s matched pair (z = beam axis, linear taps along x').
Cross-correlation maps are ``fftshift``-ed: index ``(h // 2, w // 2)`` is zero shift, and a peak at
``d`` means the view shows the reference's features displaced by ``+d`` (x, y).
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.fourier import bandpass_2d
from tiltflow.core.radial_filter import (
    filter_views,
    padded_length,
    radial_filter,
    tilt_increment_weights,
)
from tiltflow.core.reconstruct import backproject, project_volume, wbp

BANDPASS_PX = (48.0, 3.0)  # CC band-pass: periods kept, binned px (low cut, high cut)
EDGE_TAPER = 0.1  # cosine taper of the CC mask, fraction of the view size
RAMP_CUTOFF = 0.3  # cycles/px, radial filter of the intermediate reconstructions


def support_mask(xf: torch.Tensor, raw_shape: tuple[int, int], out_shape: tuple[int, int]) -> torch.Tensor:
    """Build soft masks of the raw views' footprints in the aligned views.

    Soft mask ``(n, ho, wo)``: 1 inside the raw view's footprint, cosine edges; the aligned
    view's own border tapered too.  ``xf`` ``(n, 6)`` maps raw ``raw_shape`` to aligned views.
    """
    h, w = raw_shape
    ho, wo = out_shape
    dev = xf.device
    yo, xo = torch.meshgrid(
        torch.arange(ho, dtype=torch.float64, device=dev) - (ho - 1) / 2.0,
        torch.arange(wo, dtype=torch.float64, device=dev) - (wo - 1) / 2.0,
        indexing="ij",
    )
    a_inv = torch.linalg.inv(xf[:, :4].reshape(-1, 2, 2).to(torch.float64))
    d = torch.stack([xo, yo], -1)[None] - xf[:, None, None, 4:].to(torch.float64)
    raw = torch.einsum("tij,tyxj->tyxi", a_inv, d)  # relative to the raw centre, as apply_xf samples
    dist = torch.minimum(
        torch.minimum(raw[..., 0] + (w - 1) / 2.0, (w - 1) / 2.0 - raw[..., 0]),
        torch.minimum(raw[..., 1] + (h - 1) / 2.0, (h - 1) / 2.0 - raw[..., 1]),
    )
    ex = torch.minimum(xo + (wo - 1) / 2.0, (wo - 1) / 2.0 - xo) / max(EDGE_TAPER * wo, 1.0)
    ey = torch.minimum(yo + (ho - 1) / 2.0, (ho - 1) / 2.0 - yo) / max(EDGE_TAPER * ho, 1.0)
    ramp = torch.minimum(dist / max(EDGE_TAPER * min(h, w), 1.0), torch.minimum(ex, ey)[None])
    return 0.5 - 0.5 * torch.cos(math.pi * ramp.clamp(0.0, 1.0))


def share_operator(
    theta_out: torch.Tensor,
    theta_in: torch.Tensor,
    *,
    nz: int,
    nx_volume: int,
    nx_view: int,
) -> torch.Tensor:
    """``P(theta_out) BP(theta_in)`` on one view row: ``(n, nx_view, nx_view)`` float64 matrices.

    Uses the taps of ``core/backproject.py`` (a voxel at column ``u`` feeds ``floor(u)`` and
    ``floor(u) + 1``; zero padding outside the view), so it reproduces that pair exactly.
    """
    dev = theta_out.device
    x = torch.arange(nx_volume, dtype=torch.float64, device=dev) - (nx_volume - 1) / 2.0
    z = torch.arange(nz, dtype=torch.float64, device=dev) - (nz - 1) / 2.0

    def taps(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = (
            x[None, None, :] * torch.cos(theta)[:, None, None]
            + z[None, :, None] * torch.sin(theta)[:, None, None]
            + (nx_view - 1) / 2.0
        )
        u = u.clamp(-1.0, float(nx_view)).reshape(theta.shape[0], -1)
        i0 = torch.floor(u).clamp(max=nx_view - 1)
        col = i0.to(torch.int64) + 1  # padded column of the left tap
        return torch.stack([col, col + 1], -1), torch.stack([1.0 - (u - i0), u - i0], -1)

    (c_out, w_out), (c_in, w_in) = taps(theta_out), taps(theta_in)
    n = nx_view + 2
    idx = (c_out[..., :, None] * n + c_in[..., None, :]).reshape(theta_out.shape[0], -1)
    prod = (w_out[..., :, None] * w_in[..., None, :]).reshape(theta_out.shape[0], -1)
    m = torch.zeros(theta_out.shape[0], n * n, dtype=torch.float64, device=dev)
    m.scatter_add_(1, idx, prod)
    return m.reshape(-1, n, n)[:, 1:-1, 1:-1]


def _operators(
    angles: torch.Tensor,
    *,
    nz: int,
    nx_volume: int,
    nx_view: int,
    exclude_deg: float,
    dtype: torch.dtype,
    cache: dict | None,
) -> list:
    """``[(delta, i, M_{i, i+delta})]`` for every pair of views within ``exclude_deg``."""
    key = (tuple(angles.tolist()), nz, nx_volume, nx_view, exclude_deg, dtype, str(angles.device))
    if cache is not None and key in cache:
        return cache[key]
    n = angles.shape[0]
    theta = torch.deg2rad(angles)
    ops = []
    for delta in range(-n + 1, n):
        i = torch.arange(max(0, -delta), min(n, n - delta), device=angles.device)
        i = i[(angles[i + delta] - angles[i]).abs() <= exclude_deg + 1e-6]
        if delta == 0 or i.numel():
            m = share_operator(theta[i], theta[i + delta], nz=nz, nx_volume=nx_volume, nx_view=nx_view)
            ops.append((delta, i, m.to(dtype)))
    if cache is not None:
        while len(cache) >= 2:  # two windows of the current geometry at most
            cache.pop(next(iter(cache)))
        cache[key] = ops
    return ops


def _filtered(aligned: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Ramp-filter views ``(n, h, w)`` along x' and weight them by their tilt increments (WBP)."""
    n_pad = padded_length(aligned.shape[-1])
    ramp = radial_filter(n_pad, cutoff=RAMP_CUTOFF, falloff=0.05, device=aligned.device)
    weights = tilt_increment_weights(angles_deg).to(device=aligned.device, dtype=aligned.dtype)
    return filter_views(aligned, ramp.to(aligned.dtype), n_pad=n_pad) * weights[:, None, None]


def reproject_at(
    aligned: torch.Tensor,  # (n, h, w) aligned views, zero mean
    angles_deg: torch.Tensor,  # (n,) their true tilt angles
    at_deg: torch.Tensor,  # (m,) angles to reproject at
    *,
    nz: int,
    nx_volume: int,
) -> torch.Tensor:  # (m, h, w)
    """Reproject the WBP slab ``nz`` thick of ``aligned`` at other angles (views left out of it)."""
    angles = angles_deg.to(device=aligned.device, dtype=torch.float64)
    volume = backproject(_filtered(aligned, angles_deg), angles, thickness_px=nz, nx=nx_volume)
    return project_volume(volume, at_deg.to(device=aligned.device, dtype=torch.float64), nx_view=aligned.shape[-1])


def ray_coverage(angles_deg: torch.Tensor, at_deg: torch.Tensor, *, nz: int, width: int) -> torch.Tensor:
    """Fraction ``(m, width)`` of the views at ``angles_deg`` that see the slab along each column's rays.

    The ray of column ``u`` of a view at ``at_deg`` crosses the slab (``nz`` thick, centred) at
    ``x = (u - z sin) / cos``; a voxel is seen by a view at ``a`` where ``|x cos a + z sin a|`` is
    within its ``width``. Averaged over the ray: where it is low, the ray runs through voxels few
    views sampled (the field's edges at high tilt), and a reprojection there cannot match.
    """
    u = torch.arange(width, dtype=torch.float64) - (width - 1) / 2.0
    z = torch.arange(nz, dtype=torch.float64) - (nz - 1) / 2.0
    t_at = torch.deg2rad(at_deg.to(torch.float64).cpu())
    t_in = torch.deg2rad(angles_deg.to(torch.float64).cpu())
    x = (u[None, :, None] - z[None, None, :] * torch.sin(t_at)[:, None, None]) / torch.cos(t_at)[:, None, None]
    seen = torch.zeros_like(x)
    for a in t_in:
        seen += ((x * torch.cos(a) + z[None, None, :] * torch.sin(a)).abs() <= width / 2.0).to(torch.float64)
    return (seen / max(t_in.numel(), 1)).mean(-1)


def peak_significance(cc: torch.Tensor, peak_px: torch.Tensor, max_shift_px: float) -> torch.Tensor:
    """Peaks' heights ``(n,)`` above their maps ``(n, h, w)`` (fftshift-ed) in robust SDs.

    ``(peak - median) / (1.4826 MAD)`` of each map within ``max_shift_px`` of zero shift but
    beyond 3 px of the peak ``peak_px`` ``(n, 2)`` (x, y); NaN when too few such pixels remain.
    """
    n, h, w = cc.shape
    yy = (torch.arange(h, dtype=torch.float64) - h // 2)[:, None]
    xx = (torch.arange(w, dtype=torch.float64) - w // 2)[None, :]
    out = torch.full((n,), math.nan, dtype=torch.float64)
    for k in range(n):
        px, py = float(peak_px[k, 0]), float(peak_px[k, 1])
        near = (xx - px).square() + (yy - py).square() <= 9.0
        c = cc[k].to(torch.float64).cpu()
        background = c[(yy.square() + xx.square() <= max_shift_px**2) & ~near]
        if background.numel() < 16:
            continue
        med = background.median()
        mad = (background - med).abs().median().clamp_min(1e-30)
        out[k] = float((c[round(py) + h // 2, round(px) + w // 2] - med) / (1.4826 * mad))
    return out


def references(
    aligned: torch.Tensor,  # (n, h, w) aligned views, zero mean
    angles_deg: torch.Tensor,  # (n,) true tilt angles
    *,
    nz: int,
    nx_volume: int,
    exclude_deg: float,
    cache: dict | None = None,
    projectors: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # (n, h, w) leave-one-out, (n, h, w) wide
    """Reproject a WBP slab at each angle without that view (leave-one-out) and without its neighbours.

    Reprojections at each angle of a WBP slab ``nz`` thick: without that view (leave-one-out)
    and without every view within ``exclude_deg`` of it (wide).

    ``P_i sum_j BP_j f_j`` is the full projection, so leaving views out subtracts ``M_ij f_j``
    (:func:`share_operator`), exactly.  ``cache`` keeps those share operators, ``projectors`` the
    backprojection / projection matrices (``backproject``'s ``operators``) between calls.
    """
    w = aligned.shape[-1]
    filtered = _filtered(aligned, angles_deg)
    angles = angles_deg.to(device=aligned.device, dtype=torch.float64)
    volume = backproject(filtered, angles, thickness_px=nz, nx=nx_volume, operators=projectors)
    loo = project_volume(volume, angles, nx_view=w, operators=projectors)
    wide = loo.clone()
    for delta, i, m in _operators(
        angles,
        nz=nz,
        nx_volume=nx_volume,
        nx_view=w,
        exclude_deg=exclude_deg,
        dtype=aligned.dtype,
        cache=cache,
    ):
        part = filtered[i + delta] @ m.transpose(-1, -2)
        wide[i] -= part
        if delta == 0:
            loo[i] -= part
    return loo, wide


def cross_correlation(views: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised, band-passed, masked cross-correlation maps ``(n, h, w)``, fftshift-ed."""
    h, w = views.shape[-2:]
    bp = bandpass_2d(
        (h, w),
        low_cut_px=BANDPASS_PX[0],
        high_cut_px=BANDPASS_PX[1],
        falloff=0.03,
        device=views.device,
    ).to(views.dtype)
    msum = mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)

    def prepared(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - (x * mask).sum(dim=(-2, -1), keepdim=True) / msum) * mask
        f = torch.fft.rfft2(x) * bp
        return f, torch.fft.irfft2(f, s=(h, w)).square().sum(dim=(-2, -1))

    (fa, na), (fr, nr) = prepared(views), prepared(reference)
    cc = torch.fft.irfft2(fa * fr.conj(), s=(h, w))  # cc[d] = sum_x a(x + d) r(x)
    cc = cc / (na * nr).sqrt().clamp_min(1e-12)[:, None, None]
    return torch.fft.fftshift(cc, dim=(-2, -1))


def _vertex(m1: torch.Tensor, c0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    """Sub-pixel offset of a parabola's apex through three equally spaced samples."""
    den = m1 - 2.0 * c0 + p1
    return torch.where(den < 0, 0.5 * (m1 - p1) / den.where(den < 0, -1.0), 0.0).clamp(-0.5, 0.5)


def peak_2d(cc: torch.Tensor, max_shift_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel peak ``(n, 2)`` (x, y) within ``max_shift_px`` of zero and its value ``(n,)``."""
    n, h, w = cc.shape
    cy, cx = h // 2, w // 2
    yy = torch.arange(h, device=cc.device)[:, None] - cy
    xx = torch.arange(w, device=cc.device)[None, :] - cx
    inside = (yy.square() + xx.square()) <= max_shift_px**2
    peak = cc.masked_fill(~inside, -torch.inf).reshape(n, -1).argmax(dim=1)
    py, px = peak // w, peak % w
    rows = torch.arange(n, device=cc.device)
    c0 = cc[rows, py, px]
    dx = _vertex(cc[rows, py, (px - 1) % w], c0, cc[rows, py, (px + 1) % w])
    dy = _vertex(cc[rows, (py - 1) % h, px], c0, cc[rows, (py + 1) % h, px])
    d = torch.stack([(px - cx).to(cc.dtype) + dx, (py - cy).to(cc.dtype) + dy], -1)
    return d.to(torch.float64).cpu(), c0.to(torch.float64).cpu()


def legendre_basis(angles_deg: torch.Tensor, degrees: tuple[int, ...]) -> torch.Tensor:
    """Legendre polynomials ``(n, len(degrees))`` of the angles mapped onto [-1, 1] (float64)."""
    a = angles_deg.to(torch.float64).cpu()
    u = (a - (a.max() + a.min()) / 2.0) / max(float(a.max() - a.min()) / 2.0, 1e-6)
    p = [torch.ones_like(u), u]
    for k in range(2, max(degrees) + 1):  # Bonnet's recursion
        p.append(((2 * k - 1) * u * p[-1] - (k - 1) * p[-2]) / k)
    return torch.stack([p[k] for k in degrees], -1)


def smooth_part(values: torch.Tensor, angles_deg: torch.Tensor, *, degree: int) -> torch.Tensor:
    """Least-squares fit ``(n,)`` of ``values`` by Legendre polynomials up to ``degree``."""
    b = legendre_basis(angles_deg, tuple(range(degree + 1)))
    coef = torch.linalg.lstsq(b, values.to(torch.float64).cpu()[:, None]).solution
    return (b @ coef)[:, 0]


def specimen_pitch(
    aligned: torch.Tensor,  # (n, h, w) aligned views
    angles_deg: torch.Tensor,  # (n,)
    *,
    nz: int,  # thickness of the reconstruction, > the specimen's
    x_extent_px: int,  # width of the central region to use
    max_pitch_deg: float = 6.0,
    step_deg: float = 0.5,
) -> tuple[float, float, float]:  # pitch (deg), z of the specimen centre at x = 0, thickness (px)
    """Pitch of the specimen slab in a WBP reconstruction (z towards the source, x across the axis).

    The band-passed structure power of each (z, x) column, averaged over y, is projected onto
    ``z' = z - x tan(pitch)`` for trial pitches; layers of features (a flat specimen's surfaces,
    its contents) give the sharpest profile (largest sum of squares) when the pitch is right, even
    if each x holds features of only one layer.  The centre is the middle of the range where
    that profile exceeds 20 % of its peak above the median, the thickness that range's length
    (0.0, 0.0, 0.0 when the volume holds no structure).
    """
    vol = wbp(aligned, angles_deg.to(aligned.device), thickness_px=nz, radial_cutoff=RAMP_CUTOFF)
    nzv, ny, nx = vol.shape
    bp = bandpass_2d((ny, nx), low_cut_px=BANDPASS_PX[0] / 2, high_cut_px=BANDPASS_PX[1], device=vol.device).to(
        vol.dtype
    )
    power = torch.fft.irfft2(torch.fft.rfft2(vol) * bp, s=(ny, nx)).square().mean(dim=1)
    power = power.to(torch.float64).cpu()
    xs = torch.arange(nx, dtype=torch.float64) - (nx - 1) / 2.0
    cols = xs.abs() <= min(nx, x_extent_px) * 0.45
    power, xs = power[:, cols], xs[cols]
    power = (power - power.median()).clamp_min(0.0)  # background: the empty ice / vacuum
    zs = torch.arange(nzv, dtype=torch.float64) - (nzv - 1) / 2.0
    if float(power.sum()) <= 0:
        return 0.0, 0.0, 0.0

    def profile(pitch_deg: float) -> torch.Tensor:
        zp = zs[:, None] - xs[None, :] * math.tan(math.radians(pitch_deg)) + nzv  # >= 0
        i0 = torch.floor(zp)
        frac = zp - i0
        out = torch.zeros(3 * nzv + 2, dtype=torch.float64)
        out.index_add_(0, i0.long().reshape(-1), (power * (1 - frac)).reshape(-1))
        out.index_add_(0, i0.long().reshape(-1) + 1, (power * frac).reshape(-1))
        return out

    def sharpness(pitch_deg: float) -> float:
        return float(profile(pitch_deg).square().sum())

    n = round(max_pitch_deg / step_deg)
    grid = [step_deg * k for k in range(-n, n + 1)]
    values = [sharpness(g) for g in grid]
    k = max(range(len(grid)), key=lambda i: values[i])
    pitch = grid[k]
    if 0 < k < len(grid) - 1:
        den = values[k - 1] - 2 * values[k] + values[k + 1]
        if den < 0:
            pitch += step_deg * 0.5 * (values[k - 1] - values[k + 1]) / den
    lo = nzv - (nzv - 1) // 2  # bin k holds z' = k - nzv; these bins lie inside the volume at x = 0
    prof = profile(pitch)[lo : lo + nzv]
    base = prof.median()
    above = torch.nonzero(prof > base + 0.2 * (prof.max() - base)).reshape(-1)
    return pitch, float(above[0] + above[-1]) / 2.0 + lo - nzv, float(above[-1] - above[0] + 1)
