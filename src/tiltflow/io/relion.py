"""RELION 5 tomography STAR files: ``tomograms.star`` and per-tilt-series STAR files (starfile).

- ``tomograms.star``: ``data_global`` with one row per tilt series (``rlnTomoName``, optics,
  ``rlnTomoTiltSeriesStarFile`` ...). Warp 2 exports put the per-tilt-series tables in the same
  file, one block per ``rlnTomoName``; they are returned in ``TomogramsStar.tilt_series``.
- per-tilt-series STAR: one block ``data_<rlnTomoName>``, one row per tilt image in the order
  RELION uses (tilt-angle order), with alignment columns ``rlnTomoXTilt rlnTomoYTilt rlnTomoZRot
  rlnTomoXShiftAngst rlnTomoYShiftAngst`` (see :mod:`tiltflow.core.transforms`) and/or Warp's
  projection matrices ``rlnTomoProjX/Y/Z/W`` (``[a,b,c,d]`` strings).

Tables are pandas DataFrames whose columns are RELION labels without the leading underscore;
unknown columns and blocks are kept. Written files carry ``# version 50001`` like RELION's.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import starfile
import torch

__all__ = [
    "RelionFormatError",
    "TiltSeriesStar",
    "TomogramsStar",
    "format_projection_matrices",
    "parse_projection_matrices",
    "read_star_blocks",
    "read_tilt_series_star",
    "read_tomograms_star",
    "write_star_blocks",
    "write_tilt_series_star",
    "write_tomograms_star",
]

STAR_VERSION = "50001"
_PROJ = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")


class RelionFormatError(ValueError):
    """A STAR file that is not what RELION 5 expects; the message names the file and block."""


@dataclass
class TomogramsStar:
    tomograms: pd.DataFrame  # data_global, one row per tilt series
    tilt_series: dict[str, pd.DataFrame] = field(default_factory=dict)  # block per rlnTomoName
    other: dict[str, pd.DataFrame | dict] = field(default_factory=dict)  # any other block, kept


@dataclass
class TiltSeriesStar:
    name: str  # the block name = rlnTomoName
    tilts: pd.DataFrame  # one row per tilt image


def _problem(strict: bool, message: str) -> None:
    if strict:
        raise RelionFormatError(message)
    warnings.warn(message, stacklevel=3)


def read_star_blocks(path: str | Path) -> dict[str, pd.DataFrame | dict]:
    """Every block of any STAR file (loops as DataFrames, key-value blocks as dicts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such STAR file")
    try:
        return starfile.read(path, always_dict=True)
    except Exception as err:  # noqa: BLE001 — starfile raises several types on bad input
        raise RelionFormatError(f"{path}: not a readable STAR file ({' '.join(str(err).split())})") from None


def read_tomograms_star(path: str | Path, *, strict: bool = True) -> TomogramsStar:
    """Read ``tomograms.star`` (``data_global`` required, with ``rlnTomoName``)."""
    path = Path(path)
    blocks = read_star_blocks(path)
    table = blocks.get("global")
    if not isinstance(table, pd.DataFrame):
        raise RelionFormatError(f"{path}: no 'data_global' loop; is this a tomograms.star?")
    if "rlnTomoName" not in table.columns:
        raise RelionFormatError(f"{path}: data_global has no rlnTomoName column")
    names = [str(n) for n in table["rlnTomoName"]]
    if len(set(names)) != len(names):
        _problem(strict, f"{path}: data_global repeats a rlnTomoName")
    out = TomogramsStar(table.copy())
    for key, block in blocks.items():
        if key == "global":
            continue
        if key in names and isinstance(block, pd.DataFrame):
            out.tilt_series[key] = block
        else:
            out.other[key] = block
    has_files = "rlnTomoTiltSeriesStarFile" in table
    missing = [n for n in names if not has_files and n not in out.tilt_series]
    if missing:
        _problem(strict, f"{path}: no rlnTomoTiltSeriesStarFile column and no tables for {missing}")
    return out


def read_tilt_series_star(path: str | Path, *, strict: bool = True) -> TiltSeriesStar:
    """Read a per-tilt-series STAR file (exactly one loop block)."""
    path = Path(path)
    blocks = {k: v for k, v in read_star_blocks(path).items() if isinstance(v, pd.DataFrame)}
    if not blocks:
        raise RelionFormatError(f"{path}: no loop block; expected data_<tomo name> with tilts")
    if len(blocks) > 1:
        _problem(strict, f"{path}: {len(blocks)} loop blocks {list(blocks)}; using the first")
    name, table = next(iter(blocks.items()))
    return TiltSeriesStar(name, table)


def write_star_blocks(path: str | Path, blocks: dict[str, pd.DataFrame | dict]) -> None:
    """Write blocks with starfile, marking each with RELION's ``# version`` line."""
    path = Path(path)
    starfile.write(blocks, path, float_format="%.6f", sep=" ")
    text = path.read_text()
    text = re.sub(r"^# Created by the starfile.*\n", "", text)
    # RELION writes '# version NNNNN' above every block
    text = re.sub(r"^data_", f"# version {STAR_VERSION}\n\ndata_", text, flags=re.MULTILINE)
    path.write_text(text)


def write_tomograms_star(path: str | Path, star: TomogramsStar) -> None:
    """Write ``tomograms.star``: data_global, then any embedded tilt-series and other blocks."""
    table = star.tomograms
    if "rlnTomoName" not in table.columns:
        raise ValueError("write_tomograms_star: the table needs a rlnTomoName column")
    write_star_blocks(Path(path), {"global": table, **star.tilt_series, **star.other})


def write_tilt_series_star(path: str | Path, star: TiltSeriesStar) -> None:
    if not star.name or re.search(r"\s", star.name):
        raise ValueError(f"tilt-series name {star.name!r} must be non-empty without spaces")
    write_star_blocks(Path(path), {star.name: star.tilts})


def parse_projection_matrices(table: pd.DataFrame) -> torch.Tensor:
    """``rlnTomoProjX/Y/Z/W`` strings ``'[a,b,c,d]'`` -> ``(t, 4, 4)`` float64 (rows X Y Z W)."""
    missing = [c for c in _PROJ if c not in table.columns]
    if missing:
        raise RelionFormatError(f"projection matrix columns missing: {missing}")
    rows = []
    for col in _PROJ:
        vals = []
        for i, text in enumerate(table[col].astype(str)):
            parts = text.strip().strip("[]").split(",")
            try:
                vals.append([float(p) for p in parts])
            except ValueError:
                raise RelionFormatError(f"{col} row {i + 1}: not '[a,b,c,d]': {text!r}") from None
            if len(parts) != 4:
                raise RelionFormatError(f"{col} row {i + 1}: expected 4 values, got {text!r}")
        rows.append(vals)
    return torch.tensor(rows, dtype=torch.float64).permute(1, 0, 2).contiguous()


def format_projection_matrices(matrices: torch.Tensor) -> dict[str, list[str]]:
    """``(t, 4, 4)`` -> ``{'rlnTomoProjX': ['[a,b,c,d]', ...], ...}`` for a DataFrame."""
    m = torch.as_tensor(matrices, dtype=torch.float64).cpu()
    if m.ndim != 3 or m.shape[1:] != (4, 4):
        raise ValueError(f"matrices must have shape (t, 4, 4), got {tuple(m.shape)}")
    return {
        col: ["[" + ",".join(f"{v:.9g}" for v in m[t, r].tolist()) + "]" for t in range(m.shape[0])]
        for r, col in enumerate(_PROJ)
    }
