"""Read SerialEM and Thermo Tomo5 ``.mdoc`` files of tilt series (pure reading, no printing).

Units and conventions (DESIGN.md §2): angles in degrees, dose in e/Å², pixel size in Å/px.
Tilt-axis angle: degrees from the image +y axis, counter-clockwise positive (IMOD, SerialEM,
AreTomo), normalised into (-180, 180]:

- SerialEM: title ``[T = Tilt axis angle = 85.3, binning = 1 ...]`` -> 85.3; without that title,
  per-section ``RotationAngle - 90`` (true of every real SerialEM mdoc in the corpus).
- Tomo5 (``tomo5=True``, or a camel-case ``TiltAxisAngle`` title): header ``TiltAxisAngle = a``
  -> ``-a - 90``; per-section ``RotationAngle = r`` -> ``-r``; a warning when they differ by > 1°.

Dose of each image, first that gives a value > 0: ``ExposureDose``; ``FrameDosesAndNumber``
(sum of dose x count); ``DoseRate x ExposureTime / (PixelSpacing / Binning)²``; differences of
``PriorRecordDose`` in acquisition order. A user ``dose_per_tilt_e_a2`` always wins. Acquisition
order: ``DateTime`` when every section has one, else the section (file) order.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tiltflow.io import mdoc_resolve as rs
from tiltflow.io.mdoc_ranges import check_ranges, known
from tiltflow.io.mdoc_resolve import (
    MdocError,
    NotATiltSeriesError,
    RawMdoc,
    Section,
    check_tilt_series,
    error,
    number,
    read_raw,
)

__all__ = [
    "MdocError",
    "NotATiltSeriesError",
    "MdocTilt",
    "MdocTiltSeries",
    "group_mdocs",
    "read_frame_set_mdocs",
    "read_mdocs",
    "read_tilt_series_mdoc",
    "ts_id_from_path",
]

NEAR_DUPLICATE_DEG = 0.05
_FIELDS = ("TiltAngle", "SubFramePath", "NumSubFrames", "DateTime")


@dataclass
class MdocTilt:
    """One tilt image of a series, after resolution (angles °, doses e/Å², acquisition order)."""

    tilt_angle_deg: float
    acquisition_order: int  # 1-based
    dose_e_a2: float | None  # this image's dose
    prior_dose_e_a2: float | None  # initial dose + doses of images acquired before
    accumulated_dose_e_a2: float | None  # prior + own
    movie_name: str | None  # SubFramePath basename as written
    movie_path: Path | None  # resolved existing file, or None
    num_frames: int | None  # NumSubFrames
    section: str  # e.g. "ZValue = 12"
    line: int  # 1-based line of the section header in `source`
    source: Path
    nominal_angle_deg: float | None  # Tomo5 angle in the movie name when different
    datetime: dt.datetime | None
    extra: dict[str, str] = field(default_factory=dict)  # every other key, as written


@dataclass
class MdocTiltSeries:
    """A tilt series read from one tilt-series mdoc or from the per-movie mdocs of one series."""

    ts_id: str
    paths: list[Path]
    flavour: Literal["serialem", "tomo5"]
    voltage_kv: float | None
    magnification: float | None
    pixel_size_a: float | None  # PixelSpacing (Å/px)
    tilt_axis_deg: float | None  # from +y, counter-clockwise, (-180, 180]
    tilts: list[MdocTilt]  # ascending tilt angle
    image_size: tuple[int, int] | None  # (nx, ny)
    warnings: list[str] = field(default_factory=list)


def ts_id_from_path(path: Path) -> str:
    """``TS_01.mrc.mdoc`` -> ``TS_01``; per-movie ``TS_019_0000_8.0.mrc.mdoc`` -> ``TS_019``."""
    return rs.ts_id_from_name(Path(path).name)


def read_tilt_series_mdoc(
    path: Path,
    *,
    tomo5: bool = False,
    initial_dose_e_a2: float = 0.0,
    dose_per_tilt_e_a2: float | None = None,
    movie_dirs: Sequence[Path] = (),
    allow_duplicate_angles: bool = False,
) -> MdocTiltSeries:
    """Read one tilt-series mdoc (``[ZValue]`` sections; a ``[FrameSet]`` file is read as a
    one-file per-movie set). Raises MdocError, or NotATiltSeriesError for montages, grid maps,
    single images, empty files and non-mdocs. ``allow_duplicate_angles`` turns the near-duplicate
    angle error into a warning (for stacks that already exist, whose sections are what they are).
    """
    raw = read_raw(Path(path))
    kind = "FrameSet" if check_tilt_series(raw) == "FrameSet" else "ZValue"
    return _build(
        [raw],
        kind,
        tomo5,
        initial_dose_e_a2,
        dose_per_tilt_e_a2,
        movie_dirs,
        allow_duplicate_angles=allow_duplicate_angles,
    )


def read_frame_set_mdocs(
    paths: Sequence[Path],
    *,
    tomo5: bool = False,
    initial_dose_e_a2: float = 0.0,
    dose_per_tilt_e_a2: float | None = None,
    movie_dirs: Sequence[Path] = (),
) -> MdocTiltSeries:
    """Merge the per-movie ``[FrameSet]`` mdocs of ONE tilt series into one series."""
    unique = sorted({Path(p) for p in paths}, key=lambda p: rs.natural_key(str(p)))
    if not unique:
        raise MdocError("read_frame_set_mdocs: no files given — pass the per-movie mdocs of one series")
    raws = [read_raw(p) for p in unique]
    for raw in raws:
        if check_tilt_series(raw) != "FrameSet":
            raise error(
                raw.path,
                "is a tilt-series mdoc ([ZValue] sections), not a per-movie [FrameSet] mdoc",
                "read it with read_tilt_series_mdoc",
            )
    ids = sorted({ts_id_from_path(r.path) for r in raws})
    if len(ids) > 1:
        raise error(
            unique[0],
            f"the files belong to {len(ids)} series ({', '.join(ids[:4])})",
            "group them with group_mdocs and read each group",
        )
    return _build(raws, "FrameSet", tomo5, initial_dose_e_a2, dose_per_tilt_e_a2, movie_dirs)


_FRAME_SET_SECTION = re.compile(r"^\s*\[\s*FrameSet\s*=", re.MULTILINE)
_ZVALUE_SECTION = re.compile(r"^\s*\[\s*ZValue\s*=", re.MULTILINE)


def _is_per_movie(path: Path) -> bool:
    try:
        text = path.read_bytes()[:1_000_000].decode("latin-1")
    except OSError:
        return False
    return bool(_FRAME_SET_SECTION.search(text)) and not _ZVALUE_SECTION.search(text)


def group_mdocs(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """tsId -> files: per-movie ``[FrameSet]`` mdocs of one series together (same folder and
    name prefix), every other mdoc alone. Raises MdocError when two groups share a tsId."""
    groups: dict[tuple[str, Path | None], list[Path]] = {}
    for p in sorted({Path(p) for p in paths}, key=lambda p: rs.natural_key(str(p))):
        key = (ts_id_from_path(p), p.parent) if _is_per_movie(p) else (ts_id_from_path(p), None)
        if key[1] is None and key in groups:
            key = (key[0], p)  # a second tilt-series mdoc with this tsId: reported below
        groups.setdefault(key, []).append(p)
    by_id: dict[str, list[list[Path]]] = {}
    for (ts_id, _), files in groups.items():
        by_id.setdefault(ts_id, []).append(files)
    clashes = [f"{ts_id}: {', '.join(str(g[0]) for g in gs)}" for ts_id, gs in by_id.items() if len(gs) > 1]
    if clashes:
        raise MdocError(
            f"{len(clashes)} series names are used by several mdocs ("
            f"{'; '.join(clashes)}) — rename the files or select one with --pattern"
        )
    ordered = sorted(by_id.items(), key=lambda kv: rs.natural_key(kv[0]))
    return {ts_id: gs[0] for ts_id, gs in ordered}


def read_mdocs(paths: Sequence[Path], **kwargs: object) -> list[MdocTiltSeries]:
    """Group ``paths`` and read every series; one MdocError listing ALL problems (one per line).

    ``kwargs`` are those of :func:`read_tilt_series_mdoc`. Raises NotATiltSeriesError when every
    problem is a file that is not a tilt series.
    """
    series: list[MdocTiltSeries] = []
    problems: list[MdocError] = []
    for files in group_mdocs(paths).values():
        try:
            if len(files) == 1:
                series.append(read_tilt_series_mdoc(files[0], **kwargs))  # type: ignore[arg-type]
            else:
                series.append(read_frame_set_mdocs(files, **kwargs))  # type: ignore[arg-type]
        except MdocError as exc:
            problems.append(exc)
    if problems:
        cls = NotATiltSeriesError if all(isinstance(e, NotATiltSeriesError) for e in problems) else MdocError
        raise cls("\n".join(str(e) for e in problems))
    return series


def _build(
    raws: list[RawMdoc],
    kind: str,
    tomo5: bool,
    initial_dose_e_a2: float,
    dose_per_tilt_e_a2: float | None,
    movie_dirs: Sequence[Path],
    allow_duplicate_angles: bool = False,
) -> MdocTiltSeries:
    if not (math.isfinite(initial_dose_e_a2) and initial_dose_e_a2 >= 0):
        raise ValueError(f"initial_dose_e_a2 = {initial_dose_e_a2} — give a dose >= 0 (e/Å²)")
    if dose_per_tilt_e_a2 is not None and not (math.isfinite(dose_per_tilt_e_a2) and dose_per_tilt_e_a2 > 0):
        raise ValueError(
            f"dose_per_tilt_e_a2 = {dose_per_tilt_e_a2} — give a dose > 0 (e/Å²) or None to read it from the mdoc"
        )
    items = [(raw, s) for raw in raws for s in raw.sections if s.kind == kind]
    warnings = [w for raw in raws for w in raw.warnings]
    if len(items) < 2:
        raw, sec = items[0]
        what = (
            f"holds a single image ({sec.label}: a target, preview or search image)"
            if kind == "ZValue"
            else "is the only per-movie [FrameSet] mdoc of its series"
        )
        raise NotATiltSeriesError(
            error(
                raw.path,
                f"{what}, not a tilt series",
                "select tilt-series mdocs (or all per-movie mdocs of a series) with --pattern",
                line=sec.line,
            )
        )
    for raw in raws:
        check_ranges(raw, [s for s in raw.sections if s.kind == kind])
        if kind == "ZValue":
            _check_unique_labels(raw, [s for s in raw.sections if s.kind == kind])
    angles = [_tilt_angle(raw, s) for raw, s in items]
    try:
        _check_near_duplicates(items, angles)
    except MdocError as err:
        if not allow_duplicate_angles:
            raise
        warnings.append(str(err))
    flavour, axis = _flavour_and_axis(raws, items, tomo5, warnings)
    dates, note = rs.parse_datetimes([s.values.get("DateTime") for _, s in items], tomo5=flavour == "tomo5")
    warnings += [note] if note else []
    rank = list(range(len(items)))
    if all(d is not None for d in dates):
        rank.sort(key=lambda i: (dates[i], i))
    order = [0] * len(items)
    for k, i in enumerate(rank):
        order[i] = k + 1
    doses, prior = _doses(items, rank, dose_per_tilt_e_a2, initial_dose_e_a2, warnings)
    cache: dict[Path, list[str]] = {}
    tilts = []
    for i, (raw, s) in enumerate(items):
        sub = s.values.get("SubFramePath", "")
        name = rs.movie_basename(sub) if sub.strip() else None
        path, nominal = None, None
        if name is not None:
            dirs = [raw.path.parent, *(Path(d) for d in movie_dirs)]
            path, note = rs.resolve_movie(name, sub, dirs, cache)
            warnings += [note] if note else []
            nominal = rs.nominal_angle_from_name(name)
            if nominal is not None and abs(nominal - angles[i]) < NEAR_DUPLICATE_DEG:
                nominal = None
        frames = number(raw, s, "NumSubFrames", header=False)
        tilts.append(
            MdocTilt(
                tilt_angle_deg=angles[i],
                acquisition_order=order[i],
                dose_e_a2=doses[i],
                prior_dose_e_a2=prior[i],
                accumulated_dose_e_a2=None if prior[i] is None else prior[i] + doses[i],  # type: ignore[operator]
                movie_name=name,
                movie_path=path,
                num_frames=int(frames) if frames is not None and frames >= 1 else None,
                section=s.label,
                line=s.line,
                source=raw.path,
                nominal_angle_deg=nominal,
                datetime=dates[i],
                extra={k: v for k, v in s.values.items() if k not in _FIELDS},
            )
        )
    tilts.sort(key=lambda t: t.tilt_angle_deg)
    return MdocTiltSeries(
        ts_id=ts_id_from_path(raws[0].path),
        paths=[r.path for r in raws],
        flavour=flavour,
        voltage_kv=_common(items, "Voltage", warnings),
        tilts=tilts,
        magnification=_common(items, "Magnification", warnings),
        pixel_size_a=_common(items, "PixelSpacing", warnings),
        tilt_axis_deg=axis,
        image_size=_image_size(raws[0]),
        warnings=warnings,
    )


def _check_unique_labels(raw: RawMdoc, sections: list[Section]) -> None:
    """Each ``[ZValue = N]`` once per file (a repeated one is a pasted or damaged file)."""
    seen: dict[str, int] = {}
    for s in sections:
        key = " ".join(s.label.split())
        if key in seen:
            raise error(
                raw.path,
                f"[{s.label}] appears twice (lines {seen[key]} and {s.line})",
                "each image has its own ZValue: fix the file or export it from SerialEM again",
                line=s.line,
            )
        seen[key] = s.line


def _tilt_angle(raw: RawMdoc, s: Section) -> float:
    angle = number(raw, s, "TiltAngle", header=False)
    if angle is None:
        raise error(
            raw.path,
            "no TiltAngle (missing, empty or NaN)",
            "add the angle or delete the section",
            line=s.line,
            where=s.label,
        )
    if abs(angle) > 90:
        raise error(
            raw.path,
            f"TiltAngle = {angle:g} is outside [-90, 90]",
            "correct the angle or delete the section",
            line=s.lines["TiltAngle"],
            where=s.label,
        )
    return angle


def _check_near_duplicates(items: list[tuple[RawMdoc, Section]], angles: list[float]) -> None:
    idx = sorted(range(len(angles)), key=lambda i: angles[i])
    pairs = [(a, b) for a, b in zip(idx, idx[1:], strict=False) if angles[b] - angles[a] < NEAR_DUPLICATE_DEG]
    if not pairs:
        return

    def where(i: int) -> str:
        raw, s = items[i]
        own = "" if items[0][0] is raw and len({id(r) for r, _ in items}) == 1 else f"{raw.path}:"
        return f"[{s.label}] ({own}line {s.line}, {angles[i]:g}°)"

    text = "; ".join(f"{where(a)} and {where(b)}" for a, b in pairs)
    raise error(
        items[0][0].path,
        f"sections with (nearly) the same tilt angle (< {NEAR_DUPLICATE_DEG}° apart): {text}",
        "delete the section of the image you do not want (e.g. a retake)",
    )


def _flavour_and_axis(
    raws: list[RawMdoc], items: list[tuple[RawMdoc, Section]], tomo5: bool, warnings: list[str]
) -> tuple[Literal["serialem", "tomo5"], float | None]:
    titles = [t for raw in raws for t in raw.titles]
    axis, form = rs.axis_from_titles(titles)
    looks_tomo5 = form == "tomo5" or any(t.lstrip().startswith("Tomography") for t in titles)
    looks_serialem = form == "serialem" or any("SerialEM" in t for t in titles)
    flavour: Literal["serialem", "tomo5"] = "tomo5" if looks_tomo5 or (tomo5 and not looks_serialem) else "serialem"
    if tomo5 and flavour == "serialem":
        warnings.append("read as SerialEM although tomo5 was asked: the titles are SerialEM's")
    if not tomo5 and flavour == "tomo5":
        warnings.append("read as Tomo5 (its TiltAxisAngle/Tomography title) although tomo5 was not asked")
    rotations = []
    for raw, s in items:
        r = number(raw, s, "RotationAngle", header=False)
        if r is None:
            continue
        if abs(r) > 720.0:  # also keeps the median below from overflowing
            raise error(
                raw.path,
                f"RotationAngle = {r:g} is not an image rotation in degrees",
                "correct or delete the line",
                line=s.lines["RotationAngle"],
                where=s.label if s.kind else "",
            )
        rotations.append(r)
    from_rotation = None
    if rotations:
        r = statistics.median(rotations)
        from_rotation = rs.normalise_angle_deg(-r if flavour == "tomo5" else r - 90.0)
    if axis is None and from_rotation is not None:
        rule = "-RotationAngle (Tomo5)" if flavour == "tomo5" else "RotationAngle - 90 (SerialEM)"
        warnings.append(f"no tilt-axis title: tilt axis {from_rotation:g}° taken from {rule}")
        axis = from_rotation
    elif (
        axis is not None
        and from_rotation is not None
        and flavour == "tomo5"
        and rs.angle_difference_deg(axis, from_rotation) > 1.0
    ):
        warnings.append(
            f"Tomo5 tilt axes disagree: header TiltAxisAngle gives {axis:g}°, "
            f"RotationAngle gives {from_rotation:g}°; using the header's"
        )
    return flavour, axis


def _own_dose(raw: RawMdoc, s: Section) -> tuple[float | None, str]:
    """This image's dose (e/Å²) and the key it came from; (None, "") when none gives one > 0."""
    d = number(raw, s, "ExposureDose", header=False)
    if d is not None and d > 0:
        return d, "ExposureDose"
    text = s.values.get("FrameDosesAndNumber", "")
    if text.strip():
        try:
            d = rs.frame_doses_sum(text)
        except ValueError:
            raise error(
                raw.path,
                f"FrameDosesAndNumber = {text} is not pairs of 'dose count'",
                "correct or delete the line",
                line=s.lines["FrameDosesAndNumber"],
                where=s.label,
            ) from None
        if math.isfinite(d) and d > 0:
            return d, "FrameDosesAndNumber"
    d = rs.dose_from_rate(
        number(raw, s, "DoseRate", header=False),
        number(raw, s, "ExposureTime", header=False),
        number(raw, s, "PixelSpacing"),
        number(raw, s, "Binning"),
    )
    return (d, "DoseRate") if d is not None and math.isfinite(d) and d > 0 else (None, "")


