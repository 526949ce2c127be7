"""The accepted tilts of a series as an mdoc of their own, beside links to their movies.

Each series batch is imported from such a snapshot (``<project>/watch/batches/<tsId>/b<k>``), so
the import holds exactly the tilts the watch accepted; the per-tilt parameters are read from a
live snapshot of the tilts so far with the same reader (``import-movies``), so both agree. A
Tomo5 series before its mdoc is written gets sections made from another series' mdoc of the
session (its optics, dose, axis) with the angle and time in each movie's name.
"""

from __future__ import annotations

import copy
import os
import shutil
from datetime import datetime
from pathlib import Path

from tiltflow.io.mdoc_resolve import _TOMO5_MOVIE, RawMdoc, Section, axis_from_titles
from tiltflow.workflow.watch.completeness import SeriesView, Tilt

PHANTOM = "tiltflow_watch_phantom.none"  # a second section for one-tilt snapshots (no movie)


def _section_text(s: Section) -> list[str]:
    return [f"[{s.label}]", *(f"{k} = {v}" for k, v in s.values.items()), ""]


def mdoc_text(raw: RawMdoc, sections: list[Section]) -> str:
    """``raw``'s header and titles with ``sections``, as the reader parses them back."""
    lines = [f"{k} = {v}" for k, v in raw.header.values.items()] + [""]
    lines += [f"[T = {t}]" for t in raw.titles] + [""]
    for s in sections:
        lines += _section_text(s)
    return "\r\n".join(lines) + "\r\n"


def _tomo5_section(template: RawMdoc, tilt: Tilt) -> Section | None:
    """A section for a Tomo5 movie not yet in an mdoc, from ``template``'s first tilt section."""
    m = _TOMO5_MOVIE.match(tilt.name)
    first = next((s for s in template.sections if s.kind == "ZValue"), None)
    if m is None or first is None:
        return None
    when = datetime.strptime(m.group("date") + m.group("time"), "%Y%m%d%H%M%S")
    _, form = axis_from_titles(template.titles)
    tomo5 = form == "tomo5" or any("Tomography" in t for t in template.titles)
    values = {k: v for k, v in first.values.items() if k != "PriorRecordDose"}
    values.update(
        TiltAngle=m.group("angle"),
        SubFramePath=tilt.name,
        DateTime=when.strftime("%y-%b-%d  %H:%M:%S" if tomo5 else "%d-%b-%y  %H:%M:%S"),
    )
    index = int(m.group("index")) - 1
    return Section("ZValue", f"ZValue = {index}", 0, values)


def snapshot_sections(
    view: SeriesView, raw: RawMdoc | None, tilts: list[Tilt], template: RawMdoc | None
) -> tuple[RawMdoc, list[Section]] | None:
    """The header source and the sections of ``tilts`` (None: no mdoc and no template yet)."""
    if raw is not None:
        wanted = {t.section for t in tilts}
        return raw, [s for s in raw.sections if s.kind == "ZValue" and s.label in wanted]
    if template is None:
        return None
    made = [_tomo5_section(template, t) for t in tilts]
    sections = [s for s in made if s is not None]
    if len(sections) < len(made):
        return None
    return template, sorted(sections, key=lambda s: int(s.label.split("=")[1]))


def _with_phantom(sections: list[Section]) -> list[Section]:
    """One section alone is not a tilt series for the reader: add a movie-less second one."""
    s = copy.deepcopy(sections[0])
    angle = float(s.values["TiltAngle"].split()[0])
    s.values["TiltAngle"] = str(angle - 1 if angle > 0 else angle + 1)
    s.values["SubFramePath"] = PHANTOM
    s.label = "ZValue = 99999"
    return sections + [s]


def write_snapshot(
    dest: Path, ts_id: str, raw: RawMdoc, sections: list[Section], tilts: list[Tilt], *, phantom: bool = False
) -> Path:
    """Write ``dest/<tsId>.mdoc`` and a link per movie (named as listed), replacing ``dest``
    atomically; returns the mdoc."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if phantom and len(sections) == 1:
        sections = _with_phantom(sections)
    (tmp / f"{ts_id}.mdoc").write_bytes(mdoc_text(raw, sections).encode())
    for t in tilts:
        if t.path is not None:
            link = tmp / (t.name if t.section is not None else t.path.name)
            if not link.exists():
                os.symlink(os.path.abspath(t.path), link)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest / f"{ts_id}.mdoc"


def read_snapshot(mdoc: Path, import_params: dict):
    """The snapshot as ``import-movies`` would import it: ``(TiltSeries, problems)`` (``None`` and
    one-line problems when it cannot be imported yet)."""
    from tiltflow.io.mdoc import MdocError, read_tilt_series_mdoc
    from tiltflow.workflow.steps.import_movies import (
        ImportMoviesParams,
        build_series,
        check_series,
        header_or_error,
    )

    p = ImportMoviesParams.model_validate({**import_params, "files": str(mdoc.parent), "pattern": mdoc.name})
    try:
        ms = read_tilt_series_mdoc(
            mdoc,
            tomo5=p.tomo5,
            initial_dose_e_a2=p.initial_dose_e_a2,
            dose_per_tilt_e_a2=p.dose_per_tilt_e_a2,
            movie_dirs=[mdoc.parent],
        )
    except (MdocError, ValueError) as err:
        return None, [str(err)]
    ms.tilts = [t for t in ms.tilts if t.movie_name != PHANTOM]
    headers = {t.movie_path: header_or_error(t.movie_path) for t in ms.tilts if t.movie_path is not None}
    problems = check_series(ms, p, headers)
    if problems:
        return None, problems
    return build_series(ms, p, headers), []
