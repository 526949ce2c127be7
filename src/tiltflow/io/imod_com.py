"""IMOD ``.com`` files: reading any, and writing the ``newst.com``, ``tilt.com`` and
``ctfcorrection.com`` that reproduce a tiltflow run; IMOD number lists (``1,4-6,41``).

Readers take ``strict`` (default True): a repeated key or an option before any program raises
:class:`~tiltflow.io.imod_model.ImodFormatError` naming file and line; ``strict=False`` warns.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tiltflow.io.imod_model import ImodFormatError

__all__ = [
    "ComProgram",
    "PhaseFlipSettings",
    "TiltComSettings",
    "ctfphaseflip_com",
    "format_imod_list",
    "newst_com",
    "parse_imod_list",
    "read_com",
    "tilt_com",
    "write_com",
]


def _problem(strict: bool, message: str) -> None:
    if strict:
        raise ImodFormatError(message)
    warnings.warn(message, stacklevel=3)


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
    *,
    input_file: str,
    output_file: str,
    transform_file: str,
    bin_by: int = 1,
    size_to_output_xy: tuple[int, int] | None = None,
    extra: dict[str, str] | None = None,
) -> ComProgram:
    """A minimal ``newst.com`` program block (aligned stack from raw stack + ``.xf``)."""
    opts = {
        "AntialiasFilter": "-1",
        "InputFile": input_file,
        "OutputFile": output_file,
        "TransformFile": transform_file,
        "TaperAtFill": "1,1",
        "AdjustOrigin": "",
    }
    if size_to_output_xy is not None:
        opts["SizeToOutputInXandY"] = f"{size_to_output_xy[0]},{size_to_output_xy[1]}"
    opts.update({"OffsetsInXandY": "0.0,0.0", "ImagesAreBinned": "1.0", "BinByFactor": str(bin_by)})
    opts.update(extra or {})
    return ComProgram("newstack", opts, {"IMOD_OUTPUT_FORMAT": "MRC"}, "-StandardInput")


@dataclass(frozen=True)
class TiltComSettings:
    """What ``tilt`` does in a ``tilt.com``: with ``image_binned`` b, ``thickness_px``,
    ``full_image_xy`` and ``shift_xz_px`` are in unbinned pixels (as etomo writes them); ``radial``
    in cycles/px of the binned input; ``exclude_views`` 1-based. ``LOG`` (take the log after adding
    ``log_offset``) only when given: it suits stacks of counts, not float images centred on zero."""

    thickness_px: int
    full_image_xy: tuple[int, int]
    image_binned: int = 1
    exclude_views: tuple[int, ...] = ()
    log_offset: float | None = None
    radial: tuple[float, float] = (0.35, 0.035)
    shift_xz_px: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (0.0, 1.0)
    fake_sirt_iterations: int | None = None


def tilt_com(
    *,
    input_projections: str,
    output_file: str,
    tilt_file: str,
    settings: TiltComSettings,
    xtilt_file: str | None = None,
    extra: dict[str, str] | None = None,
) -> ComProgram:
    """A ``tilt.com`` block reading ``input_projections`` and ``tilt_file`` (and ``xtilt_file``)."""
    s = settings
    opts = {
        "InputProjections": input_projections,
        "OutputFile": output_file,
        "IMAGEBINNED": str(s.image_binned),
        "TILTFILE": tilt_file,
        "THICKNESS": str(s.thickness_px),
        "RADIAL": f"{s.radial[0]:g} {s.radial[1]:g}",
        "FalloffIsTrueSigma": "1",
        "XAXISTILT": "0.0",
    }
    if s.log_offset is not None:
        opts["LOG"] = f"{s.log_offset:.1f}"
    opts.update(
        {
            "SCALE": f"{s.scale[0]:.1f} {s.scale[1]:.1f}",
            "PERPENDICULAR": "",
            "MODE": "2",
            "FULLIMAGE": f"{s.full_image_xy[0]} {s.full_image_xy[1]}",
            "SUBSETSTART": "0 0",
            "AdjustOrigin": "",
            "OFFSET": "0.0",
            "SHIFT": f"{s.shift_xz_px[0]:.1f} {s.shift_xz_px[1]:.1f}",
            "ActionIfGPUFails": "1,2",
        }
    )
    if s.fake_sirt_iterations:
        opts["FakeSIRTiterations"] = str(s.fake_sirt_iterations)
    if xtilt_file is not None:
        opts["XTILTFILE"] = xtilt_file
    if s.exclude_views:
        opts["EXCLUDELIST"] = format_imod_list(s.exclude_views)
    opts.update(extra or {})
    return ComProgram("tilt", opts, {"IMOD_OUTPUT_FORMAT": "MRC"}, "-StandardInput")


@dataclass(frozen=True)
class PhaseFlipSettings:
    """The optics and tolerances of a ``ctfphaseflip`` run; ``pixel_size_a`` is that of the aligned
    stack (written in nm, as IMOD wants it)."""

    pixel_size_a: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    defocus_tol_nm: float
    interpolation_width_px: int = 15


def ctfphaseflip_com(
    *,
    input_stack: str,
    output_file: str,
    angle_file: str,
    defocus_file: str,
    transform_file: str,
    settings: PhaseFlipSettings,
) -> ComProgram:
    """A ``ctfcorrection.com`` block (``ctfphaseflip`` on the aligned stack)."""
    s = settings
    opts = {
        "InputStack": input_stack,
        "AngleFile": angle_file,
        "OutputFileName": output_file,
        "DefocusFile": defocus_file,
        "TransformFile": transform_file,
        "Voltage": f"{s.voltage_kv:g}",
        "SphericalAberration": f"{s.cs_mm:g}",
        "DefocusTol": f"{s.defocus_tol_nm:.0f}",
        "PixelSize": f"{s.pixel_size_a / 10.0:.6g}",
        "AmplitudeContrast": f"{s.amplitude_contrast:g}",
        "InterpolationWidth": str(s.interpolation_width_px),
        "ActionIfGPUFails": "1,2",
    }
    return ComProgram("ctfphaseflip", opts, {"IMOD_OUTPUT_FORMAT": "MRC"}, "-StandardInput")


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
