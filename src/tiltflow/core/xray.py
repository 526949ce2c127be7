"""X-ray and hot-pixel removal after IMOD's ``ccderaser -find`` (Mastronarde, IMOD man page).

Images are ``(..., h, w)``; X-rays are BRIGHT outliers. Dark objects (gold beads) never qualify,
so their pixels are never changed. Two detectors run on every image:

1. Peak stage: pixels above ``scan_criterion`` SDs of their scan area that are 3 x 3 maxima are
   tested against the mean/SD of an annulus ``max_radius_px`` .. ``+ annulus_width_px`` around
   them (``peak_criterion``); neighbours inside the inner radius above ``grow_criterion`` join.
   Peaks that fail but exceed the scan criterion + 1 are tested against a larger annulus starting
   at ``extra_large_radius_px`` (``giant_criterion``); such a giant patch is erased only when the
   mean of the largest adjacent-pixel differences over its most extreme quarter exceeds
   ``big_diff_criterion`` SDs of the scan area's adjacent differences (smooth blobs survive).
2. Difference stage: ``pixel - mean of its 8 neighbours`` above ``diff_criterion`` SDs (of that
   difference in the scan area) seeds a patch grown by ``grow_criterion``; patches with more than
   ``max_diff_patch_px`` pixels are ignored.

Scan-area SDs are ``sqrt(pi/2) x`` the mean absolute deviation so a few strong hits cannot hide
others. Each connected patch is replaced by a polynomial fitted to a ``border_px`` ring of
unmasked pixels around it. Pure torch; no files, no prints; the device follows the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SD_PER_MAD = math.sqrt(math.pi / 2.0)  # SD / mean absolute deviation for a Gaussian
_CHUNK = 4096  # patches per batched polynomial fit


def _check_fit_options(border_px: int, poly_order: int) -> None:
    if not (isinstance(border_px, int) and 1 <= border_px <= 5):
        raise ValueError(f"border_px must be an integer 1..5, got {border_px!r}")
    if not (isinstance(poly_order, int) and 0 <= poly_order <= 3):
        raise ValueError(f"poly_order must be an integer 0..3, got {poly_order!r}")


@dataclass(frozen=True)
class XrayParams:
    """ccderaser ``-find`` parameters with the values Scipion passes (criteria in SDs, sizes px)."""

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
    edge_exclusion_px: int = 4
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
    ``n_patches``: connected patches replaced (int for one image, else a tensor of the batch shape)."""

    image: torch.Tensor
    mask: torch.Tensor
    n_patches: int | torch.Tensor


def find_xrays(image: torch.Tensor, params: XrayParams = XrayParams()) -> torch.Tensor:
    """Bool mask ``(..., h, w)`` of X-ray pixels in ``image`` ``(..., h, w)`` (bright only)."""
    x = _as_stack(image, "find_xrays")
    return _to_mask(x, _find(x, params)).reshape(image.shape)


def replace_patches(
    image: torch.Tensor, mask: torch.Tensor, *, border_px: int = 2, poly_order: int = 2
) -> torch.Tensor:
    """Copy of ``image`` ``(..., h, w)`` with each 8-connected patch of ``mask`` replaced by a
    polynomial (``poly_order`` 0-3, in x and y) fitted to unmasked pixels within ``border_px``
    (Chebyshev distance) of the patch; a patch with too few such pixels gets their mean."""
    x = _as_stack(image, "replace_patches")
    _check_fit_options(border_px, poly_order)
    if not isinstance(mask, torch.Tensor) or mask.shape != image.shape or mask.dtype != torch.bool:
        raise ValueError("replace_patches: mask must be a bool tensor of the image's shape "
                         f"{tuple(image.shape)}")
    m = mask.reshape(x.shape).to(x.device)
    return _replace(image, x, m, m.nonzero(as_tuple=True), border_px, poly_order)[0]


def erase_xrays(image: torch.Tensor, params: XrayParams = XrayParams()) -> XrayResult:
    """Find X-rays in ``image`` ``(..., h, w)`` and replace them; the input is never modified."""
    x = _as_stack(image, "erase_xrays")
    coords = _find(x, params)
    m = _to_mask(x, coords)
    out, n = _replace(image, x, m, coords, params.border_px, params.poly_order)
    return XrayResult(image=out, mask=m.reshape(image.shape), n_patches=n)


# ----------------------------------------------------------------------------- detection


