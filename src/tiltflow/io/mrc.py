"""MRC stacks and volumes (mrcfile): atomic writes, header reads, tilt angles from extended headers,
header labels.

A file that is not a usable MRC (shorter than its header says, a header of garbage) raises
:class:`StackError` with one line naming the file and what is wrong; mrcfile's warnings about it
are never shown.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER_BYTES = 1024
MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 16: 3}  # MRC2014 modes; 101 (4-bit) below
MODE_NAMES = {
    0: "int8",
    1: "int16",
    2: "float32",
    3: "complex int16",
    4: "complex64",
    6: "uint16",
    12: "float16",
    16: "rgb",
    101: "4-bit",
}
MAX_LABELS, LABEL_CHARS = 10, 80


class StackError(ValueError):
    """A stack that cannot be used; one line naming the file."""


@dataclass(frozen=True)
class StackHeader:
    path: Path
    n_sections: int
    size: tuple[int, int]  # (nx, ny)
    pixel_size_a: float | None
    exttyp: str


@contextmanager
def _quiet():
    """mrcfile warns (to stderr) about odd headers; we report problems ourselves, in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_mrc(
    path: Path | str, data: np.ndarray, *, voxel_size_a: float, is_volume: bool = False, labels: Sequence[str] = ()
) -> Path:
    """Write float32 (or int) data atomically (temporary file, then rename); ``labels`` are added
    to the header after mrcfile's own."""
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
        for text in labels:
            _add_label(mrc, text)
    os.replace(tmp, path)
    return path


def _add_label(mrc, text: str) -> None:
    """Append a label (80 characters at most); when all 10 are used, the oldest after the first goes."""
    labels = [str(v) for v in mrc.get_labels()]
    if len(labels) >= MAX_LABELS:
        labels = labels[:1] + labels[2:]
    labels.append(text[:LABEL_CHARS])
    mrc.header.label = [s.encode("ascii", "replace") for s in labels] + [b""] * (MAX_LABELS - len(labels))
    mrc.header.nlabl = len(labels)


def add_label(path: Path | str, text: str) -> None:
    """Add a header label to an MRC file in place (the data are not read)."""
    import mrcfile

    check_mrc(path)
    with _quiet(), mrcfile.mmap(path, mode="r+", permissive=True) as mrc:
        _add_label(mrc, text)


def header_labels(path: Path | str) -> list[str]:
    import mrcfile

    with _quiet(), mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return [str(v) for v in mrc.get_labels()]


def _raw_header(path: Path) -> tuple[dict, str]:
    """The fields we check, read without mrcfile, and the byte order ('<' or '>')."""
    with open(path, "rb") as fh:
        data = fh.read(HEADER_BYTES)
    if len(data) < HEADER_BYTES:
        raise StackError(
            f"{path}: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte MRC header — "
            "not an MRC stack, or a copy cut short"
        )
    stamp = data[212]
    orders = [">"] if stamp == 0x11 else ["<"] if stamp in (0x44, 0x41) else ["<", ">"]
    best: tuple[dict, str] | None = None
    for order in orders:
        nx, ny, nz, mode = np.frombuffer(data[:16], f"{order}i4").tolist()
        nsymbt = int(np.frombuffer(data[92:96], f"{order}i4")[0])
        fields = {"nx": nx, "ny": ny, "nz": nz, "mode": mode, "nsymbt": nsymbt, "map": data[208:212]}
        if best is None or (mode in MODE_NAMES and nx > 0 and ny > 0 and nz > 0):
            best = (fields, order)
    if best is None:  # unreachable: there is always one byte order to try
        raise StackError(f"{path}: no byte order to read the MRC header with")
    return best


