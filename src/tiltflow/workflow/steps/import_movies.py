"""Step ``import-movies``: tilt-series movies from a folder of ``.mdoc`` files (Scipion's
"import tilt series movies"). Reads headers only; tilts sorted by angle with acquisition order
and dose; gain recorded (its orientation is applied by motion correction)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import field_validator

from tiltflow.io.gain import GainError, check_gain_values, gain_orientations_for, read_gain
from tiltflow.io.mdoc import (
    MdocError,
    MdocTiltSeries,
    group_mdocs,
    read_frame_set_mdocs,
    read_tilt_series_mdoc,
)
from tiltflow.io.movies import MovieError, MovieHeader, read_movie_header
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import Acquisition, TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import Step, StepContext, param, register
from tiltflow.workflow.steps.checks import absolute_path
from tiltflow.workflow.steps.citations import SCIPION_TOMO, SERIALEM
from tiltflow.workflow.steps.common import (
    AcquisitionParams,
    find_files,
    override,
    report_bad_series,
    required,
)


class ImportMoviesParams(AcquisitionParams):
    files: str = param(..., "Folder holding the .mdoc files (movies next to them or in a subfolder).", cli="--files")
    pattern: str = param("*.mdoc", "Glob pattern of the mdoc files inside --files.", cli="--pattern")
    tomo5: bool = param(
        False, "The mdocs were written by Thermo Tomo5 (tilt axis = -TiltAxisAngle - 90).", cli="--tomo5"
    )
    exclusion_words: list[str] = param(
        [], "Skip mdoc files whose name contains any of these words.", cli="--exclude-words"
    )
    gain: str | None = param(None, "Gain reference (.gain, .tif, .mrc).", cli="--gain", group="references")
    dark: str | None = param(None, "Dark reference (.tif, .mrc).", cli="--dark", group="references")

    @field_validator("files", "gain", "dark")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return absolute_path(v) if v else v


def _read_series(paths: list[Path], p: ImportMoviesParams, movie_dirs: list[Path]) -> MdocTiltSeries:
    if len(paths) > 1:
        return read_frame_set_mdocs(
            paths,
            tomo5=p.tomo5,
            initial_dose_e_a2=p.initial_dose_e_a2,
            dose_per_tilt_e_a2=p.dose_per_tilt_e_a2,
            movie_dirs=movie_dirs,
        )
    return read_tilt_series_mdoc(
        paths[0],
        tomo5=p.tomo5,
        initial_dose_e_a2=p.initial_dose_e_a2,
        dose_per_tilt_e_a2=p.dose_per_tilt_e_a2,
        movie_dirs=movie_dirs,
    )


def _header(headers: Mapping[Path, MovieHeader | str], path: Path | None) -> MovieHeader:
    """The header of a movie :func:`check_series` found readable."""
    h = headers[path] if path is not None else None
    if not isinstance(h, MovieHeader):
        raise ValueError(f"{path}: no movie header (a series check_series refused)")
    return h


def check_series(ms: MdocTiltSeries, p: ImportMoviesParams, headers: Mapping[Path, MovieHeader | str]) -> list[str]:
    """Every problem of one series, one line each (``headers``: movie path -> header, or the line saying
    why it cannot be read). The watch mode checks each snapshot of a series being collected with it."""
    where = ms.paths[0] if len(ms.paths) == 1 else f"{ms.paths[0].parent} ({ms.ts_id}, {len(ms.paths)} mdocs)"
    problems = []
    if override(p.voltage_kv, ms.voltage_kv) is None:
        problems.append(f"{where}: no Voltage in the mdoc — give --voltage (kV)")
    if override(p.pixel_size_a, ms.pixel_size_a) is None:
        problems.append(f"{where}: no PixelSpacing in the mdoc — give --pixel-size (Å/px)")
    if override(p.tilt_axis_deg, ms.tilt_axis_deg) is None:
        problems.append(f"{where}: no tilt-axis angle in the mdoc — give --tilt-axis (degrees)")
    if p.dose_per_tilt_e_a2 is None and any(t.dose_e_a2 is None for t in ms.tilts):
        problems.append(
            f"{where}: no dose in the mdoc (ExposureDose, FrameDosesAndNumber, DoseRate) — give --dose (e/Å² per tilt)"
        )
    sizes: Counter = Counter()
    frames: Counter = Counter()
    for t in ms.tilts:
        if t.movie_path is None and not t.movie_name:
            problems.append(
                f"{t.source}:{t.line} [{t.section}]: no SubFramePath (the movie's file name) — add it, "
                "or import stacks with import-tilt-series"
            )
            continue
        if t.movie_path is None:
            problems.append(
                f"{t.source}:{t.line} [{t.section}]: movie '{t.movie_name}' not found next to the mdoc"
                " or in --files — copy it there or fix SubFramePath"
            )
            continue
        h = headers[t.movie_path]
        if isinstance(h, str):
            problems.append(h)
            continue
        sizes[h.size] += 1
        frames[h.n_frames] += 1
    if sizes and len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        for t in ms.tilts:
            other = headers.get(t.movie_path) if t.movie_path else None
            if isinstance(other, MovieHeader) and other.size != common:
                problems.append(
                    f"{t.movie_path}: {other.size[0]} x {other.size[1]} px while the other movies of {ms.ts_id}"
                    f" are {common[0]} x {common[1]} — remove or replace this movie"
                )
    if frames and len(frames) > 1:
        common_n = frames.most_common(1)[0][0]
        for t in ms.tilts:
            other = headers.get(t.movie_path) if t.movie_path else None
            if isinstance(other, MovieHeader) and other.n_frames != common_n:
                problems.append(
                    f"{t.movie_path}: {other.n_frames} frames while the other movies of {ms.ts_id}"
                    f" have {common_n} — remove or replace this movie"
                )
    return problems


def header_or_error(path: Path) -> MovieHeader | str:
    """The movie's header, or the line saying why it cannot be read (for :func:`check_series`)."""
    try:
        return read_movie_header(path)
    except MovieError as err:
        return str(err)


