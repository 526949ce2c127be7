"""Fiducial bundle adjustment (like IMOD ``tiltalign``).

Tilt axis, per-view shifts, grouped
magnifications and tilt angles, and 3-D bead positions from bead tracks.

Model (``core/geometry.py``): bead b in view v lands at
``c + m_v R(axis) (x_b cos(th_v) + z_b sin(th_v), y_b) + s_v`` (raw px, IMOD's centre c), with
``th_v = tilt_v + dth_v``. ``log m_v`` and ``dth_v`` are linear interpolations between group
nodes every ``group_size`` views and are 0 at the reference view (the one nearest 0°); the mean
bead position is held at 0. Levenberg-Marquardt on the reprojection error (Jacobian by torch
autograd), then Tukey-biweight re-weighting (IMOD's robust fitting: weight
``(1 - u^2)^2``, ``u = r / (4.685 k sigma)``, sigma from the median residual). A constant tilt
offset cannot be seen in projections (it rotates the specimen); it is set afterwards so the
beads' surface planes are level (``solve_tilt_offset``), as tiltalign suggests.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from tiltflow.core.align.residuals import fit_beads_and_shifts
from tiltflow.core.align.tracking import Tracks
from tiltflow.core.align.verdict import offset_spread_deg
from tiltflow.core.geometry import image_centre
from tiltflow.core.transforms import geometry_to_xf

__all__ = ["BundleOptions", "FiducialSolution", "solve_alignment", "tukey_weights"]

_RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))  # median of |2-D unit Gaussian|


@dataclass(frozen=True)
class FiducialSolution:
    """Result of :func:`solve_alignment`; views in tilt order, px of the tracked images."""

    xf: torch.Tensor  # (t, 6) IMOD .xf, A = R(-axis) / magnification
    tilt_angles_deg: torch.Tensor  # (t,) refined: input + grouped change + tilt offset
    tilt_axis_deg: float  # from +y, counter-clockwise
    tilt_offset_deg: float  # added to every view so the bead surfaces are level
    tilt_offset_sd_deg: float  # its jackknife SD over the beads (NaN when not levelled)
    magnification: torch.Tensor  # (t,) of each view relative to the reference view
    shifts_px: torch.Tensor  # (t, 2) raw-image shifts s (geometry convention)
    bead_xyz_px: torch.Tensor  # (n, 3) specimen frame, mean zero
    projected_px: torch.Tensor  # (n, t, 2) model positions of every bead in every view
    residuals_px: torch.Tensor  # (n, t) |observed - model|, NaN where not observed
    weights: torch.Tensor  # (n, t) final robust weights (0 where not observed)
    mean_residual_px: float  # mean over all observed points (tiltalign's mean)
    per_view_residual_px: torch.Tensor  # (t,)
    per_bead_residual_px: torch.Tensor  # (n,)
    flagged_beads: torch.Tensor  # (k,) long: mean weight < 0.3 or residual > 4 x median
    flagged_views: torch.Tensor  # (k,) long: the same rule per view
    reference_view: int


@dataclass(frozen=True)
class BundleOptions:
    """What :func:`solve_alignment` solves for, and how robustly."""

    solve_tilt_offset: bool = True
    solve_magnification: bool = True
    solve_tilt_angles: bool = True
    solve_tilt_axis: bool = True  # False: keep ``tilt_axis_deg_initial``
    group_size: int = 5  # views between the nodes of grouped magnifications and tilt angles
    robust: bool = True  # Tukey-biweight re-weighting
    k_factor: float = 1.0  # scales the Tukey cut-off
    reference_view: int | None = None  # default: the view nearest 0°
    robust_rounds: int = 8
    max_iterations: int = 100  # Levenberg-Marquardt iterations per round


def tukey_weights(residuals_px: torch.Tensor, *, k_factor: float = 1.0) -> torch.Tensor:
    """Weigh residual magnitudes by Tukey's biweight.

    Tukey biweight of residual magnitudes (NaN -> 0): ``(1 - u^2)^2`` for ``u < 1``, where
    ``u = r / (4.685 k_factor sigma)`` and ``sigma = median(r) / 1.1774`` (2-D Gaussian).
    """
    r = torch.nan_to_num(residuals_px, nan=torch.inf)
    finite = torch.isfinite(r)
    sigma = r[finite].median() / _RAYLEIGH_MEDIAN if bool(finite.any()) else r.new_tensor(1.0)
    u = r / (4.685 * k_factor * sigma.clamp_min(1e-6))
    return torch.where(u < 1.0, (1.0 - u**2) ** 2, torch.zeros_like(r))


def _node_matrix(t: int, group_size: int, ref: int, device) -> torch.Tensor:
    """(t, g-1): linear interpolation between nodes every ``group_size`` views, 0 at ``ref``."""
    nodes = torch.linspace(
        0, t - 1, max(2, math.ceil((t - 1) / max(group_size, 1)) + 1), dtype=torch.float64, device=device
    )
    v = torch.arange(t, dtype=torch.float64, device=device)[:, None]
    spacing = float(nodes[1] - nodes[0])
    hat = (1.0 - (v - nodes[None]).abs() / spacing).clamp_min(0.0)  # rows sum to 1
    return (hat - hat[ref : ref + 1])[:, 1:]


def _lm(fun, p: torch.Tensor, max_iterations: int) -> torch.Tensor:
    """Levenberg-Marquardt with Marquardt's diagonal scaling and autograd Jacobians."""
    jac = torch.func.jacfwd(fun)
    r = fun(p)
    cost, lam = float(r @ r), 1e-3
    eye = torch.eye(p.numel(), dtype=p.dtype, device=p.device)
    for _ in range(max_iterations):
        with warnings.catch_warnings():  # torch's forward-AD import warns about torch.jit.script
            warnings.simplefilter("ignore", DeprecationWarning)
            j = jac(p)
        g, h = j.T @ r, j.T @ j
        improved = False
        while lam < 1e10:
            step = torch.linalg.solve(h + lam * torch.diag(h.diagonal()) + 1e-9 * eye, -g)
            r_new = fun(p + step)
            cost_new = float(r_new @ r_new)
            if cost_new < cost:
                improved = True
                break
            lam *= 4.0
        if not improved:
            break
        p, r, gain, cost = p + step, r_new, cost - cost_new, cost_new
        lam = max(lam / 3.0, 1e-9)
        if gain <= 1e-10 * max(cost, 1e-12):
            break
    return p


