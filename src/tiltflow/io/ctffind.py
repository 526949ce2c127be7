"""CTFFIND4 diagnostic text (``*_ctffind4.txt``, ``*.txt`` next to the diagnostic spectrum).

Header lines start with ``#`` (program version, input file, optics, search settings, column
names); then one line per micrograph / tilt. CTFFIND 4.1+ writes 7 columns: number, defocus 1 (Å),
defocus 2 (Å), azimuth of astigmatism (°), additional phase shift (rad), cross-correlation, spacing
up to which Thon rings were fit (Å). Variants append columns (CTFFIND 4.1.14 tilt mode, the cryoET
Data Portal: ``#8 - dfHand``); they are kept in ``CtffindRow.extra``. AreTomo writes the same layout.

Mapping (checked against cisTEM/CTFFIND's ``CTF::DefocusGivenAzimuth``, which returns defocus 1 at
the astigmatism azimuth, and its ``EnforceConvention``, defocus 1 >= defocus 2, azimuth measured from
+x counter-clockwise in the image with row 0 at the bottom as in MRC/IMOD): defocus 1 = our
``defocus_u_a``, defocus 2 = ``defocus_v_a``, azimuth = ``astigmatism_angle_deg`` (DESIGN.md §2).
``CtffindRow.to_u_v_angle`` also handles files where defocus 1 < defocus 2 (swap, angle + 90°).
Note: CTFFIND labels the defocus search limits "um" but writes them in Å; we read them as Å.
"""

from __future__ import annotations

import math
import re
import warnings
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tiltflow import __version__

COLUMNS_7 = (
    "#1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; "
    "#5 - additional phase shift [radians]; #6 - cross correlation; "
    "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully"
)

