"""Movie files: TIFF (LZW/zlib/none, any dtype), EER (TIFF-based, with fraction grouping), MRC.

``read_movie_header`` reads headers only (fast, for import); ``read_movie_frames`` decodes.
Every error is a :class:`MovieError` with one line naming the file and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
EER_SUFFIXES = (".eer",)
MRC_SUFFIXES = (".mrc", ".mrcs")
MOVIE_SUFFIXES = TIFF_SUFFIXES + EER_SUFFIXES + MRC_SUFFIXES


class MovieError(ValueError):
    """A movie that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class MovieHeader:
    path: Path
    format: str  # "tiff" | "eer" | "mrc"
    n_frames: int  # stored frames (EER: fractions)
    size: tuple[int, int]  # (nx, ny)
    dtype: str


def movie_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in EER_SUFFIXES:
        return "eer"
    if suffix in MRC_SUFFIXES:
        return "mrc"
    raise MovieError(f"{path}: unknown movie format '{suffix}' — expected one of {', '.join(MOVIE_SUFFIXES)}")


def _tiff_header(path: Path, fmt: str) -> MovieHeader:
    import tifffile

    size_on_disk = os.path.getsize(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = tif.pages
            n = len(pages)
            if n == 0:
                raise MovieError(f"{path}: TIFF with no image pages — the file is empty or corrupt; re-copy it")
            first = pages.first
            last = pages[-1]
            offsets = getattr(last, "dataoffsets", ()) or ()
            counts = getattr(last, "databytecounts", ()) or ()
            if offsets and counts and max(o + c for o, c in zip(offsets, counts, strict=False)) > size_on_disk:
                raise MovieError(f"{path}: truncated TIFF (last frame ends past the end of the file) — re-copy it")
            ny, nx = first.shape[-2:]
            if fmt == "tiff" and tuple(last.shape[-2:]) != (ny, nx):
                raise MovieError(
                    f"{path}: TIFF pages of different sizes ({nx} x {ny} and {last.shape[-1]} x "
                    f"{last.shape[-2]} px) — not a movie of frames; check the file"
                )
            dtype = str(first.dtype) if first.dtype is not None else "uint8"
    except MovieError:
        raise
    except Exception as err:  # noqa: BLE001 — tifffile raises many kinds on corrupt files
        raise MovieError(f"{path}: not a readable TIFF ({err}) — check the file is complete") from None
    return MovieHeader(path, fmt, n, (int(nx), int(ny)), dtype)


def _mrc_header(path: Path) -> MovieHeader:
    import mrcfile

    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            h = mrc.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            mode = int(h.mode)
            ext = int(h.nsymbt)
    except Exception as err:  # noqa: BLE001 — mrcfile raises many kinds on corrupt files
        raise MovieError(f"{path}: not a readable MRC file ({err})") from None
    itemsize = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2, 101: 0.5}.get(mode)
    if itemsize is None:
        raise MovieError(f"{path}: unsupported MRC mode {mode}")
    need = 1024 + ext + int(nx * ny * nz * itemsize)
    if os.path.getsize(path) < need:
        raise MovieError(f"{path}: truncated MRC ({os.path.getsize(path)} bytes, header says {need}) — re-copy it")
    dtype = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16", 101: "uint4"}[mode]
    return MovieHeader(path, "mrc", nz, (nx, ny), dtype)


def read_movie_header(path: Path | str) -> MovieHeader:
    """Frames, size and dtype of a movie without decoding its pixels."""
    path = Path(path)
    if not path.is_file():
        raise MovieError(f"{path}: movie not found — check --files and that the movies were copied")
    fmt = movie_format(path)
    return _mrc_header(path) if fmt == "mrc" else _tiff_header(path, fmt)


def read_movie_frames(path: Path | str, *, eer_groups: int | None = None) -> np.ndarray:
    """Decode a movie into ``(t, ny, nx)``; EER fractions are summed into ``eer_groups`` groups.

    EER with ``eer_groups``: fractions are decoded one at a time into the groups (float32), so a movie
    of a thousand 4K fractions never sits in memory whole; without it, every fraction is returned.
    """
    path = Path(path)
    header = read_movie_header(path)
    try:
        if header.format == "mrc":
            import mrcfile

            with mrcfile.open(path, permissive=True) as mrc:
                data = np.asarray(mrc.data)
            frames = data[None] if data.ndim == 2 else data
        elif header.format == "eer" and eer_groups:
            frames = _read_eer_grouped(path, eer_groups)
        elif header.format == "eer":
            import tifffile

            frames = tifffile.imread(path)
            frames = frames[None] if frames.ndim == 2 else frames
        else:
            frames = _read_tiff_frames(path, header.n_frames)
    except MovieError:
        raise
    except Exception as err:  # noqa: BLE001 — the decoders raise many kinds on corrupt data
        raise MovieError(f"{path}: cannot decode frames ({err}) — the file is corrupt or truncated") from None
    if frames.size and frames.min() == frames.max():
        raise MovieError(
            f"{path}: every pixel of every frame is {frames.flat[0]} — a blank movie (no exposure, "
            "or damaged in copying); re-copy it, or leave it out with --skip-bad"
        )
    return frames


