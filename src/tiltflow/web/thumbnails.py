"""Cached, downsampled views for the viewer: PNG thumbnails and float previews.

A view is read once at full size (a stack section, or the frame average of a movie), its
statistics taken, then area-downsampled to a preview (longest side <= 1024 px, float32 ``.npy``)
and a thumbnail (<= 256 px, 8-bit PNG stretched between the 1st and 99th percentiles). The files
live in ``<project>/.cache/thumbs/`` keyed by file + section + mtime + size, so every request after
the first is a file read, and a rewritten file is rendered again. Arrays are ``(y, x)``, row 0
first (it becomes the top row of the PNG).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tiltflow.io.png import encode_png_gray8

THUMB_PX = 256
PREVIEW_PX = 1024
_VERSION = "1"


@dataclass(frozen=True)
class ImageRef:
    """One view as the project references it: a stack section, or a movie (``index`` None)."""

    file: Path
    index: int | None


@dataclass
class ViewStats:
    """Full-resolution statistics of one view, and the preview's size ``(ny, nx)``."""

    mean: float
    std: float
    min: float
    max: float
    preview_shape: tuple[int, int]


# -- pure image math -------------------------------------------------------------------------------
def downsample_to_max_2d(image: torch.Tensor, max_px: int) -> torch.Tensor:
    """Area-average ``(h, w)`` down so that its longest side is at most ``max_px`` (aspect kept).

    Each output pixel is the mean of the input pixels it covers, so the mean is preserved.
    """
    h, w = image.shape[-2:]
    scale = max_px / max(h, w)
    if scale >= 1:
        return image.clone()
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    pooled = torch.nn.functional.adaptive_avg_pool2d(image.reshape(1, 1, h, w).float(), size)
    return pooled.reshape(size)


