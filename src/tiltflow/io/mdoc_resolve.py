"""The low-level half of the mdoc reader (see ``mdoc.py``): the error classes, a tolerant parser
of the text (CRLF, empty values, NaN, unknown keys kept, line numbers kept) and the rules that turn
written values into meaning: dates, dose, tilt axis, movie files, series ids.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath


class MdocError(ValueError):
    """One line: ``<file>[:line N][ section/key]: what is wrong — what to do``."""


class NotATiltSeriesError(MdocError):
    """A montage, grid map, single (target) image, empty file or not an mdoc."""


def error(
    path: Path | str, what: str, fix: str, *, line: int | None = None, where: str = "", cls: type[MdocError] = MdocError
) -> MdocError:
    """Build the one-line error ``<file>[:line N][ where]: what — fix``."""
    loc = f"{path}" + (f":line {line}" if line else "") + (f" {where}" if where else "")
    return cls(" ".join(f"{loc}: {what} — {fix}".split()))


@dataclass
class Section:
    """A ``[Kind = label]`` section (kind "" for the header before the first one)."""

    kind: str
    label: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class RawMdoc:
    """One parsed file: header keys, titles, sections in file order, parser warnings."""

    path: Path
    header: Section
    titles: list[str]
    sections: list[Section]
    warnings: list[str]


_LINES = re.compile(r"\r\n|\r|\n")
_HEADER = re.compile(r"^\[\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*\]?\s*$")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")


def parse_text(text: str, path: Path) -> RawMdoc:
    """Split mdoc text into header keys, ``[T = ...]`` titles and sections (1-based lines)."""
    header = Section("", "header", 1)
    raw = RawMdoc(path, header, [], [], [])
    cur, ignored = header, []
    for n, line in enumerate(_LINES.split(text.lstrip("\ufeff")), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("["):
            m = _HEADER.match(line)
            if m is None:
                ignored.append(n)
            elif m.group(1) == "T":
                raw.titles.append(m.group(2))
            else:
                cur = Section(m.group(1), f"{m.group(1)} = {m.group(2)}", n)
                raw.sections.append(cur)
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or not _KEY.match(key):
            ignored.append(n)
        elif key == "T" and cur is header:
            raw.titles.append(value)
        else:
            cur.values[key], cur.lines[key] = value, n
    if ignored:
        raw.warnings.append(
            f"{path}: {len(ignored)} lines ignored (not 'key = value' or '[section]'), first at line {ignored[0]}"
        )
    return raw


def read_raw(path: Path) -> RawMdoc:
    """Read and parse one file; MdocError when it cannot be read, NotATiltSeriesError if binary."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(path, f"cannot be read ({exc.strerror or exc})", "check the path") from None
    if b"\x00" in data:
        raise error(
            path, "is a binary file, not an mdoc", "select the .mdoc files with --pattern", cls=NotATiltSeriesError
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_text(text, path)


def number(raw: RawMdoc, s: Section, key: str, *, header: bool = True) -> float | None:
    """First number of ``key`` in section ``s`` (else, ``header``, the file header); None when
    absent, empty or not finite (NaN); MdocError when it is not a number."""
    src = s if key in s.values or not header else raw.header
    text = src.values.get(key, "")
    if not text.split():
        return None
    try:
        value = float(text.split()[0])
    except ValueError:
        raise error(
            raw.path,
            f"{key} = {text} is not a number",
            "correct or delete the line",
            line=src.lines[key],
            where=src.label if src.kind else "",
        ) from None
    return value if math.isfinite(value) else None


def check_tilt_series(raw: RawMdoc) -> str:
    """The kind of tilt sections ("ZValue" or "FrameSet"); raises for anything else."""
    kinds = {s.kind for s in raw.sections}
    pieces = {s.values["PieceCoordinates"] for s in raw.sections if "PieceCoordinates" in s.values}
    if not raw.sections and not raw.header.values:
        raise error(
            raw.path,
            "is empty or not an mdoc (no 'key = value' lines)",
            "select the tilt-series .mdoc files with --pattern",
            cls=NotATiltSeriesError,
        )
    montage = raw.header.values.get("Montage", "0") not in ("", "0")
    if montage or "MontSection" in kinds or len(pieces) > 1:
        mags = [m for s in raw.sections if (m := number(raw, s, "Magnification")) is not None]
        low_mag = bool(mags) and min(mags) < 1000
        what = "a grid map (low-magnification montage)" if low_mag else "a montage"
        raise error(
            raw.path,
            f"is {what}, not a tilt series",
            "select only tilt-series mdocs with --pattern",
            cls=NotATiltSeriesError,
        )
    frame_ts = [s for s in raw.sections if "FrameTSStartEndFrames" in s.values]
    if frame_ts:
        raise error(
            raw.path,
            f"is a frame-based tilt series (FrameTSStartEndFrames: "
            f"{len(frame_ts)} tilts in one movie), which tiltflow cannot import",
            "import the aligned stack with import-tilt-series",
            line=frame_ts[0].line,
        )
    tilt_kinds = kinds & {"ZValue", "FrameSet"}
    if not tilt_kinds:
        raise error(
            raw.path,
            "has no [ZValue] or [FrameSet] section, so it is not a tilt series",
            "select only tilt-series mdocs with --pattern",
            cls=NotATiltSeriesError,
        )
    if len(tilt_kinds) > 1:
        raise error(
            raw.path,
            "mixes [ZValue] and [FrameSet] sections",
            "keep one kind: a tilt-series mdoc or one per-movie mdoc per movie",
        )
    return tilt_kinds.pop()


_MONTHS = {
    m: i
    for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)
}
_DATETIME = re.compile(r"^(\d{1,4})-([A-Za-z]{3})-(\d{1,4})\s+(\d{1,2}):(\d{1,2}):(\d{1,2})$")
# Tomo5 movie names: <Position>_<NNN acquisition index>_<nominal angle>_<yyyymmdd>_<hhmmss><suffix>
_TOMO5_MOVIE = re.compile(
    r"^(?P<prefix>.+?_(?P<index>\d+)_)(?P<angle>[-+]?\d+(?:\.\d+)?)_(?P<date>\d{8})_(?P<time>\d{6})"
    r"(?P<suffix>(?:_[A-Za-z]+)?\.[A-Za-z0-9]+)$"
)
# per-movie (FrameSet) mdoc names: <tsId>_<NNN index>_<angle with a decimal point>[_Mon08_07.39.05]
_PER_MOVIE_STEM = re.compile(r"^(?P<ts>.+?)_\d{3,}_[-+]?\d+\.\d+(?:_[A-Za-z]{3}\d{2}_\d{2}\.\d{2}\.\d{2})?$")
_MOVIE_EXTS = (".mrc", ".st", ".mrcs", ".tif", ".tiff", ".eer", ".ali")


