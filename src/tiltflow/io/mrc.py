"""MRC stacks and volumes (mrcfile): atomic writes, header reads, tilt angles from extended headers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class StackError(ValueError):
    """A stack that cannot be used; one line naming the file."""


@dataclass(frozen=True)
class StackHeader:
    path: Path
    n_sections: int
    size: tuple[int, int]      # (nx, ny)
    pixel_size_a: float | None
    exttyp: str


def write_mrc(path: Path | str, data: np.ndarray, *, voxel_size_a: float, is_volume: bool = False) -> Path:
    """Write float32 (or int) data atomically (temporary file, then rename)."""
    import mrcfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    arr = np.asarray(data)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(arr)
        if arr.ndim == 3 and not is_volume:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size_a
        mrc.update_header_stats()
    os.replace(tmp, path)
    return path


def read_stack_header(path: Path | str) -> StackHeader:
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise StackError(f"{path}: stack not found")
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            h = mrc.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            vs = float(mrc.voxel_size.x)
            exttyp = bytes(h.exttyp).decode("ascii", "replace").strip("\x00 ")
    except Exception as err:
        raise StackError(f"{path}: not a readable MRC stack ({err})") from None
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise StackError(f"{path}: MRC header says {nx} x {ny} x {nz} — not an image stack")
    return StackHeader(path, nz, (nx, ny), vs if vs > 0 else None, exttyp)


def read_section(path: Path | str, index: int) -> np.ndarray:
    import mrcfile

    with mrcfile.mmap(path, permissive=True) as mrc:
        data = mrc.data
        return np.array(data[index] if data.ndim == 3 else data, dtype=np.float32)


def read_stack(path: Path | str) -> np.ndarray:
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    return data[None] if data.ndim == 2 else data


def extended_header_tilt_angles(path: Path | str) -> list[float] | None:
    """Tilt angles (degrees) from an FEI1/FEI2 or SerialEM (SERI) extended header, else None."""
    import mrcfile

    path = Path(path)
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        h = mrc.header
        exttyp = bytes(h.exttyp).decode("ascii", "replace").strip("\x00 ")
        nz = int(h.nz)
    if exttyp in ("FEI1", "FEI2"):
        with mrcfile.open(path, permissive=True) as mrc:
            ext = mrc.indexed_extended_header
            if ext is None or "Alpha tilt" not in (ext.dtype.names or ()):
                return None
            return [float(a) for a in ext["Alpha tilt"][:nz]]
    if exttyp in ("SERI", "AGAR"):
        with open(path, "rb") as fh:
            head = fh.read(1024)
            nint, nreal = np.frombuffer(head[128:132], "<i2")
            nsymbt = int(np.frombuffer(head[92:96], "<i4")[0])
            ext = fh.read(nsymbt)
        # SerialEM: nint = bytes per section, nreal = flags; flag 1 = tilt angle x 100 as int16 first
        if nint <= 0 or not (int(nreal) & 1) or len(ext) < nint * nz:
            return None
        return [float(np.frombuffer(ext[i * nint: i * nint + 2], "<i2")[0]) / 100.0 for i in range(nz)]
    return None
