"""X-ray and hot-pixel removal after IMOD's ``ccderaser -find``.

Reference: D. Mastronarde, ccderaser(1), https://bio3d.colorado.edu/imod/doc/man/ccderaser.html

Images are ``(..., h, w)``; X-rays are BRIGHT outliers. Dark objects (gold beads) never qualify,
nor do their rims (below), so their pixels are never changed. Each image is cut into ``scan_size_px`` scan areas whose
trimmed mean and robust SD (``sqrt(pi/2) x`` mean absolute deviation, values beyond 4 SD left
out, so strong hits neither hide others nor move the statistics once erased) drive two detectors:

1. Peak stage: 3 x 3 maxima above ``scan_criterion`` SDs are tested against the mean/SD of the
   annulus ``max_radius_px < r <= max_radius_px + annulus_width_px`` (``peak_criterion``);
   8-connected neighbours inside ``max_radius_px`` above ``grow_criterion`` SDs join the patch.
   Maxima that fail but exceed ``scan_criterion + 1`` are tested against an annulus starting at
   ``extra_large_radius_px`` (``giant_criterion``); such a giant patch is erased only if the mean
   of its pixels' largest adjacent differences over its most extreme quarter exceeds
   ``big_diff_criterion`` SDs of the scan area's adjacent differences (smooth blobs survive).
2. Difference stage: ``pixel - mean of its 8 neighbours`` above ``diff_criterion`` SDs (of that
   difference in the scan area) seeds a patch grown by ``grow_criterion``; patches of more than
   ``max_diff_patch_px`` pixels are ignored.

Departures from IMOD, so that hits anywhere are found and gold beads are never taken for hits:

- The search reaches the image border (``edge_exclusion_px`` 0 by default): annulus statistics use
  only in-image pixels, and an edge pixel's difference is taken from its 5 (3 in a corner)
  in-image neighbours, scaled to the interior's noise.
- A normal peak must be sharp, ``(peak - mean of its 8 neighbours) >= MIN_SHARPNESS x (peak -
  annulus mean)``, and a normal patch of more than ``MAX_COMPACT_PX`` pixels must pass the giant
  patches' sharp-edge test: smooth blobs (beads in a stack of inverted contrast) are not hits.
- A patch next to a dark feature (its ring 1.5 < r <= 4.5 px has a 10th percentile more than
  ``RIM_DARK_SD`` scan-area SDs below its 75th: a bead's edge and bright Fresnel fringe) must be
  ``peak_criterion`` SDs above the ring's bright side, not only above the bead-lowered mean.
- A difference seed must also stand out from the differences of its own 15 x 15 neighbourhood
  (beads lower the noise of part of a scan area, and so its SD).
- At a few counts per pixel (where Poisson tails reach 6-7 Gaussian SDs) a patch's peak must be
  ``POISSON_MIN_Z`` above its ring on the Anscombe (variance-stabilised) scale.

Each 8-connected patch is replaced by a polynomial fitted to the unmasked pixels within
``border_px`` of it. The search is repeated on the erased image, in the scan areas that changed,
until nothing changes, so erasing an erased image changes nothing. Pure torch; no files, no
prints; the device follows the input.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SD_PER_MAD = math.sqrt(math.pi / 2.0)  # SD / mean absolute deviation of a Gaussian
_CHUNK = 16384  # points per batched gather (keeps temporaries small and cached)
_FIT_CHUNK = 1024  # patches per batched polynomial fit
_MAX_PASSES = 8
MAX_COMPACT_PX = 12  # larger normal patches must pass the giant patches' sharp-edge test
MIN_SHARPNESS = 0.4  # (peak - mean of its 8 neighbours) / (peak - annulus mean) of an X-ray
RIM_DARK_SD = 4.0  # a ring this far below its bright side holds a dark feature (a bead)
POISSON_MIN_Z = 4.5  # least Anscombe excess of an X-ray in images of few counts per pixel
POISSON_MAX_COUNTS = 20.0  # ... up to this many counts per pixel (above, tails are Gaussian)


def _check_fit_options(border_px: int, poly_order: int) -> None:
    if not (isinstance(border_px, int) and 1 <= border_px <= 5):
        raise ValueError(f"border_px must be an integer 1..5, got {border_px!r}")
    if not (isinstance(poly_order, int) and 0 <= poly_order <= 3):
        raise ValueError(f"poly_order must be an integer 0..3, got {poly_order!r}")


@dataclass(frozen=True)
class XrayParams:
    """ccderaser ``-find`` parameters, defaults as Scipion passes them (criteria in SDs)."""

    peak_criterion: float = 8.0
    diff_criterion: float = 6.0
    grow_criterion: float = 4.0
    scan_criterion: float = 3.0
    max_radius_px: float = 4.2
    giant_criterion: float = 12.0
    extra_large_radius_px: float = 8.0
    big_diff_criterion: float = 19.0
    annulus_width_px: float = 2.0
    scan_size_px: int = 100
    edge_exclusion_px: int = 0  # IMOD/Scipion use 4; 0 reaches the border
    border_px: int = 2
    poly_order: int = 2
    max_diff_patch_px: int = 2  # IMOD's MaxPixelsInDiffPatch default

    def __post_init__(self) -> None:
        for name in ("peak_criterion", "diff_criterion", "grow_criterion", "scan_criterion",
                     "max_radius_px", "giant_criterion", "extra_large_radius_px",
                     "big_diff_criterion", "annulus_width_px"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"XrayParams.{name} must be a positive number, got {value!r}")
        if self.extra_large_radius_px < self.max_radius_px:
            raise ValueError("XrayParams.extra_large_radius_px must be >= max_radius_px")
        if self.scan_size_px < 10:
            raise ValueError(f"XrayParams.scan_size_px must be >= 10, got {self.scan_size_px}")
        if self.edge_exclusion_px < 0 or self.max_diff_patch_px < 1:
            raise ValueError("XrayParams: edge_exclusion_px must be >= 0, max_diff_patch_px >= 1")
        _check_fit_options(self.border_px, self.poly_order)


@dataclass
class XrayResult:
    """``image``: erased copy (input shape/dtype); ``mask``: bool, pixels replaced;
    ``n_patches``: connected patches replaced (int for one image, else a tensor (...))."""

    image: torch.Tensor
    mask: torch.Tensor
    n_patches: int | torch.Tensor


def find_xrays(image: torch.Tensor, params: XrayParams = XrayParams()) -> torch.Tensor:
    """Bool mask ``(..., h, w)`` of the X-ray pixels of ``image`` ``(..., h, w)``."""
    x, owned = _as_stack(image, "find_xrays")
    lin, _ = _search(x, owned, params, image.dtype)
    return _mask(x, lin).reshape(image.shape)


def replace_patches(
    image: torch.Tensor, mask: torch.Tensor, *, border_px: int = 2, poly_order: int = 2
) -> torch.Tensor:
    """Copy of ``image`` ``(..., h, w)`` with each 8-connected patch of ``mask`` replaced by a
    polynomial in (x, y) of ``poly_order`` (0-3) fitted to the unmasked pixels within
    ``border_px`` (Chebyshev distance) of the patch; too few such pixels: their mean."""
    x, _ = _as_stack(image, "replace_patches")
    _check_fit_options(border_px, poly_order)
    if not isinstance(mask, torch.Tensor) or mask.shape != image.shape or mask.dtype != torch.bool:
        raise ValueError("replace_patches: mask must be a bool tensor of the image's shape "
                         f"{tuple(image.shape)}")
    lin = mask.to(x.device).reshape(-1).nonzero().flatten()
    if not lin.numel():
        return image.clone(memory_format=torch.contiguous_format)
    values = _quantize(_fit_values(x, lin, border_px, poly_order), image.dtype)
    out = x.clone()  # the work dtype: index_put is not implemented for every dtype (uint16)
    out.view(-1)[lin] = values.to(out.dtype)
    return out.to(image.dtype).reshape(image.shape)


def erase_xrays(image: torch.Tensor, params: XrayParams = XrayParams()) -> XrayResult:
    """Find X-rays in ``image`` ``(..., h, w)`` and replace them; the input is never modified."""
    x, owned = _as_stack(image, "erase_xrays")
    lin, work = _search(x, owned, params, image.dtype)
    out = work.clone() if work is x and not owned else work  # never hand out the input
    if not image.dtype.is_floating_point:
        info = torch.iinfo(image.dtype)
        out = out.round().clamp(info.min, info.max)
    nb, h, w = x.shape
    comp = _components(lin, lin // w % h, lin % w, h, w)
    n_comp = int(comp.max()) + 1 if comp.numel() else 0
    comp_b = torch.zeros(n_comp, dtype=lin.dtype, device=x.device).scatter_(0, comp, lin // (h * w))
    counts = torch.bincount(comp_b, minlength=nb)
    n = int(counts[0]) if image.ndim == 2 else counts.reshape(image.shape[:-2])
    return XrayResult(image=out.to(image.dtype).reshape(image.shape),
                      mask=_mask(x, lin).reshape(image.shape), n_patches=n)


# ----------------------------------------------------------------------------- search


def _search(x, owned, p, dtype):
    """Find and replace X-rays until nothing changes -> (sorted flat indices of every pixel
    replaced, erased images). Each pass scans the current images; pass 1 every area, later
    passes only the areas whose inputs changed, reusing the others' results (which equals a
    full scan). The search ends when the patches found would be replaced by their own values."""
    nb, h, w = x.shape
    size = min(p.scan_size_px, h, w)
    grid = (size, -(-h // size), -(-w // size))
    todo = torch.ones(grid[1:], dtype=torch.bool)
    work = x
    found = keep_lin = keep_area = torch.zeros(0, dtype=torch.long, device=x.device)
    for _ in range(_MAX_PASSES):
        new_lin, new_area = _find(work, p, grid, todo)
        done = todo.to(x.device).flatten()[keep_area]
        keep_lin = torch.cat([keep_lin[~done], new_lin])
        keep_area = torch.cat([keep_area[~done], new_area])
        lin = _drop_unlike_xrays(work, torch.unique(keep_lin), size, p)  # as a full scan would
        if lin.numel() == 0:
            return found, work
        found = torch.unique(torch.cat([found, lin]))
        if work is x and not owned:
            work = x.clone()
        flat = work.view(-1)
        values = _quantize(_fit_values(work, lin, p.border_px, p.poly_order), dtype)
        changed = values != flat[lin]
        if not bool(changed.any()):
            return found, work
        flat[lin] = values.to(flat.dtype)
        todo = _affected_areas(lin[changed], h, w, grid, p)
    warnings.warn(f"erase_xrays: the X-ray search did not settle in {_MAX_PASSES} passes; "
                  "erasing the result again may change more pixels", stacklevel=3)
    return found, work


def _affected_areas(lin, h, w, grid, p):
    """(ny, nx) bool: scan areas whose detection reads any of the pixels ``lin``."""
    size, ny, nx = grid
    reach = max(math.ceil(max(p.extra_large_radius_px, p.max_radius_px) + p.annulus_width_px),
                p.max_diff_patch_px + 1) + 2
    y, x = (lin // w % h).cpu(), (lin % w).cpu()

    def hits(v, n, extent):  # (len(v), count) bool: v inside each area's region +- reach
        start = torch.arange(n) * size
        lo = torch.minimum(start, torch.tensor(extent - size)) - reach
        hi = torch.maximum(torch.clamp(start + size, max=extent), lo + reach + size) + reach
        return (v[:, None] >= lo) & (v[:, None] < hi)

    return (hits(y, ny, h).T.float() @ hits(x, nx, w).float()) > 0


def _find(x, p, grid, todo):
    """Scan the areas marked in ``todo`` (ny, nx) -> (flat indices, area of the seed) of the
    patch pixels found there. Every area is scanned as a tile (its statistics window plus a
    margin) so that a rescan of some areas computes exactly what a full scan would."""
    nb, h, w = x.shape
    size, ny, nx = grid
    edge = p.edge_exclusion_px
    chunks, loose = [], []  # whole bands (cut with one strided copy) or <= 64 loose areas
    for j, row in enumerate(todo.tolist()):
        areas = [(j, c) for c, f in enumerate(row) if f]
        (chunks if len(areas) == nx else loose).append(areas)
    loose = sum(loose, [])
    chunks += [loose[i:i + 64] for i in range(0, len(loose), 64)]
    parts = [_scan_tiles(x, areas, size, edge, p) for areas in chunks]
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, empty
    peaks, seeds = ([torch.cat(c) for c in zip(*part)] for part in zip(*parts))
    coords = list(_peak_patches(x, *peaks, size, edge, p))
    b, y, xx, win, level, scale = seeds
    reach = _grow(win, level, scale, p.grow_criterion, math.inf, y, xx, h, w, edge)
    keep = reach.sum((1, 2)) <= p.max_diff_patch_px  # a bigger patch reaches the window edge
    keep &= _stands_out_locally(x, b, y, xx, win[:, win.shape[1] // 2], p.diff_criterion)
    coords.append(_window_coords(reach[keep], b[keep], y[keep], xx[keep]))
    b, y, xx, sy, sx = (torch.cat(c) for c in zip(*coords))
    return (b * h + y) * w + xx, (sy // size) * nx + (sx // size).clamp_max(nx - 1)


def _scan_tiles(x, areas, size, edge, p):
    """Scan areas [(row, column)]: intensity candidates (b, y, x, giant threshold) and
    difference seeds (b, y, x, windows of ``9 * pixel - box3x3``, area mean and SD of it)."""
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
        _edge_differences(nd4, tiles.view(nb, na, t, t), border, [s0[k] - pad + 1 for k in border],
                          [t0[k] - pad + 1 for k in border], h, w)
    si = 4 if size % 4 == 0 and size >= 40 else 1  # intensity statistics: 4x subsample
    st = 2 if size % 2 == 0 and size >= 20 else 1  # difference statistics: 2x subsample
    core = slice(pad, pad + size)
    mean, sd = _robust_stats(tiles[:, pad:pad + size:si, pad:pad + size:si].reshape(nb * na, -1))
    sub = nd[:, pad - 1:pad - 1 + size:st, pad - 1:pad - 1 + size:st].reshape(nb * na, -1)
    if not bool(torch.isfinite(sub.sum())):  # a NaN or inf pixel spoils 3 x 3 differences
        raise ValueError("find_xrays: image contains NaN or inf; replace them before erasing")
    dmean, dsd = _robust_stats(sub)
    tiny = 1e-12 * (float(mean.abs().max()) + 1.0)
    sd, dsd = sd.clamp_min(tiny), dsd.clamp_min(tiny)
    cand = tiles[:, core, core] > (mean + p.scan_criterion * sd)[:, None, None]
    seed = nd[:, pad - 1:pad - 1 + size, pad - 1:pad - 1 + size] > (
        dmean + p.diff_criterion * dsd)[:, None, None]
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
    win = _gather(nd.reshape(-1), t - 2, t - 2, i[sel], ty[sel] + pad - 1, tx[sel] + pad - 1,
                  *_offsets(math.inf, -1.0, m))
    return peaks, (img[sel], y[sel], xx[sel], win, dmean[i[sel]], dsd[i[sel]])


def _edge_differences(nd, tiles, border, a, b, h, w):
    """In place on ``nd`` (B, N, n, n) = 9 * pixel - box3 of ``tiles`` (B, N, n + 2, n + 2) (zeros
    outside the image), for the tiles ``border`` whose nd[0, 0] lies at image (a[i], b[i]): at the
    image's edges 8 * (pixel - mean of its k in-image neighbours) * sqrt((1 + 1/8) / (1 + 1/k))
    (the interior's noise); 0 outside the image."""
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
    """(B, n, t, t) copies of the areas' statistics windows plus ``pad``; zeros outside the
    image, whose tiles are listed in ``border``. Identical values whichever way they are cut."""
    nb, h, w = x.shape
    t = size + 2 * pad
    tiles = x.new_empty(nb, len(areas), t, t)
    done = set()
    a = s0[0] - pad
    if len(areas) > 2 and a >= 0 and a + t <= h and areas == [(areas[0][0], c)
                                                               for c in range(len(areas))]:
        # areas 0.. of one band: the regular ones 1..n-1 at once from a strided view
        n = min((w - t + pad) // size, len(areas) - 1) + 1  # areas 1..n-1 fit entirely
        if n > 1:
            view = x[:, a:a + t, size - pad:].unfold(2, t, size)  # window i: area i + 1
            tiles[:, 1:n] = view[:, :, :n - 1].permute(0, 2, 1, 3)
            done = set(range(1, n))
    border = []
    for k, (a, b) in enumerate(zip(s0, t0)):
        if k in done:
            continue
        ya, yb, xa, xb = max(a - pad, 0), min(a - pad + t, h), max(b - pad, 0), min(b - pad + t, w)
        if yb - ya < t or xb - xa < t:
            tiles[:, k].zero_()
            border.append(k)
        tiles[:, k, ya - a + pad:yb - a + pad, xa - b + pad:xb - b + pad] = x[:, ya:yb, xa:xb]
    return tiles, border


def _peak_patches(x, b, y, xx, big, size, edge, p):
    """Patches of annulus-tested intensity maxima, normal then giant -> [(b, y, x, sy, sx)]."""
    nb, h, w = x.shape
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
        reach = _grow(win, ring_m[ok], ring_s[ok], p.grow_criterion, r_in, y[ok], xx[ok], h, w,
                      edge)
        # giant patches, and normal ones larger than an X-ray's few pixels (a bead in a bright-
        # bead stack), are erased only when sharp-edged (an X-ray), not a smooth bright blob
        test = torch.ones_like(b[ok], dtype=torch.bool) if giant else \
            reach.flatten(1).sum(1) > MAX_COMPACT_PX
        if bool(test.any()):
            sharp = ~test
            sharp[test] = _big_diff_z(x, b[ok][test], y[ok][test], xx[ok][test], reach[test],
                                      size) > p.big_diff_criterion
            ok[ok.clone()] = sharp
            reach = reach[sharp]
        yield _window_coords(reach, b[ok], y[ok], xx[ok])
        nxt = ~ok & (v > big)  # failed, but above scan criterion + 1: try as a giant peak
        b, y, xx, v, big, mean8 = b[nxt], y[nxt], xx[nxt], v[nxt], big[nxt], mean8[nxt]
        r_in, crit = p.extra_large_radius_px, p.giant_criterion


def _grow(v, level, scale, crit, radius, y, x, h, w, edge):
    """Windows ``v`` (n, s*s) centred on seeds -> (n, s, s) bool: 8-connected pixels reachable
    from the centre, within ``radius``, with ``v - level > crit * scale``, off the edges."""
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


def _big_diff_z(x, b, y, xx, reach, size):
    """Per giant patch: mean of the top quarter of its pixels' max |adjacent difference|, in SDs
    above the mean |adjacent difference| of its scan area."""
    nb, h, w = x.shape
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
    key = torch.stack([b, torch.clamp(y // size * size, max=h - size),
                       torch.clamp(xx // size * size, max=w - size)], 1)
    key, which = torch.unique(key, dim=0, return_inverse=True)  # scan areas of these patches
    g = torch.arange(size, device=x.device)
    win = x[key[:, 0, None, None], (key[:, 1, None] + g)[:, :, None],
            (key[:, 2, None] + g)[:, None, :]]
    d = torch.cat([(win[:, :, 1:] - win[:, :, :-1]).abs().flatten(1),
                   (win[:, 1:] - win[:, :-1]).abs().flatten(1)], 1)
    m = d.mean(1)
    sd = ((d - m[:, None]).abs().mean(1) * _SD_PER_MAD).clamp_min(1e-12)
    return (avg - m[which]) / sd[which]


def _stands_out_locally(x, b, y, xx, value, crit):
    """Bool (n,): difference seeds whose ``value`` (9 * pixel - box3) also exceeds ``crit`` SDs of
    the differences in their own 15 x 15 neighbourhood (their 5 x 5 centre left out; SD from the
    noisiest quarter, 75th percentile of |d - median| / 1.1503): where dark beads lower the noise
    of part of a scan area, its robust SD is too small for the pixels around them."""
    nb, h, w = x.shape
    r = 8
    g = torch.arange(-r + 1, r, device=x.device)
    centre = (g.abs() <= 2)[:, None] & (g.abs() <= 2)[None, :]
    out = []
    for i in range(0, y.numel(), _CHUNK):
        bi, yi, xi = b[i:i + _CHUNK], y[i:i + _CHUNK], xx[i:i + _CHUNK]
        v = _gather(x.reshape(-1), h, w, bi, yi, xi, *_offsets(math.inf, -1.0, r))
        v = v.view(-1, 1, 2 * r + 1, 2 * r + 1)
        nd = (9.0 * v[:, 0, 1:-1, 1:-1] - 9.0 * F.avg_pool2d(v, 3, 1)[:, 0]).flatten(1)
        ok = ((yi[:, None] + g >= 1) & (yi[:, None] + g < h - 1))[:, :, None] & \
            ((xi[:, None] + g >= 1) & (xi[:, None] + g < w - 1))[:, None, :]
        nd = torch.where((ok & ~centre).flatten(1), nd, math.nan)
        med = nd.nanmedian(1).values
        sd = torch.nanquantile((nd - med[:, None]).abs(), 0.75, dim=1) / 1.1503
        out.append(value[i:i + _CHUNK] - med > crit * sd.clamp_min(1e-12))
    return torch.cat(out) if out else value.new_zeros(0, dtype=torch.bool)


def _drop_unlike_xrays(x, lin, size, p):
    """``lin`` without the patches that are not X-rays, judged on the ring 1.5 < r <= 4.5 px
    (in-image, unmasked pixels) around each patch's brightest pixel and its scan area's robust
    mean and SD:

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
    nb, h, w = x.shape
    flat = x.reshape(-1)
    comp = _components(lin, lin // w % h, lin % w, h, w)
    n = int(comp.max()) + 1
    v = flat[lin]
    top = torch.full((n,), -math.inf, dtype=v.dtype, device=x.device)
    top = top.scatter_reduce(0, comp, v, "amax")
    first = torch.full((n,), lin.numel(), device=x.device).scatter_reduce(
        0, comp, torch.where(v == top[comp], torch.arange(lin.numel(), device=x.device),
                             lin.numel()), "amin")
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
    """Per point (b, y, x), of its scan area: robust intensity mean and SD, and the noise SD
    (robust SD of adjacent-pixel differences / sqrt 2, blind to smooth structure) -> 3 x (n,)."""
    nb, h, w = x.shape
    key = torch.stack([b, torch.clamp(y // size * size, max=h - size),
                       torch.clamp(xx // size * size, max=w - size)], 1)
    key, which = torch.unique(key, dim=0, return_inverse=True)
    rows, cols = torch.arange(0, size, 2, device=x.device), torch.arange(size, device=x.device)
    win = x[key[:, 0, None, None], (key[:, 1, None] + rows)[:, :, None],
            (key[:, 2, None] + cols)[:, None, :]]
    mean, sd = _robust_stats(win[:, :, ::2].flatten(1))
    noise = _robust_stats((win[:, :, 1:] - win[:, :, :-1]).flatten(1))[1] / math.sqrt(2.0)
    return mean[which], sd.clamp_min(1e-12)[which], noise.clamp_min(1e-12)[which]


# ----------------------------------------------------------------------------- statistics


def _robust_stats(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trimmed mean and robust SD along the last axis of ``v`` (n, k) -> (n,), (n,): SD is
    sqrt(pi/2) x the mean absolute deviation; two rounds leave out values beyond 4 SD."""
    mean = v.mean(-1, keepdim=True)
    sd = (v - mean).abs().mean(-1, keepdim=True) * _SD_PER_MAD
    for _ in range(2):
        keep = (v - mean).abs() <= 4.0 * sd
        cnt = keep.sum(-1, keepdim=True).clamp_min(1)
        mean = torch.where(keep, v, 0.0).sum(-1, keepdim=True) / cnt
        sd = torch.where(keep, (v - mean).abs(), 0.0).sum(-1, keepdim=True) / cnt * _SD_PER_MAD
    return mean[:, 0], sd[:, 0]


@functools.lru_cache(maxsize=32)
def _offsets(r_out: float, r_in: float, r: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (dy, dx) with r_in < distance <= r_out in a (2r+1)^2 window, row-major;
    ``r_in < 0`` and ``r_out = inf`` give the whole window."""
    r = int(math.floor(r_out)) if r is None else r
    g = torch.arange(-r, r + 1)
    dy, dx = (a.reshape(-1) for a in torch.meshgrid(g, g, indexing="ij"))
    d2 = dy.square() + dx.square()
    sel = (d2 > r_in * abs(r_in)) & (d2 <= r_out * r_out)
    return dy[sel], dx[sel]


def _gather(flat, h, w, b, y, x, dy, dx):
    """Values at (y + dy, x + dx), clamped to the image, for n points and k offsets -> (n, k)."""
    dt = torch.int32 if flat.numel() < 2**31 else torch.int64  # smaller, faster indices
    dy, dx = dy.to(y.device, dt), dx.to(y.device, dt)
    b, y, x = b.to(dt), y.to(dt), x.to(dt)
    idx = ((b * h + y) * w + x)[:, None] + (dy * w + dx)
    r = int(max(dy.abs().max(), dx.abs().max())) if dy.numel() else 0
    near = ((y < r) | (y >= h - r) | (x < r) | (x >= w - r)).nonzero().flatten()
    if near.numel():  # only points near the image edges need clamped coordinates
        yy = (y[near, None] + dy).clamp(0, h - 1)
        xx = (x[near, None] + dx).clamp(0, w - 1)
        idx[near] = (b[near, None] * h + yy) * w + xx
    return flat.index_select(0, idx.flatten()).view(idx.shape)  # faster than flat[idx]


def _ring_stats(flat, h, w, b, y, x, r_in, width):
    """Mean and SD of the in-image pixels of the annulus r_in < r <= r_in + width around each
    point -> (n,), (n,)."""
    dy, dx = _offsets(r_in + width, r_in)
    k = dy.numel()
    means, sds = [flat.new_zeros(0)], [flat.new_zeros(0)]
    for i in range(0, y.numel(), _CHUNK):
        v = _gather(flat, h, w, b[i:i + _CHUNK], y[i:i + _CHUNK], x[i:i + _CHUNK], dy, dx)
        ref = v[:, 0]
        v = v - ref[:, None]  # shifted for an accurate one-pass variance (torch.std is slow)
        s1, s2 = v.sum(1), v.square().sum(1)
        means.append(ref + s1 / k)
        sds.append(((s2 - s1 * s1 / k) / (k - 1)).clamp_min(0).sqrt().clamp_min(1e-12))
    mean, sd = torch.cat(means), torch.cat(sds)
    r = int(math.ceil(r_in + width))
    near = ((y < r) | (y >= h - r) | (x < r) | (x >= w - r)).nonzero().flatten()
    if near.numel():  # rings that leave the image: only their in-image pixels
        yy, xx = y[near, None] + dy.to(y.device), x[near, None] + dx.to(y.device)
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = torch.where(ok, _gather(flat, h, w, b[near], y[near], x[near], dy, dx), math.nan)
        mean[near] = v.nanmean(1)
        var = (v - mean[near, None]).square().nansum(1) / (ok.sum(1) - 1).clamp_min(1)
        sd[near] = var.sqrt().clamp_min(1e-12)
    return mean, sd


def _window_coords(reach, b, y, x):
    """Pixels of (n, s, s) windows centred on (y, x) -> (b, y, x, seed y, seed x)."""
    r = reach.shape[-1] // 2
    i, wy, wx = reach.nonzero(as_tuple=True)
    return b[i], y[i] + wy - r, x[i] + wx - r, y[i], x[i]


# ----------------------------------------------------------------------------- replacement


def _mask(x, lin):
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    mask.view(-1)[lin] = True
    return mask


def _quantize(values, dtype):
    """Values as the output dtype will hold them (rounded and clipped for integers)."""
    if dtype.is_floating_point:
        return values.to(dtype).to(values.dtype)
    info = torch.iinfo(dtype)
    return values.round().clamp(info.min, info.max)


def _components(lin, y, x, h, w):
    """8-connected component id (0..n-1, in order of first pixel) of sorted flat indices."""
    n = lin.numel()
    lab = torch.arange(n, device=lin.device)
    if n == 0:
        return lab
    src, dst = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        nbr = lin + dy * w + dx
        j = torch.searchsorted(lin, nbr).clamp_max(n - 1)
        ok = (lin[j] == nbr) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
        src.append(ok.nonzero().flatten())
        dst.append(j[ok])
    src, dst = torch.cat(src), torch.cat(dst)
    while True:  # min-label propagation with pointer jumping: ~log(patch size) rounds
        new = lab.clone()
        new.scatter_reduce_(0, src, lab[dst], "amin")
        new.scatter_reduce_(0, dst, lab[src], "amin")
        new = new[new]
        if torch.equal(new, lab):
            return torch.unique(lab, return_inverse=True)[1]
        lab = new


def _fit_values(x, lin, border, order):
    """Replacement values (float64) at sorted flat indices ``lin`` of ``x`` (B, h, w): one
    polynomial per 8-connected patch, least squares on the unmasked pixels within ``border``."""
    nb, h, w = x.shape
    y, xx = lin // w % h, lin % w
    comp = _components(lin, y, xx, h, w)
    n_comp = int(comp.max()) + 1
    flat, dev = x.reshape(-1), x.device
    lo = [torch.full((n_comp,), h + w, device=dev).scatter_reduce(0, comp, t, "amin")
          for t in (y, xx)]
    hi = [torch.full((n_comp,), -1, device=dev).scatter_reduce(0, comp, t, "amax")
          for t in (y, xx)]
    base = torch.zeros(n_comp, dtype=lin.dtype, device=dev).scatter_(0, comp, lin // (h * w) * h)
    extent = torch.maximum(hi[0] - lo[0], hi[1] - lo[1])
    cen = [(a + c).double() / 2 for a, c in zip(lo, hi)]
    scale = (extent.double() / 2 + border).clamp_min(1.0)  # coordinates in ~[-1, 1]
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    eye = torch.eye(len(terms), dtype=torch.float64, device=dev)
    coef = []
    for c0 in range(0, n_comp, _FIT_CHUNK):
        c = torch.arange(c0, min(c0 + _FIT_CHUNK, n_comp), device=dev)
        s = int(extent[c].max()) + 1 + 2 * border
        g = torch.arange(s, device=dev)
        wy, wx = lo[0][c, None] - border + g, lo[1][c, None] - border + g  # (n, s)
        valid = ((wy >= 0) & (wy < h))[:, :, None] & ((wx >= 0) & (wx < w))[:, None, :]
        wl = (base[c, None, None] + wy.clamp(0, h - 1)[:, :, None]) * w
        wl = wl + wx.clamp(0, w - 1)[:, None, :]
        j = torch.searchsorted(lin, wl.flatten()).clamp_max(lin.numel() - 1).view(wl.shape)
        inside = lin[j] == wl  # masked pixels, of this patch or another
        own = (inside & (comp[j] == c[:, None, None])).double()[:, None]
        near = F.max_pool2d(own, 2 * border + 1, 1, border)[:, 0] > 0
        wgt = (near & ~inside & valid).flatten(1).double()
        u = ((wx.double() - cen[1][c, None]) / scale[c, None])[:, None, :].expand(-1, s, -1)
        v = ((wy.double() - cen[0][c, None]) / scale[c, None])[:, :, None].expand(-1, -1, s)
        a = torch.stack([u**i * v**k for i, k in terms], -1).flatten(1, 2)  # (n, s*s, T)
        ata = torch.einsum("npi,np,npj->nij", a, wgt, a)
        atb = torch.einsum("npi,np,np->ni", a, wgt, flat[wl.flatten(1)].double())
        cnt = wgt.sum(1)
        sol = torch.linalg.solve(ata + 1e-9 * (cnt[:, None, None] + 1) * eye, atb)
        poor = cnt < 2 * len(terms)  # too few border pixels: their mean (u = v = 0 term)
        sol[poor] = 0.0
        sol[poor, 0] = atb[poor, 0] / cnt[poor].clamp_min(1)
        coef.append(sol)
    coef = torch.cat(coef)[comp]
    u, v = (xx.double() - cen[1][comp]) / scale[comp], (y.double() - cen[0][comp]) / scale[comp]
    return (torch.stack([u**i * v**k for i, k in terms], -1) * coef).sum(-1)


def _as_stack(image: torch.Tensor, fn: str) -> tuple[torch.Tensor, bool]:
    """(..., h, w) real image -> contiguous (B, h, w) float32 (float64 stays) and whether that
    tensor is a copy (owned) rather than the input itself."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{fn}: image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim < 2 or image.is_complex() or image.dtype == torch.bool:
        raise ValueError(f"{fn}: image must be a real (..., h, w) tensor, got {image.dtype} "
                         f"of shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h < 16 or w < 16:
        raise ValueError(f"{fn}: image is {h} x {w} px; X-ray search needs at least 16 x 16")
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    x = image.reshape(-1, h, w).to(dtype).contiguous()
    return x, x.data_ptr() != image.data_ptr()
