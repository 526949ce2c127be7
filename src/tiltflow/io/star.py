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
    general = {"rlnImageSizeZ": int(shifts.shape[0]), "rlnMicrographMovieName": str(movie),
               "rlnMicrographOriginalPixelSize": float(pixel_size_a), "rlnMicrographBinning": 1.0}
    table = pd.DataFrame({"rlnMicrographFrameNumber": np.arange(1, shifts.shape[0] + 1),
                          "rlnMicrographShiftX": shifts[:, 0], "rlnMicrographShiftY": shifts[:, 1]})
    starfile.write({"general": general, "global_shift": table}, path, overwrite=True)
    return path


def read_motion_star(path: Path | str) -> np.ndarray:
    """The (t, 2) shifts of a motion STAR, in frame order."""
    import starfile

    blocks = starfile.read(path, always_dict=True)
    table = blocks["global_shift"].sort_values("rlnMicrographFrameNumber")
    return table[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=float)
