"""IMOD text files: ``.xf``, local ``.xf``, ``.tlt``/``.rawtlt``/``.xtilt``, ``fid.xyz``.

Conventions (DESIGN.md §2): an ``.xf`` row ``A11 A12 A21 A22 DX DY`` maps raw to aligned pixel
coordinates about IMOD's centres ``(N-1)/2``; arrays come back as float64 tensors in file order
(view order of the stack). View numbers in ``.com`` lists (``EXCLUDELIST``) are 1-based.
Binary models (``.mod``/``.fid``) live in :mod:`tiltflow.io.imod_model`, ``.com`` files in
:mod:`tiltflow.io.imod_com`; both are re-exported here.

Readers take ``strict`` (default True): a recoverable oddity (a malformed line, a repeated
``.com`` key) raises :class:`ImodFormatError` naming file and line; with ``strict=False`` it is
skipped with a warning.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tiltflow.io.imod_com import (
    ComProgram,
    PhaseFlipSettings,
    TiltComSettings,
    ctfphaseflip_com,
    format_imod_list,
    newst_com,
    parse_imod_list,
    read_com,
    tilt_com,
    write_com,
)
from tiltflow.io.imod_model import (
    ImodContour,
    ImodFormatError,
    ImodModel,
    ImodObject,
    fiducial_model,
    read_mod,
    write_mod,
)

__all__ = [
    "ComProgram",
    "FidXyz",
    "ImodContour",
    "ImodFormatError",
    "ImodModel",
    "ImodObject",
    "LocalXf",
    "PhaseFlipSettings",
    "TiltComSettings",
    "ctfphaseflip_com",
    "fiducial_model",
    "fid_xyz_to_imod",
    "format_imod_list",
    "newst_com",
    "parse_imod_list",
    "read_com",
    "read_fid_xyz",
    "read_local_xf",
    "read_mod",
    "read_tlt",
    "read_xf",
    "read_xtilt",
    "tilt_com",
    "write_com",
    "write_fid_xyz",
    "write_local_xf",
    "write_mod",
    "write_tlt",
    "write_xf",
    "write_xtilt",
]

_NUM = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eEdD][-+]?\d+)?")


def _xf_line(row: Sequence[float]) -> str:
    """IMOD's ``4f12.7, 2f12.3``, with a space kept between numbers that overflow the width."""
    fields = [f"{v:12.7f}" for v in row[:4]] + [f"{v:12.3f}" for v in row[4:6]]
    return "".join(f if f.startswith(" ") else " " + f for f in fields) + "\n"


def _problem(strict: bool, message: str) -> None:
    if strict:
        raise ImodFormatError(message)
    warnings.warn(message, stacklevel=3)


def _numbers(text: str, where: str) -> list[float]:
    """All numbers on a line (Fortran output may glue them: ``-0.1234567-0.9876543``); finite."""
    if _NUM.sub(" ", text).strip():
        raise ImodFormatError(f"{where}: not a list of numbers: {text.strip()[:60]!r}")
    values = [float(v.replace("d", "e").replace("D", "e")) for v in _NUM.findall(text)]
    if not all(math.isfinite(v) for v in values):
        raise ImodFormatError(f"{where}: a number too large for a float: {text.strip()[:60]!r}")
    return values


def _text(path: Path) -> str:
    """The file as text (bytes that are not UTF-8 are kept as Latin-1 and fail as 'not numbers')."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _rows(path: Path, width: int | None, strict: bool, what: str) -> list[list[float]]:
    rows: list[list[float]] = []
    for i, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = _numbers(line, f"{path}:{i}")
        except ImodFormatError as err:
            _problem(strict, f"{err}; expected {what}")
            continue
        n = width if width is not None else (len(rows[0]) if rows else len(values))
        if len(values) != n:
            _problem(strict, f"{path}:{i}: expected {n} numbers ({what}), found {len(values)}")
            continue
        rows.append(values)
    if not rows:
        _problem(strict, f"{path}: no data lines; expected {what} per view")
    return rows


def read_xf(path: str | Path, *, strict: bool = True) -> torch.Tensor:
    """``.xf``/``.prexg``/``.tltxf`` -> ``(t, 6)`` float64 (A11 A12 A21 A22 DX DY)."""
    rows = _rows(Path(path), 6, strict, "A11 A12 A21 A22 DX DY")
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)


def write_xf(path: str | Path, xf: torch.Tensor) -> None:
    """Write ``(t, 6)`` rows in IMOD's layout ``4f12.7, 2f12.3``."""
    xf = torch.as_tensor(xf, dtype=torch.float64).cpu()
    if xf.ndim != 2 or xf.shape[1] != 6:
        raise ValueError(f"write_xf: xf must have shape (t, 6), got {tuple(xf.shape)}")
    Path(path).write_text("".join(_xf_line(row) for row in xf.tolist()))


