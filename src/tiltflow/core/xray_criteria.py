"""The detection stage of the X-ray eraser (:mod:`tiltflow.core.xray`, whose docstring gives the method).

Scan areas cut into tiles, their robust statistics, the peak and difference candidates, patches
grown from them, and the tests a patch must pass to be an X-ray rather than a gold bead, its rim,
a smooth bright blob or a Poisson tail.

Internal to :mod:`tiltflow.core.xray` (``_find`` and ``_drop_unlike_xrays`` are what it calls);
images are ``(B, h, w)`` float tensors, points ``(b, y, x)`` index tensors, ``p`` an
``XrayParams``. Imports only :mod:`tiltflow.core.xray_patches`. Pure torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tiltflow.core.xray_patches import (
    _CHUNK,
    _SD_PER_MAD,
    _components,
    _gather,
    _offsets,
    _ring_stats,
    _robust_stats,
)

MAX_COMPACT_PX = 12  # larger normal patches must pass the giant patches' sharp-edge test
MIN_SHARPNESS = 0.4  # (peak - mean of its 8 neighbours) / (peak - annulus mean) of an X-ray
RIM_DARK_SD = 4.0  # a ring this far below its bright side holds a dark feature (a bead)
POISSON_MIN_Z = 4.5  # least Anscombe excess of an X-ray in images of few counts per pixel
POISSON_MAX_COUNTS = 20.0  # ... up to this many counts per pixel (above, tails are Gaussian)


# ----------------------------------------------------------------------------- candidates


def _find(x, p, grid, todo):
    """Scan the areas marked in ``todo`` (ny, nx) for X-ray patches.

    Returns (flat indices, area of the seed) of the patch pixels found there. Every area is
    scanned as a tile (its statistics window plus a margin) so that a rescan of some areas
    computes exactly what a full scan would.
    """
    _, h, w = x.shape
    size, _, nx = grid
    edge = p.edge_exclusion_px
    chunks, loose = [], []  # whole bands (cut with one strided copy) or <= 64 loose areas
    for j, row in enumerate(todo.tolist()):
        areas = [(j, c) for c, f in enumerate(row) if f]
        (chunks if len(areas) == nx else loose).append(areas)
    loose = [area for row in loose for area in row]
    chunks += [loose[i : i + 64] for i in range(0, len(loose), 64)]
    parts = [_scan_tiles(x, areas, size, edge, p) for areas in chunks]
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, empty
    peaks, seeds = ([torch.cat(c) for c in zip(*part, strict=False)] for part in zip(*parts, strict=False))
    coords = list(_peak_patches(x, *peaks, size, edge, p))
    b, y, xx, win, level, scale = seeds
    reach = _grow(win, level, scale, p.grow_criterion, math.inf, (y, xx), (h, w), edge)
    keep = reach.sum((1, 2)) <= p.max_diff_patch_px  # a bigger patch reaches the window edge
    keep &= _stands_out_locally(x, b, y, xx, win[:, win.shape[1] // 2], p.diff_criterion)
    coords.append(_window_coords(reach[keep], b[keep], y[keep], xx[keep]))
    b, y, xx, sy, sx = (torch.cat(c) for c in zip(*coords, strict=False))
    return (b * h + y) * w + xx, (sy // size) * nx + (sx // size).clamp_max(nx - 1)


def _scan_tiles(x, areas, size, edge, p):
    """Find the candidates of scan areas [(row, column)].

    Returns intensity candidates (b, y, x, giant threshold) and difference seeds (b, y, x, windows
    of ``9 * pixel - box3x3``, area mean and SD of it).
    """
    nb, h, w = x.shape
    m = p.max_diff_patch_px
    pad, na, dev = m + 1, len(areas), x.device  # tile = statistics window + seed margin
    t = size + 2 * pad
    s0 = [min(j * size, h - size) for j, _ in areas]  # statistics windows of edge areas
    t0 = [min(c * size, w - size) for _, c in areas]  # are shifted inward
    tiles, border = _cut_tiles(x, areas, s0, t0, size, pad)
    tiles = tiles.view(nb * na, t, t)  # tile i: image i // na, area i % na
    rs = tiles[:, :, :-2] + tiles[:, :, 1:-1]
    rs += tiles[:, :, 2:]
    nd = rs[:, :-2] + rs[:, 1:-1]
    nd += rs[:, 2:]
    nd.sub_(tiles[:, 1:-1, 1:-1], alpha=9.0).neg_()  # 9 * pixel - box = 8 * (pixel - mean8)
    nd4 = nd.view(nb, na, t - 2, t - 2)
    if border:  # edge rows / columns: pixel - mean of its in-image neighbours
        _edge_differences(
            nd4,
            tiles.view(nb, na, t, t),
            border,
            [s0[k] - pad + 1 for k in border],
            [t0[k] - pad + 1 for k in border],
            h,
            w,
        )
    si = 4 if size % 4 == 0 and size >= 40 else 1  # intensity statistics: 4x subsample
    st = 2 if size % 2 == 0 and size >= 20 else 1  # difference statistics: 2x subsample
    core = slice(pad, pad + size)
    mean, sd = _robust_stats(tiles[:, pad : pad + size : si, pad : pad + size : si].reshape(nb * na, -1))
    sub = nd[:, pad - 1 : pad - 1 + size : st, pad - 1 : pad - 1 + size : st].reshape(nb * na, -1)
    if not bool(torch.isfinite(sub.sum())):  # a NaN or inf pixel spoils 3 x 3 differences
        raise ValueError("find_xrays: image contains NaN or inf; replace them before erasing")
    dmean, dsd = _robust_stats(sub)
    tiny = 1e-12 * (float(mean.abs().max()) + 1.0)
    sd, dsd = sd.clamp_min(tiny), dsd.clamp_min(tiny)
    cand = tiles[:, core, core] > (mean + p.scan_criterion * sd)[:, None, None]
    seed = nd[:, pad - 1 : pad - 1 + size, pad - 1 : pad - 1 + size] > (dmean + p.diff_criterion * dsd)[:, None, None]
    i, ty, tx = (cand | seed).nonzero(as_tuple=True)  # one sparse scan for both detectors
    k = i % na
    meta = torch.tensor([[j * size, c * size] for j, c in areas], device=dev)[k]
    y, xx = ty + torch.tensor(s0, device=dev)[k], tx + torch.tensor(t0, device=dev)[k]
    ok = (y >= meta[:, 0].clamp_min(edge)) & (y < torch.clamp(meta[:, 0] + size, max=h - edge))
    ok &= (xx >= meta[:, 1].clamp_min(edge)) & (xx < torch.clamp(meta[:, 1] + size, max=w - edge))
    img = i // na  # pixels assigned to this area (not just in its window), off the edges
    sel = ok & cand[i, ty, tx]
    peaks = (img[sel], y[sel], xx[sel], (mean + (p.scan_criterion + 1.0) * sd)[i[sel]])
    sel = ok & seed[i, ty, tx]
    win = _gather(
        nd.reshape(-1), t - 2, t - 2, i[sel], ty[sel] + pad - 1, tx[sel] + pad - 1, *_offsets(math.inf, -1.0, m)
    )
    return peaks, (img[sel], y[sel], xx[sel], win, dmean[i[sel]], dsd[i[sel]])


def _edge_differences(nd, tiles, border, a, b, h, w):
    """Correct, in place, the differences at the image's edges.

    ``nd`` (B, N, n, n) = 9 * pixel - box3 of ``tiles`` (B, N, n + 2, n + 2) (zeros outside the
    image); for the tiles ``border`` whose nd[0, 0] lies at image (a[i], b[i]) it becomes, at the
    image's edges, 8 * (pixel - mean of its k in-image neighbours) * sqrt((1 + 1/8) / (1 + 1/k))
    (the interior's noise); 0 outside the image.
    """
    n, dev = nd.shape[-1], nd.device
    rows = torch.arange(n, device=dev) + torch.tensor(a, device=dev)[:, None]  # (K, n)
    cols = torch.arange(n, device=dev) + torch.tensor(b, device=dev)[:, None]
    cy = 1 + (rows - 1 >= 0).long() + (rows + 1 < h).long()
    cx = 1 + (cols - 1 >= 0).long() + (cols + 1 < w).long()
    k = cy[:, :, None] * cx[:, None, :] - 1
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    t, iy, ix = (inside & (k < 8)).nonzero(as_tuple=True)
    kk = k[t, iy, ix].to(nd.dtype)
    tile = torch.tensor(border, device=dev)[t]
    pix, d = tiles[:, tile, iy + 1, ix + 1], nd[:, tile, iy, ix]
    scale = 8.0 * torch.sqrt((1.0 + 1.0 / 8.0) / (1.0 + 1.0 / kk))
    nd[:, tile, iy, ix] = scale * (pix - (8.0 * pix - d) / kk)
    t, oy, ox = (~inside).nonzero(as_tuple=True)
    nd[:, torch.tensor(border, device=dev)[t], oy, ox] = 0.0


def _cut_tiles(x, areas, s0, t0, size, pad):
    """Cut (B, n, t, t) copies of the areas' statistics windows plus ``pad``.

    Zeros outside the image, whose tiles are listed in ``border``. Identical values whichever way
    they are cut.
    """
    nb, h, w = x.shape
    t = size + 2 * pad
    tiles = x.new_empty(nb, len(areas), t, t)
    done = set()
    a = s0[0] - pad
    if len(areas) > 2 and a >= 0 and a + t <= h and areas == [(areas[0][0], c) for c in range(len(areas))]:
        # areas 0.. of one band: the regular ones 1..n-1 at once from a strided view
        n = min((w - t + pad) // size, len(areas) - 1) + 1  # areas 1..n-1 fit entirely
        if n > 1:
            view = x[:, a : a + t, size - pad :].unfold(2, t, size)  # window i: area i + 1
            tiles[:, 1:n] = view[:, :, : n - 1].permute(0, 2, 1, 3)
            done = set(range(1, n))
    border = []
    for k, (a, b) in enumerate(zip(s0, t0, strict=False)):
        if k in done:
            continue
        ya, yb, xa, xb = max(a - pad, 0), min(a - pad + t, h), max(b - pad, 0), min(b - pad + t, w)
        if yb - ya < t or xb - xa < t:
            tiles[:, k].zero_()
            border.append(k)
        tiles[:, k, ya - a + pad : yb - a + pad, xa - b + pad : xb - b + pad] = x[:, ya:yb, xa:xb]
    return tiles, border


def _peak_patches(x, b, y, xx, big, size, edge, p):
    """Patches of annulus-tested intensity maxima, normal then giant -> [(b, y, x, sy, sx)]."""
    _, h, w = x.shape
    flat = x.reshape(-1)
    v = flat[(b * h + y) * w + xx]
    near = _gather(flat, h, w, b, y, xx, *_offsets(1.5, 0.5))  # 8 neighbours
    is_max = v >= near.amax(1)
    b, y, xx, v, big = b[is_max], y[is_max], xx[is_max], v[is_max], big[is_max]
    mean8 = near[is_max].mean(1)
    r_in, crit = p.max_radius_px, p.peak_criterion
    for giant in (False, True):
        ring_m, ring_s = _ring_stats(flat, h, w, b, y, xx, r_in, p.annulus_width_px)
        ok = (v - ring_m) > crit * ring_s
        if not giant:  # X-rays are sharp; a smooth blob (a bright bead) is left to the giant test
            ok &= (v - mean8) >= MIN_SHARPNESS * (v - ring_m)
        win = _gather(flat, h, w, b[ok], y[ok], xx[ok], *_offsets(math.inf, -1.0, int(r_in)))
        reach = _grow(win, ring_m[ok], ring_s[ok], p.grow_criterion, r_in, (y[ok], xx[ok]), (h, w), edge)
        # giant patches, and normal ones larger than an X-ray's few pixels (a bead in a bright-
        # bead stack), are erased only when sharp-edged (an X-ray), not a smooth bright blob
        test = torch.ones_like(b[ok], dtype=torch.bool) if giant else reach.flatten(1).sum(1) > MAX_COMPACT_PX
        if bool(test.any()):
            sharp = ~test
            sharp[test] = (
                _big_diff_z(x, b[ok][test], y[ok][test], xx[ok][test], reach[test], size) > p.big_diff_criterion
            )
            ok[ok.clone()] = sharp
            reach = reach[sharp]
        yield _window_coords(reach, b[ok], y[ok], xx[ok])
        nxt = ~ok & (v > big)  # failed, but above scan criterion + 1: try as a giant peak
        b, y, xx, v, big, mean8 = b[nxt], y[nxt], xx[nxt], v[nxt], big[nxt], mean8[nxt]
        r_in, crit = p.extra_large_radius_px, p.giant_criterion


def _grow(v, level, scale, crit, radius, seeds_yx, shape_hw, edge):
    """Grow patches in windows ``v`` (n, s*s) centred on seeds at ``seeds_yx`` (y (n,), x (n,)).

    Returns (n, s, s) bool: the 8-connected pixels reachable from the centre, within ``radius``,
    with ``v - level > crit * scale``, more than ``edge`` px inside an image of ``shape_hw`` (h, w).
    """
    y, x = seeds_yx
    h, w = shape_hw
    s = math.isqrt(v.shape[1])
    r = s // 2
    dy, dx = (t.to(y.device) for t in _offsets(math.inf, -1.0, r))
    ok = (v - level[:, None]) > crit * scale[:, None]
    yy, xw = y[:, None] + dy, x[:, None] + dx
    ok &= (dy.square() + dx.square() <= radius * radius) & (yy >= edge) & (yy < h - edge)
    ok &= (xw >= edge) & (xw < w - edge)
    ok = ok.view(-1, s, s)
    reach = torch.zeros_like(ok)
    reach[:, r, r] = True
    for _ in range(s * s):  # stops when no pixel joins; at most the window's path length
        grown = (F.max_pool2d(reach[:, None].float(), 3, 1, 1)[:, 0] > 0) & ok
        grown[:, r, r] = True
        if torch.equal(grown, reach):
            break
        reach = grown
    return reach


def _window_coords(reach, b, y, x):
    """Turn pixels of (n, s, s) windows centred on (y, x) into (b, y, x, seed y, seed x)."""
    r = reach.shape[-1] // 2
    i, wy, wx = reach.nonzero(as_tuple=True)
    return b[i], y[i] + wy - r, x[i] + wx - r, y[i], x[i]


# ----------------------------------------------------------------------------- tests


def _big_diff_z(x, b, y, xx, reach, size):
    """Score the edges of giant patches (n,).

    Per patch: the mean of the top quarter of its pixels' max |adjacent difference|, in SDs above
    the mean |adjacent difference| of its scan area.
    """
    _, h, w = x.shape
    r = reach.shape[-1] // 2 + 1
    v = _gather(x.reshape(-1), h, w, b, y, xx, *_offsets(math.inf, -1.0, r))
    v = v.view(-1, 2 * r + 1, 2 * r + 1)
    dh, dv = (v[:, :, 1:] - v[:, :, :-1]).abs(), (v[:, 1:] - v[:, :-1]).abs()
    c = slice(1, -1)
    best = torch.stack([dh[:, c, :-1], dh[:, c, 1:], dv[:, :-1, c], dv[:, 1:, c]]).amax(0)
    top = torch.where(reach, best, -math.inf).flatten(1).sort(1, descending=True).values
    k = (reach.flatten(1).sum(1) * 0.25).round().clamp_min(1)  # IMOD: most extreme 1/4
    first = torch.arange(top.shape[1], device=x.device)[None] < k[:, None]
    avg = torch.where(first, top, 0.0).sum(1) / k
    key = torch.stack([b, torch.clamp(y // size * size, max=h - size), torch.clamp(xx // size * size, max=w - size)], 1)
    key, which = torch.unique(key, dim=0, return_inverse=True)  # scan areas of these patches
    g = torch.arange(size, device=x.device)
    win = x[key[:, 0, None, None], (key[:, 1, None] + g)[:, :, None], (key[:, 2, None] + g)[:, None, :]]
    d = torch.cat([(win[:, :, 1:] - win[:, :, :-1]).abs().flatten(1), (win[:, 1:] - win[:, :-1]).abs().flatten(1)], 1)
    m = d.mean(1)
    sd = ((d - m[:, None]).abs().mean(1) * _SD_PER_MAD).clamp_min(1e-12)
    return (avg - m[which]) / sd[which]


def _stands_out_locally(x, b, y, xx, value, crit):
    """Tell which difference seeds also stand out locally: bool (n,).

    True where ``value`` (9 * pixel - box3) also exceeds ``crit`` SDs of the differences in the
    seed's own 15 x 15 neighbourhood (their 5 x 5 centre left out; SD from the noisiest quarter,
    75th percentile of |d - median| / 1.1503): where dark beads lower the noise of part of a scan
    area, its robust SD is too small for the pixels around them.
    """
    _, h, w = x.shape
    r = 8
    g = torch.arange(-r + 1, r, device=x.device)
    centre = (g.abs() <= 2)[:, None] & (g.abs() <= 2)[None, :]
    out = []
    for i in range(0, y.numel(), _CHUNK):
        bi, yi, xi = b[i : i + _CHUNK], y[i : i + _CHUNK], xx[i : i + _CHUNK]
        v = _gather(x.reshape(-1), h, w, bi, yi, xi, *_offsets(math.inf, -1.0, r))
        v = v.view(-1, 1, 2 * r + 1, 2 * r + 1)
        nd = (9.0 * v[:, 0, 1:-1, 1:-1] - 9.0 * F.avg_pool2d(v, 3, 1)[:, 0]).flatten(1)
        ok = ((yi[:, None] + g >= 1) & (yi[:, None] + g < h - 1))[:, :, None] & (
            (xi[:, None] + g >= 1) & (xi[:, None] + g < w - 1)
        )[:, None, :]
        nd = torch.where((ok & ~centre).flatten(1), nd, math.nan)
        med = nd.nanmedian(1).values
        sd = torch.nanquantile((nd - med[:, None]).abs(), 0.75, dim=1) / 1.1503
        out.append(value[i : i + _CHUNK] - med > crit * sd.clamp_min(1e-12))
    return torch.cat(out) if out else value.new_zeros(0, dtype=torch.bool)


def _drop_unlike_xrays(x, lin, size, p):
    """Return ``lin`` without the patches that are not X-rays.

    Judged on the ring 1.5 < r <= 4.5 px (in-image, unmasked pixels) around each patch's brightest
    pixel and its scan area's robust mean and SD:

    - a bead's rim: the ring holds dark pixels (10th percentile more than ``RIM_DARK_SD`` SDs
      below the 75th) and the peak is not ``peak_criterion`` SDs above the ring's bright side
      (75th percentile): the bead lowered the local mean, not an X-ray raised the pixel;
    - a Poisson tail: where the ring mean m holds at most ``POISSON_MAX_COUNTS`` counts (in units
      of g = noise variance / mean of the area, the noise from adjacent-pixel differences, so
      that structure does not count; areas of >= 1 count per pixel) the peak's Anscombe excess,
      2 (sqrt(v / g + 3/8) - sqrt(m / g + 3/8)), is below ``POISSON_MIN_Z`` (or 0.75 x the smaller
      criterion): at a few counts per pixel noise reaches 6-7 Gaussian SDs.
    """
    if not lin.numel():
        return lin
    _, h, w = x.shape
    flat = x.reshape(-1)
    comp = _components(lin, lin // w % h, lin % w, h, w)
    n = int(comp.max()) + 1
    v = flat[lin]
    top = torch.full((n,), -math.inf, dtype=v.dtype, device=x.device)
    top = top.scatter_reduce(0, comp, v, "amax")
    first = torch.full((n,), lin.numel(), device=x.device).scatter_reduce(
        0, comp, torch.where(v == top[comp], torch.arange(lin.numel(), device=x.device), lin.numel()), "amin"
    )
    peak = lin[first]
    b, y, xx = peak // (h * w), peak // w % h, peak % w
    dy, dx = _offsets(4.5, 1.5)
    ring = _gather(flat, h, w, b, y, xx, dy, dx)
    ry, rx = y[:, None] + dy.to(y.device), xx[:, None] + dx.to(y.device)
    at = (b[:, None] * h + ry.clamp(0, h - 1)) * w + rx.clamp(0, w - 1)
    j = torch.searchsorted(lin, at).clamp_max(lin.numel() - 1)
    ok = (ry >= 0) & (ry < h) & (rx >= 0) & (rx < w) & (lin[j] != at)
    ring = torch.where(ok, ring, math.nan)
    q = torch.nanquantile(ring, torch.tensor([0.1, 0.75], dtype=ring.dtype, device=x.device), dim=1)
    mean, sd, noise = _area_stats(x, b, y, xx, size)
    rim = (q[0] < q[1] - RIM_DARK_SD * sd) & (top - q[1] <= p.peak_criterion * sd)
    g = noise.square() / mean.clamp_min(1e-12)  # counts scale: noise variance / mean
    level = ring.nanmean(1).clamp_min(0.0)
    few = (mean > 0) & (mean >= g) & (level <= POISSON_MAX_COUNTS * g)  # few counts per pixel
    z = 2.0 * (torch.sqrt((top / g).clamp_min(0.0) + 0.375) - torch.sqrt(level / g + 0.375))
    tail = few & (z < min(POISSON_MIN_Z, 0.75 * min(p.peak_criterion, p.diff_criterion)))
    return lin[~(rim | tail)[comp]]


def _area_stats(x, b, y, xx, size):
    """Statistics of the scan area of each point (b, y, x): 3 x (n,).

    Robust intensity mean and SD, and the noise SD (robust SD of adjacent-pixel differences /
    sqrt 2, blind to smooth structure).
    """
    _, h, w = x.shape
    key = torch.stack([b, torch.clamp(y // size * size, max=h - size), torch.clamp(xx // size * size, max=w - size)], 1)
    key, which = torch.unique(key, dim=0, return_inverse=True)
    rows, cols = torch.arange(0, size, 2, device=x.device), torch.arange(size, device=x.device)
    win = x[key[:, 0, None, None], (key[:, 1, None] + rows)[:, :, None], (key[:, 2, None] + cols)[:, None, :]]
    mean, sd = _robust_stats(win[:, :, ::2].flatten(1))
    noise = _robust_stats((win[:, :, 1:] - win[:, :, :-1]).flatten(1))[1] / math.sqrt(2.0)
    return mean[which], sd.clamp_min(1e-12)[which], noise.clamp_min(1e-12)[which]
