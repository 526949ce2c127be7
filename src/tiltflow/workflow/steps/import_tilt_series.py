"""Step ``import-tilt-series``: stacks made elsewhere (``.mrc .st .mrcs .ali``) with tilt angles
from an ``.mdoc``, a ``.rawtlt``/``.tlt`` beside the stack, or the MRC extended header (Scipion's
"import tilt series"). Acquisition order and dose come from the mdoc when there is one, else from a
RELION-style order list ``<stem>_order.csv`` (acquisition index, tilt angle), else the stack order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from tiltflow.io.mdoc import MdocError, read_tilt_series_mdoc
from tiltflow.io.mdoc_ranges import RANGES
from tiltflow.io.mrc import StackError, extended_header_tilt_angles, read_stack_header
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import Acquisition, TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import Step, StepContext, param, register
from tiltflow.workflow.steps.checks import absolute_path
from tiltflow.workflow.steps.citations import IMOD, SCIPION_TOMO, SERIALEM
from tiltflow.workflow.steps.common import (
    AcquisitionParams,
    find_files,
    override,
    report_bad_series,
    safe_ts_id,
    ts_id_from_pattern,
)

STACK_SUFFIXES = (".mrc", ".st", ".mrcs", ".ali")
NEAR_DUPLICATE_DEG = 0.05


class ImportTiltSeriesParams(AcquisitionParams):
    files: str = param(..., "Folder holding the stacks.", cli="--files")
    pattern: str = param(
        "*.mrc", "Glob pattern of the stacks; {TS} marks the tilt-series id (e.g. '{TS}.st').", cli="--pattern"
    )
    angles: Literal["auto", "mdoc", "tlt", "header"] = param(
        "auto",
        "Where tilt angles come from: mdoc, tlt (.rawtlt/.tlt beside the stack), header; "
        "auto tries them in that order.",
        cli="--angles",
    )
    exclusion_words: list[str] = param([], "Skip stacks whose name contains any of these words.", cli="--exclude-words")

    @field_validator("files")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return absolute_path(v)


def _angles_from_tlt(stack: Path) -> tuple[list[float], Path] | None:
    for suffix in (".rawtlt", ".tlt"):
        for cand in (stack.with_suffix(suffix), stack.parent / (stack.name + suffix)):
            if cand.is_file():
                values = []
                for i, line in enumerate(cand.read_text(errors="replace").splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        value = float(line.split()[0])
                    except ValueError:
                        value = math.nan
                    if not (math.isfinite(value) and abs(value) <= 90.0):
                        raise InputError(
                            f"{cand}:{i}: '{line.strip()}' is not a tilt angle in [-90, 90] degrees — correct the line"
                        )
                    values.append(value)
                return values, cand
    return None


def _find_mdoc(stack: Path) -> Path | None:
    for cand in (stack.parent / (stack.name + ".mdoc"), stack.with_suffix(".mdoc")):
        if cand.is_file():
            return cand
    return None


def _order_list(stack: Path, angles: list[float]) -> list[int] | None:
    """Acquisition order (1-based per stack section) from ``<stem>_order.csv``, matched by angle."""
    cand = stack.with_name(stack.stem + "_order.csv")
    if not cand.is_file():
        return None
    rows = []
    for i, line in enumerate(cand.read_text(errors="replace").splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            rows.append((int(float(parts[0])), float(parts[1])))
        except (ValueError, IndexError, OverflowError):
            raise InputError(f"{cand}:{i}: expected 'acquisition_index, tilt_angle'") from None
        if not math.isfinite(rows[-1][1]):
            raise InputError(f"{cand}:{i}: tilt angle '{parts[1]}' is not a number — correct the line")
    order = []
    for a in angles:
        best = min(rows, key=lambda r: abs(r[1] - a))
        if abs(best[1] - a) > 0.5:
            raise InputError(f"{cand}: no entry for tilt angle {a:g} — the order list does not match the stack")
        order.append(best[0])
    return order


Doses = tuple[float | None, float | None, float | None]  # (before, of, accumulated after) a view, e/Å²


@dataclass
class _Angles:
    """A stack's tilt angles (stack order) and where they came from; with an mdoc also the
    acquisition order, doses and microscope values."""

    angles: list[float]
    source: str  # the file (or "<stack> extended header")
    order: list[int] | None = None
    doses: list[Doses] | None = None
    meta: dict[str, float | None] = field(default_factory=dict)  # voltage, pixel, axis, mag
    warnings: list[str] = field(default_factory=list)


def _angles_from_mdoc(mdoc: Path, p: ImportTiltSeriesParams) -> _Angles:
    ms = read_tilt_series_mdoc(
        mdoc,
        initial_dose_e_a2=p.initial_dose_e_a2,
        dose_per_tilt_e_a2=p.dose_per_tilt_e_a2,
        allow_duplicate_angles=True,
    )
    # mdoc sections are stack sections in ZValue order
    by_z = sorted(ms.tilts, key=lambda t: int(t.section.split("=")[-1]) if "=" in t.section else 0)
    return _Angles(
        angles=[t.tilt_angle_deg for t in by_z],
        source=str(mdoc),
        order=[t.acquisition_order for t in by_z],
        doses=[(t.prior_dose_e_a2, t.dose_e_a2, t.accumulated_dose_e_a2) for t in by_z],
        meta={"voltage": ms.voltage_kv, "pixel": ms.pixel_size_a, "axis": ms.tilt_axis_deg, "mag": ms.magnification},
        warnings=list(ms.warnings),
    )


def _angles_from_header(stack: Path) -> _Angles:
    angles = extended_header_tilt_angles(stack)
    source = f"{stack} extended header"
    if angles is None:
        raise InputError(
            f"{stack}: no tilt angles (no mdoc, .rawtlt/.tlt, or FEI/SerialEM extended header)"
            " — put a .rawtlt beside the stack"
        )
    bad = next((i for i, a in enumerate(angles) if not (math.isfinite(a) and abs(a) <= 90.0)), None)
    if bad is not None:
        raise InputError(
            f"{source}: section {bad} has tilt angle {angles[bad]:g}, not in [-90, 90] degrees"
            " — put a .rawtlt beside the stack"
        )
    return _Angles(angles=angles, source=source)


def _find_angles(stack: Path, p: ImportTiltSeriesParams, n: int) -> _Angles:
    """The tilt angles of ``stack`` (``n`` sections) from where ``--angles`` says (auto: mdoc, tlt, header)."""
    mdoc = _find_mdoc(stack) if p.angles in ("auto", "mdoc") else None
    if p.angles == "mdoc" and mdoc is None:
        raise InputError(f"{stack}: no mdoc beside it ({stack.name}.mdoc) — use --angles tlt or header")
    found: _Angles | None = _angles_from_mdoc(mdoc, p) if mdoc is not None else None
    if found is None and p.angles in ("auto", "tlt"):
        tlt = _angles_from_tlt(stack)
        if tlt:
            found = _Angles(angles=tlt[0], source=str(tlt[1]))
        elif p.angles == "tlt":
            raise InputError(f"{stack}: no {stack.stem}.rawtlt or .tlt beside it — use --angles mdoc or header")
    if found is None:
        found = _angles_from_header(stack)
    if len(found.angles) != n:
        raise InputError(
            f"{found.source}: {len(found.angles)} tilt angles for {n} sections in {stack} — they must match"
        )
    return found


def _doses(p: ImportTiltSeriesParams, order: list[int]) -> list[Doses]:
    """Doses from ``--dose`` and ``--initial-dose`` by acquisition order (none without ``--dose``)."""
    dose = p.dose_per_tilt_e_a2
    if dose is None:
        return [(None, None, None)] * len(order)
    priors = [p.initial_dose_e_a2 + dose * (k - 1) for k in order]
    return [(prior, dose, prior + dose) for prior in priors]


def _acquisition(
    stack: Path,
    p: ImportTiltSeriesParams,
    meta: dict[str, float | None],
    header_pixel: float | None,
    warnings: list[str],
) -> Acquisition:
    """The optics: the options given, else the mdoc's (pixel size: else the header's); checked."""
    pixel = override(p.pixel_size_a, meta.get("pixel") or header_pixel)
    if pixel is None or pixel <= 0:
        raise InputError(f"{stack}: no pixel size in the header or mdoc — give --pixel-size (Å/px)")
    low, high, _ = RANGES["PixelSpacing"]
    if not low <= pixel <= high:
        raise InputError(
            f"{stack}: pixel size {pixel:g} Å/px in its header is outside {low:g} to {high:g}"
            " — give --pixel-size (Å/px)"
        )
    voltage = override(p.voltage_kv, meta.get("voltage"))
    if voltage is None:
        raise InputError(f"{stack}: no voltage known — give --voltage (kV)")
    axis = override(p.tilt_axis_deg, meta.get("axis"))
    if axis is None:
        axis = 0.0
        warnings.append("no tilt-axis angle given or in an mdoc: 0° assumed (give --tilt-axis)")
    return Acquisition(
        voltage_kv=float(voltage),
        cs_mm=p.cs_mm,
        amplitude_contrast=p.amplitude_contrast,
        pixel_size_a=float(pixel),
        tilt_axis_deg=float(axis),
        magnification=override(p.magnification, meta.get("mag")),
        dose_per_tilt_e_a2=p.dose_per_tilt_e_a2,
        initial_dose_e_a2=p.initial_dose_e_a2,
    )


def _import_one(stack: Path, p: ImportTiltSeriesParams, ts_id: str) -> tuple[TiltSeries, list[str]]:
    """One stack as a tilt series, and the warnings about it (also kept in its ``attrs``)."""
    header = read_stack_header(stack)
    n = header.n_sections
    found = _find_angles(stack, p, n)
    warnings = found.warnings
    order = found.order if found.order is not None else _order_list(stack, found.angles) or list(range(1, n + 1))
    doses = found.doses if found.doses is not None else _doses(p, order)
    acq = _acquisition(stack, p, found.meta, header.pixel_size_a, warnings)
    images = [
        TiltImage(
            tilt_angle_deg=float(a),
            acquisition_order=int(o),
            dose_prior_e_a2=d[0],
            dose_e_a2=d[1],
            dose_accumulated_e_a2=d[2],
            file=str(stack),
            index=i,
        )
        for i, (a, o, d) in enumerate(zip(found.angles, order, doses, strict=False))
    ]
    images.sort(key=lambda im: (im.tilt_angle_deg, im.index))
    for a, b in zip(images, images[1:], strict=False):
        if abs(a.tilt_angle_deg - b.tilt_angle_deg) < NEAR_DUPLICATE_DEG:
            warnings.append(f"sections {a.index} and {b.index} have the same tilt angle {a.tilt_angle_deg:g}°")
    ts = TiltSeries(
        ts_id=ts_id,
        acquisition=acq,
        images=images,
        size=header.size,
        attrs={"stack": str(stack), "angles_from": found.source, "warnings": warnings},
    )
    return ts, warnings


def run_import_tilt_series(ctx: StepContext[ImportTiltSeriesParams]) -> dict[str, TiltSeriesSet]:
    p = ctx.params
    stacks = [s for s in find_files(Path(p.files), p.pattern, p.exclusion_words) if s.suffix.lower() in STACK_SUFFIXES]
    if not stacks:
        raise InputError(f"{p.files}: --pattern '{p.pattern}' matches no stack ({', '.join(STACK_SUFFIXES)})")
    items: list[TiltSeries] = []
    problems: dict[str, list[str]] = {}
    for stack in stacks:
        ts_id = safe_ts_id(ts_id_from_pattern(stack, p.pattern) or stack.name.split(".")[0])
        try:
            ts, warnings = _import_one(stack, p, ts_id)
        except (InputError, StackError, MdocError) as err:
            problems[ts_id] = getattr(err, "problems", [str(err)])
            continue
        for w in warnings:
            ctx.log.warning("%s: %s", ts_id, w)
            ctx.report.warn(f"{ts_id}: {w}")
        items.append(ts)
    report_bad_series(ctx, problems, total=len(stacks))
    sizes = {round(ts.acquisition.pixel_size_a, 4) for ts in items}
    if len(sizes) > 1:
        raise InputError(
            f"{p.files}: mixed pixel sizes {sorted(sizes)} Å/px — import them separately or give --pixel-size"
        )
    ids = [ts.ts_id for ts in items]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise InputError(
            f"{p.files}: several stacks give the tsId {sorted(dup)} — use a {{TS}} pattern that tells them apart"
        )
    result = TiltSeriesSet(kind="TiltSeries", items=sorted(items, key=lambda t: t.ts_id))
    return {"TiltSeries": result}


register(
    Step(
        id="import-tilt-series",
        title="Import tilt series",
        params=ImportTiltSeriesParams,
        inputs=(),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_import_tilt_series,
        scipion_class="ProtImportTs",
        methods=(SERIALEM, IMOD, SCIPION_TOMO),
        help="Import stacks made elsewhere (.mrc/.st/.mrcs/.ali) with angles from an mdoc, .rawtlt/.tlt or the header.",
    )
)