def read_tlt(path: str | Path, *, column: int = 0, strict: bool = True) -> torch.Tensor:
    """Angles ``(t,)`` (degrees) from ``.tlt``/``.rawtlt``/``.xtilt``; ``column`` picks one of
    several columns (e.g. ``angle index`` rawtlt files)."""
    rows = _rows(Path(path), None, strict, "one or more numbers")
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    table = torch.tensor(rows, dtype=torch.float64)
    if not 0 <= column < table.shape[1]:
        raise ImodFormatError(f"{path}: asked for column {column}, the file has {table.shape[1]}")
    return table[:, column].clone()


def write_tlt(
    path: str | Path,
    angles_deg: torch.Tensor,  # (t,)
    *,
    extra_columns: torch.Tensor | None = None,  # (t, k) written after the angle, e.g. indices
    fmt: str = "{:7.2f}",
) -> None:
    """Write one angle per line (IMOD's ``f7.2``), optionally with further columns."""
    angles = torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1).cpu().tolist()
    extra = None
    if extra_columns is not None:
        extra = torch.as_tensor(extra_columns).reshape(len(angles), -1)
    lines = []
    for i, a in enumerate(angles):
        more = "" if extra is None else " " + " ".join(f"{v:g}" for v in extra[i].tolist())
        lines.append(fmt.format(a) + more + "\n")
    Path(path).write_text("".join(lines))


def read_xtilt(path: str | Path, *, strict: bool = True) -> torch.Tensor:
    """X-axis tilt per view ``(t,)`` in degrees (``.xtilt``, same layout as ``.tlt``)."""
    return read_tlt(path, strict=strict)


def write_xtilt(path: str | Path, xtilt_deg: torch.Tensor) -> None:
    write_tlt(path, xtilt_deg)


@dataclass
class LocalXf:
    """tiltalign local transforms (``*local.xf``) for a grid of areas, each with all views."""

    n_areas: tuple[int, int]  # (nx, ny) areas
    start_px: tuple[int, int]  # (x, y) of the first area centre
    interval_px: tuple[int, int]  # (x, y) between area centres
    pixel_size_a: float | None  # as in the header (Å of the stack), None when absent
    delta_tilt_deg: torch.Tensor  # (areas, views)
    delta_alpha_deg: torch.Tensor | None  # (areas, views) or None
    zfactors: torch.Tensor | None  # (areas, views, 2) x, y z-factors or None
    xf: torch.Tensor  # (areas, views, 6)


def read_local_xf(path: str | Path, *, n_views: int | None = None) -> LocalXf:
    """Read a local-alignment file; ``n_views`` is inferred from the size when not given."""
    path = Path(path)
    lines = path.read_text().splitlines()
    head = _numbers(lines[0], f"{path}:1") if lines else []
    if len(head) < 6:
        raise ImodFormatError(f"{path}:1: expected 'nx ny ixStart iyStart idelX idelY [...]'")
    nx, ny, ix, iy, dx, dy = (int(v) for v in head[:6])
    if_alpha = len(head) > 6 and int(head[6]) > 0
    has_z = len(head) > 8 and int(head[8]) > 0
    values = [v for i, line in enumerate(lines[1:], start=2) for v in _numbers(line, f"{path}:{i}")]
    per_view = 1 + int(if_alpha) + 2 * int(has_z) + 6
    areas = nx * ny
    if n_views is None:
        n_views = len(values) // (areas * per_view) if areas else 0
    if areas < 1 or len(values) != areas * n_views * per_view:
        raise ImodFormatError(
            f"{path}: {len(values)} numbers after the header do not fit {areas} areas x "
            f"{n_views} views x {per_view} values; pass the right n_views"
        )
    data = torch.tensor(values, dtype=torch.float64).reshape(areas, -1)
    v = n_views
    cut = [v, v * int(if_alpha), 2 * v * int(has_z), 6 * v]
    tilt, alpha, zf, xf = torch.split(data, cut, dim=1)
    return LocalXf(
        n_areas=(nx, ny),
        start_px=(ix, iy),
        interval_px=(dx, dy),
        pixel_size_a=head[7] if len(head) > 7 else None,
        delta_tilt_deg=tilt.clone(),
        delta_alpha_deg=alpha.clone() if if_alpha else None,
        zfactors=zf.reshape(areas, v, 2).clone() if has_z else None,
        xf=xf.reshape(areas, v, 6).clone(),
    )


def _block(values: list[float], per_line: int, fmt: str) -> str:
    lines = [values[i : i + per_line] for i in range(0, len(values), per_line)]
    return "".join("".join(fmt.format(v) for v in line) + "\n" for line in lines)