def build_series(ms: MdocTiltSeries, p: ImportMoviesParams, headers: Mapping[Path, MovieHeader | str]) -> TiltSeries:
    """The imported tilt series of ``ms`` (checked by :func:`check_series`): tilts sorted by angle,
    optics from ``p`` where given, else from the mdoc. The watch mode builds its snapshots with it."""
    acq = Acquisition(
        voltage_kv=required(p.voltage_kv, ms.voltage_kv, "voltage"),
        cs_mm=p.cs_mm,
        amplitude_contrast=p.amplitude_contrast,
        pixel_size_a=required(p.pixel_size_a, ms.pixel_size_a, "pixel size"),
        tilt_axis_deg=required(p.tilt_axis_deg, ms.tilt_axis_deg, "tilt axis"),
        magnification=override(p.magnification, ms.magnification),
        dose_per_tilt_e_a2=p.dose_per_tilt_e_a2,
        initial_dose_e_a2=p.initial_dose_e_a2,
    )
    images = []
    for t in sorted(ms.tilts, key=lambda t: t.tilt_angle_deg):
        h = _header(headers, t.movie_path)
        attrs: dict[str, Any] = {"mdoc": str(t.source), "mdoc_section": t.section}
        if t.nominal_angle_deg is not None:
            attrs["nominal_angle_deg"] = t.nominal_angle_deg
        images.append(
            TiltImage(
                tilt_angle_deg=t.tilt_angle_deg,
                acquisition_order=t.acquisition_order,
                dose_prior_e_a2=t.prior_dose_e_a2,
                dose_e_a2=t.dose_e_a2,
                dose_accumulated_e_a2=t.accumulated_dose_e_a2,
                file=str(t.movie_path),
                index=None,
                frames=h.n_frames,
                attrs=attrs,
            )
        )
    first = _header(headers, ms.tilts[0].movie_path)
    return TiltSeries(
        ts_id=ms.ts_id,
        acquisition=acq,
        images=images,
        size=first.size,
        attrs={
            "mdoc": [str(x) for x in ms.paths],
            "flavour": ms.flavour,
            "movie_format": first.format,
        },
    )