def parse_datetime(text: str, *, year_first: bool) -> dt.datetime | None:
    """``DD-Mon-YY(YY)  HH:MM:SS`` (SerialEM) or, ``year_first``, ``YY-Mon-DD`` (Tomo5).

    A 4-digit field is a year whatever ``year_first`` says. Returns None when it does not parse
    or names no real date.
    """
    m = _DATETIME.match(" ".join(text.split()))
    if m is None or m.group(2).lower() not in _MONTHS:
        return None
    a, b = m.group(1), m.group(3)
    if len(a) == 4 or (year_first and len(b) != 4):
        year, day = a, b
    else:
        year, day = b, a
    y = int(year) + (2000 if len(year) <= 2 else 0)
    try:
        return dt.datetime(y, _MONTHS[m.group(2).lower()], int(day), int(m.group(4)), int(m.group(5)), int(m.group(6)))
    except ValueError:
        return None


def parse_datetimes(
    texts: list[str | None], *, tomo5: bool, now: dt.datetime | None = None
) -> tuple[list[dt.datetime | None], str | None]:
    """Parse every ``DateTime`` of one series with one reading (tomo5: year first).

    A reading is sane when every given date parses, lies after 1990 and not in the future; when
    the preferred one is not and the other is, the other is used and a warning returned.
    """
    now = now or dt.datetime.now()
    given = [t for t in texts if t and t.strip()]

    def reading(year_first: bool) -> list[dt.datetime | None] | None:
        out = [parse_datetime(t, year_first=year_first) if t and t.strip() else None for t in texts]
        sane = all(
            d is not None and dt.datetime(1990, 1, 1) <= d <= now + dt.timedelta(days=2)
            for d, t in zip(out, texts, strict=False)
            if t and t.strip()
        )
        return out if sane else None

    preferred, other = reading(tomo5), reading(not tomo5)
    if preferred is not None or not given:
        return preferred or [None] * len(texts), None
    if other is not None:
        names = ("YY-Mon-DD (Tomo5)", "DD-Mon-YY (SerialEM)")
        return other, (
            f"DateTime read as {names[int(tomo5)]}: the {names[int(not tomo5)]} "
            f"reading gives impossible dates (e.g. '{given[0].strip()}')"
        )
    return [None] * len(texts), (
        f"DateTime not understood (e.g. '{given[0].strip()}'); acquisition order taken from the section order"
    )


