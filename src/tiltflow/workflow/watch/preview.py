"""A coarse reconstruction of a series while it is collected (issue 14 item 4).

From the per-tilt sums done so far: binned to about ``target_px``, rotated so the mdoc's tilt axis
is vertical, shifted by a coarse cross-correlation chain from the lowest tilt outwards (IMOD
``tiltxcorr`` in spirit, integer binned pixels), then a weighted backprojection with the mdoc's
angles. Written as ``<project>/watch/preview/<tsId>.png`` (the central XY slice above the central
XZ slice) and ``.json``; the viewer's dashboard shows it until the series' tomogram exists.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _coarse_shifts(views):
    """Integer shifts ``(t, 2)`` (x, y) bringing each view onto its neighbour towards the lowest tilt."""
    import torch

    t = views.shape[0]
    shifts = torch.zeros(t, 2, dtype=torch.float64)
    if t < 2:
        return shifts
    f = torch.fft.rfft2(views - views.mean(dim=(-2, -1), keepdim=True))
    h, w = views.shape[-2:]
    for i in range(1, t):
        cc = torch.fft.irfft2(f[i - 1] * f[i].conj(), s=(h, w))
        k = int(torch.argmax(cc))
        dy, dx = divmod(k, w)
        dy, dx = (dy - h if dy > h // 2 else dy), (dx - w if dx > w // 2 else dx)
        shifts[i] = shifts[i - 1] + torch.tensor([dx, dy], dtype=torch.float64)
    return shifts


def thumb_path(sum_file: str | Path) -> Path:
    """Where the binned copy of a per-tilt sum lives (beside the cache's ``sums/``)."""
    p = Path(sum_file)
    return p.parent.parent / "thumbs" / f"{p.stem}.npy"


def write_thumb(sum_file: str | Path, target_px: int = 256) -> Path:
    """A binned float32 copy (longest side <= ``target_px``) of a per-tilt sum, for previews."""
    import torch

    from tiltflow.core.reconstruct import bin_views

    image = torch.from_numpy(np.load(sum_file).astype(np.float32))
    f = max(1, math.ceil(max(image.shape) / target_px))
    small = bin_views(image, f) if f > 1 else image
    out = thumb_path(sum_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.npy")
    np.save(tmp, small.numpy().astype(np.float32))
    os.replace(tmp, out)
    return out


def coarse_preview(
    angles_deg: list[float],
    sums: list[str],
    tilt_axis_deg: float,
    out_png: Path,
    *,
    target_px: int = 256,
    thickness_frac: float = 0.4,
) -> dict:
    """Reconstruct from per-tilt sum files (``.npy``, their binned copies when made) at ``angles_deg``;
    returns what it used."""
    import torch

    from tiltflow.core.geometry import xf_from_geometry
    from tiltflow.core.reconstruct import aligned_shape, apply_xf, bin_views, wbp
    from tiltflow.io.png import encode_png_gray8

    order = sorted(range(len(angles_deg)), key=lambda i: abs(angles_deg[i]))
    files = [thumb_path(sums[i]) if thumb_path(sums[i]).is_file() else sums[i] for i in order]
    views = torch.from_numpy(np.stack([np.load(f).astype(np.float32) for f in files]))
    angles = torch.tensor([angles_deg[i] for i in order], dtype=torch.float64)
    f = max(1, math.ceil(max(views.shape[-2:]) / target_px))
    views = bin_views(views, f) if f > 1 else views
    xf = xf_from_geometry(tilt_axis_deg, torch.zeros(len(order), 2))
    shape = aligned_shape((views.shape[-2], views.shape[-1]), xf)
    aligned = apply_xf(views, xf, shape, mode="bilinear")
    shifts = _coarse_shifts(aligned)
    xf[:, 4:] += shifts
    aligned = apply_xf(views, xf, shape, mode="bilinear")
    aligned = aligned - aligned.mean(dim=(-2, -1), keepdim=True)
    thickness = max(8, int(thickness_frac * min(shape)) // 2 * 2)
    vol = wbp(aligned, angles, thickness_px=thickness).float()
    xy, xz = vol[vol.shape[0] // 2].numpy(), vol[:, vol.shape[1] // 2, :].numpy()
    picture = np.concatenate([_grey(xy), np.full((2, xy.shape[1]), 255, np.uint8), _grey(xz)])
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp")
    tmp.write_bytes(encode_png_gray8(picture))
    os.replace(tmp, out_png)
    info = {"tilts": len(order), "binning": f, "angles_deg": sorted(angles.tolist()), "shape": list(vol.shape)}
    meta = out_png.with_suffix(".json")
    meta.with_name(f".{meta.name}.tmp").write_text(json.dumps(info))
    os.replace(meta.with_name(f".{meta.name}.tmp"), meta)
    return info


def refresh_preview(loop, v) -> None:
    """Redo the preview of series ``v`` of a watch ``loop`` when it is being collected and has new
    tilts done (at most every ``preview_every_s``)."""
    if loop.motion is None or v.state != "collecting" or loop.s.preview_every_s is None:
        return
    done = []
    for movie, (series, im) in loop.live.get(v.ts_id, (None, {}))[1].items():
        rec = loop.cache.records.get(movie)
        if rec is not None and rec["result"] is not None:
            done.append((im.tilt_angle_deg, rec["result"]["files"]["sum"], series.acquisition.tilt_axis_deg))
    last_n, last_t = loop.previewed.get(v.ts_id, (0, 0.0))
    if len(done) < 3 or len(done) == last_n or loop.clock() - last_t < loop.s.preview_every_s:
        return
    loop.previewed[v.ts_id] = (len(done), loop.clock())
    coarse_preview([d[0] for d in done], [d[1] for d in done], done[0][2], loop.root / "preview" / f"{v.ts_id}.png")


def _grey(plane: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(plane, [1, 99])
    scaled = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return (scaled * 255).astype(np.uint8)
