"""AreTomo / AreTomo2 / AreTomo3 alignment files (``.aln``): header, global and local sections.

Layout (AreTomo3 ``CSaveAlignFile``)::

    # AreTomo Alignment / Priims bprmMn
    # RawSize = 4096 4096 61                # x y sections of the raw (tilt-sorted) stack
    # NumPatches = 16
    # DarkFrame =     0    0   -68.00       # frame index (0-based, tilt-sorted raw stack),
    #                                       #   section index (0- or 1-based by version), tilt
    # AlphaOffset =    12.30 / BetaOffset / Thickness
    # SEC     ROT  GMAG  TX  TY  SMEAN  SFIT  SCALE  BASE  TILT   (one row per non-dark view)
    # Local Alignment
       t   p   X  Y  SX  SY  good                                 (NumPatches rows per view)

``ROT`` is the tilt-axis angle (deg, from +y, counter-clockwise), ``TX TY`` the raw-image shift
in px of the aligned stack, ``TILT`` the tilt angle with ``AlphaOffset`` included. Rows are in
tilt order of the raw stack with the dark frames removed; :meth:`AlnFile.raw_indices` gives each
row's 0-based index in the raw stack. Convert with :mod:`tiltflow.core.transforms`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

__all__ = ["GLOBAL_COLUMNS", "LOCAL_COLUMNS", "AlnFile", "AlnFormatError", "read_aln", "write_aln"]

GLOBAL_COLUMNS = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")
LOCAL_COLUMNS = ("TILT_INDEX", "PATCH", "X", "Y", "SHIFT_X", "SHIFT_Y", "GOOD")
_GLOBAL_HEADER = "# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT"
_GLOBAL_FMT = "{:5d}  {:9.4f}  {:9.5f}  {:9.3f}  {:9.3f}" + "  {:7.2f}" * 4 + "  {:8.2f}"
# more decimals for files we write from our own alignments (AreTomo reads whitespace-separated)
_GLOBAL_FMT_PRECISE = "{:5d}  {:11.6f}  {:10.7f}  {:11.5f}  {:11.5f}" + "  {:7.2f}" * 4 + "  {:10.5f}"
_LOCAL_FMT = "{:4d} {:3d} {:8.2f}  {:8.2f}  {:8.2f}  {:8.2f}  {:4.1f}"
_KEY = re.compile(r"^#\s*([A-Za-z][A-Za-z ]*?)\s*=\s*(.*)$")


class AlnFormatError(ValueError):
    """A malformed ``.aln`` file; the message names file and line."""


@dataclass
class AlnFile:
    """An ``.aln`` file; field names follow the file's keys."""

    RawSize: tuple[int, int, int]  # x, y, number of sections of the raw stack
    NumPatches: int
    global_alignment: pd.DataFrame  # GLOBAL_COLUMNS, one row per non-dark view
    DarkFrame: list[tuple[int, int, float]] = field(default_factory=list)  # frame, sec, tilt
    AlphaOffset: float = 0.0
    BetaOffset: float = 0.0
    Thickness: int | None = None  # px, AreTomo3 only
    local_alignment: pd.DataFrame | None = None  # LOCAL_COLUMNS, NumPatches rows per view
    extra: dict[str, str] = field(default_factory=dict)  # unknown '# Key = value' header lines
    title: str = "# AreTomo Alignment / Priims bprmMn"

    def raw_indices(self) -> torch.Tensor:
        """0-based index in the raw (tilt-sorted) stack of each global row: the non-dark frames."""
        dark = {frame for frame, _, _ in self.DarkFrame}
        keep = [i for i in range(self.RawSize[2]) if i not in dark]
        n = len(self.global_alignment)
        if len(keep) != n:
            raise AlnFormatError(
                f".aln lists {n} global rows but RawSize {self.RawSize[2]} - "
                f"{len(dark)} dark frames = {len(keep)}; cannot place rows in the raw stack"
            )
        return torch.tensor(keep, dtype=torch.long)

    def raw_tilt_angles(self) -> torch.Tensor:
        """Tilt angle (deg) of every raw section: ``TILT`` rows, dark frames from ``DarkFrame``.

        Old AreTomo versions wrote dark-frame tilts without ``AlphaOffset``; they are returned as
        written."""
        out = torch.full((self.RawSize[2],), float("nan"), dtype=torch.float64)
        out[self.raw_indices()] = self.column("TILT")
        for frame, _, tilt in self.DarkFrame:
            out[frame] = tilt
        return out

    def column(self, name: str) -> torch.Tensor:
        """A global column (``'ROT'``, ``'TX'`` ...) as a float64 tensor ``(t,)``."""
        return torch.tensor(self.global_alignment[name].to_numpy(), dtype=torch.float64)


def _problem(strict: bool, message: str, stacklevel: int = 3) -> None:
    if strict:
        raise AlnFormatError(message)
    warnings.warn(message, stacklevel=stacklevel)