def _read_tiff_frames(path: Path, n_pages: int) -> np.ndarray:
    """Every page of a TIFF movie as ``(t, ny, nx)``: one series of all frames, or (frames written
    one page per series, ``contiguous=False``) every page read and stacked; the header counts pages too."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        frames = tif.series[0].asarray()
        frames = frames[None] if frames.ndim == 2 else frames.reshape(-1, *frames.shape[-2:])
        if frames.shape[0] != n_pages:
            frames = tif.asarray(key=range(n_pages))
            frames = frames[None] if frames.ndim == 2 else frames
    return frames


def eer_group_layout(n_fractions: int, n_groups: int) -> tuple[int, int]:
    """(groups, fractions per group) of Warp's EER grouping: ``n_fractions // n_groups`` consecutive
    fractions per group, the last ``n_fractions % n_groups`` dropped; never more groups than fractions."""
    if n_groups < 1:
        raise ValueError(f"EER grouping: the number of groups must be >= 1, got {n_groups}")
    groups = min(n_groups, n_fractions)
    return groups, n_fractions // groups if groups else 0


def _read_eer_grouped(path: Path, n_groups: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = tif.series[0].pages  # EER: the fractions (an integrated image, if any, is another series)
        groups, per = eer_group_layout(len(pages), n_groups)
        first = pages[0]
        if first is None:
            raise ValueError(f"{path}: EER file without a readable first fraction")
        ny, nx = first.shape[-2:]
        out = np.zeros((groups, ny, nx), dtype=np.float32)
        for i in range(groups * per):
            page = pages[i]
            if page is None:
                raise ValueError(f"{path}: EER fraction {i + 1} cannot be read")
            out[i // per] += page.asarray()
    return out


def group_frames(frames: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum consecutive frames (EER fractions) into groups as :func:`eer_group_layout` says (float32)."""
    groups, per = eer_group_layout(frames.shape[0], n_groups)
    return frames[: groups * per].reshape(groups, per, *frames.shape[1:]).sum(axis=1, dtype=np.float32)


class MoviePrefetcher:
    """Decodes movies in a background thread while the caller computes on earlier ones.

    ``paths`` is the order in which :meth:`get` is expected to ask for them: asking for one
    starts decoding the ``depth`` paths after it, and the first ``depth`` are started at once. A
    path never started (asked out of order, after :meth:`close`, or not in ``paths``) is read by
    the caller; errors are raised by :meth:`get` of that path. At most ``depth`` decoded movies
    wait at a time, plus the ones being asked for. ``prepare`` (e.g. copying into page-locked
    memory for a GPU) runs on each decoded movie in the same thread.
    """

    def __init__(self, paths, *, depth: int = 1, eer_groups: int | None = None, prepare=None):
        import threading

        self._prepare = prepare  # optional callable applied to the frames in the thread
        self._order = [str(p) for p in paths]
        self._index = {p: i for i, p in enumerate(self._order)}
        self._depth = max(1, int(depth))
        self._eer_groups = eer_groups
        self._queue: list[str] = []
        self._ready: dict[str, object] = {}  # path -> None while decoding, then frames or exception
        self._cond = threading.Condition()
        self._closed = False
        self._schedule(range(min(self._depth, len(self._order))))
        self._thread = threading.Thread(target=self._run, name="movie-prefetch", daemon=True)
        self._thread.start()

    def _schedule(self, indices) -> None:
        for i in indices:
            path = self._order[i]
            if path not in self._ready and path not in self._queue:
                self._queue.append(path)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._queue)
                if self._closed:
                    return
                path = self._queue.pop(0)
                self._ready[path] = None
            try:
                value: object = read_movie_frames(path, eer_groups=self._eer_groups)
                if self._prepare is not None:
                    value = self._prepare(value)
            except Exception as err:  # noqa: BLE001 — handed to the caller of get()
                value = err
            with self._cond:
                if path in self._ready:
                    self._ready[path] = value
                self._cond.notify_all()

    def get(self, path: Path | str) -> np.ndarray:
        """The decoded frames of ``path`` (as :func:`read_movie_frames`, then ``prepare`` when
        given), prefetched when possible."""
        key = str(path)
        with self._cond:
            i = self._index.get(key)
            if i is not None and not self._closed:
                self._schedule(range(i + 1, min(i + 1 + self._depth, len(self._order))))
                # decoded movies well before this one will not be asked for any more (resumed runs)
                for old in [p for p, v in self._ready.items() if v is not None and self._index[p] < i - self._depth]:
                    del self._ready[old]
                self._cond.notify_all()
            if key in self._queue:
                self._queue.remove(key)  # not started: read it here
            if key in self._ready:
                self._cond.wait_for(lambda: self._ready.get(key, 0) is not None)
            value = self._ready.pop(key, None)
        if value is None:
            value = read_movie_frames(key, eer_groups=self._eer_groups)
            return value if self._prepare is None else self._prepare(value)
        if isinstance(value, BaseException):
            raise value
        return value  # type: ignore[return-value]

    def close(self) -> None:
        """Stop decoding and drop what was not used (a decode in progress finishes first)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> MoviePrefetcher:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()
