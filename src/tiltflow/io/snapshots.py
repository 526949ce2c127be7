"""PNG snapshots of a tomogram's central slices, written beside it for the terminal user.

For ``TS_01_rec.mrc`` (a volume ``(nz, ny, nx)``, z = beam axis): ``TS_01_rec_xy.png`` (the central
z slice, ``(ny, nx)``), ``TS_01_rec_xz.png`` (the central y row, ``(nz, nx)``) and
``TS_01_rec_yz.png`` (the central x column, ``(ny, nz)``: rows are y, as in the XY picture, columns
z). Row 0 of each array is the top row of its picture; grey levels are stretched between the 1st and
99th percentiles of the slice; a side longer than ``max_px`` is area-averaged down. The viewer's
tomogram page serves the same orientations (``web.tomograms``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tiltflow.io.png import encode_png_gray8

AXES = ("xy", "xz", "yz")


def snapshot_paths(tomogram: Path | str) -> dict[str, Path]:
    """Axis -> the snapshot PNG beside ``tomogram`` (``<stem>_<axis>.png``)."""
    tomogram = Path(tomogram)
    return {axis: tomogram.with_name(f"{tomogram.stem}_{axis}.png") for axis in AXES}


def central_slice(volume, axis: str) -> np.ndarray:
    """The central slice of ``volume`` ``(nz, ny, nx)`` across ``axis`` (xy, xz or yz), float32, in the
    orientation of the module's docstring; ``volume`` may be an ``np.memmap`` (only the slice is read)."""
    nz, ny, nx = volume.shape
    if axis == "xy":
        plane = volume[nz // 2]
    elif axis == "xz":
        plane = volume[:, ny // 2, :]
    elif axis == "yz":
        plane = volume[:, :, nx // 2].T
    else:
        raise ValueError(f"central_slice: axis must be one of {AXES}, not {axis!r}")
    if hasattr(plane, "detach"):  # a tensor (on any device): only the slice is copied
        plane = plane.detach().cpu().numpy()
    return np.array(plane, dtype=np.float32)


def area_downsample(image: np.ndarray, max_px: int) -> np.ndarray:
    """Average ``(h, w)`` over square blocks so that its longest side is at most ``max_px`` (the last
    partial block of a side is averaged over the pixels it has)."""
    h, w = image.shape
    f = -(-max(h, w) // max_px)
    if f <= 1:
        return image
    ph, pw = -(-h // f) * f, -(-w // f) * f
    padded = np.full((ph, pw), np.nan, dtype=np.float64)
    padded[:h, :w] = image
    with np.errstate(invalid="ignore"):
        return np.nanmean(padded.reshape(ph // f, f, pw // f, f), axis=(1, 3)).astype(np.float32)


def to_gray8(image: np.ndarray, lo: float, hi: float, *, gamma: float = 1.0) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 255]`` (clipped) with ``gamma``; NaN becomes 0."""
    span = hi - lo if hi > lo else 1.0
    x = np.clip((image.astype(np.float64) - lo) / span, 0.0, 1.0)
    x = np.nan_to_num(x, nan=0.0)
    return (x ** (1.0 / gamma) * 255.0 + 0.5).astype(np.uint8)


def write_slice_snapshots(volume, tomogram: Path | str, *, max_px: int = 1024) -> list[Path]:
    """Write the XY, XZ and YZ central slices of ``volume`` ``(nz, ny, nx)`` (array, memmap or tensor) as PNGs
    beside the file ``tomogram`` (see :func:`snapshot_paths`); returns their paths."""
    if getattr(volume, "ndim", 0) != 3:
        raise ValueError(
            f"write_slice_snapshots: need a volume (nz, ny, nx), got shape {getattr(volume, 'shape', None)}"
        )
    written = []
    for axis, path in snapshot_paths(tomogram).items():
        plane = area_downsample(central_slice(volume, axis), max_px)
        finite = plane[np.isfinite(plane)]
        lo, hi = np.percentile(finite, [1.0, 99.0]) if finite.size else (0.0, 1.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(encode_png_gray8(to_gray8(plane, float(lo), float(hi))))
        os.replace(tmp, path)
        written.append(path)
    return written