def _surface_tilt_deg(xyz: torch.Tensor, max_deg: float = 15.0) -> float:
    """Rotation about y (degrees) that levels the beads on one or two parallel surfaces.

    Robust: for trial angles every 0.1°, the levelled heights are explained by the best pair of
    plane heights (quantiles of the beads) under a truncated quadratic loss, so beads inside the
    ice do not pull the slope; then two parallel planes (one when a surface holds fewer than two
    beads) are least-squares fitted to the beads within ``cut`` of them.
    """
    x, y, z = (xyz[:, i].to(torch.float64) for i in range(3))
    cut = max(2.0, 0.02 * float(z.max() - z.min()))  # px; surfaces are not perfectly flat
    trial = torch.deg2rad(torch.arange(-max_deg, max_deg + 1e-9, 0.1, dtype=torch.float64, device=xyz.device))
    level = z[None] + torch.tan(trial)[:, None] * x[None]  # (a, n): z' after rotation
    q = torch.linspace(0, 1, min(z.numel(), 32), dtype=torch.float64, device=xyz.device)
    cand = torch.quantile(level, q, dim=1).T  # (a, c) candidate heights
    best_cost, best = math.inf, (0, 0.0, 0.0)
    for a0 in range(0, trial.numel(), 16):  # bounded memory
        lv, cd = level[a0 : a0 + 16], cand[a0 : a0 + 16]
        dist = ((lv[:, None, :] - cd[:, :, None]) ** 2).clamp_max(cut**2)  # (a, c, n)
        pair = torch.minimum(dist[:, :, None, :], dist[:, None, :, :]).sum(-1)  # (a, c, c)
        k = int(pair.reshape(-1).argmin())
        if float(pair.reshape(-1)[k]) < best_cost:
            ai, rest = divmod(k, pair.shape[1] * pair.shape[2])
            i, j = divmod(rest, pair.shape[2])
            best_cost = float(pair.reshape(-1)[k])
            best = (a0 + ai, float(cd[ai, i]), float(cd[ai, j]))
    h, hi, hj = level[best[0]], best[1], best[2]
    near_i, near_j = (h - hi).abs() <= cut, (h - hj).abs() <= cut
    upper = near_i & ((h - hi).abs() <= (h - hj).abs())
    lower = near_j & ~upper
    if int(lower.sum()) >= 2 and int(upper.sum()) >= 2:
        design = torch.stack([x, y, upper.to(x), lower.to(x)], -1)[upper | lower]
        target = z[upper | lower]
    else:  # one surface: the plane holding more beads
        one = upper if int(upper.sum()) >= int(lower.sum()) else lower
        design, target = torch.stack([x, y, torch.ones_like(x)], -1)[one], z[one]
    coef = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
    return -math.degrees(math.atan(float(coef[0])))