def contrast_limits(image: torch.Tensor, *, low_pct: float = 1.0, high_pct: float = 99.0) -> tuple[float, float]:
    """Grey levels at the ``low_pct`` and ``high_pct`` percentiles of the finite pixels."""
    v = image[torch.isfinite(image)].flatten().to(torch.float64)
    if v.numel() == 0:
        return 0.0, 1.0
    if v.numel() > 1_000_000:  # torch.quantile has an input size limit; a regular subsample is enough
        v = v[:: v.numel() // 1_000_000 + 1]
    q = torch.quantile(v, torch.tensor([low_pct / 100, high_pct / 100], dtype=torch.float64, device=v.device))
    return float(q[0]), float(q[1])


def to_uint8(image: torch.Tensor, lo: float, hi: float, *, gamma: float = 1.0) -> np.ndarray:
    """Map ``[lo, hi]`` to ``[0, 255]`` with ``gamma`` (clipped); NaN becomes 0."""
    span = hi - lo if hi > lo else 1.0
    x = ((image.to(torch.float64) - lo) / span).clamp(0.0, 1.0).nan_to_num(0.0)
    return (x.pow(1.0 / gamma) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def render_png(image: torch.Tensor, max_px: int = THUMB_PX) -> bytes:
    """Downsample to ``max_px`` and stretch between the 1st and 99th percentiles into a PNG."""
    small = downsample_to_max_2d(image, max_px)
    lo, hi = contrast_limits(small)
    return encode_png_gray8(to_uint8(small, lo, hi))


# -- reading one view -------------------------------------------------------------------------------
def _frame_average(path: Path) -> np.ndarray:
    """Mean over a movie's frames, ``(ny, nx)`` float32; TIFF/EER pages are summed one at a time."""
    from tiltflow.io.movies import EER_SUFFIXES, TIFF_SUFFIXES, read_movie_frames, read_movie_header

    if path.suffix.lower() in TIFF_SUFFIXES + EER_SUFFIXES:
        import tifffile

        read_movie_header(path)  # clear errors for missing / truncated files
        total, n = None, 0
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                frames = np.asarray(page.asarray(), dtype=np.float64)  # type: ignore[union-attr]
                frames = frames.reshape(-1, *frames.shape[-2:])  # a page may hold several planes
                total = frames.sum(axis=0) if total is None else total + frames.sum(axis=0)
                n += frames.shape[0]
        if total is None:
            raise ValueError(f"{path}: movie without frames — the file is empty or corrupt")
        return (total / n).astype(np.float32)
    return read_movie_frames(path).astype(np.float32).mean(axis=0)


def read_view(ref: ImageRef) -> np.ndarray:
    """The full-size view ``(ny, nx)`` float32: a stack section, or a movie's frame average."""
    from tiltflow.io.mrc import read_section

    if not Path(ref.file).is_file():
        raise FileNotFoundError(f"{ref.file}: image file not found — was it moved or deleted?")
    if ref.index is None:
        return _frame_average(Path(ref.file))
    return read_section(ref.file, ref.index)


# -- the cache --------------------------------------------------------------------------------------
class ThumbnailCache:
    """Renders each view once into ``cache_dir``; ``computed`` counts renders (for tests and logs)."""

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        thumb_px: int = THUMB_PX,
        preview_px: int = PREVIEW_PX,
        max_parallel: int = 2,
        guard: Callable[[Path], Path] | None = None,
    ):
        self.dir = Path(cache_dir)
        self.guard = guard  # raises for a file that must not be read (``web.limits.served_path``)
        self.thumb_px, self.preview_px = thumb_px, preview_px
        self.computed = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._slots = threading.Semaphore(max_parallel)  # full-size reads are large: a few at a time

    def key(self, ref: ImageRef) -> str:
        st = os.stat(ref.file)
        text = f"{Path(ref.file).resolve()}|{ref.index}|{st.st_mtime_ns}|{st.st_size}|{self.preview_px}|{_VERSION}"
        return hashlib.sha1(text.encode()).hexdigest()[:24]

    def _paths(self, key: str) -> dict[str, Path]:
        return {ext: self.dir / f"{key}.{ext}" for ext in ("png", "npy", "json")}

    def ensure(self, ref: ImageRef) -> dict[str, Path]:
        """Render ``ref`` unless cached; the paths of its PNG, preview ``.npy`` and stats ``.json``."""
        if self.guard is not None:
            self.guard(Path(ref.file))
        if not Path(ref.file).is_file():
            raise FileNotFoundError(f"{ref.file}: image file not found — was it moved or deleted?")
        key = self.key(ref)
        paths = self._paths(key)
        if paths["json"].is_file():
            return paths
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if not paths["json"].is_file():
                with self._slots:
                    self._render(ref, paths)
        return paths

    def _render(self, ref: ImageRef, paths: dict[str, Path]) -> None:
        full = torch.from_numpy(np.ascontiguousarray(read_view(ref), dtype=np.float32))
        f64 = full.to(torch.float64)
        preview = downsample_to_max_2d(full, self.preview_px)
        stats = ViewStats(
            float(f64.mean()),
            float(f64.std()),
            float(full.min()),
            float(full.max()),
            (int(preview.shape[0]), int(preview.shape[1])),
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(paths["png"], render_png(preview, self.thumb_px))
        tmp = paths["npy"].with_name(f".{paths['npy'].name}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, preview.numpy().astype(np.float32))
        os.replace(tmp, paths["npy"])
        _atomic_write(paths["json"], json.dumps(asdict(stats)).encode())  # last: marks the entry complete
        with self._guard:
            self.computed += 1

    def thumbnail_png(self, ref: ImageRef) -> Path:
        return self.ensure(ref)["png"]

    def preview(self, ref: ImageRef) -> np.ndarray:
        """The preview ``(ny, nx)`` float32 (longest side <= ``preview_px``)."""
        return np.load(self.ensure(ref)["npy"])

    def stats(self, ref: ImageRef) -> ViewStats:
        d = json.loads(self.ensure(ref)["json"].read_text())
        return ViewStats(d["mean"], d["std"], d["min"], d["max"], tuple(d["preview_shape"]))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