def _numbers(line: str, n: int, where: str) -> list[float]:
    parts = line.split()
    if len(parts) != n:
        raise AlnFormatError(f"{where}: expected {n} numbers, found {len(parts)}: {line.strip()!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise AlnFormatError(f"{where}: not numbers: {line.strip()[:80]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise AlnFormatError(f"{where}: a value that is not a finite number: {line.strip()[:80]!r}")
    return values


@dataclass
class _Parsed:
    """The lines of an ``.aln`` sorted by kind, before the header values are checked."""

    header: dict[str, str] = field(default_factory=dict)
    dark: list[tuple[int, int, float]] = field(default_factory=list)
    glob: list[list[float]] = field(default_factory=list)
    local: list[list[float]] = field(default_factory=list)


def _parse_lines(lines: list[str], path: Path, strict: bool) -> _Parsed:
    parsed = _Parsed()
    section = None
    for i, line in enumerate(lines[1:], start=2):
        where = f"{path}:{i}"
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("# SEC"):
                section = "global"
            elif line.strip() == "# Local Alignment":
                section = "local"
            elif (m := _KEY.match(line)) is None:
                _problem(strict, f"{where}: unrecognised header line {line.strip()!r}", stacklevel=4)
            elif m.group(1) == "DarkFrame":
                f, s, t = _numbers(m.group(2), 3, where)
                parsed.dark.append((int(f), int(s), t))
            else:
                parsed.header[m.group(1)] = m.group(2).strip()
            continue
        if section == "global":
            parsed.glob.append(_numbers(line, 10, where))
        elif section == "local":
            parsed.local.append(_numbers(line, 7, where))
        else:
            _problem(strict, f"{where}: data line before '# SEC' header", stacklevel=4)
    return parsed


def read_aln(path: str | Path, *, strict: bool = True) -> AlnFile:
    """Read an ``.aln``; inconsistent counts raise (``strict``) or warn."""
    path = Path(path)
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise AlnFormatError(f"{path}: not a text file (not UTF-8) — expected an AreTomo .aln") from None
    if not lines or not lines[0].startswith("# AreTomo Alignment"):
        raise AlnFormatError(f"{path}:1: not an AreTomo .aln (expected '# AreTomo Alignment')")
    parsed = _parse_lines(lines, path, strict)
    header, dark, glob, local = parsed.header, parsed.dark, parsed.glob, parsed.local
    try:
        raw_size = tuple(int(v) for v in header.pop("RawSize").split())
        num_patches = int(header.pop("NumPatches", "0"))
        alpha = float(header.pop("AlphaOffset", "0"))
        beta = float(header.pop("BetaOffset", "0"))
        thickness = int(header.pop("Thickness")) if "Thickness" in header else None
    except (KeyError, ValueError) as err:
        raise AlnFormatError(f"{path}: missing or bad header value ({err})") from None
    if len(raw_size) != 3:
        raise AlnFormatError(f"{path}: RawSize must be 'x y sections', got {raw_size}")
    gdf = pd.DataFrame(glob, columns=list(GLOBAL_COLUMNS)).astype({"SEC": int})
    ldf = None
    if local:
        ldf = pd.DataFrame(local, columns=list(LOCAL_COLUMNS))
        ldf = ldf.astype({"TILT_INDEX": int, "PATCH": int})
    aln = AlnFile(
        (raw_size[0], raw_size[1], raw_size[2]), num_patches, gdf, dark, alpha, beta, thickness, ldf, header, lines[0]
    )
    if len(gdf) + len(dark) != raw_size[2]:
        _problem(
            strict,
            f"{path}: {len(gdf)} global rows + {len(dark)} dark frames != "
            f"RawSize {raw_size[2]} sections (truncated or edited file?)",
        )
    if num_patches and len(local) != num_patches * len(gdf):
        _problem(
            strict,
            f"{path}: {len(local)} local rows, expected NumPatches {num_patches} x "
            f"{len(gdf)} views = {num_patches * len(gdf)}",
        )
    return aln


def write_aln(path: str | Path, aln: AlnFile, *, precise: bool = False) -> None:
    """Write an ``.aln`` in AreTomo3's layout (AreTomo reads it back with ``-AlnFile``).

    ``precise`` widens ROT/GMAG/TX/TY/TILT to 6/7/5/5/5 decimals (AreTomo prints 4/5/3/3/2), so
    an alignment written and read back keeps its geometry to ~1e-4 px and 1e-5 degrees."""
    out = [aln.title, "# RawSize = {} {} {}".format(*aln.RawSize)]
    out.append(f"# NumPatches = {aln.NumPatches}")
    out += [f"# DarkFrame =  {f:4d} {s:4d} {t:8.2f}" for f, s, t in aln.DarkFrame]
    out += [f"# AlphaOffset = {aln.AlphaOffset:8.2f}", f"# BetaOffset = {aln.BetaOffset:8.2f}"]
    if aln.Thickness is not None:
        out.append(f"# Thickness = {aln.Thickness}")
    out += [f"# {k} = {v}" for k, v in aln.extra.items()]
    out.append(_GLOBAL_HEADER)
    for row in aln.global_alignment[list(GLOBAL_COLUMNS)].itertuples(index=False):
        out.append((_GLOBAL_FMT_PRECISE if precise else _GLOBAL_FMT).format(int(row[0]), *map(float, row[1:])))
    if aln.local_alignment is not None and len(aln.local_alignment):
        out.append("# Local Alignment")
        for row in aln.local_alignment[list(LOCAL_COLUMNS)].itertuples(index=False):
            out.append(_LOCAL_FMT.format(int(row[0]), int(row[1]), *map(float, row[2:])))
    Path(path).write_text("\n".join(out) + "\n")
