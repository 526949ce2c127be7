"""Feature-based tilt-series alignment by projection matching (AreTomo-style, no beads needed).

Geometry (``core/geometry.py``): a raw view shows the aligned image rotated by the tilt-axis angle
``a`` and displaced by ``s``: ``p_raw = c + R(a) p_aligned + s`` (IMOD centres); its ``.xf`` is
``A = R(-a)``, ``D = -A s``.  True tilt angle = given angle + ``tilt_offset_deg``.

Each iteration (Zheng et al., J. Struct. Biol. X 6:100068 (2022), doi:10.1016/j.yjsbx.2022.100068):

1. bin the views, normalise them, and resample them into aligned views with the current geometry;
2. reconstruct a slab ``align_z_px`` thick by WBP and reproject it at every angle, leaving each
   view's own contribution out (exactly, by linearity of the matched projector pair);
3. cross-correlate each view with its reprojection (band-passed, masked) for a shift correction;
   the unobservable part (the volume's x, y, z position: ``dx = p cos + q sin``, ``dy = const``)
   is removed so the specimen stays in the slab.

The tilt axis and the tilt-angle offset are refined by 1-D searches maximising the mean
normalised cross-correlation of views and their leave-one-out reprojections.  A constant tilt
offset is invisible in projections of a thick volume; it shows only because the slab is thin (the
specimen must lie flat in it), so it needs ``align_z_px`` close to the specimen thickness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tiltflow.core.align.dark_views import detect_dark_views
from tiltflow.core.fourier import bandpass_2d
from tiltflow.core.radial_filter import filter_views, padded_length, radial_filter, tilt_increment_weights
from tiltflow.core.reconstruct import apply_xf, backproject, bin_views, project_volume
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["ProjectionMatchingResult", "projection_matching_align"]

_BANDPASS_PX = (48.0, 3.0)  # CC band-pass: periods kept, binned px (low cut, high cut)
_EDGE_TAPER = 0.1  # cosine taper of the CC mask, fraction of the aligned view size


@dataclass(frozen=True)
class ProjectionMatchingResult:
    """Alignment of the raw views (all views; dark ones keep their initial shifts)."""

    xf: torch.Tensor  # (t, 6) IMOD .xf rows, raw -> aligned, px of the input views
    shifts_px: torch.Tensor  # (t, 2) raw-image shifts s (x, y), px of the input views
    tilt_axis_deg: float  # refined, degrees from +y, counter-clockwise
    tilt_offset_deg: float  # added to the given angles
    tilt_angles_deg: torch.Tensor  # (t,) given angles + tilt_offset_deg
    dark_views: torch.Tensor  # (t,) bool, excluded from the alignment
    per_view_error: torch.Tensor  # (t,) 1 - NCC(view, leave-one-out reprojection); nan if dark
    history: list[dict] = field(default_factory=list)  # one entry per iteration / search


@dataclass
class _Series:
    """The binned, normalised views of the used (non-dark) views and fixed settings."""

    views: torch.Tensor  # (n, hb, wb) zero mean, unit variance
    angles_deg: torch.Tensor  # (n,) float64, as given
    binning: int
    nz: int
    out_shape: tuple[int, int]
    nx_volume: int
    max_shift_px: float  # binned px


def _aligned_views(s: _Series, axis_deg: float, shifts_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned binned views ``(n, ho, wo)`` and their soft CC masks (raw support x edge taper)."""
    xf = geometry_to_xf(axis_deg, shifts_px.to(torch.float64).cpu() / s.binning).to(s.views.device)
    aligned = apply_xf(s.views, xf, s.out_shape, mode="bilinear")
    # the same raw position as apply_xf samples: distance to the raw edge, in binned px
    h, w = s.views.shape[-2:]
    ho, wo = s.out_shape
    dev = s.views.device
    yo, xo = torch.meshgrid(torch.arange(ho, dtype=torch.float64, device=dev) - (ho - 1) / 2.0,
                            torch.arange(wo, dtype=torch.float64, device=dev) - (wo - 1) / 2.0,
                            indexing="ij")
    a_inv = torch.linalg.inv(xf[:, :4].reshape(-1, 2, 2))
    raw = torch.einsum("tij,tyxj->tyxi", a_inv, torch.stack([xo, yo], -1)[None] - xf[:, None, None, 4:])
    dist = torch.minimum(torch.minimum(raw[..., 0] + (w - 1) / 2.0, (w - 1) / 2.0 - raw[..., 0]),
                         torch.minimum(raw[..., 1] + (h - 1) / 2.0, (h - 1) / 2.0 - raw[..., 1]))
    ex = torch.minimum(xo + (wo - 1) / 2.0, (wo - 1) / 2.0 - xo) / max(_EDGE_TAPER * wo, 1.0)
    ey = torch.minimum(yo + (ho - 1) / 2.0, (ho - 1) / 2.0 - yo) / max(_EDGE_TAPER * ho, 1.0)
    ramp = torch.minimum(dist / max(_EDGE_TAPER * min(h, w), 1.0), torch.minimum(ex, ey)[None])
    mask = 0.5 - 0.5 * torch.cos(math.pi * ramp.clamp(0.0, 1.0))
    return aligned, mask.to(aligned.dtype)