def _find(x: torch.Tensor, p: XrayParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, h, w) work-dtype images -> unique (b, y, x) of X-ray pixels in row-major order.

    Scanning runs per band of scan areas so that temporaries stay small (no full-size copies)."""
    nb, h, w = x.shape
    size = min(p.scan_size_px, h, w)
    edge = max(p.edge_exclusion_px, 1)
    bands = [_scan_band(x, r0, size, edge, p) for r0 in range(0, h, size)]
    peaks, seeds = ([torch.cat(c) for c in zip(*part)] for part in zip(*bands))
    coords = [_peak_patches(x, *peaks, size, edge, p)]
    b, y, xx, win, level, scale = seeds
    reach = _grow(win, level, scale, p.grow_criterion, math.inf, y, xx, h, w, edge)
    keep = reach.sum((1, 2)) <= p.max_diff_patch_px  # a bigger patch reaches the window edge
    coords.append(_window_coords(reach[keep], b[keep], y[keep], xx[keep]))
    b, y, xx = (torch.cat(c) for c in zip(*coords))
    lin = torch.unique((b * h + y) * w + xx)
    return lin // (h * w), lin // w % h, lin % w


def _to_mask(x, coords):
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    mask[coords] = True
    return mask


def _scan_band(x, r0, size, edge, p):
    """Rows [r0, r0 + size): intensity candidates (b, y, x, giant threshold) and difference seeds
    (b, y, x, windows of ``9 * pixel - box3x3``, area mean and SD of that difference)."""
    nb, h, w = x.shape
    r1, s0 = min(r0 + size, h), min(r0, h - size)  # the last area's statistics shift inward
    step = 2 if size % 2 == 0 and size >= 20 else 1  # area statistics on a 2x subsample
    mean, sd = _area_stats(x[:, s0:s0 + size:step, ::step], size // step)
    if not bool(torch.isfinite(mean).all() & torch.isfinite(sd).all()):
        raise ValueError("find_xrays: image contains NaN or inf; replace them before erasing")
    tiny = 1e-12 * (float(mean.abs().max()) + 1.0)
    sd = sd.clamp_min(tiny)
    cand = _exceeds(x[:, r0:r1], mean + p.scan_criterion * sd, size)
    b, y, xx = _band_nonzero(cand, r0, h, edge)
    big = (mean + (p.scan_criterion + 1.0) * sd)[b, 0, (xx // size).clamp_max(mean.shape[2] - 1)]
    # 9 * pixel - box3x3 = 8 * (pixel - mean of its 8 neighbours), rows [lo, hi), 0 on the rim
    m = p.max_diff_patch_px
    lo, hi = max(s0 - m, 0), min(r1 + m, h)
    nd = x.new_zeros(nb, hi - lo, w)
    a, z = max(lo, 1), min(hi, h - 1)
    xb = x[:, a - 1:z + 1]
    rows = xb[:, :, :-2] + xb[:, :, 1:-1]
    rows += xb[:, :, 2:]
    box = rows[:, :-2] + rows[:, 1:-1]
    box += rows[:, 2:]
    nd[:, a - lo:z - lo, 1:-1] = box.sub_(x[:, a:z, 1:-1], alpha=9.0).neg_()
    dmean, dsd = _area_stats(nd[:, s0 - lo:s0 - lo + size:step, ::step], size // step)
    dsd = dsd.clamp_min(tiny)
    sb, sy, sx = _band_nonzero(_exceeds(nd[:, r0 - lo:r1 - lo], dmean + p.diff_criterion * dsd,
                                        size), r0, h, edge)
    tx = (sx // size).clamp_max(dmean.shape[2] - 1)
    dy, dx = _offsets(math.inf, -1.0, m)
    win = _gather(nd.reshape(-1), hi - lo, w, sb, sy - lo, sx, dy, dx)
    return (b, y, xx, big), (sb, sy, sx, win, dmean[sb, 0, tx], dsd[sb, 0, tx])


def _band_nonzero(m, r0, h, e):
    """(b, y, x) of True pixels of a band starting at row r0, outside the edge exclusion."""
    m[:, :, :e] = False
    m[:, :, -e:] = False
    m[:, :max(e - r0, 0)] = False
    m[:, max(h - e - r0, 0):] = False
    b, y, x = m.nonzero(as_tuple=True)
    return b, y + r0, x


def _peak_patches(x, b, y, xx, big, size, edge, p):
    """Patches from annulus-tested intensity peaks (normal and giant) -> (b, y, x)."""
    nb, h, w = x.shape
    flat = x.reshape(-1)
    v = flat[(b * h + y) * w + xx]
    is_max = v >= _gather(flat, h, w, b, y, xx, *_offsets(1.5, 0.5)).amax(1)  # 8 neighbours
    b, y, xx, v, big = b[is_max], y[is_max], xx[is_max], v[is_max], big[is_max]
    coords = []
    r_in, crit = p.max_radius_px, p.peak_criterion
    for giant in (False, True):
        ring_m, ring_s = _ring_stats(flat, h, w, b, y, xx, r_in, p.annulus_width_px)
        ok = (v - ring_m) > crit * ring_s
        r = int(math.floor(r_in))
        win = _gather(flat, h, w, b[ok], y[ok], xx[ok], *_offsets(math.inf, -1.0, r))
        reach = _grow(win, ring_m[ok], ring_s[ok], p.grow_criterion, r_in, y[ok], xx[ok], h, w,
                      edge)
        if giant:  # erased only if sharp-edged (X-ray), not a smooth bright blob
            sharp = _big_diff_z(x, b[ok], y[ok], xx[ok], reach, size) > p.big_diff_criterion
            ok[ok.clone()] = sharp
            reach = reach[sharp]
        coords.append(_window_coords(reach, b[ok], y[ok], xx[ok]))
        # peaks failing the first test but above the scan criterion + 1 try the giant test
        nxt = ~ok & (v > big) if not giant else ok
        b, y, xx, v = b[nxt], y[nxt], xx[nxt], v[nxt]
        r_in, crit = p.extra_large_radius_px, p.giant_criterion
    return tuple(torch.cat(c) for c in zip(*coords))


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
    ty, tx = _area_index(y, xx, size, (nb, -(-h // size), -(-w // size)))
    y0, x0 = (ty * size).clamp_max(h - size), (tx * size).clamp_max(w - size)
    g = torch.arange(size, device=x.device)
    win = x[b[:, None, None], (y0[:, None] + g)[:, :, None], (x0[:, None] + g)[:, None, :]]
    d = torch.cat([(win[:, :, 1:] - win[:, :, :-1]).abs().flatten(1),
                   (win[:, 1:] - win[:, :-1]).abs().flatten(1)], 1)
    m = d.mean(1)
    s = ((d - m[:, None]).abs().mean(1) * _SD_PER_MAD).clamp_min(1e-12)
    return (avg - m) / s


# ----------------------------------------------------------------------------- statistics


def _area_stats(t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trimmed mean and robust SD of a band ``t`` (B, k, w) in k x k areas -> (B, 1, ceil(w/k)).

    SD = sqrt(pi/2) x mean absolute deviation; two rounds leave out values beyond 4 SD, so strong
    hits neither inflate the statistics nor change them once erased. The last area is shifted
    inward so that it also holds k x k values."""
    nb, kk, w = t.shape
    full = w // k
    parts = [t[:, :, :full * k].reshape(nb, kk, full, k)]
    if w % k:
        parts.append(t[:, :, w - k:].reshape(nb, kk, 1, k))
    v = torch.cat(parts, 2) if len(parts) > 1 else parts[0]
    keep = None
    for _ in range(3):
        n = kk * k if keep is None else keep.sum((1, 3), keepdim=True)
        mean = (v if keep is None else v * keep).sum((1, 3), keepdim=True) / n
        dev = (v - mean).abs()
        sd = (dev if keep is None else dev * keep).sum((1, 3), keepdim=True) / n * _SD_PER_MAD
        keep = dev <= 4.0 * sd
    return mean.view(nb, 1, -1), sd.view(nb, 1, -1)