def _read_references(p: ImportMoviesParams) -> dict[str, tuple[str, tuple[int, int]]]:
    """--gain / --dark read first (before any movie): option -> (path, array shape)."""
    refs = {}
    for option, path in (("--gain", p.gain), ("--dark", p.dark)):
        if not path:
            continue
        try:
            ref = read_gain(path, option=option)
            if option == "--gain":
                check_gain_values(ref, path, option=option)
        except GainError as err:
            raise InputError(str(err)) from None
        refs[option] = (path, ref.shape)
    return refs


def _reference_fields(refs: dict, size: tuple[int, int] | None) -> dict:
    """The set's gain/dark fields (with ``attrs['gain_fits']``) as keyword arguments; a reference that
    fits the movies in no orientation is refused."""
    fields: dict = {"attrs": {}}
    for option, (path, shape) in refs.items():
        fits = gain_orientations_for(shape, size) if size is not None else []
        what = "gain" if option == "--gain" else "dark reference"
        if size is not None and not fits:
            raise InputError(
                f"{path}: {what} is {shape[1]} x {shape[0]} px, the movies are {size[0]} x {size[1]}"
                f" — no orientation fits; pass the {what} of this camera/mode to {option}"
            )
        if option == "--gain":
            fields["gain_file"] = path
            fields["attrs"].update({"gain_fits": fits} if fits else {})
        else:
            fields["dark_file"] = path
    return fields


def run_import_movies(ctx: StepContext[ImportMoviesParams]) -> dict[str, TiltSeriesSet]:
    p = ctx.params
    files_dir = Path(p.files)
    mdocs = find_files(files_dir, p.pattern, p.exclusion_words)
    refs = _read_references(p)
    groups = group_mdocs(mdocs)
    movie_dirs = [files_dir] + [d for d in sorted(files_dir.iterdir()) if d.is_dir()]
    series: list[MdocTiltSeries] = []
    problems: dict[str, list[str]] = {}
    for ts_id, paths in groups.items():
        try:
            series.append(_read_series(paths, p, movie_dirs))
        except MdocError as err:
            problems[ts_id] = [str(err)]
    movie_paths = sorted({t.movie_path for ms in series for t in ms.tilts if t.movie_path})
    with ThreadPoolExecutor(max_workers=8) as pool:
        headers = dict(zip(movie_paths, pool.map(header_or_error, movie_paths), strict=False))
    for ms in series:
        found = check_series(ms, p, headers)
        if found:
            problems[ms.ts_id] = found
    good = [ms for ms in series if ms.ts_id not in problems]
    pixel_sizes = {round(required(p.pixel_size_a, ms.pixel_size_a, "pixel size"), 4) for ms in good}
    if len(pixel_sizes) > 1:
        detail = ", ".join(f"{ms.ts_id}: {ms.pixel_size_a}" for ms in good)
        raise InputError(
            f"{files_dir}: mixed pixel sizes in one import ({detail} Å/px) — import them separately"
            " with different --pattern, or give --pixel-size"
        )
    size = next((_header(headers, ms.tilts[0].movie_path).size for ms in good), None)
    references = _reference_fields(refs, size)
    report_bad_series(ctx, problems, total=len(groups))
    items = [build_series(ms, p, headers) for ms in sorted(good, key=lambda s: s.ts_id)]
    for ms in good:
        for w in ms.warnings:
            ctx.log.warning("%s: %s", ms.ts_id, w)
            ctx.report.warn(f"{ms.ts_id}: {w}")
    result = TiltSeriesSet(kind="TiltSeriesM", items=items, **references)
    ctx.log.info("imported %s", result.summary())
    return {"TiltSeriesM": result}


register(
    Step(
        id="import-movies",
        title="Import tilt-series movies",
        params=ImportMoviesParams,
        inputs=(),
        outputs={"TiltSeriesM": "TiltSeriesM"},
        run=run_import_movies,
        scipion_class="ProtImportTsMovies",
        methods=(SERIALEM, SCIPION_TOMO),
        help="Import tilt-series movies from a folder of .mdoc files (SerialEM or Tomo5) and their movies.",
    )
)