_KEYS = {  # normalised header key -> field, type
    "input file": ("input_file", str),
    "number of micrographs": ("number_of_micrographs", int),
    "pixel size": ("pixel_size_a", float),
    "acceleration voltage": ("voltage_kv", float),
    "spherical aberration": ("cs_mm", float),
    "amplitude contrast": ("amplitude_contrast", float),
    "box size": ("box_size_px", int),
    "min. res.": ("min_resolution_a", float),
    "max. res.": ("max_resolution_a", float),
    "min. def.": ("min_defocus_a", float),
    "max. def.": ("max_defocus_a", float),
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class CtffindRow(BaseModel):
    """One micrograph / tilt line."""

    model_config = ConfigDict(extra="forbid")

    micrograph_number: int
    defocus_1_a: float
    defocus_2_a: float
    azimuth_deg: float
    phase_shift_rad: float = 0.0
    cross_correlation: float = 0.0
    fit_resolution_a: float = 0.0
    extra: list[float] = Field(default_factory=list)

    def to_u_v_angle(self) -> tuple[float, float, float]:
        """(defocus_u_a, defocus_v_a, astigmatism_angle_deg) with u >= v and angle in [-90, 90)."""
        u, v, ang = self.defocus_1_a, self.defocus_2_a, self.azimuth_deg
        if u < v:
            u, v, ang = v, u, ang + 90.0
        return u, v, (ang + 90.0) % 180.0 - 90.0

    @classmethod
    def from_u_v_angle(
        cls,
        number: int,
        defocus_u_a: float,
        defocus_v_a: float,
        astigmatism_angle_deg: float,
        *,
        phase_shift_rad: float = 0.0,
        cross_correlation: float = 0.0,
        fit_resolution_a: float = 0.0,
    ) -> CtffindRow:
        return cls(
            micrograph_number=number,
            defocus_1_a=defocus_u_a,
            defocus_2_a=defocus_v_a,
            azimuth_deg=astigmatism_angle_deg,
            phase_shift_rad=phase_shift_rad,
            cross_correlation=cross_correlation,
            fit_resolution_a=fit_resolution_a,
        )


class CtffindFile(BaseModel):
    """A CTFFIND4 text file: header metadata (None when absent) and rows."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = None
    run_on: str | None = None
    input_file: str | None = None
    number_of_micrographs: int | None = None
    pixel_size_a: float | None = None
    voltage_kv: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    box_size_px: int | None = None
    min_resolution_a: float | None = None
    max_resolution_a: float | None = None
    min_defocus_a: float | None = None
    max_defocus_a: float | None = None
    columns: str | None = None  # the text after "# Columns:"
    header_extra: dict[str, str] = Field(default_factory=dict)  # unknown "key: value" pairs
    other_header_lines: list[str] = Field(default_factory=list)  # unrecognised '#' lines
    rows: list[CtffindRow] = Field(default_factory=list)


def _parse_header_line(text: str, out: dict, extra: dict) -> bool:
    """Read one '#' line into ``out`` (known keys) and ``extra``; False if nothing was recognised."""
    body = text.lstrip("#").strip()
    m = re.match(r"Output from CTFFind version (.+?),? run on (.*)$", body, re.IGNORECASE)
    if m:
        out["version"], out["run_on"] = m.group(1), m.group(2).strip()
        return True
    if body.lower().startswith("columns:"):
        out["columns"] = body.split(":", 1)[1].strip()
        return True
    if re.match(r"\d+ lines per micrograph", body):
        out["lines_per_micrograph"] = body
        return True
    found = False
    for part in (p.strip() for p in body.split(";") if p.strip()):
        if ":" in part:
            key, value = (s.strip() for s in part.split(":", 1))
        else:  # "max. def. 75000.0 um" has no colon
            m = re.match(rf"^(.*?)\s*({_NUMBER})\s*(\S*)$", part)
            if not m or not m.group(1):
                continue
            key, value = m.group(1).strip(), f"{m.group(2)} {m.group(3)}".strip()
        found = True
        field = _KEYS.get(key.lower())
        if field is None:
            extra[key] = value
        elif field[1] is str:
            out[field[0]] = value
        elif (num := re.match(_NUMBER, value)) is not None:
            out[field[0]] = field[1](float(num.group(0)))
    return found


def _split(text: str) -> tuple[dict, dict[str, str], list[str], list[tuple[int, str]]]:
    """Header fields, unknown header pairs, unrecognised header lines, numbered data lines."""
    header: dict = {}
    extra: dict[str, str] = {}
    other: list[str] = []
    data: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            if not _parse_header_line(line, header, extra):
                other.append(line.rstrip())
        else:
            data.append((lineno, line))
    return header, extra, other, data


def parse_ctffind(text: str, *, strict: bool = True) -> CtffindFile:
    """Parse CTFFIND4 text. ``strict``: raise on a malformed data line (else warn and skip it)."""
    header, extra, other, data = _split(text)
    if "lines_per_micrograph" in header:
        raise ValueError(
            "this is a CTFFIND rotational-average file (*_avrot.txt), not the per-micrograph "
            "summary; read it with read_ctffind_avrot"
        )
    rows: list[CtffindRow] = []
    for lineno, line in data:
        try:
            values = [float(v) for v in line.split()]
            if len(values) < 4:
                raise ValueError(f"{len(values)} columns, need at least 4")
            pad = values + [0.0] * max(0, 7 - len(values))
            rows.append(
                CtffindRow(
                    micrograph_number=round(pad[0]),
                    defocus_1_a=pad[1],
                    defocus_2_a=pad[2],
                    azimuth_deg=pad[3],
                    phase_shift_rad=pad[4],
                    cross_correlation=pad[5],
                    fit_resolution_a=pad[6],
                    extra=values[7:],
                )
            )
        except ValueError as err:
            msg = f"CTFFIND text line {lineno}: cannot read {line.strip()!r} ({err})"
            if strict:
                raise ValueError(msg + "; fix the line or read with strict=False") from None
            warnings.warn(msg + "; skipped", stacklevel=2)
    out = CtffindFile(**header, header_extra=extra, other_header_lines=other, rows=rows)
    if out.number_of_micrographs is not None and out.number_of_micrographs != len(rows):
        warnings.warn(
            f"CTFFIND header says {out.number_of_micrographs} micrographs but the file has "
            f"{len(rows)} rows; using the rows",
            stacklevel=2,
        )
    return out


def read_ctffind(path: str | Path, *, strict: bool = True) -> CtffindFile:
    """Read a CTFFIND4 text file (see ``parse_ctffind``)."""
    return parse_ctffind(Path(path).read_text(encoding="utf-8", errors="replace"), strict=strict)


def _fmt(x: float | None, spec: str) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_ctffind(data: CtffindFile, *, tilt_angles_deg: list[float] | None = None) -> str:
    """CTFFIND4 text; with ``tilt_angles_deg`` (one per row) rows are sorted by tilt angle and
    renumbered 1..n (DESIGN.md §4: one line per tilt, in tilt-angle order)."""
    rows = list(data.rows)
    if tilt_angles_deg is not None:
        if len(tilt_angles_deg) != len(rows):
            raise ValueError(
                f"format_ctffind: {len(tilt_angles_deg)} tilt angles for {len(rows)} rows; pass one per row"
            )
        order = sorted(range(len(rows)), key=lambda i: tilt_angles_deg[i])
        rows = [rows[i].model_copy(update={"micrograph_number": k + 1}) for k, i in enumerate(order)]
    lines = []
    version = data.version or f"tiltflow-{__version__}"
    run_on = data.run_on or datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines.append(f"# Output from CTFFind version {version}, run on {run_on}")
    lines.append(f"# Input file: {data.input_file or 'unknown'} ; Number of micrographs: {len(rows)}")
    if data.pixel_size_a is not None:
        lines.append(
            f"# Pixel size: {_fmt(data.pixel_size_a, '.3f')} Angstroms ; acceleration voltage: "
            f"{_fmt(data.voltage_kv, '.1f')} keV ; spherical aberration: {_fmt(data.cs_mm, '.2f')} mm ; "
            f"amplitude contrast: {_fmt(data.amplitude_contrast, '.2f')}"
        )
    if data.box_size_px is not None:
        lines.append(
            f"# Box size: {data.box_size_px} pixels ; min. res.: {_fmt(data.min_resolution_a, '.1f')} "
            f"Angstroms ; max. res.: {_fmt(data.max_resolution_a, '.1f')} Angstroms ; min. def.: "
            f"{_fmt(data.min_defocus_a, '.1f')} um; max. def. {_fmt(data.max_defocus_a, '.1f')} um"
        )
    for key, value in data.header_extra.items():
        lines.append(f"# {key}: {value}")
    lines.extend(data.other_header_lines)
    n_extra = max((len(r.extra) for r in rows), default=0)
    columns = data.columns if data.columns and (n_extra or "#8" not in data.columns) else COLUMNS_7
    lines.append(f"# Columns: {columns}")
    for r in rows:
        values = [
            float(r.micrograph_number),
            r.defocus_1_a,
            r.defocus_2_a,
            r.azimuth_deg,
            r.phase_shift_rad,
            r.cross_correlation,
            r.fit_resolution_a,
            *r.extra,
        ]
        lines.append(" ".join(f"{v:.6f}" for v in values))
    return "\n".join(lines) + "\n"


def write_ctffind(path: str | Path, data: CtffindFile, *, tilt_angles_deg: list[float] | None = None) -> None:
    """Write a CTFFIND4 text file (see ``format_ctffind``)."""
    Path(path).write_text(format_ctffind(data, tilt_angles_deg=tilt_angles_deg), encoding="utf-8")


class CtffindAvrot(BaseModel):
    """CTFFIND's rotational-average diagnostic (``*_avrot.txt``): six curves per micrograph."""

    model_config = ConfigDict(extra="forbid")

    header: CtffindFile  # metadata only (no rows)
    spatial_frequency_per_a: list[list[float]]  # [micrograph][bin], 1/Å
    rotational_average_no_astigmatism: list[list[float]]
    rotational_average: list[list[float]]
    ctf_fit: list[list[float]]
    cross_correlation: list[list[float]]
    two_sigma_noise: list[list[float]]


def read_ctffind_avrot(path: str | Path) -> CtffindAvrot:
    """Read a CTFFIND ``*_avrot.txt`` (6 lines per micrograph, see its header)."""
    header, extra, other, data = _split(Path(path).read_text(encoding="utf-8", errors="replace"))
    header.pop("lines_per_micrograph", None)
    if len(data) % 6:
        raise ValueError(
            f"read_ctffind_avrot: {path}: {len(data)} data lines, expected 6 per micrograph; "
            "is this a CTFFIND *_avrot.txt file?"
        )
    curves = [[float(v) for v in line.split()] for _, line in data]
    groups = [curves[i::6] for i in range(6)]
    return CtffindAvrot(
        header=CtffindFile(**header, header_extra=extra, other_header_lines=other),
        spatial_frequency_per_a=groups[0],
        rotational_average_no_astigmatism=groups[1],
        rotational_average=groups[2],
        ctf_fit=groups[3],
        cross_correlation=groups[4],
        two_sigma_noise=groups[5],
    )