def frame_doses_sum(text: str) -> float:
    """``FrameDosesAndNumber = d1 n1  d2 n2 ...`` -> sum(d_i * n_i) (e/Å²); a lone ``NaN`` gives
    NaN. Raises ValueError when the text is not pairs of numbers."""
    tokens = [float(t) for t in text.split()]
    if len(tokens) == 1 and math.isnan(tokens[0]):
        return math.nan
    if len(tokens) % 2:
        raise ValueError("needs pairs of 'dose count'")
    return sum(d * n for d, n in zip(tokens[::2], tokens[1::2], strict=False))


def dose_from_rate(
    dose_rate: float | None, exposure_time_s: float | None, pixel_size_a: float | None, binning: float | None
) -> float | None:
    """``DoseRate`` (e/unbinned px/s) x ``ExposureTime`` (s) / (unbinned pixel size Å)², or None.

    Unbinned pixel size = ``PixelSpacing / Binning`` (SerialEM: Binning 0.5 = super-resolution).
    """
    vals = (dose_rate, exposure_time_s, pixel_size_a, binning)
    if any(v is None or not v > 0 for v in vals):
        return None
    unbinned_a = pixel_size_a / binning  # type: ignore[operator]
    # e/px/s * s / (Å/px)² = e/Å²; a product, not **2, so huge values give inf, not OverflowError
    return dose_rate * exposure_time_s / (unbinned_a * unbinned_a)  # type: ignore[operator]


def prior_doses(doses: list[float | None], rank: list[int], initial: float) -> list[float | None]:
    """Dose received before each image: ``initial`` + doses of images acquired before it
    (``rank`` lists indices in acquisition order). All None when any dose is unknown."""
    if any(d is None for d in doses):
        return [None] * len(doses)
    prior: list[float | None] = [None] * len(doses)
    total = initial
    for i in rank:
        prior[i] = total
        total += doses[i]  # type: ignore[operator]
    return prior


