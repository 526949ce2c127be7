"""RELION per-movie motion STAR (``data_general`` + ``data_global_shift``), written with starfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_motion_star(path: Path | str, shifts_px: np.ndarray, *, movie: str, pixel_size_a: float) -> Path:
    """``shifts_px`` (t, 2) x, y in unbinned pixels (DESIGN.md frame-shift convention); frames 1-based."""
    import pandas as pd
    import starfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shifts = np.asarray(shifts_px, dtype=float)
    general = {
        "rlnImageSizeZ": int(shifts.shape[0]),
        "rlnMicrographMovieName": str(movie),
        "rlnMicrographOriginalPixelSize": float(pixel_size_a),
        "rlnMicrographBinning": 1.0,
    }
    table = pd.DataFrame(
        {
            "rlnMicrographFrameNumber": np.arange(1, shifts.shape[0] + 1),
            "rlnMicrographShiftX": shifts[:, 0],
            "rlnMicrographShiftY": shifts[:, 1],
        }
    )
    starfile.write({"general": general, "global_shift": table}, path, overwrite=True)
    return path


class StarFormatError(ValueError):
    """A motion STAR that cannot be read; one line naming the file and what is missing."""


SHIFT_COLUMNS = ("rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY")


def read_motion_star(path: Path | str) -> np.ndarray:
    """The (t, 2) shifts of a motion STAR, in frame order. Raises :class:`StarFormatError`."""
    import pandas as pd
    import starfile

    path = Path(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 — starfile/pandas raise many kinds on bad input
        raise StarFormatError(f"{path}: not a readable STAR file ({_short(err)})") from None
    table = blocks.get("global_shift")
    if not isinstance(table, pd.DataFrame):
        raise StarFormatError(f"{path}: no 'data_global_shift' loop — not a RELION motion STAR")
    missing = [c for c in SHIFT_COLUMNS if c not in table.columns]
    if missing:
        raise StarFormatError(f"{path}: data_global_shift lacks {', '.join(missing)}")
    try:
        values = table[list(SHIFT_COLUMNS)].apply(pd.to_numeric, errors="raise").to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise StarFormatError(f"{path}: data_global_shift holds values that are not numbers ({_short(err)})") from None
    if len(values) == 0 or not np.isfinite(values).all():
        raise StarFormatError(f"{path}: data_global_shift has no rows or non-finite values")
    return values[np.argsort(values[:, 0], kind="stable")][:, 1:]


def _short(err: Exception) -> str:
    return " ".join(str(err).split())[:120]