def write_local_xf(path: str | Path, local: LocalXf) -> None:
    """Write a local-alignment file in tiltalign's layout."""
    head = [*local.n_areas, *local.start_px, *local.interval_px]
    head.append(int(local.delta_alpha_deg is not None))
    text = "".join(f"{int(v):6d}" for v in head)
    if local.pixel_size_a is not None:
        text += f"{local.pixel_size_a:12.5f}{int(local.zfactors is not None):4d}"
    text += "\n"
    for a in range(local.xf.shape[0]):
        text += _block(local.delta_tilt_deg[a].tolist(), 10, "{:7.2f}")
        if local.delta_alpha_deg is not None:
            text += _block(local.delta_alpha_deg[a].tolist(), 10, "{:7.2f}")
        if local.zfactors is not None:
            text += _block(local.zfactors[a].reshape(-1).tolist(), 6, "{:12.6f}")
        text += "".join(_xf_line(row) for row in local.xf[a].tolist())
    Path(path).write_text(text)


@dataclass
class FidXyz:
    """tiltalign ``*fid.xyz``: 3-D fiducial positions, px.

    IMOD's file (tiltalign's ``OutputFidXYZFile``, what etomo leaves) has x, y in model coordinates
    of the aligned image: origin at its corner, the centre of pixel i at i + 0.5, the image centre
    at ``Dim / 2``; z is height above the tilt axis. tiltalign's log lists the same points with
    their centroid at zero; :func:`fid_xyz_to_imod` turns those into the file's convention.
    """

    point: torch.Tensor  # (n,) point numbers
    xyz: torch.Tensor  # (n, 3)
    object: torch.Tensor  # (n,) model object
    contour: torch.Tensor  # (n,) model contour
    pixel_size_a: float | None = None  # 'Pix:' on the first line
    image_size: tuple[int, int] | None = None  # 'Dim:' (nx, ny)


def read_fid_xyz(path: str | Path, *, strict: bool = True) -> FidXyz:
    """Read ``point x y z object contour`` lines; the first may end ``Pix: p Dim: nx ny``."""
    path = Path(path)
    rows, pix, dim = [], None, None
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        body, _, tail = line.partition("Pix:")
        if tail:
            nums = _numbers(tail.replace("Dim:", " "), f"{path}:{i}")
            pix, dim = nums[0], (int(nums[1]), int(nums[2])) if len(nums) >= 3 else None
        if not body.strip():
            continue
        values = _numbers(body, f"{path}:{i}")
        if len(values) != 6:
            _problem(strict, f"{path}:{i}: expected 'point x y z object contour', got {values}")
            continue
        rows.append(values)
    t = torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)
    return FidXyz(t[:, 0].long(), t[:, 1:4].clone(), t[:, 4].long(), t[:, 5].long(), pix, dim)


def fid_xyz_to_imod(
    centred_xyz_px: torch.Tensor, image_size: tuple[int, int], *, pixel_size_a: float | None = None
) -> FidXyz:
    """Bead positions ``(n, 3)`` relative to the aligned image centre (x, y) and the tilt axis (z)
    -> IMOD's ``fid.xyz`` (x + nx / 2, y + ny / 2, z), one contour per bead; ``image_size`` (nx, ny)
    of the images the beads were tracked on (tiltalign's ``Dim:``)."""
    xyz = torch.as_tensor(centred_xyz_px, dtype=torch.float64).reshape(-1, 3).clone()
    xyz[:, 0] += image_size[0] / 2.0
    xyz[:, 1] += image_size[1] / 2.0
    n = xyz.shape[0]
    return FidXyz(
        torch.arange(1, n + 1),
        xyz,
        torch.ones(n, dtype=torch.long),
        torch.arange(1, n + 1),
        pixel_size_a,
        (int(image_size[0]), int(image_size[1])),
    )


def write_fid_xyz(path: str | Path, fid: FidXyz) -> None:
    """Write tiltalign's layout ``i4, 3f10.2, i7, i5`` (``Pix: f12.5 Dim: 2i6`` on the first line)."""
    lines = []
    for i in range(fid.xyz.shape[0]):
        x, y, z = fid.xyz[i].tolist()
        line = f"{int(fid.point[i]):4d}{x:10.2f}{y:10.2f}{z:10.2f}"
        line += f"{int(fid.object[i]):7d}{int(fid.contour[i]):5d}"
        if i == 0 and fid.pixel_size_a is not None:
            line += f" Pix:{fid.pixel_size_a:12.5f}"
            if fid.image_size is not None:
                line += f" Dim:{fid.image_size[0]:6d}{fid.image_size[1]:6d}"
        lines.append(line + "\n")
    Path(path).write_text("".join(lines))