def prior_record_steps(records: list[float], rank: list[int]) -> list[float] | None:
    """Doses from ``PriorRecordDose`` differences in acquisition order (in ``rank`` order); the
    last image gets the median step. None when a step is not > 0."""
    steps = [records[b] - records[a] for a, b in zip(rank, rank[1:], strict=False)]
    if not steps or not all(x > 0 for x in steps):
        return None
    return steps + [sorted(steps)[len(steps) // 2]]


def prior_record_gap(prior: list[float], records: list[float], rank: list[int], labels: list[str]) -> str | None:
    """A warning when ``PriorRecordDose`` stops matching the summed doses (an image missing
    from the mdoc, e.g. one deleted after acquisition), else None."""
    offset = records[rank[0]] - prior[rank[0]]
    for i in rank:
        excess = records[i] - prior[i] - offset
        if abs(excess) > 0.05 + 0.01 * abs(records[i]):
            return (
                f"PriorRecordDose differs from the summed doses by {excess:+.3g} e/Å² from "
                f"{labels[i]} on (acquisition order) — an image missing from the mdoc? Prior "
                "doses here count only the images listed"
            )
    return None


def dose_warnings(doses: list[float | None], sources: list[str], labels: list[str]) -> list[str]:
    """Warnings about missing, implausible or DoseRate-derived doses."""
    out = []
    missing = [lab for lab, d in zip(labels, doses, strict=False) if d is None]
    if missing:
        out.append(
            f"no dose for {len(missing)} of {len(doses)} images ("
            f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): no "
            "ExposureDose, FrameDosesAndNumber, DoseRate or PriorRecordDose — give the "
            "dose per tilt (--dose); prior doses left unknown"
        )
    high = [d for d in doses if d is not None and d > 50]
    if high:
        out.append(
            f"{len(high)} images have an implausible dose (> 50 e/Å², e.g. {high[0]:.4g})"
            " — check the mdoc or give --dose"
        )
    rate = [d for d, src in zip(doses, sources, strict=False) if src == "DoseRate" and d is not None]
    if rate and max(rate) > 2 * min(rate):
        out.append(
            f"doses from DoseRate x ExposureTime (counted through the specimen) vary "
            f"from {min(rate):.3g} to {max(rate):.3g} e/Å² — give --dose for the incident "
            "dose per tilt"
        )
    return out


def normalise_angle_deg(angle_deg: float) -> float:
    """Map any angle into (-180, 180]."""
    a = math.fmod(angle_deg, 360.0)
    if a <= -180.0:
        a += 360.0
    elif a > 180.0:
        a -= 360.0
    return a


def angle_difference_deg(a_deg: float, b_deg: float) -> float:
    """Smallest absolute difference of two angles (degrees, 0..180)."""
    return abs(normalise_angle_deg(a_deg - b_deg))


_SERIALEM_AXIS = re.compile(r"Tilt\s+axis\s+angle\s*=\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)")
_TOMO5_AXIS = re.compile(r"TiltAxisAngle\s*=\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)")


def axis_from_titles(titles: list[str]) -> tuple[float | None, str | None]:
    """The tilt-axis angle (DESIGN.md convention, degrees) from ``[T = ...]`` titles.

    SerialEM ``Tilt axis angle = 85.3, ...`` -> 85.3; Tomo5 ``TiltAxisAngle = a`` -> ``-a - 90``.
    Returns (angle or None, "serialem" / "tomo5" / None for the form found).
    """
    for title in titles:
        for pattern, form in ((_TOMO5_AXIS, "tomo5"), (_SERIALEM_AXIS, "serialem")):
            m = pattern.search(title)
            if m is None:
                continue
            try:
                a = float(m.group(1))
            except ValueError:
                continue
            if math.isfinite(a):
                return normalise_angle_deg(-a - 90.0 if form == "tomo5" else a), form
    return None, None


def movie_basename(sub_frame_path: str) -> str | None:
    """Basename of a ``SubFramePath`` as written (Windows ``Z:\\a\\b.tif`` or POSIX paths)."""
    name = PureWindowsPath(sub_frame_path.strip()).name
    return name or None


def nominal_angle_from_name(name: str) -> float | None:
    """The nominal angle in a Tomo5 movie name ``<Pos>_<NNN>_<angle>_<yyyymmdd>_<hhmmss>...``."""
    m = _TOMO5_MOVIE.match(name)
    return float(m.group("angle")) if m else None


def _listing(directory: Path, cache: dict[Path, list[str]]) -> list[str]:
    if directory not in cache:
        try:
            cache[directory] = sorted(os.listdir(directory))
        except OSError:
            cache[directory] = []
    return cache[directory]


def resolve_movie(
    name: str, sub_frame_path: str, dirs: list[Path], cache: dict[Path, list[str]]
) -> tuple[Path | None, str | None]:
    """Find the movie ``name`` in ``dirs`` (first the mdoc's folder).

    Tries, in order: the exact name; a relative ``SubFramePath`` below the first folder; the name
    in any letter case (Tomo5 ``_fractions``/``_Fractions``); for Tomo5 names, the one file with
    the same ``<Pos>_<NNN>_`` prefix and suffix (the nominal angle in the name may differ).
    Returns (path or None, warning or None).
    """
    for d in dirs:
        if (d / name).is_file():
            return d / name, None
    rel = sub_frame_path.strip().replace("\\", "/")
    if dirs and rel and not rel.startswith("/") and ":" not in rel and (dirs[0] / rel).is_file():
        return dirs[0] / rel, None
    lower = name.lower()
    m = _TOMO5_MOVIE.match(name)
    for d in dirs:
        files = _listing(d, cache)
        same = [f for f in files if f.lower() == lower]
        if len(same) == 1:
            return d / same[0], None
        if m is None:
            continue
        prefix, suffix = m.group("prefix").lower(), m.group("suffix").lower()
        near = [
            f for f in files if f.lower().startswith(prefix) and f.lower().endswith(suffix) and _TOMO5_MOVIE.match(f)
        ]
        if len(near) == 1:
            return d / near[0], None
        if len(near) > 1:
            return None, (
                f"movie {name}: {len(near)} files in {d} start with "
                f"{m.group('prefix')} ({', '.join(near[:3])}) — cannot tell which"
            )
    return None, None


def natural_key(text: str) -> list[object]:
    """Sort key that orders embedded numbers by value (``a_2`` before ``a_10``)."""
    return [int(t) if t.isdecimal() else t.lower() for t in re.split(r"(\d+)", text)]


def ts_id_from_name(file_name: str) -> str:
    """``TS_01.mrc.mdoc`` -> ``TS_01``; per-movie ``TS_019_0000_8.0.mrc.mdoc`` -> ``TS_019``.

    Drops ``.mdoc`` and a stack/movie extension, then a per-movie tail ``_<NNN>_<angle.d>``;
    characters outside ``[A-Za-z0-9_.-]`` become ``_``.
    """
    stem = file_name
    if stem.lower().endswith(".mdoc"):
        stem = stem[: -len(".mdoc")]
    for ext in _MOVIE_EXTS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    m = _PER_MOVIE_STEM.match(stem)
    if m:
        stem = m.group("ts")
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip(".")
    return stem or "mdoc"
