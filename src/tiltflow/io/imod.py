"""IMOD text files: ``.xf``, local ``.xf``, ``.tlt``/``.rawtlt``/``.xtilt``, ``fid.xyz``, ``.com``.

Conventions (DESIGN.md §2): an ``.xf`` row ``A11 A12 A21 A22 DX DY`` maps raw to aligned pixel
coordinates about IMOD's centres ``(N-1)/2``; arrays come back as float64 tensors in file order
(view order of the stack). View numbers in ``.com`` lists (``EXCLUDELIST``) are 1-based.
Binary models (``.mod``/``.fid``) live in :mod:`tiltflow.io.imod_model` and are re-exported here.

Readers take ``strict`` (default True): a recoverable oddity (a malformed line, a repeated
``.com`` key) raises :class:`ImodFormatError` naming file and line; with ``strict=False`` it is
skipped with a warning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
    "ComProgram", "FidXyz", "ImodContour", "ImodFormatError", "ImodModel", "ImodObject",
    "LocalXf", "fiducial_model", "format_imod_list", "newst_com", "parse_imod_list", "read_com",
    "read_fid_xyz", "read_local_xf", "read_mod", "read_tlt", "read_xf", "read_xtilt", "tilt_com",
    "write_com", "write_fid_xyz", "write_local_xf", "write_mod", "write_tlt", "write_xf",
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
    """All numbers on a line (Fortran output may glue them: ``-0.1234567-0.9876543``)."""
    if _NUM.sub(" ", text).strip():
        raise ImodFormatError(f"{where}: not a list of numbers: {text.strip()[:60]!r}")
    return [float(v.replace("d", "e").replace("D", "e")) for v in _NUM.findall(text)]


def _rows(path: Path, width: int | None, strict: bool, what: str) -> list[list[float]]:
    rows: list[list[float]] = []
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
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
        n_areas=(nx, ny), start_px=(ix, iy), interval_px=(dx, dy),
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
    """tiltalign ``*fid.xyz``: 3-D fiducial positions (px of the aligned stack)."""

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


def write_fid_xyz(path: str | Path, fid: FidXyz) -> None:
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


@dataclass
class ComProgram:
    """One ``$program -StandardInput`` block of an IMOD ``.com`` file; values as written."""

    program: str
    options: dict[str, str] = field(default_factory=dict)  # key -> value ('' for flags)
    environment: dict[str, str] = field(default_factory=dict)  # $setenv lines before it
    arguments: str = ""  # text after the program name (e.g. '-StandardInput')


def read_com(path: str | Path, *, strict: bool = True) -> list[ComProgram]:
    """Programs of a ``.com`` file with their options, in file order.

    Comments (also commented-out options) and ``$if`` lines are skipped; ``$setenv`` lines go to
    the next program's ``environment``; other ``$cmd args`` lines become option-less programs.
    """
    path = Path(path)
    programs: list[ComProgram] = []
    env: dict[str, str] = {}
    for i, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("$"):
            name, _, rest = line[1:].partition(" ")
            if name == "setenv":
                key, _, value = rest.strip().partition(" ")
                env[key] = value.strip()
            elif name != "if":
                programs.append(ComProgram(name, {}, env, rest.strip()))
                env = {}
            continue
        if not programs:
            _problem(strict, f"{path}:{i}: option {line.split()[0]!r} before any $program line")
            continue
        key, _, value = line.replace("\t", " ").partition(" ")
        opts = programs[-1].options
        if key in opts:
            _problem(strict, f"{path}:{i}: {key} given twice for {programs[-1].program}; last wins")
        opts[key] = value.strip()
    return programs


def write_com(path: str | Path, programs: Sequence[ComProgram]) -> None:
    lines = ["# written by tiltflow\n"]
    for prog in programs:
        lines += [f"$setenv {k} {v}\n" for k, v in prog.environment.items()]
        lines.append(f"${prog.program} {prog.arguments}".rstrip() + "\n")
        lines += [f"{k}\t{v}".rstrip() + "\n" for k, v in prog.options.items()]
    Path(path).write_text("".join(lines))


def newst_com(
    *, input_file: str, output_file: str, transform_file: str, bin_by: int = 1,
    size_to_output_xy: tuple[int, int] | None = None, extra: dict[str, str] | None = None,
) -> ComProgram:
    """A minimal ``newst.com`` program block (aligned stack from raw stack + ``.xf``)."""
    opts = {"AntialiasFilter": "-1", "InputFile": input_file, "OutputFile": output_file,
            "TransformFile": transform_file, "TaperAtFill": "1,1", "AdjustOrigin": ""}
    if size_to_output_xy is not None:
        opts["SizeToOutputInXandY"] = f"{size_to_output_xy[0]},{size_to_output_xy[1]}"
    opts.update({"OffsetsInXandY": "0.0,0.0", "ImagesAreBinned": "1.0", "BinByFactor": str(bin_by)})
    opts.update(extra or {})
    return ComProgram("newstack", opts, {"IMOD_OUTPUT_FORMAT": "MRC"}, "-StandardInput")


def tilt_com(
    *, input_projections: str, output_file: str, tilt_file: str, thickness_px: int,
    full_image_xy: tuple[int, int], image_binned: int = 1, xtilt_file: str | None = None,
    exclude_views: Iterable[int] = (), extra: dict[str, str] | None = None,
) -> ComProgram:
    """A minimal ``tilt.com`` block; ``exclude_views`` are 1-based view numbers."""
    opts = {"InputProjections": input_projections, "OutputFile": output_file,
            "IMAGEBINNED": str(image_binned), "TILTFILE": tilt_file,
            "THICKNESS": str(thickness_px), "RADIAL": "0.35 0.035", "FalloffIsTrueSigma": "1",
            "XAXISTILT": "0.0", "LOG": "0.0", "SCALE": "0.0 1.0", "PERPENDICULAR": "",
            "MODE": "2", "FULLIMAGE": f"{full_image_xy[0]} {full_image_xy[1]}",
            "SUBSETSTART": "0 0", "AdjustOrigin": "", "OFFSET": "0.0", "SHIFT": "0.0 0.0",
            "ActionIfGPUFails": "1,2"}
    if xtilt_file is not None:
        opts["XTILTFILE"] = xtilt_file
    excluded = list(exclude_views)
    if excluded:
        opts["EXCLUDELIST"] = format_imod_list(excluded)
    opts.update(extra or {})
    return ComProgram("tilt", opts, {"IMOD_OUTPUT_FORMAT": "MRC"}, "-StandardInput")


def parse_imod_list(text: str) -> list[int]:
    """IMOD list ``'1,4-6,41'`` -> ``[1, 4, 5, 6, 41]`` (numbers as written, usually 1-based)."""
    out: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if m is None:
            raise ValueError(f"not an IMOD list entry: {part!r} in {text!r} (use e.g. '1,4-6')")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        out.extend(range(lo, hi + 1) if hi >= lo else range(lo, hi - 1, -1))
    return out


def format_imod_list(values: Iterable[int]) -> str:
    """``[1, 4, 5, 6, 41]`` -> ``'1,4-6,41'`` (sorted, duplicates removed)."""
    vals = sorted(set(int(v) for v in values))
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if j == i else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)