def check_mrc(path: Path | str) -> dict:
    """Raise :class:`StackError` (one line) unless the header is an MRC header whose data fit in the file."""
    path = Path(path)
    if not path.is_file():
        raise StackError(f"{path}: stack not found")
    h, _ = _raw_header(path)
    nx, ny, nz, mode, nsymbt = h["nx"], h["ny"], h["nz"], h["mode"], h["nsymbt"]
    size = path.stat().st_size
    what = "the header is corrupt (no 'MAP ' id)" if h["map"] != b"MAP " else "the header is corrupt"
    if mode not in MODE_NAMES:
        raise StackError(f"{path}: not a readable MRC stack — {what}: data mode {mode} is no MRC mode")
    if min(nx, ny, nz) <= 0 or nsymbt < 0:
        raise StackError(
            f"{path}: not a readable MRC stack — {what}: it says {nx} x {ny} x {nz} px "
            f"with {nsymbt} bytes of extended header"
        )
    data_bytes = (nx + 1) // 2 * ny * nz if mode == 101 else nx * ny * nz * MODE_BYTES[mode]
    needed = HEADER_BYTES + nsymbt + data_bytes
    if needed > size:
        kind = "truncated" if h["map"] == b"MAP " and needed <= 64 * size else "corrupt or truncated"
        raise StackError(
            f"{path}: {kind} MRC — the header claims {nz} sections of {nx} x {ny} "
            f"{MODE_NAMES[mode]} ({needed:,} bytes with the header) but the file holds {size:,} bytes"
        )
    return h


def read_stack_header(path: Path | str) -> StackHeader:
    import mrcfile

    path = Path(path)
    check_mrc(path)
    try:
        with _quiet(), mrcfile.open(path, header_only=True, permissive=True) as mrc:
            h = mrc.header
            nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
            vs = float(mrc.voxel_size.x)
            exttyp = bytes(h.exttyp).decode("ascii", "replace").strip("\x00 ")
    except Exception as err:
        raise StackError(f"{path}: not a readable MRC stack ({err})") from None
    voxel = vs if np.isfinite(vs) and vs > 0 else None
    return StackHeader(path, nz, (nx, ny), voxel, exttyp)


def _unreadable(path: Path | str, err: Exception | None) -> StackError:
    """The one-line reason a stack cannot be read: the header check's, else the reader's."""
    try:
        check_mrc(path)
    except StackError as bad:
        return bad
    return StackError(f"{path}: not a readable MRC stack ({err or 'no data'})")


def read_section(path: Path | str, index: int) -> np.ndarray:
    import mrcfile

    try:
        with _quiet(), mrcfile.mmap(path, permissive=True) as mrc:
            data = mrc.data
            if data is None:
                raise _unreadable(path, None)
            return np.array(data[index] if data.ndim == 3 else data, dtype=np.float32)
    except StackError:
        raise
    except (OSError, ValueError) as err:
        raise _unreadable(path, err) from None


def read_stack(path: Path | str) -> np.ndarray:
    import mrcfile

    try:
        with _quiet(), mrcfile.open(path, permissive=True) as mrc:
            if mrc.data is None:
                raise _unreadable(path, None)
            data = np.asarray(mrc.data, dtype=np.float32)
    except StackError:
        raise
    except (OSError, ValueError) as err:
        raise _unreadable(path, err) from None
    return data[None] if data.ndim == 2 else data


def extended_header_tilt_angles(path: Path | str) -> list[float] | None:
    """Tilt angles (degrees) from an FEI1/FEI2 or SerialEM (SERI) extended header, else None."""
    import mrcfile

    path = Path(path)
    with _quiet(), mrcfile.open(path, header_only=True, permissive=True) as mrc:
        h = mrc.header
        exttyp = bytes(h.exttyp).decode("ascii", "replace").strip("\x00 ")
        nz = int(h.nz)
    if exttyp in ("FEI1", "FEI2"):
        with _quiet(), mrcfile.open(path, permissive=True) as mrc:
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
        return [float(np.frombuffer(ext[i * nint : i * nint + 2], "<i2")[0]) / 100.0 for i in range(nz)]
    return None
