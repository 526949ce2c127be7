"""Bead tracking through a tilt series (in the spirit of IMOD ``beadtrack``).

Bead tracking through a tilt series: seeding near 0°, model-based prediction, local search,
gap filling (in the spirit of IMOD ``beadtrack``).

Positions are raw pixel (x, y); views are sorted by tilt. The tracking model is
``p = c + R(axis) (x cos(theta) + z sin(theta), y) + s_view`` (``core/geometry.py``): every tracked
bead gets a 3-D position and every view a shift, re-fitted as views are added
(``residuals.fit_beads_and_shifts``). Views are visited alternately on both sides of the seed
view. A bead seen once has an unknown z, so it is searched along a slit in the x' direction
(``max_z_px * |sin(theta) - sin(theta_seed)|`` long); once beads have a z, the view's common
offset is found first by summing their correlation maps (robust to coarse-alignment errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from tiltflow.core.align.beads import bead_template, detect_beads, ncc_map, subpixel_peak
from tiltflow.core.align.residuals import fit_beads_and_shifts, project_beads
from tiltflow.core.geometry import rotation_matrix_2d

__all__ = ["TrackingOptions", "Tracks", "fill_gaps", "locate_beads", "refine_tilt_axis", "track_beads"]


@dataclass(frozen=True)
class Tracks:
    """Bead tracks through a tilt series sorted by tilt angle."""

    positions_px: torch.Tensor  # (n, t, 2) raw (x, y), NaN where the bead was not found
    scores: torch.Tensor  # (n, t) NCC with the bead template, NaN where not found
    predicted_px: torch.Tensor  # (n, t, 2) the tracking model's positions in every view
    seed_view: int  # index of the view the beads were seeded in
    tilt_axis_deg: float  # axis angle of the tracking model (refined from the tracks)

    @property
    def found(self) -> torch.Tensor:  # (n, t) bool
        """Where a bead was found: ``(n, t)`` bool."""
        return torch.isfinite(self.positions_px).all(-1)


@dataclass(frozen=True)
class TrackingOptions:
    """Search and outlier settings of :func:`track_beads` and :func:`fill_gaps` (d = bead diameter)."""

    search_radius_px: float | None = None  # default max(0.3 d, 3)
    vote_radius_px: float | None = None  # common-offset search, default max(d, 8)
    max_z_px: float | None = None  # bead |z| range for slit searches, default max(h, w)
    min_score: float = 0.35  # lowest NCC with the bead template
    max_residual_px: float | None = None  # outlier limit after tracking, default max(0.3 d, 2.5)
    fill_gaps: bool = True  # search missing points again around the model's predictions
    refine_axis: bool = True  # refine the tilt axis from the tracks

    def resolved(self, bead_diameter_px: float) -> TrackingOptions:
        """Fill in the defaults that depend on the bead diameter."""
        d = float(bead_diameter_px)
        return replace(
            self,
            search_radius_px=max(0.3 * d, 3.0) if self.search_radius_px is None else self.search_radius_px,
            vote_radius_px=max(d, 8.0) if self.vote_radius_px is None else self.vote_radius_px,
            max_residual_px=max(0.3 * d, 2.5) if self.max_residual_px is None else self.max_residual_px,
        )


def locate_beads(
    image: torch.Tensor,  # (h, w)
    predicted_px: torch.Tensor,  # (n, 2) raw (x, y)
    *,
    template: torch.Tensor,  # (L, L) from beads.bead_template
    radius_px: float,  # search radius across the slit (or of a disc)
    along_px: torch.Tensor | float = 0.0,  # (n,) extra half-length along x' (slit), px
    tilt_axis_deg: float = 0.0,  # x' is perpendicular to the axis
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # xy (n, 2), scores (n,), maps (n, S, S)
    """Best NCC peak of each bead within an ellipse around its prediction.

    The ellipse has semi-axes ``radius_px + along_px`` along x' and ``radius_px`` along the axis.
    A peak on the region's edge that is not a local maximum is rejected (NaN). ``maps`` are the
    NCC maps on the integer grid centred at the rounded predictions (for voting).
    """
    n = predicted_px.shape[0]
    dev = image.device
    along = torch.as_tensor(along_px, dtype=torch.float64, device=dev).expand(n)
    half = int(math.ceil(radius_px + (float(along.max()) if n else 0.0))) + 1
    size_t = template.shape[-1]
    pad = half + size_t // 2 + 1
    img = torch.nn.functional.pad(image[None, None].float(), (pad,) * 4, mode="constant", value=float(image.mean()))[
        0, 0
    ]
    base = torch.round(predicted_px.to(torch.float64)).long()
    # one NCC map of the whole (padded) image, then each bead's window of it: windows of many
    # beads overlap, and the full map costs one FFT
    full = ncc_map(img[None], template.to(dev), padding="valid")[0]  # window top-left (r, c)
    r = torch.arange(-half, half + 1, device=dev)
    rows = (base[:, 1, None] + pad - size_t // 2 + r[None])[:, :, None]
    cols = (base[:, 0, None] + pad - size_t // 2 + r[None])[:, None, :]
    rows, cols = rows.clamp(0, full.shape[0] - 1), cols.clamp(0, full.shape[1] - 1)
    maps = full[rows, cols]  # (n, S, S)
    g = torch.arange(-half, half + 1, dtype=torch.float64, device=dev)
    off = torch.stack(torch.broadcast_tensors(g[None, None, :], g[None, :, None]), -1)
    off = off + (base - predicted_px.to(torch.float64))[:, None, None, :]  # from the prediction
    aligned = off @ rotation_matrix_2d(-tilt_axis_deg).to(off).T
    inside = (aligned[..., 0] / (radius_px + along[:, None, None])) ** 2 + (aligned[..., 1] / radius_px) ** 2 <= 1.0
    masked = torch.where(inside, maps.to(torch.float64), -torch.inf)
    flat = masked.reshape(n, -1).argmax(1) if n else torch.zeros(0, dtype=torch.long, device=dev)
    iy, ix = flat // masked.shape[-1], flat % masked.shape[-1]
    idx = torch.arange(n, device=dev)
    best = maps[idx, iy, ix]
    neigh = torch.nn.functional.max_pool2d(maps[:, None], 3, stride=1, padding=1)[:, 0]
    is_peak = best >= neigh[idx, iy, ix]
    xy = (base + torch.stack([ix, iy], -1) - half).to(torch.float64)
    xy = xy + subpixel_peak(maps, iy, ix).to(torch.float64)
    ok = is_peak & torch.isfinite(best)
    xy = torch.where(ok[:, None], xy, torch.nan)
    return xy, torch.where(ok, best.to(torch.float64), torch.nan), maps


def _vote(maps: torch.Tensor, keep: torch.Tensor, radius_px: float) -> torch.Tensor:
    """Find the common offset (x, y) of beads ``keep`` from their summed NCC maps within ``radius_px``."""
    total = maps[keep].clamp_min(0).sum(0)
    half = total.shape[-1] // 2
    g = torch.arange(-half, half + 1, device=maps.device)
    disc = (g[None, :] ** 2 + g[:, None] ** 2) <= radius_px**2
    total = torch.where(disc, total, -torch.inf)
    k = int(total.argmax())
    iy, ix = torch.tensor([k // total.shape[-1]]), torch.tensor([k % total.shape[-1]])
    sub = subpixel_peak(torch.where(disc, total, 0)[None], iy.to(maps.device), ix.to(maps.device))
    return (torch.stack([ix, iy], -1).to(sub) - half + sub)[0].to(torch.float64)


def refine_tilt_axis(
    positions_px: torch.Tensor,  # (n, t, 2) raw, NaN missing
    tilt_angles_deg: torch.Tensor,  # (t,)
    *,
    tilt_axis_deg: float,  # starting value
    image_shape: tuple[int, int],
    search_deg: float = 3.0,
    step_deg: float = 0.25,
) -> float:
    """Refine the in-plane tilt-axis angle from bead tracks.

    In-plane axis angle from bead tracks: minimises the median residual of the tracking model
    (3-D beads + per-view shifts, ``residuals.fit_beads_and_shifts``) over a grid of angles
    around ``tilt_axis_deg``, refined by a parabola. The full solve
    (``bundle.solve_alignment``) refines it further.
    """
    trial = tilt_axis_deg + torch.arange(-search_deg, search_deg + 1e-9, step_deg, dtype=torch.float64)
    seen = torch.isfinite(positions_px).all(-1)
    cost = []
    for a in trial.tolist():
        xyz, s = fit_beads_and_shifts(
            positions_px, tilt_angles_deg, tilt_axis_deg=a, image_shape=image_shape, iterations=3
        )
        pred = project_beads(xyz, tilt_angles_deg, tilt_axis_deg=a, shifts_px=s, image_shape=image_shape)
        cost.append(float(((pred - positions_px) ** 2).sum(-1)[seen].sqrt().median()))
    c = torch.tensor(cost)
    i = int(c.argmin())
    if 0 < i < len(cost) - 1:
        den = c[i - 1] - 2 * c[i] + c[i + 1]
        frac = float(0.5 * (c[i - 1] - c[i + 1]) / den) if den > 0 else 0.0
        return float(trial[i]) + max(-0.5, min(0.5, frac)) * step_deg
    return float(trial[i])


def _visit_order(seed: int, t: int) -> list[int]:
    order = []
    for k in range(1, t):
        order += [v for v in (seed + k, seed - k) if 0 <= v < t]
    return order


def track_beads(
    views: torch.Tensor,  # (t, h, w) raw views sorted by tilt angle
    tilt_angles_deg: torch.Tensor,  # (t,)
    *,
    tilt_axis_deg: float,
    coarse_shifts_px: torch.Tensor,  # (t, 2) raw-image shifts, e.g. CoarseResult.shifts_px
    bead_diameter_px: float,
    seeds: torch.Tensor | None = None,  # (n, 2) bead positions in the seed view, default detected
    seed_view: int | None = None,  # default: the view nearest 0°
    options: TrackingOptions | None = None,
) -> Tracks:
    """Seed beads in the view nearest 0° and follow them through the series (module docstring).

    After the first pass the model (axis included when ``options.refine_axis``) is re-fitted to
    all points; points further than ``options.max_residual_px`` from it are dropped and missing
    points are searched again around the model's prediction (``options.fill_gaps``).
    """
    if views.ndim != 3:
        raise ValueError(f"views must have shape (t, h, w), got {tuple(views.shape)}")
    t, h, w = views.shape
    dev = views.device
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).to(dev)
    coarse = torch.as_tensor(coarse_shifts_px, dtype=torch.float64).to(dev)
    if angles.shape != (t,) or coarse.shape != (t, 2):
        raise ValueError(
            f"need one tilt angle and one (x, y) coarse shift per view for {t} "
            f"views, got {tuple(angles.shape)} and {tuple(coarse.shape)}"
        )
    d = float(bead_diameter_px)
    seed = int(torch.argmin(angles.abs())) if seed_view is None else int(seed_view)
    if seeds is None:
        seeds = detect_beads(views[seed], bead_diameter_px=d, edge_px=d).xy_px
    seeds = torch.as_tensor(seeds, dtype=torch.float64).to(dev).reshape(-1, 2)
    if seeds.shape[0] < 3:
        raise ValueError(
            f"track_beads: only {seeds.shape[0]} beads to seed in view {seed}; pass seeds or check bead_diameter_px"
        )
    opts = (TrackingOptions() if options is None else options).resolved(d)
    search = _Search(
        template=bead_template(d, device=dev),
        margin=d / 2 + 1,
        shape=(h, w),
        radius_px=float(opts.search_radius_px or 0.0),
        vote_px=float(opts.vote_radius_px or 0.0),
        min_score=opts.min_score,
    )
    z_max = float(max(h, w)) if opts.max_z_px is None else opts.max_z_px
    n = seeds.shape[0]
    pos = torch.full((n, t, 2), torch.nan, dtype=torch.float64, device=dev)
    score = torch.full((n, t), torch.nan, dtype=torch.float64, device=dev)
    pos[:, seed], score[:, seed] = seeds, 1.0
    shifts, axis = coarse.clone(), float(tilt_axis_deg)
    sin = torch.sin(torch.deg2rad(angles))
    for count, k in enumerate(_visit_order(seed, t)):
        done = torch.isfinite(pos).all(-1)
        j = k - 1 if k > seed else k + 1  # the neighbour towards the seed view, already visited
        shifts[k] = coarse[k] + (shifts[j] - coarse[j])  # carry the neighbour's correction
        xyz, fitted = fit_beads_and_shifts(
            pos, angles, tilt_axis_deg=axis, shifts_px=shifts, iterations=2, image_shape=(h, w)
        )
        shifts = torch.where(done.any(0)[:, None], fitted, shifts)
        if opts.refine_axis and count >= 6 and count % 4 == 2:
            axis = refine_tilt_axis(pos, angles, tilt_axis_deg=axis, image_shape=(h, w))
        pred = project_beads(
            xyz, angles[k : k + 1], tilt_axis_deg=axis, shifts_px=shifts[k : k + 1], image_shape=(h, w)
        )[:, 0]
        seen_sin = torch.where(done, sin[None], 0.0).sum(1) / done.sum(1).clamp_min(1)
        known = done.sum(1) >= 2
        along = torch.where(known, 0.0, z_max * (seen_sin - sin[k]).abs())
        xy, sc, offset = _search_view(views[k], pred, known, along, axis, search)
        shifts[k] = shifts[k] + offset
        ok = torch.isfinite(sc)
        pos[ok, k], score[ok, k] = xy[ok], sc[ok]
    return _finish(views, angles, (pos, score), shifts, axis=axis, seed=seed, d=d, options=opts)


@dataclass(frozen=True)
class _Search:
    template: torch.Tensor
    margin: float
    shape: tuple[int, int]
    radius_px: float
    vote_px: float
    min_score: float

    def inside(self, p: torch.Tensor) -> torch.Tensor:
        h, w = self.shape
        p = torch.nan_to_num(p, nan=-1e9)
        return (
            (p[:, 0] >= self.margin)
            & (p[:, 0] <= w - 1 - self.margin)
            & (p[:, 1] >= self.margin)
            & (p[:, 1] <= h - 1 - self.margin)
        )


def _search_view(image, pred, known, along, axis, search: _Search):
    """Search one view: the common offset by voting, then each bead's peak.

    One view: the common offset by voting (beads with a z), then each bead's peak near its
    shifted prediction. Returns positions (n, 2), scores (n,) (NaN = rejected), offset (2,).
    """
    offset = torch.zeros(2, dtype=torch.float64, device=pred.device)
    if int((known & search.inside(pred)).sum()) >= 3:
        _, _, maps = locate_beads(image, pred, template=search.template, radius_px=search.vote_px, tilt_axis_deg=axis)
        offset = _vote(maps, known & search.inside(pred), search.vote_px)
        pred = pred + offset
    xy, sc, _ = locate_beads(
        image, pred, template=search.template, radius_px=search.radius_px, along_px=along, tilt_axis_deg=axis
    )
    ok = search.inside(pred) & (sc >= search.min_score) & search.inside(xy)
    return xy, torch.where(ok, sc, torch.nan), offset


def fill_gaps(
    views: torch.Tensor,  # (t, h, w)
    positions_px: torch.Tensor,  # (n, t, 2) raw, NaN missing
    scores: torch.Tensor,  # (n, t)
    predicted_px: torch.Tensor,  # (n, t, 2) model, e.g. FiducialSolution.projected_px
    *,
    bead_diameter_px: float,
    tilt_axis_deg: float,
    options: TrackingOptions | None = None,  # search_radius_px, min_score, max_residual_px
    keep_views: tuple[int, ...] = (),  # views whose points are never dropped (the seed view)
) -> tuple[torch.Tensor, torch.Tensor]:  # new positions (n, t, 2), scores (n, t)
    """Drop points far from the model and search missing points near its prediction.

    Points further than ``options.max_residual_px`` from ``predicted_px`` are dropped; missing
    points are searched within ``options.search_radius_px`` of it. Inputs are not modified.
    """
    t, h, w = views.shape
    d = float(bead_diameter_px)
    opts = (TrackingOptions() if options is None else options).resolved(d)
    r_small, tol, min_score = float(opts.search_radius_px or 0.0), float(opts.max_residual_px or 0.0), opts.min_score
    pos, score = positions_px.clone(), scores.clone()
    pred = predicted_px.to(pos)
    bad = ((pos - pred).norm(dim=-1) > tol) & torch.isfinite(pos).all(-1)
    bad[:, list(keep_views)] = False
    pos[bad], score[bad] = torch.nan, torch.nan
    tpl = bead_template(d, device=views.device)
    m = d / 2 + 1
    inside = (pred[..., 0] >= m) & (pred[..., 0] <= w - 1 - m) & (pred[..., 1] >= m) & (pred[..., 1] <= h - 1 - m)
    for k in range(t):
        miss = ~torch.isfinite(pos[:, k]).all(-1) & inside[:, k]
        if not bool(miss.any()):
            continue
        xy, sc, _ = locate_beads(views[k], pred[miss, k], template=tpl, radius_px=r_small, tilt_axis_deg=tilt_axis_deg)
        good = (sc >= min_score) & ((xy - pred[miss, k]).norm(dim=-1) <= tol)
        idx = torch.nonzero(miss).squeeze(1)[good]
        pos[idx, k], score[idx, k] = xy[good], sc[good]
    return pos, score


def _finish(views, angles, found, shifts, *, axis, seed, d, options: TrackingOptions) -> Tracks:
    """Refit the model (axis too), drop outliers, fill gaps around the model's predictions."""
    pos, score = found
    shape = (int(views.shape[-2]), int(views.shape[-1]))
    for _ in range(2 if options.fill_gaps else 1):
        if options.refine_axis:
            axis = refine_tilt_axis(pos, angles, tilt_axis_deg=axis, image_shape=shape)
        xyz, shifts = fit_beads_and_shifts(
            pos, angles, tilt_axis_deg=axis, shifts_px=shifts, iterations=4, image_shape=shape
        )
        pred = project_beads(xyz, angles, tilt_axis_deg=axis, shifts_px=shifts, image_shape=shape)
        if options.fill_gaps:
            pos, score = fill_gaps(
                views,
                pos,
                score,
                pred,
                bead_diameter_px=d,
                tilt_axis_deg=axis,
                options=options,
                keep_views=(seed,),
            )
    xyz, shifts = fit_beads_and_shifts(
        pos, angles, tilt_axis_deg=axis, shifts_px=shifts, iterations=2, image_shape=shape
    )
    pred = project_beads(xyz, angles, tilt_axis_deg=axis, shifts_px=shifts, image_shape=shape)
    return Tracks(positions_px=pos, scores=score, predicted_px=pred, seed_view=seed, tilt_axis_deg=float(axis))