def _check_tracks(tracks, tilt_angles_deg) -> tuple[torch.Tensor, torch.Tensor]:
    pos = tracks.positions_px if isinstance(tracks, Tracks) else torch.as_tensor(tracks)
    pos = pos.to(torch.float64)
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).to(pos.device)
    t = pos.shape[1] if pos.ndim == 3 else -1
    if pos.ndim != 3 or pos.shape[-1] != 2 or angles.shape != (t,):
        raise ValueError(
            f"tracks must be (n_beads, t, 2) with one tilt angle per view; got "
            f"{tuple(pos.shape)} and {tuple(angles.shape)} angles"
        )
    if int((torch.isfinite(pos).all(-1).sum(1) >= 3).sum()) < 3:
        raise ValueError(
            "solve_alignment: need at least 3 beads each seen in 3 or more views; "
            "track more beads or lower the tracking threshold"
        )
    return pos, angles


def _irls(p, residual, beads, *, robust, rounds, k_factor, max_iterations):
    """Solve by Levenberg-Marquardt, then Tukey re-weighting until the weights settle.

    LM on ``residual(p)`` (m, 2), then Tukey re-weighting until the weights settle; the
    mean of ``beads(p)`` (n, 3) is held at 0 (the free translation).
    """
    m = residual(p).shape[0]
    weights = torch.ones(m, dtype=p.dtype, device=p.device)
    gauge = 10.0 * math.sqrt(max(m, 1))
    for round_ in range(rounds + 1 if robust else 1):
        sw = weights.sqrt()[:, None]

        def fun(q: torch.Tensor, sw=sw) -> torch.Tensor:
            return torch.cat([(residual(q) * sw).reshape(-1), gauge * beads(q).mean(0)])

        p = _lm(fun, p, max_iterations)
        if not robust:
            break
        new = tukey_weights(residual(p).norm(dim=-1), k_factor=k_factor)
        change = float((new - weights).abs().max())
        weights = new
        if round_ > 0 and change < 0.01:
            break
    return p, weights


