"""Tomograms in the viewer: the list of a set, and slices served as PNG.

A slice is read through ``mrcfile.mmap``, so only its voxels are read, whatever the tomogram's size.
Orientations (as the snapshots ``io.snapshots`` writes beside each tomogram): ``xy`` at a z index is
``(ny, nx)``; ``xz`` at a y index is ``(nz, nx)``; ``yz`` at an x index is ``(ny, nz)`` (rows y, as
in XY; columns z). Row 0 is the top row of the picture. Contrast: the grey levels at the requested
percentiles of a regular sample of the whole volume (so the contrast stays put while the slice
moves); each half of an even/odd pair is sampled on its own.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiltflow.io.png import encode_png_gray8
from tiltflow.io.snapshots import area_downsample, snapshot_paths, to_gray8
from tiltflow.web.models import TomogramInfo
from tiltflow.workflow.errors import InputError, ProjectError
from tiltflow.workflow.sets import Tomogram, TomogramSet
from tiltflow.workflow.store import OutputRecord, ProjectStore

HALVES = {"full": "file", "even": "even_file", "odd": "odd_file"}
SAMPLE_SLICES = 16  # z slices read for the volume's grey-level sample
SAMPLE_VOXELS = 1_000_000  # at most this many voxels in the sample


def load_tomograms(store: ProjectStore, output: OutputRecord) -> TomogramSet:
    value = store.load(output)
    if not isinstance(value, TomogramSet):
        raise ProjectError(f"{output.pointer} is a {output.type}, not a set of tomograms")
    return value


def find_tomogram(value: TomogramSet, ts_id: str) -> Tomogram:
    for t in value.items:
        if t.ts_id == ts_id:
            return t
    raise ProjectError(f"no tomogram of tilt series '{ts_id}' in this set")


def tomogram_path(store: ProjectStore, tomogram: Tomogram, half: str) -> Path:
    """The MRC of the full tomogram or of one half (``even``/``odd``)."""
    if half == "full":
        return store.abspath(tomogram.file)
    name = getattr(tomogram, HALVES[half])
    if not name:
        raise ProjectError(f"{tomogram.ts_id}: no {half} tomogram — reconstruct with --even-odd to get the halves")
    return store.abspath(str(name))


def tomogram_infos(store: ProjectStore, value: TomogramSet) -> list[TomogramInfo]:
    out = []
    for t in value.items:
        path = store.abspath(t.file)
        snaps = [store.relpath(p) for p in snapshot_paths(path).values() if p.is_file()]
        out.append(
            TomogramInfo(
                ts_id=t.ts_id,
                shape=(int(t.shape[0]), int(t.shape[1]), int(t.shape[2])),
                voxel_size_a=float(t.voxel_size_a),
                file_name=path.name,
                file=store.relpath(path),
                halves=bool(t.even_file and t.odd_file),
                method=t.method,
                source=t.source,
                snapshots=snaps,
                missing=not path.is_file(),
            )
        )
    return out


@dataclass(frozen=True)
class SliceRequest:
    axis: str  # xy | xz | yz
    index: int | None  # None: the centre
    slab: int = 1  # slices averaged around ``index``
    max_px: int = 1024


def _open(path: Path):
    """The volume ``(nz, ny, nx)`` memory-mapped (``mrcfile.mmap``); one-line errors otherwise."""
    import mrcfile

    from tiltflow.io.mrc import check_mrc

    if not path.is_file():
        raise FileNotFoundError(f"{path}: tomogram file not found — was it moved or deleted?")
    check_mrc(path)
    with warnings.catch_warnings():  # odd headers: check_mrc has said what matters
        warnings.simplefilter("ignore")
        mrc = mrcfile.mmap(path, mode="r", permissive=True)
    if mrc.data is None or mrc.data.ndim != 3:
        mrc.close()
        raise ValueError(f"{path}: not a volume (nz, ny, nx)")
    return mrc


def read_slice(path: Path, req: SliceRequest) -> np.ndarray:
    """One slice (averaged over ``slab`` neighbours), area-averaged to ``max_px``; float32."""
    mrc = _open(path)
    try:
        data = mrc.data
        nz, ny, nx = data.shape
        n = {"xy": nz, "xz": ny, "yz": nx}[req.axis]
        index = n // 2 if req.index is None else req.index
        if not 0 <= index < n:
            along = {"xy": "z", "xz": "y", "yz": "x"}[req.axis]
            raise InputError(f"{req.axis} slice {index} is outside the tomogram (0..{n - 1} along {along})")
        lo = max(0, index - (req.slab - 1) // 2)
        hi = min(n, lo + req.slab)
        if req.axis == "xy":
            plane = np.asarray(data[lo:hi], dtype=np.float64).mean(axis=0)
        elif req.axis == "xz":
            plane = np.asarray(data[:, lo:hi, :], dtype=np.float64).mean(axis=1)
        else:
            plane = np.asarray(data[:, :, lo:hi], dtype=np.float64).mean(axis=2).T
    finally:
        mrc.close()
    return area_downsample(plane.astype(np.float32), req.max_px)


def volume_sample(path: Path) -> np.ndarray:
    """A sorted regular sample of the volume's finite voxels: ``SAMPLE_SLICES`` z slices, strided."""
    mrc = _open(path)
    try:
        data = mrc.data
        nz, ny, nx = data.shape
        zs = np.unique(np.linspace(0, nz - 1, min(nz, SAMPLE_SLICES)).round().astype(int))
        step = max(1, int(np.ceil(np.sqrt(len(zs) * ny * nx / SAMPLE_VOXELS))))
        sample = np.concatenate([np.asarray(data[z, ::step, ::step], dtype=np.float32).ravel() for z in zs])
    finally:
        mrc.close()
    sample = sample[np.isfinite(sample)]
    return np.sort(sample) if sample.size else np.array([0.0, 1.0], dtype=np.float32)


class SliceServer:
    """Slices and grey-level samples, kept in memory (a few dozen of each) keyed by file + mtime."""

    def __init__(self, max_slices: int = 48, max_samples: int = 16):
        self._slices: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._samples: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._limits = (max_slices, max_samples)
        self._lock = threading.Lock()

    @staticmethod
    def _file_key(path: Path) -> tuple:
        st = path.stat() if path.is_file() else None
        return (str(path), st.st_mtime_ns if st else 0, st.st_size if st else 0)

    def _cached(self, cache: OrderedDict, key: tuple, limit: int, make):
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = make()
        with self._lock:
            cache[key] = value
            while len(cache) > limit:
                cache.popitem(last=False)
        return value

    def slice(self, path: Path, req: SliceRequest) -> np.ndarray:
        return self._cached(self._slices, (self._file_key(path), req), self._limits[0], lambda: read_slice(path, req))

    def sample(self, path: Path) -> np.ndarray:
        return self._cached(self._samples, self._file_key(path), self._limits[1], lambda: volume_sample(path))

    def png(
        self, path: Path, req: SliceRequest, *, lo_pct: float, hi_pct: float, gamma: float
    ) -> tuple[bytes, float, float]:
        """The slice as an 8-bit PNG between the volume's ``lo_pct`` and ``hi_pct`` percentiles; and
        those grey levels."""
        if not lo_pct < hi_pct:
            raise InputError(f"contrast: the low percentile ({lo_pct}) must be below the high one ({hi_pct})")
        plane = self.slice(path, req)
        sample = self.sample(path)
        lo, hi = (float(v) for v in np.percentile(sample, [lo_pct, hi_pct]))
        return encode_png_gray8(to_gray8(plane, lo, hi, gamma=gamma)), lo, hi
