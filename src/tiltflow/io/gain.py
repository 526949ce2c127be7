"""Gain and dark references: TIFF (incl. Thermo ``.gain``), MRC; orientation transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class GainError(ValueError):
    """A gain reference that cannot be used; one line naming the file and the fix."""


def read_gain(path: Path | str) -> np.ndarray:
    """The gain (or dark) reference as float32 ``(ny, nx)``."""
    path = Path(path)
    if not path.is_file():
        raise GainError(f"{path}: gain reference not found — check --gain")
    suffix = path.suffix.lower()
    try:
        if suffix in (".mrc", ".mrcs"):
            import mrcfile

            with mrcfile.open(path, permissive=True) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32)
        elif suffix in (".tif", ".tiff", ".gain"):
            import tifffile

            data = tifffile.imread(path).astype(np.float32)
        elif suffix in (".dm4", ".dm3"):
            raise GainError(f"{path}: DigitalMicrograph gain references are not read directly — "
                            "convert it with IMOD's dm2mrc and pass the .mrc")
        else:
            raise GainError(f"{path}: unknown gain format '{suffix}' — use .gain, .tif or .mrc")
    except GainError:
        raise
    except Exception as err:
        raise GainError(f"{path}: cannot read the gain reference ({err})") from None
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise GainError(f"{path}: gain reference has shape {data.shape}, expected one 2-D image")
    if not np.all(np.isfinite(data)):
        raise GainError(f"{path}: gain reference contains NaN or infinite values")
    return data


def gain_orientations_for(gain_shape: tuple[int, int], frame_size: tuple[int, int]) -> list[str]:
    """Which orientations make a gain ``(ny, nx)`` fit frames of ``(nx, ny)``: 'as is' and/or 'transposed'."""
    nx, ny = frame_size
    fits = []
    if tuple(gain_shape) == (ny, nx):
        fits.append("as is")
    if tuple(gain_shape) == (nx, ny):
        fits.append("transposed")
    return fits