def solve_alignment(
    tracks: Tracks | torch.Tensor,  # Tracks, or positions (n, t, 2) raw px with NaN missing
    tilt_angles_deg: torch.Tensor,  # (t,) as stored (nominal), views in tilt order
    *,
    tilt_axis_deg_initial: float,
    image_shape: tuple[int, int],  # (ny, nx) of the tracked images
    options: BundleOptions | None = None,
) -> FiducialSolution:
    """Solve the fiducial bundle adjustment of bead tracks (IMOD ``tiltalign``; module docstring).

    Views without beads keep shift 0 (:func:`~tiltflow.core.align.fiducial.fill_beadless_views`
    places them).

    Parameters
    ----------
    tracks : Tracks or torch.Tensor
        Bead tracks, or positions ``(n, t, 2)`` raw (x, y) px with NaN where a bead was not seen.
    tilt_angles_deg : torch.Tensor
        ``(t,)`` nominal tilt angles in degrees, views in tilt order.
    tilt_axis_deg_initial : float
        Starting tilt-axis angle, degrees from +y, counter-clockwise.
    image_shape : tuple of int
        ``(ny, nx)`` of the tracked images.
    options : BundleOptions, optional
        What is solved for (tilt offset, grouped magnifications and tilt angles, axis) and how
        robustly; default: everything, robust.

    Returns
    -------
    FiducialSolution
        ``xf`` ``(t, 6)`` IMOD rows, refined angles and axis, 3-D beads, residuals in px.

    Raises
    ------
    ValueError
        For fewer than 3 beads each seen in 3 or more views, or malformed tracks.

    Examples
    --------
    >>> import torch
    >>> from tiltflow.core.align.residuals import project_beads
    >>> angles = torch.arange(-30.0, 31.0, 10.0)
    >>> xyz = torch.tensor([[-20.0, -20, 5], [20, -15, -5], [-10, 25, 0], [15, 10, 8], [0, 0, -8]])
    >>> obs = project_beads(xyz, angles, tilt_axis_deg=85.0, shifts_px=torch.zeros(7, 2), image_shape=(128, 128))
    >>> sol = solve_alignment(obs, angles, tilt_axis_deg_initial=84.0, image_shape=(128, 128))
    >>> round(sol.tilt_axis_deg, 1), sol.mean_residual_px < 0.01
    (85.0, True)
    """
    o = BundleOptions() if options is None else options
    pos, angles = _check_tracks(tracks, tilt_angles_deg)
    dev = pos.device
    n, t = pos.shape[:2]
    seen = torch.isfinite(pos).all(-1)
    ref = int(torch.argmin(angles.abs())) if o.reference_view is None else int(o.reference_view)
    bi, vi = torch.nonzero(seen, as_tuple=True)
    obs = pos[bi, vi]
    wm = _node_matrix(t, o.group_size, ref, dev) if o.solve_magnification else torch.zeros(t, 0).to(pos)
    wt = _node_matrix(t, o.group_size, ref, dev) if o.solve_tilt_angles else torch.zeros(t, 0).to(pos)
    gm, gt = wm.shape[1], wt.shape[1]
    centre = torch.tensor(image_centre(image_shape), dtype=torch.float64, device=dev)
    th0 = torch.deg2rad(angles)
    axis0 = torch.tensor(math.radians(tilt_axis_deg_initial), dtype=torch.float64, device=dev)

    def unpack(p: torch.Tensor):
        a = p[0] if o.solve_tilt_axis else axis0
        logm, dth = wm @ p[1 : 1 + gm], wt @ p[1 + gm : 1 + gm + gt]
        s = p[1 + gm + gt : 1 + gm + gt + 2 * t].reshape(t, 2)
        return a, logm, dth, s, p[1 + gm + gt + 2 * t :].reshape(n, 3)

    def project(p: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a, logm, dth, s, xyz = unpack(p)
        th, m = th0[v] + dth[v], torch.exp(logm[v])
        ux = (xyz[b, 0] * torch.cos(th) + xyz[b, 2] * torch.sin(th)) * m
        uy = xyz[b, 1] * m
        ca, sa = torch.cos(a), torch.sin(a)
        return torch.stack([ca * ux - sa * uy, sa * ux + ca * uy], -1) + centre + s[v]

    xyz0, s0 = fit_beads_and_shifts(
        pos, angles, tilt_axis_deg=tilt_axis_deg_initial, image_shape=image_shape, iterations=4
    )
    xyz0 = torch.nan_to_num(xyz0, nan=0.0)
    p = torch.cat(
        [
            torch.tensor([math.radians(tilt_axis_deg_initial)]).to(pos),
            torch.zeros(gm + gt).to(pos),
            s0.reshape(-1),
            xyz0.reshape(-1),
        ]
    )
    p, weights = _irls(
        p,
        lambda q: project(q, bi, vi) - obs,
        lambda q: unpack(q)[4],
        robust=o.robust,
        rounds=o.robust_rounds,
        k_factor=o.k_factor,
        max_iterations=o.max_iterations,
    )
    return _solution(p, unpack, project, pos, weights, angles, ref, o.solve_tilt_offset)


def _solution(p, unpack, project, pos, weights, angles, ref, solve_tilt_offset) -> FiducialSolution:
    """Build the solution at parameters ``p``: residuals, weights per point, tilt offset, flags."""
    a, logm, dth, s, xyz = (x.detach() for x in unpack(p))
    dev = pos.device
    n, t = pos.shape[:2]
    seen = torch.isfinite(pos).all(-1)
    bi, vi = torch.nonzero(seen, as_tuple=True)
    b_all = torch.arange(n, device=dev).repeat_interleave(t)
    v_all = torch.arange(t, device=dev).repeat(n)
    projected = project(p, b_all, v_all).detach().reshape(n, t, 2)
    residuals = torch.where(seen, (pos - projected).norm(dim=-1), torch.nan)
    w = torch.zeros(n, t, dtype=torch.float64, device=dev)
    w[bi, vi] = weights
    axis = math.degrees(float(a))
    tilts = angles + torch.rad2deg(dth)
    offset, offset_sd = 0.0, math.nan
    # beads with a well-determined z: seen over at least half the tilt range (or 30°)
    seen_deg = torch.where(seen & (w > 0.5), angles[None], torch.nan)
    span = torch.nan_to_num(seen_deg, nan=-1e9).amax(1) - torch.nan_to_num(seen_deg, nan=1e9).amin(1)
    solid = span >= min(30.0, 0.5 * float(angles.max() - angles.min()))
    if solve_tilt_offset and int(solid.sum()) >= 4:
        offset = _surface_tilt_deg(xyz[solid])
        offset_sd = offset_spread_deg(xyz[solid], _surface_tilt_deg)
        phi = math.radians(offset)
        x, z = xyz[:, 0], xyz[:, 2]
        xyz = torch.stack([x * math.cos(phi) - z * math.sin(phi), xyz[:, 1], x * math.sin(phi) + z * math.cos(phi)], -1)
        tilts = tilts + offset
    mag = torch.exp(logm)
    per_view = torch.nanmean(residuals, dim=0)
    per_bead = torch.nanmean(residuals, dim=1)
    mean_w_bead = w.sum(1) / seen.sum(1).clamp_min(1)
    mean_w_view = w.sum(0) / seen.sum(0).clamp_min(1)

    def flag(per: torch.Tensor, mean_w: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        med = torch.nanmedian(per)
        bad = present & ((mean_w < 0.3) | (per > 4.0 * med))
        return torch.nonzero(bad).squeeze(1)

    return FiducialSolution(
        xf=geometry_to_xf(axis, s, 1.0 / mag),
        tilt_angles_deg=tilts,
        tilt_axis_deg=axis,
        tilt_offset_deg=offset,
        tilt_offset_sd_deg=offset_sd,
        magnification=mag,
        shifts_px=s,
        bead_xyz_px=xyz,
        projected_px=projected,
        residuals_px=residuals,
        weights=w,
        mean_residual_px=float(residuals[seen].mean()),
        per_view_residual_px=per_view,
        per_bead_residual_px=per_bead,
        flagged_beads=flag(per_bead, mean_w_bead, seen.any(1)),
        flagged_views=flag(per_view, mean_w_view, seen.any(0)),
        reference_view=ref,
    )
