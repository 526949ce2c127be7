"""Gain and dark references: TIFF (incl. Thermo ``.gain``), MRC; orientation transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class GainError(ValueError):
    """A gain reference that cannot be used; one line naming the file and the fix."""


def read_gain(path: Path | str, *, option: str = "--gain") -> np.ndarray:
    """The gain (or dark, ``option="--dark"``) reference as float32 ``(ny, nx)``; errors name ``option``."""
    path = Path(path)
    what = "dark reference" if option == "--dark" else "gain reference"
    if not path.is_file():
        raise GainError(f"{path}: {what} not found — check {option}")
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
            raise GainError(
                f"{path}: DigitalMicrograph {what}s are not read directly — "
                f"convert it with IMOD's dm2mrc and pass the .mrc to {option}"
            )
        else:
            raise GainError(f"{path}: unknown {what} format '{suffix}' — pass a .gain, .tif or .mrc to {option}")
    except GainError:
        raise
    except Exception as err:
        raise GainError(f"{path}: cannot read the {what} ({err}) — check {option}") from None
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise GainError(f"{path}: {what} has shape {data.shape}, expected one 2-D image — check {option}")
    if not np.all(np.isfinite(data)):
        raise GainError(f"{path}: {what} contains NaN or infinite values — check {option}")
    return data


def check_gain_values(gain: np.ndarray, path: Path | str, *, option: str = "--gain") -> None:
    """A gain reference without one positive value (all zeros) would zero every movie: GainError."""
    if not bool((gain > 0).any()):
        raise GainError(
            f"{path}: the gain reference has no positive value (all zeros?) — "
            f"pass the camera's gain reference to {option}"
        )


def gain_orientations_for(gain_shape: tuple[int, int], frame_size: tuple[int, int]) -> list[str]:
    """Which orientations make a gain ``(ny, nx)`` fit frames of ``(nx, ny)``: 'as is' and/or 'transposed'."""
    nx, ny = frame_size
    fits = []
    if tuple(gain_shape) == (ny, nx):
        fits.append("as is")
    if tuple(gain_shape) == (nx, ny):
        fits.append("transposed")
    return fits
