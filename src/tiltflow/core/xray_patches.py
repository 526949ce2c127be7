"""Pixel neighbourhoods and patches for the X-ray eraser (:mod:`tiltflow.core.xray`).

Robust statistics, values gathered at offsets around points (clamped to the image) and annulus
statistics of in-image pixels, 8-connected components of flat pixel indices, and the polynomial
fill that replaces a patch.

Internal helpers; images are ``(B, h, w)`` float tensors and pixels flat indices into them
(``(b * h + y) * w + x``). Imports nothing from tiltflow. Pure torch; the device follows the input.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

_SD_PER_MAD = math.sqrt(math.pi / 2.0)  # SD / mean absolute deviation of a Gaussian
_CHUNK = 16384  # points per batched gather (keeps temporaries small and cached)
_FIT_CHUNK = 1024  # patches per batched polynomial fit


# ----------------------------------------------------------------------------- statistics


def _robust_stats(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trimmed mean and robust SD along the last axis of ``v`` (n, k) -> (n,), (n,).

    The SD is sqrt(pi/2) x the mean absolute deviation; two rounds leave out values beyond 4 SD.
    """
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
    """Integer (dy, dx) with r_in < distance <= r_out in a (2r+1)^2 window, row-major.

    ``r_in < 0`` and ``r_out = inf`` give the whole window.
    """
    r = math.floor(r_out) if r is None else r
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
    """Mean and SD (n,), (n,) of the in-image pixels of the annulus r_in < r <= r_in + width around each point."""
    dy, dx = _offsets(r_in + width, r_in)
    k = dy.numel()
    means, sds = [flat.new_zeros(0)], [flat.new_zeros(0)]
    for i in range(0, y.numel(), _CHUNK):
        v = _gather(flat, h, w, b[i : i + _CHUNK], y[i : i + _CHUNK], x[i : i + _CHUNK], dy, dx)
        ref = v[:, 0]
        v = v - ref[:, None]  # shifted for an accurate one-pass variance (torch.std is slow)
        s1, s2 = v.sum(1), v.square().sum(1)
        means.append(ref + s1 / k)
        sds.append(((s2 - s1 * s1 / k) / (k - 1)).clamp_min(0).sqrt().clamp_min(1e-12))
    mean, sd = torch.cat(means), torch.cat(sds)
    r = math.ceil(r_in + width)
    near = ((y < r) | (y >= h - r) | (x < r) | (x >= w - r)).nonzero().flatten()
    if near.numel():  # rings that leave the image: only their in-image pixels
        yy, xx = y[near, None] + dy.to(y.device), x[near, None] + dx.to(y.device)
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = torch.where(ok, _gather(flat, h, w, b[near], y[near], x[near], dy, dx), math.nan)
        mean[near] = v.nanmean(1)
        var = (v - mean[near, None]).square().nansum(1) / (ok.sum(1) - 1).clamp_min(1)
        sd[near] = var.sqrt().clamp_min(1e-12)
    return mean, sd


# ----------------------------------------------------------------------------- replacement


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
    """Compute replacement values (float64) at sorted flat indices ``lin`` of ``x`` (B, h, w).

    One polynomial per 8-connected patch, least squares on the unmasked pixels within ``border``.
    """
    _, h, w = x.shape
    y, xx = lin // w % h, lin % w
    comp = _components(lin, y, xx, h, w)
    n_comp = int(comp.max()) + 1
    flat, dev = x.reshape(-1), x.device
    lo = [torch.full((n_comp,), h + w, device=dev).scatter_reduce(0, comp, t, "amin") for t in (y, xx)]
    hi = [torch.full((n_comp,), -1, device=dev).scatter_reduce(0, comp, t, "amax") for t in (y, xx)]
    base = torch.zeros(n_comp, dtype=lin.dtype, device=dev).scatter_(0, comp, lin // (h * w) * h)
    extent = torch.maximum(hi[0] - lo[0], hi[1] - lo[1])
    cen = [(a + c).double() / 2 for a, c in zip(lo, hi, strict=False)]
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
