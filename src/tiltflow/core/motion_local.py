"""Local (spatially varying) motion on top of the global shifts: a smooth (x, y, t) control grid.

The residual shift field is piecewise linear between control points spread evenly over the image
(x from 0 to w-1, y from 0 to h-1, unbinned px) and over the frames (0 to t-1). Shift convention
(DESIGN.md §2): a feature at p in the sum lies at p + global(t) + residual(p, t) in frame t; the
residual is mean zero over frames at every point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core.motion_global import BinnedMovie, bin_movie, check_movie, smooth_trajectory
from tiltflow.core.motion_xcorr import (
    SearchSchedule,
    SpectraGrid,
    align_stack,
    edge_taper,
    fast_fft_size,
    fit_weights,
    frequency_vectors,
)

# abutting patches: a narrow taper keeps more of each patch (5 % measured better than 10 % and
# 20 % on deformed test movies; the residual shifts in a patch are small, so edges matter little)
PATCH_TAPER = 0.05


def _spline_weights(u: torch.Tensor, n: int) -> torch.Tensor:
    """Natural cubic spline interpolation weights (..., n) at node coordinates ``u`` (clamped).

    The value at ``u`` of the natural cubic spline through values ``y`` at nodes 0..n-1 is
    ``weights @ y``; two nodes give linear interpolation.
    """
    if n == 1:
        return torch.ones((*u.shape, 1), dtype=u.dtype, device=u.device)
    u = u.clamp(0, n - 1)
    k = torch.clamp(torch.floor(u), max=n - 2).long()
    a = u - k
    eye = torch.eye(n, dtype=u.dtype, device=u.device)
    # second derivatives m = K y of the natural spline (unit spacing, m_0 = m_{n-1} = 0)
    curv = torch.zeros((n, n), dtype=u.dtype, device=u.device)
    if n > 2:
        tri = 4.0 * torch.eye(n - 2, dtype=u.dtype, device=u.device)
        tri += torch.diag(torch.ones(n - 3, dtype=u.dtype, device=u.device), 1)
        tri += torch.diag(torch.ones(n - 3, dtype=u.dtype, device=u.device), -1)
        second_diff = 6.0 * (eye[:-2] - 2.0 * eye[1:-1] + eye[2:])
        curv[1:-1] = torch.linalg.solve(tri, second_diff)
    b = 1.0 - a
    out = b[..., None] * eye[k] + a[..., None] * eye[k + 1]
    out = out + ((b**3 - b) / 6.0)[..., None] * curv[k]
    return out + ((a**3 - a) / 6.0)[..., None] * curv[k + 1]


@dataclass
class LocalMotion:
    """Residual motion ``grid`` (nt, ny, nx, 2) x, y px on top of ``global_shifts`` (t, 2).

    ``image_shape`` (h, w) is the unbinned frame shape the control points span. From
    :func:`estimate_local_motion`, ``global_shifts`` are the input shifts refined by the patch fit.
    """

    grid: torch.Tensor
    global_shifts: torch.Tensor
    image_shape: tuple[int, int]

    @property
    def n_frames(self) -> int:
        """Number of frames t of the movie."""
        return int(self.global_shifts.shape[0])

    def _weights(self, frame_index, x_px, y_px):
        nt, ny, nx, _ = self.grid.shape
        h, w = self.image_shape
        dev, dt = self.grid.device, self.grid.dtype
        f, x, y = (torch.as_tensor(v, device=dev, dtype=dt) for v in (frame_index, x_px, y_px))
        f, x, y = torch.broadcast_tensors(f, x, y)
        wt = _spline_weights(f * (nt - 1) / max(self.n_frames - 1, 1), nt)
        wy = _spline_weights(y * (ny - 1) / max(h - 1, 1), ny)
        wx = _spline_weights(x * (nx - 1) / max(w - 1, 1), nx)
        return f, wt, wy, wx

    def residual_at(self, frame_index, x_px, y_px) -> torch.Tensor:
        """Residual shift (..., 2) at frame(s) and unbinned pixel positions (broadcast together)."""
        _, wt, wy, wx = self._weights(frame_index, x_px, y_px)
        return torch.einsum("...a,...b,...c,abcd->...d", wt, wy, wx, self.grid)

    def shifts_at(self, frame_index, x_px, y_px) -> torch.Tensor:
        """Total shift (..., 2) = global + residual; ``frame_index`` must be integral here."""
        f, wt, wy, wx = self._weights(frame_index, x_px, y_px)
        glob = self.global_shifts.to(self.grid.dtype)[f.round().long()]
        return glob + torch.einsum("...a,...b,...c,abcd->...d", wt, wy, wx, self.grid)


def automatic_grid(image_shape: tuple[int, int], n_frames: int) -> tuple[int, int, int]:
    """(nx, ny, nt): 2 control points per axis up to 1024 px, one more per 1024 px, at most 5."""
    h, w = image_shape
    return (
        min(5, max(2, math.ceil(w / 1024) + 1)),
        min(5, max(2, math.ceil(h / 1024) + 1)),
        min(n_frames, 3),
    )


def _patch_layout(n_b: int, n_ctrl: int) -> tuple[int, int, int]:
    """(size, stride, count) of 2 n - 1 abutting patches along one binned axis of ``n_b`` px.

    Overlapping patches would add no information, only work: they tile the axis instead.
    """
    count = max(1, 2 * n_ctrl - 1)
    if count == 1:
        return n_b, n_b, 1
    size = min(n_b, fast_fft_size(math.ceil(n_b / count)))
    return size, (n_b - size) // (count - 1), count


def _extract_patches(binned, layout_y, layout_x, offsets):
    """Patches (P, t, ph, pw) of frames (t, h, w); frame i is read ``offsets[i]`` (x, y) away."""
    (ph, sy, cy), (pw, sx, cx) = layout_y, layout_x
    pad = int(offsets.abs().max())
    padded = binned
    if pad:
        padded = torch.nn.functional.pad(binned[:, None], (pad,) * 4, mode="replicate")[:, 0]
    stacks = []
    for i, (ox, oy) in enumerate(offsets.tolist()):
        top, left = pad + oy, pad + ox
        view = padded[i, top : top + (cy - 1) * sy + ph, left : left + (cx - 1) * sx + pw]
        stacks.append(view.unfold(0, ph, sy).unfold(1, pw, sx).reshape(cy * cx, ph, pw))
    return torch.stack(stacks, dim=1)


def _logdet(chol: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def _time_weights(frames, t, nt, dt, dev, n_frames=None):
    """Spline weights (t, nt) of frames (indices, default 0..t-1) of a movie of ``n_frames``."""
    f = torch.arange(t, dtype=dt, device=dev) if frames is None else frames.to(dev, dt)
    n = t if n_frames is None else n_frames
    return _spline_weights(f * (nt - 1) / max(n - 1, 1), nt)


def _fit_grid(residual, variance, centres_xy, grid_shape, image_shape, frames=None, n_frames=None):
    """Per-frame global corrections (t, 2) and a control grid (nt, ny, nx, 2) through patch shifts.

    ``residual`` (P, t, 2) = correction(t) + field(patch centre, t) + noise of ``variance``. Prior:
    neighbouring control points differ by N(0, a^2), ``a`` chosen by maximum marginal likelihood
    (a zero field stays zero, a strong one is followed); the grid has zero mean over its spatial
    nodes at every time node (the rest is global motion) and zero mean over frames.
    ``frames`` (t,) are the frame indices of the rows (default 0..t-1) and ``n_frames`` the
    movie's frame count that sets the time axis (default t).
    Returns (correction, its variance, grid).
    """
    nx, ny, nt = grid_shape
    n_patches, t, _ = residual.shape
    h, w = image_shape
    dt, dev = torch.float64, residual.device
    n_grid = nt * ny * nx
    n = t + n_grid
    wt = _time_weights(frames, t, nt, dt, dev, n_frames)
    wy = _spline_weights(centres_xy[:, 1].to(dt) * (ny - 1) / max(h - 1, 1), ny)  # (P, ny)
    wx = _spline_weights(centres_xy[:, 0].to(dt) * (nx - 1) / max(w - 1, 1), nx)
    field = torch.einsum("pb,pc,ta->ptabc", wy, wx, wt).reshape(n_patches * t, n_grid)
    design = torch.cat([torch.eye(t, dtype=dt, device=dev).repeat(n_patches, 1), field], dim=1)
    idx = torch.arange(n_grid, device=dev).reshape(nt, ny, nx)
    neighbours = ((idx[1:], idx[:-1]), (idx[:, 1:], idx[:, :-1]), (idx[:, :, 1:], idx[:, :, :-1]))
    pairs = torch.cat([torch.stack([p.reshape(-1), q.reshape(-1)], -1) for p, q in neighbours])
    pen = torch.zeros((pairs.shape[0], n), dtype=dt, device=dev)
    rows = torch.arange(pairs.shape[0], device=dev)
    pen[rows, t + pairs[:, 0]], pen[rows, t + pairs[:, 1]] = 1.0, -1.0
    node_mean = torch.zeros((nt, n), dtype=dt, device=dev)
    node_mean[:, t:] = torch.eye(nt, dtype=dt, device=dev).repeat_interleave(ny * nx, dim=1)
    wts = 1.0 / variance.reshape(-1, 2).to(dt).clamp_min(1e-8).T  # (2, P t)
    y = residual.reshape(-1, 2).to(dt).T  # (2, P t)
    dwd = torch.einsum("ri,cr,rj->cij", design, wts, design)  # (2, n, n)
    rhs = torch.einsum("ri,cr->ci", design, wts * y)  # (2, n)
    scale = wts.mean(-1)[:, None, None]  # typical data weight, 1/px^2
    ridge = 1e-6 * torch.eye(n, dtype=dt, device=dev)
    fixed = scale * (1e3 * n_patches * node_mean.T @ node_mean + ridge)
    a2 = torch.logspace(-4, 2, 25, dtype=dt, device=dev)[:, None, None, None]  # px^2
    prior = (pen.T @ pen) / a2 + fixed  # (g, 2, n, n)
    chol_a = torch.linalg.cholesky(dwd + prior)
    sol = torch.cholesky_solve(rhs[..., None], chol_a)[..., 0]  # (g, 2, n)
    # -2 log evidence up to a constant: -b^T A^-1 b + log det A - log det prior
    nll = -(rhs * sol).sum(-1) + _logdet(chol_a) - _logdet(torch.linalg.cholesky(prior))
    best = int(nll.sum(-1).argmin())
    sol = sol[best].T  # (n, 2)
    cov_diag = torch.diagonal(torch.cholesky_inverse(chol_a[best]), dim1=-2, dim2=-1)[:, :t].T
    correction = sol[:t] - sol[:t].mean(dim=0)
    grid = sol[t:].reshape(nt, ny, nx, 2)
    grid = grid - torch.einsum("ta,abcd->bcd", wt, grid) / t  # mean zero over frames
    return correction.float(), cov_diag.float(), grid.float()


def _field_at(grid, centres_xy, frames, n_frames, image_shape):
    """Field (P, len(frames), 2) of ``grid`` (nt, ny, nx, 2) at patch centres and frames."""
    nt, ny, nx, _ = grid.shape
    h, w = image_shape
    dt = torch.float64
    wt = _time_weights(frames, len(frames), nt, dt, grid.device, n_frames)
    wy = _spline_weights(centres_xy[:, 1].to(dt) * (ny - 1) / max(h - 1, 1), ny)
    wx = _spline_weights(centres_xy[:, 0].to(dt) * (nx - 1) / max(w - 1, 1), nx)
    return torch.einsum("ta,pb,pc,abcd->ptd", wt, wy, wx, grid.to(dt))


def _held_out_gain(residual, variance, centres_xy, grid_shape, image_shape) -> float:
    """Even/odd frame cross-validation of the local model against global shifts alone.

    The grid is fitted to the patch shifts of the even frames and predicts those of the odd ones,
    and the other way round. Returns the drop in inverse-variance weighted squared prediction
    error (per frame offsets removed) relative to predicting no local motion, in units of its
    standard deviation under the hypothesis of no local motion (``2 sqrt(c sum w p^2)`` for
    predictions p, ``c`` the measured excess of the residuals over their stated variances):
    > 3 when the local model clearly generalises, <= 0 when it only fits noise.
    """
    t = residual.shape[1]
    dt = torch.float64
    all_frames = torch.arange(t, device=residual.device)
    gain = spread = excess = count = 0.0
    for train in (all_frames[0::2], all_frames[1::2]):
        test = all_frames[(all_frames % 2) != (train[0] % 2)]
        if len(train) < 2 or len(test) < 1:
            return -1.0
        _, _, grid = _fit_grid(
            residual[:, train], variance[:, train], centres_xy, grid_shape, image_shape, frames=train, n_frames=t
        )
        y = residual[:, test].to(dt)
        w = 1.0 / variance[:, test].to(dt).clamp_min(1e-8)
        pred = _field_at(grid, centres_xy, test, t, image_shape)
        # per-frame offsets (global motion) are removed from both: only the field is judged
        d_local = y - pred
        d_local = d_local - (w * d_local).sum(0) / w.sum(0)
        d_zero = y - (w * y).sum(0) / w.sum(0)
        gain += float((w * d_zero**2).sum() - (w * d_local**2).sum())
        spread += float((w * pred**2).sum())
        excess += float((w * d_local**2).sum())
        count += d_local.numel()
    c = max(1.0, excess / max(count, 1.0))
    return gain / max(2.0 * math.sqrt(c * spread), 1e-12)


def estimate_local_motion(
    frames: torch.Tensor,  # (t, h, w) gain-corrected counts
    global_shifts: torch.Tensor,  # (t, 2) from estimate_global_shifts
    *,
    pixel_size_a: float,
    grid: tuple[int, int, int] | None = None,  # (nx, ny, nt) control points
    fit_range_a: tuple[float, float] = (500.0, 10.0),
    bfactor_a2: float = -500.0,
    binning: int = 1,
    iterations: int = 3,
) -> LocalMotion:
    """Smooth residual motion field on top of ``global_shifts``.

    The down-sampled movie is cut into (2 nx - 1) x (2 ny - 1) abutting patches, each
    displaced by its frame's global shift; each patch stack is aligned like the global one
    (leave-one-out references, Newton on the Fourier cross-correlation, per-shift error estimate)
    and a control grid (``grid`` = (nx, ny, nt), default :func:`automatic_grid`) is fitted to the
    patch shifts by inverse-variance weighted least squares with a smoothness prior whose strength
    is set by maximum marginal likelihood. The fit also refines the per-frame global shifts, which
    the result carries as its ``global_shifts``; ``iterations`` rounds. The local model is kept
    only when, fitted on the even frames, it predicts the patch shifts of the odd ones (and the
    other way round) clearly better than no local motion does; otherwise the result is the input
    ``global_shifts`` with a zero grid, so it never makes a global-motion movie worse.
    """
    name = "estimate_local_motion"
    check_movie(frames, pixel_size_a, fit_range_a, binning, name)
    t, h, w = frames.shape
    global_shifts = torch.as_tensor(global_shifts, dtype=torch.float32, device=frames.device)
    if tuple(global_shifts.shape) != (t, 2):
        shape = tuple(global_shifts.shape)
        raise ValueError(f"{name}: global_shifts must be ({t}, 2) for {t} frames, got {shape}")
    nx, ny, nt = automatic_grid((h, w), t) if grid is None else (int(g) for g in grid)
    if min(nx, ny, nt) < 1 or nt > t:
        raise ValueError(f"{name}: grid (nx, ny, nt) needs values >= 1 and nt <= {t}, got {grid}")
    if t == 1:
        empty = torch.zeros((nt, ny, nx, 2), device=frames.device)
        return LocalMotion(grid=empty, global_shifts=global_shifts, image_shape=(h, w))
    binned = bin_movie(frames, pixel_size_a=pixel_size_a, high_res_a=fit_range_a[1], binning=binning)
    return local_motion_binned(
        binned,
        global_shifts,
        pixel_size_a=pixel_size_a,
        grid=(nx, ny, nt),
        fit_range_a=fit_range_a,
        bfactor_a2=bfactor_a2,
        iterations=iterations,
    )


def local_motion_binned(
    binned: BinnedMovie,
    global_shifts: torch.Tensor,  # (t, 2)
    *,
    pixel_size_a: float,
    grid: tuple[int, int, int],  # (nx, ny, nt)
    fit_range_a: tuple[float, float] = (500.0, 10.0),
    bfactor_a2: float = -500.0,
    iterations: int = 3,
) -> LocalMotion:
    """:func:`estimate_local_motion` on a movie already binned by ``motion_global.bin_movie``."""
    nx, ny, nt = grid
    h, w = binned.image_shape
    t, hb, wb = binned.frames.shape
    dev = binned.frames.device
    global_shifts = global_shifts.to(device=dev, dtype=torch.float32)
    motion = LocalMotion(grid=torch.zeros((nt, ny, nx, 2), device=dev), global_shifts=global_shifts, image_shape=(h, w))
    if t == 1:
        return motion
    scale = binned.scale_yx  # unbinned px per binned px
    layout_y, layout_x = _patch_layout(hb, ny), _patch_layout(wb, nx)
    (ph, step_y, count_y), (pw, step_x, count_x) = layout_y, layout_x
    scale_xy = torch.tensor([scale[1], scale[0]], device=dev)
    offsets = torch.round(global_shifts / scale_xy).long()  # (t, 2) binned px
    ky, kx = frequency_vectors((ph, pw), scale, device=dev)
    weights = fit_weights(ky, kx, pixel_size_a=pixel_size_a, fit_range_a=fit_range_a, bfactor_a2=bfactor_a2)
    taper = edge_taper((ph, pw), device=dev, fraction=PATCH_TAPER)
    root_w = weights.sqrt()
    spectra = torch.empty((count_y * count_x, t, ph, pw // 2 + 1), dtype=torch.complex64, device=dev)
    for i in range(t):  # one frame at a time: no (P, t, ph, pw) temporaries
        patches = _extract_patches(binned.frames[i : i + 1], layout_y, layout_x, offsets[i : i + 1])
        patches = patches[:, 0] - patches[:, 0].mean(dim=(-2, -1), keepdim=True)
        spectra[:, i] = torch.fft.rfft2(patches * taper) * root_w
    # patch centres: binned px -> unbinned px, (P, 2) x, y
    cy = torch.arange(count_y, device=dev) * step_y + (ph - 1) / 2
    cx = torch.arange(count_x, device=dev) * step_x + (pw - 1) / 2
    cy, cx = torch.meshgrid((cy + 0.5) * scale[0] - 0.5, (cx + 0.5) * scale[1] - 0.5, indexing="ij")
    centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], -1)
    frame_idx = torch.arange(t, device=dev)
    for _ in range(iterations):
        total = motion.shifts_at(frame_idx[None, :], centres[:, None, 0], centres[:, None, 1])
        fit = align_stack(
            spectra,
            SpectraGrid(ky=ky, kx=kx, image_shape=(ph, pw), scale_yx=scale),
            total - offsets * scale_xy,
            SearchSchedule(coarse_iterations=0, outer_iterations=1, max_shift_px=0.0),
        )
        residual = fit.shifts + offsets * scale_xy - global_shifts  # (P, t, 2)
        residual = residual - residual.mean(dim=-2, keepdim=True)
        correction, variance, new_grid = _fit_grid(residual, fit.variance, centres, (nx, ny, nt), (h, w))
        new_global = global_shifts + smooth_trajectory(correction, variance)
        motion = LocalMotion(grid=new_grid, global_shifts=new_global, image_shape=(h, w))
    if t < 4 or _held_out_gain(residual, fit.variance, centres, (nx, ny, nt), (h, w)) <= 3.0:
        # the local model does not predict held-out frames better than global motion alone
        return LocalMotion(
            grid=torch.zeros((nt, ny, nx, 2), device=dev), global_shifts=global_shifts, image_shape=(h, w)
        )
    return motion
