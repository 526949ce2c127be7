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
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from tiltflow.io.png import encode_png_gray8

THUMB_PX = 256
PREVIEW_PX = 1024
_VERSION = "1"

log = logging.getLogger(__name__)


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
                frames = np.asarray(page.asarray(), dtype=np.float64)
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
class _FileId(NamedTuple):
    """A file as the cache keys know it: where it resolves to, and its version."""

    resolved: str
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class RenderedView:
    """One view rendered in memory: the thumbnail PNG, the preview ``(ny, nx)`` float32, the statistics."""

    png: bytes
    preview: np.ndarray
    stats: ViewStats


def render_view(ref: ImageRef, *, thumb_px: int = THUMB_PX, preview_px: int = PREVIEW_PX) -> RenderedView:
    """Read ``ref`` at full size once; its statistics, preview (<= ``preview_px``) and thumbnail."""
    full = torch.from_numpy(np.ascontiguousarray(read_view(ref), dtype=np.float32))
    f64 = full.to(torch.float64)
    preview = downsample_to_max_2d(full, preview_px)
    stats = ViewStats(
        float(f64.mean()),
        float(f64.std()),
        float(full.min()),
        float(full.max()),
        (int(preview.shape[0]), int(preview.shape[1])),
    )
    return RenderedView(render_png(preview, thumb_px), preview.numpy().astype(np.float32), stats)