def _doses(
    items: list[tuple[RawMdoc, Section]], rank: list[int], user: float | None, initial: float, warnings: list[str]
) -> tuple[list[float | None], list[float | None]]:
    """Per-image dose and prior dose (e/Å²), in the order of ``items``."""
    records = [number(raw, s, "PriorRecordDose", header=False) for raw, s in items]
    labels = [s.label for _, s in items]
    if user is not None:
        doses: list[float | None] = [user] * len(items)
    else:
        found = [_own_dose(raw, s) for raw, s in items]
        doses = [d for d, _ in found]
        if any(d is None for d in doses) and all(r is not None for r in records):
            steps = rs.prior_record_steps(records, rank)  # type: ignore[arg-type]
            if steps is not None and doses[rank[-1]] is None:
                warnings.append("dose of the last image acquired set to the median of the PriorRecordDose steps")
            for i, step in zip(rank, steps or [], strict=False):
                doses[i] = step if doses[i] is None else doses[i]
        warnings += rs.dose_warnings(doses, [src for _, src in found], labels)
    prior = rs.prior_doses(doses, rank, initial)
    if user is None and all(r is not None for r in records) and all(p is not None for p in prior):
        note = rs.prior_record_gap(prior, records, rank, labels)  # type: ignore[arg-type]
        warnings += [note] if note else []
    return doses, prior


def _common(items: list[tuple[RawMdoc, Section]], key: str, warnings: list[str]) -> float | None:
    values = [v for raw, s in items if (v := known(number(raw, s, key), key)) is not None]
    if not values:
        return None
    if max(values) - min(values) > 0.01 * abs(values[0]):
        warnings.append(f"{key} varies between images ({min(values):g} .. {max(values):g}); using {values[0]:g}")
    return values[0]


def _image_size(raw: RawMdoc) -> tuple[int, int] | None:
    parts = raw.header.values.get("ImageSize", "").split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    nx, ny = int(parts[0]), int(parts[1])
    return (nx, ny) if nx > 0 and ny > 0 else None
