"""Helpers shared by steps: acquisition values with user overrides, bad-series handling."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tiltflow.io.mdoc_ranges import RANGES
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.steps.base import StepContext, param
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.steps.checks_data import check_window_fits  # noqa: F401 (imported from here)

_KV, _PIX, _DOSE = RANGES["Voltage"], RANGES["PixelSpacing"], RANGES["ExposureDose"]


class AcquisitionParams(CheckedParams):
    """The microscope values both imports take; empty means "read it from the mdoc / header".
    Bounds are the plausible ranges of the same mdoc values (``io.mdoc_ranges``)."""

    voltage_kv: float | None = param(
        None,
        "Acceleration voltage, kV (empty: from the mdoc).",
        cli="--voltage",
        ge=_KV[0],
        le=_KV[1],
        group="acquisition",
    )
    cs_mm: float = param(2.7, "Spherical aberration, mm.", cli="--cs", group="acquisition", ge=0, le=20)
    amplitude_contrast: float = param(
        0.1, "Amplitude contrast (0-1).", cli="--amp-contrast", ge=0, lt=1, group="acquisition"
    )
    magnification: float | None = param(
        None, "Nominal magnification (empty: from the mdoc).", cli="--magnification", gt=0, group="acquisition"
    )
    pixel_size_a: float | None = param(
        None,
        "Pixel size, Å/px (empty: from the mdoc or the stack header).",
        cli="--pixel-size",
        group="acquisition",
        ge=_PIX[0],
        le=_PIX[1],
    )
    tilt_axis_deg: float | None = param(
        None,
        "Tilt-axis angle, degrees from +y CCW (empty: from the mdoc).",
        cli="--tilt-axis",
        group="acquisition",
        ge=-360,
        le=360,
    )
    dose_per_tilt_e_a2: float | None = param(
        None, "Dose per tilt image, e/Å² (empty: from the mdoc).", cli="--dose", gt=0, le=_DOSE[1], group="acquisition"
    )
    initial_dose_e_a2: float = param(
        0.0, "Dose received before the first tilt, e/Å².", cli="--initial-dose", ge=0, le=1e4, group="acquisition"
    )


def find_files(files_dir: Path, pattern: str, exclusion_words: Iterable[str] = ()) -> list[Path]:
    """Files under ``files_dir`` matching the glob ``pattern`` (``{TS}`` reads as ``*``), sorted."""
    if not files_dir.is_dir():
        raise InputError(f"{files_dir}: folder not found — check --files")
    glob = pattern.replace("{TS}", "*")
    words = [w for w in exclusion_words if w]
    found = sorted(p for p in files_dir.glob(glob) if p.is_file() and not any(w in p.name for w in words))
    if not found:
        raise InputError(
            f"{files_dir}: no file matches --pattern '{pattern}'"
            + (f" (after excluding {words})" if words else "")
            + " — check the pattern"
        )
    return found


def ts_id_from_pattern(path: Path, pattern: str) -> str | None:
    """The ``{TS}`` part of a file name matched by ``pattern``, or None when the pattern has no {TS}."""
    if "{TS}" not in pattern:
        return None
    name_pattern = Path(pattern).name
    regex = (
        "^" + re.escape(name_pattern).replace(r"\{TS\}", "(?P<ts>.+?)").replace(r"\*", ".*").replace(r"\?", ".") + "$"
    )
    m = re.match(regex, path.name)
    return m.group("ts") if m else None


def safe_ts_id(name: str) -> str:
    """Only [A-Za-z0-9_.-] in tsIds (others become '_')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._") or "TS"


def report_bad_series(ctx: StepContext[Any], problems: dict[str, list[str]], total: int) -> None:
    """Fail with every problem listed, or (``--skip-bad``) log and skip the bad series."""
    if not problems:
        return
    lines = [line for lines in problems.values() for line in lines]
    if not ctx.skip_bad or len(problems) >= total:
        hint = "" if ctx.skip_bad else " (use --skip-bad to import the other series)"
        raise InputError(lines + ([f"{len(problems)} of {total} series have problems{hint}"] if total > 1 else []))
    for line in lines:
        ctx.log.warning("skipped: %s", line)
    ctx.report.warn_all(f"skipped: {line}" for line in lines)


def override(user: float | None, from_file: float | None) -> float | None:
    """A user value always wins over the file's."""
    return user if user is not None else from_file


def required(user: float | None, from_file: float | None, what: str) -> float:
    """:func:`override` of a value checked to be there (a missing one was reported before: a bug)."""
    value = override(user, from_file)
    if value is None:
        raise ValueError(f"no {what}: neither given nor in the file")
    return float(value)