def _share_operator(theta_out: torch.Tensor, theta_in: torch.Tensor, *, nz: int, nx_volume: int,
                    nx_view: int) -> torch.Tensor:
    """``M = P(theta_out) BP(theta_in)`` acting on one view row, ``(n, nx_view, nx_view)`` float64.

    Built from the linear taps of ``core/backproject.py`` (a voxel at ``u`` feeds columns
    ``floor(u)`` and ``floor(u) + 1``; zero padding outside the view), so it is exact.
    """
    dev = theta_out.device
    x = torch.arange(nx_volume, dtype=torch.float64, device=dev) - (nx_volume - 1) / 2.0
    z = torch.arange(nz, dtype=torch.float64, device=dev) - (nz - 1) / 2.0

    def taps(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = (x[None, None, :] * torch.cos(theta)[:, None, None]
             + z[None, :, None] * torch.sin(theta)[:, None, None] + (nx_view - 1) / 2.0)
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


def _reference_views(aligned: torch.Tensor, angles_deg: torch.Tensor, *, nz: int, nx_volume: int,
                     exclude_deg: float) -> torch.Tensor:
    """Reprojection ``(n, h, w)`` at each angle of a WBP slab built without that view and without
    the views within ``exclude_deg`` of it (neighbours would explain slow drifts away)."""
    n, _, w = aligned.shape
    n_pad = padded_length(w)
    ramp = radial_filter(n_pad, cutoff=0.3, falloff=0.05, device=aligned.device).to(aligned.dtype)
    weights = tilt_increment_weights(angles_deg).to(device=aligned.device, dtype=aligned.dtype)
    filtered = filter_views(aligned, ramp, n_pad=n_pad) * weights[:, None, None]
    angles = angles_deg.to(device=aligned.device, dtype=torch.float64)
    volume = backproject(filtered, angles, thickness_px=nz, nx=nx_volume)
    out = project_volume(volume, angles, nx_view=w)
    theta = torch.deg2rad(angles)
    # linearity of the matched pair: P_i sum_j BP_j f_j is the full projection; drop the j near i
    for delta in range(-n + 1, n):
        i = torch.arange(max(0, -delta), min(n, n - delta), device=aligned.device)
        i = i[(angles[i + delta] - angles[i]).abs() <= exclude_deg + 1e-6]
        if i.numel() == 0:
            continue
        m = _share_operator(theta[i], theta[i + delta], nz=nz, nx_volume=nx_volume, nx_view=w)
        out[i] -= filtered[i + delta] @ m.to(aligned.dtype).transpose(-1, -2)
    return out


def _match(aligned: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor, max_shift_px: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift ``(n, 2)`` (x, y) of each view relative to its reference, and the NCC at the peak."""
    n, h, w = aligned.shape
    bp = bandpass_2d((h, w), low_cut_px=_BANDPASS_PX[0], high_cut_px=_BANDPASS_PX[1], falloff=0.03,
                     device=aligned.device).to(aligned.dtype)
    msum = mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)

    def prepared(x: torch.Tensor) -> torch.Tensor:
        x = (x - (x * mask).sum(dim=(-2, -1), keepdim=True) / msum) * mask
        return torch.fft.rfft2(x) * bp

    fa, fr = prepared(aligned), prepared(reference)
    cc = torch.fft.irfft2(fa * fr.conj(), s=(h, w))  # cc[d] = sum_x a(x + d) r(x)
    norm = (torch.fft.irfft2(fa, s=(h, w)).square().sum(dim=(-2, -1))
            * torch.fft.irfft2(fr, s=(h, w)).square().sum(dim=(-2, -1))).sqrt().clamp_min(1e-12)
    cc = torch.fft.fftshift(cc, dim=(-2, -1)) / norm[:, None, None]
    cy, cx = h // 2, w // 2
    yy = torch.arange(h, device=cc.device)[:, None] - cy
    xx = torch.arange(w, device=cc.device)[None, :] - cx
    outside = (yy.square() + xx.square()) > max_shift_px**2
    flat = cc.masked_fill(outside, -torch.inf).reshape(n, -1)
    peak = flat.argmax(dim=1)
    py, px = peak // w, peak % w
    rows = torch.arange(n, device=cc.device)

    def vertex(m1: torch.Tensor, c0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
        den = m1 - 2.0 * c0 + p1
        return torch.where(den < 0, 0.5 * (m1 - p1) / den.where(den < 0, -1.0), 0.0).clamp(-0.5, 0.5)

    c0 = cc[rows, py, px]
    dx = vertex(cc[rows, py, (px - 1) % w], c0, cc[rows, py, (px + 1) % w])
    dy = vertex(cc[rows, (py - 1) % h, px], c0, cc[rows, (py + 1) % h, px])
    shifts = torch.stack([(px - cx).to(cc.dtype) + dx, (py - cy).to(cc.dtype) + dy], -1)
    return shifts.to(torch.float64).cpu(), c0.to(torch.float64).cpu()


def _remove_gauge(d: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Drop the shift pattern of moving the whole volume: ``dx = p cos + q sin``, ``dy = const``."""
    th = torch.deg2rad(angles_deg.to(torch.float64).cpu())
    basis = torch.stack([torch.cos(th), torch.sin(th)], -1)
    coef = torch.linalg.lstsq(basis, d[:, :1]).solution
    out = d.clone()
    out[:, 0] -= (basis @ coef)[:, 0]
    out[:, 1] -= d[:, 1].mean()
    return out


def _evaluate(s: _Series, axis_deg: float, offset_deg: float, shifts_px: torch.Tensor,
              max_shift_px: float, exclude_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view shift corrections (binned aligned px) and NCC at the current geometry."""
    aligned, mask = _aligned_views(s, axis_deg, shifts_px)
    reproj = _reference_views(aligned, s.angles_deg + offset_deg, nz=s.nz, nx_volume=s.nx_volume,
                              exclude_deg=exclude_deg)
    return _match(aligned, reproj, mask, max_shift_px)


def _refine_shifts(s: _Series, axis: float, offset: float, shifts: torch.Tensor, iterations: int,
                   history: list[dict], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection-matching iterations; returns the shifts and the last per-view NCC."""
    rot = torch.tensor([[math.cos(math.radians(axis)), -math.sin(math.radians(axis))],
                        [math.sin(math.radians(axis)), math.cos(math.radians(axis))]], dtype=torch.float64)
    ncc = torch.zeros(shifts.shape[0], dtype=torch.float64)
    for it in range(iterations):
        d, ncc = _evaluate(s, axis, offset, shifts, s.max_shift_px)
        d = _remove_gauge(d, s.angles_deg + offset)
        shifts = shifts + s.binning * d @ rot.T  # aligned binned px -> raw unbinned px
        step = float(d.norm(dim=1).max()) * s.binning
        history.append({"stage": stage, "iteration": it, "mean_ncc": float(ncc.mean()),
                        "max_step_px": step, "tilt_axis_deg": axis, "tilt_offset_deg": offset})
        if step < 0.1 * s.binning:
            break
    return shifts, ncc


def _search_1d(score, centre: float, half_range: float, step: float) -> tuple[float, list]:
    """Maximise ``score(x)`` on a grid around ``centre``, then a parabola through the best 3 points."""
    n = max(1, round(half_range / step))
    xs = [centre + step * k for k in range(-n, n + 1)]
    values = [score(x) for x in xs]
    k = max(range(len(xs)), key=lambda i: values[i])
    best = xs[k]
    if 0 < k < len(xs) - 1:
        m1, c0, p1 = values[k - 1], values[k], values[k + 1]
        den = m1 - 2.0 * c0 + p1
        if den < 0:
            best += step * max(-0.5, min(0.5, 0.5 * (m1 - p1) / den))
    return best, list(zip(xs, values))


def projection_matching_align(
    views: torch.Tensor,  # (t, h, w) raw views (counts), sorted by tilt angle
    tilt_angles_deg,  # (t,) as stored by the microscope
    *,
    tilt_axis_deg: float,  # initial tilt-axis angle (mdoc / coarse)
    align_z_px: float,  # slab thickness for the intermediate reconstruction, px of the input views
    initial_shifts_px: torch.Tensor | None = None,  # (t, 2) raw-image shifts, e.g. coarse
    binning: int = 2,
    iterations: int = 5,
    refine_tilt_axis: bool = True,
    refine_tilt_offset: bool = True,
    exclude_dark: bool = True,
    dark_tolerance: float = 0.7,
    axis_search_deg: float = 3.0,  # searched +- around the initial axis
    offset_search_deg: float = 3.0,  # searched +- around 0
    max_shift_px: float | None = None,  # per iteration, px of the input views (default w / 8)
) -> ProjectionMatchingResult:
    """Align a tilt series by projection matching (module docstring); pure, device of ``views``.

    Shifts and ``align_z_px`` are in pixels of ``views``; the work runs on views binned by
    ``binning``.  Raises ``ValueError`` for malformed input or too few usable views.
    """
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        raise ValueError(f"views must be a (t, h, w) tensor, got {getattr(views, 'shape', type(views))}")
    t, h, w = views.shape
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).cpu()
    if angles.numel() != t:
        raise ValueError(f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one per view")
    if bool((angles[1:] < angles[:-1]).any()):
        raise ValueError("views must be sorted by tilt angle (ascending), as in tilt-series stacks")
    if int(binning) != binning or binning < 1 or min(h, w) // binning < 32:
        raise ValueError(f"binning must be a positive integer leaving >= 32 px, got {binning} for {h}x{w}")
    if align_z_px <= 0 or iterations < 1:
        raise ValueError(f"align_z_px must be > 0 px and iterations >= 1, got {align_z_px}, {iterations}")
    shifts = torch.zeros(t, 2, dtype=torch.float64)
    if initial_shifts_px is not None:
        shifts = torch.as_tensor(initial_shifts_px, dtype=torch.float64).cpu().clone()
        if shifts.shape != (t, 2):
            raise ValueError(f"initial_shifts_px must have shape ({t}, 2), got {tuple(shifts.shape)}")
    dark = detect_dark_views(views, angles, tolerance=dark_tolerance).cpu() if exclude_dark \
        else torch.zeros(t, dtype=torch.bool)
    use = torch.nonzero(~dark).reshape(-1)
    if use.numel() < 5:
        raise ValueError(f"only {use.numel()} usable (non-dark) views; projection matching needs >= 5")

    x = views[use.to(views.device)]
    x = bin_views(x if x.is_floating_point() else x.float(), int(binning))
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    hb, wb = x.shape[-2:]
    axis = float(tilt_axis_deg)
    out_shape = (wb, hb) if abs(math.sin(math.radians(axis))) > abs(math.cos(math.radians(axis))) else (hb, wb)
    used_angles = angles[use]
    cos_max = max(math.cos(math.radians(float(used_angles.abs().max()))), 0.5)
    s = _Series(views=x, angles_deg=used_angles, binning=int(binning),
                nz=max(4, round(align_z_px / binning)), out_shape=out_shape,
                nx_volume=2 * math.ceil(out_shape[1] / cos_max / 2),
                max_shift_px=(max_shift_px / binning) if max_shift_px else out_shape[1] / 8)

    history: list[dict] = []
    offset = 0.0
    sub = shifts[use]
    sub, _ = _refine_shifts(s, axis, offset, sub, max(1, iterations // 2), history, "shifts")
    fine = max(1.0, 2.0 / binning)  # px: the searches tolerate residual shifts this large

    if refine_tilt_axis:
        def axis_score(a: float) -> float:
            return float(_evaluate(s, a, offset, sub, fine)[1].mean())
        axis, grid = _search_1d(axis_score, axis, axis_search_deg, 1.0)
        axis, grid2 = _search_1d(axis_score, axis, 0.5, 0.25)
        history.append({"stage": "tilt_axis", "tilt_axis_deg": axis, "grid": grid + grid2})
        sub, _ = _refine_shifts(s, axis, offset, sub, max(1, iterations // 2), history, "shifts")
    if refine_tilt_offset:
        def offset_score(o: float) -> float:
            return float(_evaluate(s, axis, o, sub, fine)[1].mean())
        offset, grid = _search_1d(offset_score, 0.0, offset_search_deg, 1.0)
        history.append({"stage": "tilt_offset", "tilt_offset_deg": offset, "grid": grid})
    sub, ncc = _refine_shifts(s, axis, offset, sub, iterations, history, "shifts")
    _, ncc = _evaluate(s, axis, offset, sub, fine)

    shifts[use] = sub
    error = torch.full((t,), math.nan, dtype=torch.float64)
    error[use] = 1.0 - ncc
    return ProjectionMatchingResult(
        xf=geometry_to_xf(axis, shifts), shifts_px=shifts, tilt_axis_deg=axis,
        tilt_offset_deg=offset, tilt_angles_deg=angles + offset, dark_views=dark,
        per_view_error=error, history=history,
    )