class ThumbnailCache:
    """Renders each view once into ``cache_dir``; ``computed`` counts renders (for tests and logs).

    When the cache cannot be written (a full disk), the view rendered in memory is served and the
    write skipped, with one log line; the next request renders it again. Statistics are also kept in
    memory (``stats_memo`` entries), as the quality suggestions read those of every view of a series,
    and so are the PNG bytes of the thumbnails served last (``png_memo_bytes`` in all): a page of 41
    thumbnails is then answered without reading a file.
    """

    def __init__(
        self,
        cache_dir: Path | str,
        *,
        thumb_px: int = THUMB_PX,
        preview_px: int = PREVIEW_PX,
        max_parallel: int = 2,
        guard: Callable[[Path], Path] | None = None,
        stats_memo: int = 8192,
        png_memo_bytes: int = 64 << 20,
    ):
        self.dir = Path(cache_dir)
        self.guard = guard  # raises for a file that must not be read (``web.limits.served_path``)
        self.thumb_px, self.preview_px = thumb_px, preview_px
        self.computed = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._slots = threading.Semaphore(max_parallel)  # full-size reads are large: a few at a time
        self._stats: OrderedDict[str, ViewStats] = OrderedDict()
        self._stats_max = stats_memo
        self._pngs: OrderedDict[str, bytes] = OrderedDict()
        self._pngs_bytes, self._pngs_max = 0, png_memo_bytes

    def key(self, ref: ImageRef) -> str:
        st = os.stat(ref.file)
        return self._key(_FileId(str(Path(ref.file).resolve()), st.st_mtime_ns, st.st_size), ref.index)

    def _key(self, file: _FileId, index: int | None) -> str:
        text = f"{file.resolved}|{index}|{file.mtime_ns}|{file.size}|{self.preview_px}|{_VERSION}"
        return hashlib.sha1(text.encode()).hexdigest()[:24]

    def _paths(self, key: str) -> dict[str, Path]:
        return {ext: self.dir / f"{key}.{ext}" for ext in ("png", "npy", "json")}

    def _checked(self, file: Path) -> _FileId:
        """``file`` if it may be read (``guard``) and exists, as the cache keys know it."""
        if self.guard is not None:
            self.guard(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: image file not found — was it moved or deleted?")
        st = os.stat(file)
        return _FileId(str(file.resolve()), st.st_mtime_ns, st.st_size)

    def ensure(self, ref: ImageRef) -> dict[str, Path] | RenderedView:
        """Render ``ref`` unless cached; the paths of its PNG, preview ``.npy`` and stats ``.json``,
        or the rendering itself when the cache could not be written (a full disk)."""
        return self._ensure(ref, self._key(self._checked(Path(ref.file)), ref.index))

    def _ensure(self, ref: ImageRef, key: str) -> dict[str, Path] | RenderedView:
        paths = self._paths(key)
        if paths["json"].is_file():
            return paths
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if paths["json"].is_file():
                return paths
            with self._slots:
                view = render_view(ref, thumb_px=self.thumb_px, preview_px=self.preview_px)
            with self._guard:
                self.computed += 1
            self._remember(key, view.stats)
            try:
                self._write(paths, view)
            except OSError as err:
                log.warning("thumbnail cache %s not written (%s): served from memory", self.dir, err.strerror or err)
                return view
        return paths

    def _write(self, paths: dict[str, Path], view: RenderedView) -> None:
        """The entry's three files, the stats last (they mark it complete); none when one fails."""
        buffer = io.BytesIO()
        np.save(buffer, view.preview)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(paths["png"], view.png)
            _atomic_write(paths["npy"], buffer.getvalue())
            _atomic_write(paths["json"], json.dumps(asdict(view.stats)).encode())
        except OSError:
            for path in paths.values():
                path.unlink(missing_ok=True)
            raise

    def _remember(self, key: str, stats: ViewStats) -> None:
        with self._guard:
            self._stats[key] = stats
            self._stats.move_to_end(key)
            while len(self._stats) > self._stats_max:
                self._stats.popitem(last=False)

    def thumbnail_png(self, ref: ImageRef) -> bytes:
        """The thumbnail's PNG: from memory, the cache file, or rendered (when the cache could not be
        written, the rendering itself)."""
        key = self._key(self._checked(Path(ref.file)), ref.index)
        with self._guard:
            png = self._pngs.get(key)
            if png is not None:
                self._pngs.move_to_end(key)
                return png
        entry = self._ensure(ref, key)
        if isinstance(entry, RenderedView):
            return entry.png
        png = entry["png"].read_bytes()
        with self._guard:
            if key not in self._pngs:
                self._pngs[key] = png
                self._pngs_bytes += len(png)
            while self._pngs_bytes > self._pngs_max and self._pngs:
                self._pngs_bytes -= len(self._pngs.popitem(last=False)[1])
        return png

    def preview(self, ref: ImageRef) -> np.ndarray:
        """The preview ``(ny, nx)`` float32 (longest side <= ``preview_px``)."""
        entry = self.ensure(ref)
        return entry.preview if isinstance(entry, RenderedView) else np.load(entry["npy"])

    def stats(self, ref: ImageRef) -> ViewStats:
        return self._stats_for_key(ref, self._key(self._checked(Path(ref.file)), ref.index))

    def stats_of(self, refs: Iterable[ImageRef]) -> dict[ImageRef, ViewStats]:
        """``stats`` of many views, such as a series' sections of one stack: each file is checked
        once. Views whose file is missing, not served or unreadable are left out."""
        files: dict[Path, _FileId | None] = {}
        found = {}
        for ref in refs:
            file = Path(ref.file)
            if file not in files:
                try:
                    files[file] = self._checked(file)
                except OSError:
                    files[file] = None
            checked = files[file]
            if checked is None:
                continue
            try:
                found[ref] = self._stats_for_key(ref, self._key(checked, ref.index))
            except (OSError, ValueError):
                continue
        return found

    def _stats_for_key(self, ref: ImageRef, key: str) -> ViewStats:
        with self._guard:
            known = self._stats.get(key)
        if known is not None:
            return known
        entry = self._ensure(ref, key)
        if isinstance(entry, RenderedView):
            return entry.stats
        d = json.loads(entry["json"].read_text())
        stats = ViewStats(d["mean"], d["std"], d["min"], d["max"], (d["preview_shape"][0], d["preview_shape"][1]))
        self._remember(key, stats)
        return stats


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: no partial file left behind
        raise