def _exceeds(t: torch.Tensor, thr: torch.Tensor, k: int, below: bool = False) -> torch.Tensor:
    """Bool (B, h, w): ``t`` above (below) the threshold ``thr`` (B, ny, nx) of its k x k area."""
    nb, h, w = t.shape
    out = torch.empty(t.shape, dtype=torch.bool, device=t.device)
    thr_x = thr.repeat_interleave(k, dim=-1)[..., :w]  # (B, ny, w), no full-size map
    op = torch.lt if below else torch.gt
    full = h // k
    for rows, ys, n, kk in ((slice(0, full * k), slice(0, full), full, k),
                            (slice(full * k, h), slice(full, full + 1), 1, h - full * k)):
        if kk and n:
            op(t[:, rows].view(nb, n, kk, w), thr_x[:, ys, None, :],
               out=out[:, rows].view(nb, n, kk, w))
    return out


def _offsets(r_out: float, r_in: float, r: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (dy, dx) with r_in < distance <= r_out in a (2r+1)^2 window (row-major order);
    ``r_in < 0`` and ``r_out = inf`` give the whole window."""
    r = int(math.floor(r_out)) if r is None else r
    g = torch.arange(-r, r + 1)
    dy, dx = (a.reshape(-1) for a in torch.meshgrid(g, g, indexing="ij"))
    d2 = dy.square() + dx.square()
    sel = (d2 > r_in * abs(r_in)) & (d2 <= r_out * r_out)
    return dy[sel], dx[sel]


def _gather(flat, h, w, b, y, x, dy, dx):
    """Values at (y + dy, x + dx), clamped to the image, for n points and k offsets -> (n, k)."""
    dt = torch.int32 if flat.numel() < 2**31 else torch.int64  # small indices: faster, no mmap
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


def _ring_stats(flat, h, w, b, y, x, r_in, width, chunk=16384):
    """Mean and SD of the annulus r_in < r <= r_in + width around each point -> (n,), (n,)."""
    dy, dx = _offsets(r_in + width, r_in)
    k = dy.numel()
    means, sds = [y.new_zeros(0, dtype=flat.dtype)], [y.new_zeros(0, dtype=flat.dtype)]
    for i in range(0, y.numel(), chunk):  # chunks keep temporaries small and cached
        v = _gather(flat, h, w, b[i:i + chunk], y[i:i + chunk], x[i:i + chunk], dy, dx)
        ref = v[:, 0]
        v = v - ref[:, None]  # shifted for an accurate one-pass variance (torch.std is slow)
        s1, s2 = v.sum(1), v.square().sum(1)
        means.append(ref + s1 / k)
        sds.append(((s2 - s1 * s1 / k) / (k - 1)).clamp_min(0).sqrt().clamp_min(1e-12))
    return torch.cat(means), torch.cat(sds)


def _area_index(y, x, size, shape):
    return (y // size).clamp_max(shape[1] - 1), (x // size).clamp_max(shape[2] - 1)


def _window_coords(reach, b, y, x):
    r = reach.shape[-1] // 2
    i, wy, wx = reach.nonzero(as_tuple=True)
    return b[i], y[i] + wy - r, x[i] + wx - r


# ----------------------------------------------------------------------------- replacement


def _replace(image, x, m, coords, border, order):
    """Copy of ``image`` with the patches at ``coords`` (row-major) of mask ``m`` replaced
    -> (copy, number of patches per image)."""
    nb, h, w = x.shape
    b, y, xx = coords
    comp = _components(b, y, xx, h, w)
    n_comp = int(comp.max()) + 1 if comp.numel() else 0
    out = image.clone(memory_format=torch.contiguous_format)
    comp_b = torch.zeros(n_comp, dtype=torch.long, device=x.device).scatter_(0, comp, b)
    if n_comp:
        values = _fit_patches(x, m, b, y, xx, comp, comp_b, border, order)
        if not out.dtype.is_floating_point:
            info = torch.iinfo(out.dtype)
            values = values.round().clamp(info.min, info.max)
        out.view(nb, h, w)[b, y, xx] = values.to(out.dtype)
    counts = torch.bincount(comp_b, minlength=nb)
    return out, (int(counts[0]) if image.ndim == 2 else counts.reshape(image.shape[:-2]))


def _components(b, y, x, h, w):
    """8-connected component id (0..n-1) for each listed pixel (row-major order)."""
    n = b.numel()
    lab = torch.arange(n, device=b.device)
    if n == 0:
        return lab
    lin = (b * h + y) * w + x  # sorted: nonzero returns row-major order
    src, dst = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ok = (y + dy < h) & (x + dx >= 0) & (x + dx < w)
        j = torch.searchsorted(lin, lin + dy * w + dx).clamp_max(n - 1)
        ok &= lin[j] == lin + dy * w + dx
        src.append(torch.nonzero(ok).flatten())
        dst.append(j[ok])
    src, dst = torch.cat(src), torch.cat(dst)
    while True:  # min-label propagation with pointer jumping; ~log(patch size) rounds
        new = lab.clone()
        new.scatter_reduce_(0, src, lab[dst], "amin")
        new.scatter_reduce_(0, dst, lab[src], "amin")
        new = new[new]
        if torch.equal(new, lab):
            break
        lab = new
    return torch.unique(lab, return_inverse=True)[1]


def _fit_patches(x, m, b, y, xx, comp, comp_b, border, order):
    """Polynomial values at the listed pixels, fitted per component to its border ring."""
    nb, h, w = x.shape
    n_comp = comp_b.numel()
    big = torch.iinfo(torch.long).max
    lo = [torch.full((n_comp,), big, device=x.device).scatter_reduce(0, comp, t, "amin")
          for t in (y, xx)]
    hi = [torch.full((n_comp,), -1, device=x.device).scatter_reduce(0, comp, t, "amax")
          for t in (y, xx)]
    cen = [(a + c).double() / 2 for a, c in zip(lo, hi)]
    scale = (torch.maximum(hi[0] - lo[0], hi[1] - lo[1]).double() / 2 + border).clamp_min(1.0)
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    coef = torch.zeros(n_comp, len(terms), dtype=torch.float64, device=x.device)
    pix_comp_order = torch.argsort(comp, stable=True)
    bounds = torch.tensor(list(range(0, n_comp, _CHUNK)) + [n_comp], device=x.device)
    starts = torch.searchsorted(comp[pix_comp_order], bounds).tolist()
    for ic, c0 in enumerate(range(0, n_comp, _CHUNK)):
        c1 = min(c0 + _CHUNK, n_comp)
        rng = torch.arange(c0, c1, device=x.device)
        s = int((torch.maximum(hi[0][rng] - lo[0][rng], hi[1][rng] - lo[1][rng])).max()) + 1
        s += 2 * border
        oy, ox = lo[0][rng] - border, lo[1][rng] - border
        g = torch.arange(s, device=x.device)
        wy, wx = oy[:, None] + g, ox[:, None] + g  # (n, s)
        valid = ((wy >= 0) & (wy < h))[:, :, None] & ((wx >= 0) & (wx < w))[:, None, :]
        lin = ((comp_b[rng][:, None, None] * h + wy.clamp(0, h - 1)[:, :, None])
               * w + wx.clamp(0, w - 1)[:, None, :])
        vals = x.reshape(-1)[lin].double()
        masked = m.reshape(-1)[lin]
        sel = pix_comp_order[starts[ic]:starts[ic + 1]]
        own = torch.zeros(c1 - c0, s, s, device=x.device)
        own[comp[sel] - c0, y[sel] - oy[comp[sel] - c0], xx[sel] - ox[comp[sel] - c0]] = 1.0
        ring = (F.max_pool2d(own[:, None], 2 * border + 1, 1, border)[:, 0] > 0) & ~masked & valid
        u = ((wx.double() - cen[1][rng, None]) / scale[rng, None])[:, None, :].expand(-1, s, -1)
        v = ((wy.double() - cen[0][rng, None]) / scale[rng, None])[:, :, None].expand(-1, -1, s)
        a = torch.stack([u**i * v**j for i, j in terms], -1).flatten(1, 2)  # (n, s*s, T)
        wgt = ring.flatten(1).double()
        ata = torch.einsum("npi,np,npj->nij", a, wgt, a)
        atb = torch.einsum("npi,np,np->ni", a, wgt, vals.flatten(1))
        cnt = wgt.sum(1)
        eye = torch.eye(len(terms), dtype=torch.float64, device=x.device)
        sol = torch.linalg.solve(ata + 1e-9 * (cnt[:, None, None] + 1) * eye, atb)
        mean = atb[:, 0] / cnt.clamp_min(1)
        poor = cnt < 2 * len(terms)  # too few ring pixels: fall back to their mean
        sol[poor] = 0.0
        sol[poor, 0] = mean[poor]
        coef[rng] = sol
    u = (xx.double() - cen[1][comp]) / scale[comp]
    v = (y.double() - cen[0][comp]) / scale[comp]
    basis = torch.stack([u**i * v**j for i, j in terms], -1)
    return (basis * coef[comp]).sum(-1)


# ----------------------------------------------------------------------------- checks


def _as_stack(image: torch.Tensor, fn: str) -> torch.Tensor:
    """(..., h, w) real image -> contiguous (B, h, w) in float32 (float64 stays float64)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{fn}: image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim < 2 or image.is_complex() or image.dtype == torch.bool:
        raise ValueError(f"{fn}: image must be a real (..., h, w) tensor, got {image.dtype} "
                         f"of shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h < 16 or w < 16:
        raise ValueError(f"{fn}: image is {h} x {w} px; X-ray search needs at least 16 x 16")
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    return image.reshape(-1, h, w).to(dtype).contiguous()
