"""IMOD ctfplotter / ctfphaseflip defocus files (``*.defocus``), versions 1-3.

Format (IMOD ``ctfphaseflip`` man page, "Defocus File Format"; cross-checked with the readers of
novaCTF and Scipion and the files in the test corpus). Views are 1-based, tilt angles in degrees,
defocus in **nm**, underfocus positive. Each line covers views ``start..end``:

- version 1: ``start end tilt1 tilt2 defocus`` on every line (no version marker);
- version 2: the same, with ``2`` appended to the first line;
- version 3: a first line ``flags 0 0. 0. 0 3``, then ``start end tilt1 tilt2 defocus1
  [defocus2 astig_angle] [phase_shift] [cut_on]``, columns present according to ``flags``, the sum
  of 1 (astigmatism), 2 (astigmatism angle in radians, else degrees), 4 (phase shifts),
  8 (phase shifts in radians, else degrees), 16 (tilt angles must be inverted to match what
  ctfplotter would write) and 32 (cut-on frequencies, 1/nm).

Models hold values in fixed units (angles and phase in degrees) whatever the flags say; flags are
applied when reading and writing. Mapping to tiltflow (DESIGN.md §2): ``defocus1`` is the defocus
along ``astigmatism_angle`` (as CTFFIND's defocus 1; novaCTF and Scipion read it so), in nm;
``DefocusEntry.to_u_v_angle`` returns Å with u >= v.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ASTIGMATISM, ANGLE_RADIANS, PHASE, PHASE_RADIANS, INVERT_TILTS, CUT_ON = 1, 2, 4, 8, 16, 32


class DefocusEntry(BaseModel):
    """One line: views ``start_view..end_view`` (1-based) and their CTF."""

    model_config = ConfigDict(extra="forbid")

    start_view: int
    end_view: int
    start_tilt_deg: float
    end_tilt_deg: float
    defocus_1_nm: float
    defocus_2_nm: float | None = None
    astigmatism_angle_deg: float | None = None
    phase_shift_deg: float | None = None
    cut_on_frequency_per_nm: float | None = None

    def to_u_v_angle(self) -> tuple[float, float, float]:
        """(defocus_u_a, defocus_v_a, astigmatism_angle_deg): Å, u >= v, angle in [-90, 90)."""
        u = self.defocus_1_nm * 10.0
        v = (self.defocus_2_nm if self.defocus_2_nm is not None else self.defocus_1_nm) * 10.0
        ang = self.astigmatism_angle_deg or 0.0
        if u < v:
            u, v, ang = v, u, ang + 90.0
        return u, v, (ang + 90.0) % 180.0 - 90.0


class DefocusFile(BaseModel):
    """A ``.defocus`` file: version (1, 2 or 3), version-3 flags, entries in file order."""

    model_config = ConfigDict(extra="forbid")

    version: int = 3
    flags: int = 0
    entries: list[DefocusEntry] = Field(default_factory=list)


def _n_columns(flags: int) -> int:
    return 5 + 2 * bool(flags & ASTIGMATISM) + bool(flags & PHASE) + bool(flags & CUT_ON)


def _entry(values: list[float], flags: int) -> DefocusEntry:
    fields: dict[str, Any] = {
        "start_view": int(values[0]),
        "end_view": int(values[1]),
        "start_tilt_deg": values[2],
        "end_tilt_deg": values[3],
        "defocus_1_nm": values[4],
    }
    i = 5
    if flags & ASTIGMATISM:
        angle = values[i + 1]
        fields["defocus_2_nm"] = values[i]
        fields["astigmatism_angle_deg"] = math.degrees(angle) if flags & ANGLE_RADIANS else angle
        i += 2
    if flags & PHASE:
        fields["phase_shift_deg"] = math.degrees(values[i]) if flags & PHASE_RADIANS else values[i]
        i += 1
    if flags & CUT_ON:
        fields["cut_on_frequency_per_nm"] = values[i]
    return DefocusEntry(**fields)


def parse_defocus(text: str, *, strict: bool = True) -> DefocusFile:
    """Parse a ``.defocus`` file. ``strict``: raise on a malformed line (else warn and skip it)."""
    lines = [(i, ln.split()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise ValueError("IMOD defocus file is empty; expected ctfplotter output")
    first = lines[0][1]
    if len(first) == 6 and first[5] == "3":
        version, flags, body = 3, int(float(first[0])), lines[1:]
    elif len(first) == 6 and first[5] == "2":
        version, flags, body = 2, 0, [(lines[0][0], first[:5])] + lines[1:]
    elif len(first) == 5:
        version, flags, body = 1, 0, lines
    else:
        raise ValueError(
            f"IMOD defocus file: first line {' '.join(first)!r} is neither version 1, 2 nor 3 "
            "(expected 5 values, or 6 ending in 2 or 3)"
        )
    want = _n_columns(flags)
    entries = []
    for lineno, parts in body:
        try:
            if len(parts) != want:
                raise ValueError(f"{len(parts)} values, flags {flags} need {want}")
            entries.append(_entry([float(p) for p in parts], flags))
        except ValueError as err:
            msg = f"IMOD defocus line {lineno}: cannot read {' '.join(parts)!r} ({err})"
            if strict:
                raise ValueError(msg + "; fix the line or read with strict=False") from None
            warnings.warn(msg + "; skipped", stacklevel=2)
    return DefocusFile(version=version, flags=flags, entries=entries)


def read_defocus(path: str | Path, *, strict: bool = True) -> DefocusFile:
    """Read an IMOD ``.defocus`` file (see ``parse_defocus``)."""
    return parse_defocus(Path(path).read_text(encoding="utf-8", errors="replace"), strict=strict)


def format_defocus(data: DefocusFile) -> str:
    """Text of a ``.defocus`` file in ctfplotter's layout (tab-separated, 2-decimal angles)."""
    if data.version not in (1, 2, 3):
        raise ValueError(f"format_defocus: version {data.version} is not 1, 2 or 3")
    flags = data.flags if data.version == 3 else 0
    if data.version < 3 and any(
        e.defocus_2_nm is not None and e.defocus_2_nm != e.defocus_1_nm or e.phase_shift_deg for e in data.entries
    ):
        raise ValueError("format_defocus: astigmatism or phase shifts need version 3 (set version=3 and flags)")
    lines = [f"{flags}\t0\t0.0\t0.0\t0.0\t3"] if data.version == 3 else []
    for k, e in enumerate(data.entries):
        cols = [
            str(e.start_view),
            str(e.end_view),
            f"{e.start_tilt_deg:5.2f}",
            f"{e.end_tilt_deg:5.2f}",
            f"{e.defocus_1_nm:7.1f}",
        ]
        if flags & ASTIGMATISM:
            ang = e.astigmatism_angle_deg or 0.0
            d2 = e.defocus_2_nm if e.defocus_2_nm is not None else e.defocus_1_nm
            cols += [f"{d2:7.1f}", f"{math.radians(ang):.5f}" if flags & ANGLE_RADIANS else f"{ang:7.2f}"]
        if flags & PHASE:
            ph = e.phase_shift_deg or 0.0
            cols.append(f"{math.radians(ph):.5f}" if flags & PHASE_RADIANS else f"{ph:7.2f}")
        if flags & CUT_ON:
            cols.append(f"{e.cut_on_frequency_per_nm or 0.0:.5f}")
        if data.version == 2 and k == 0:
            cols.append("2")
        lines.append("\t".join(cols))
    return "\n".join(lines) + "\n"


def write_defocus(path: str | Path, data: DefocusFile) -> None:
    """Write an IMOD ``.defocus`` file (see ``format_defocus``)."""
    Path(path).write_text(format_defocus(data), encoding="utf-8")


def defocus_file_from_ctf(
    tilt_angles_deg: list[float],
    defocus_u_a: list[float],
    defocus_v_a: list[float],
    astigmatism_angle_deg: list[float],
    phase_shift_rad: list[float] | None = None,
) -> DefocusFile:
    """A version-3 file, one entry per view in the given (tilt-angle) order, from tiltflow's CTF (Å, rad)."""
    n = len(tilt_angles_deg)
    if not len(defocus_u_a) == len(defocus_v_a) == len(astigmatism_angle_deg) == n:
        raise ValueError("defocus_file_from_ctf: pass one defocus_u_a, defocus_v_a and angle per tilt angle")
    phases = phase_shift_rad if phase_shift_rad is not None and any(p != 0 for p in phase_shift_rad) else None
    entries = [
        DefocusEntry(
            start_view=i + 1,
            end_view=i + 1,
            start_tilt_deg=t,
            end_tilt_deg=t,
            defocus_1_nm=u / 10.0,
            defocus_2_nm=v / 10.0,
            astigmatism_angle_deg=a,
            phase_shift_deg=math.degrees(phases[i]) if phases is not None else None,
        )
        for i, (t, u, v, a) in enumerate(
            zip(tilt_angles_deg, defocus_u_a, defocus_v_a, astigmatism_angle_deg, strict=False)
        )
    ]
    return DefocusFile(version=3, flags=ASTIGMATISM | (PHASE if phases is not None else 0), entries=entries)
