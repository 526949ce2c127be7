"""Plausible ranges of the mdoc values tiltflow uses (also the bounds of the matching options).

A value outside its range is refused with the file, line, section and key: ``PixelSpacing =
1e300`` or ``Voltage = -300`` is a corrupt or hand-edited mdoc, never something to store.
``0`` means "unknown" for the keys in ``UNKNOWN_WHEN_ZERO`` (SerialEM writes 0 when it has no value).
"""

from __future__ import annotations

from collections.abc import Iterable

from tiltflow.io.mdoc_resolve import RawMdoc, Section, error, number

# key: (lowest, highest, unit); bounds included
RANGES: dict[str, tuple[float, float, str]] = {
    "Voltage": (60.0, 400.0, "kV"),
    "PixelSpacing": (0.1, 100.0, "Å/px"),
    "ExposureDose": (0.0, 1000.0, "e/Å²"),
    "PriorRecordDose": (0.0, 1e6, "e/Å²"),
    "DoseRate": (0.0, 1e6, "e/px/s"),
    "ExposureTime": (0.0, 1e5, "s"),
    "Binning": (0.25, 64.0, ""),
    "Magnification": (1.0, 1e7, "x"),
}
UNKNOWN_WHEN_ZERO = frozenset({"Voltage", "PixelSpacing", "Magnification"})
OPTION_FOR_KEY = {
    "Voltage": "--voltage",
    "PixelSpacing": "--pixel-size",
    "ExposureDose": "--dose",
    "Magnification": "--magnification",
}


def check_ranges(raw: RawMdoc, sections: Iterable[Section]) -> None:
    """Raise MdocError for the first value of the header or ``sections`` outside ``RANGES``."""
    for s in [raw.header, *sections]:
        for key, (low, high, unit) in RANGES.items():
            value = number(raw, s, key, header=False)
            if value is None or (value == 0 and key in UNKNOWN_WHEN_ZERO):
                continue
            if not low <= value <= high:
                option = OPTION_FOR_KEY.get(key)
                fix = f"correct the line, or delete it and give {option}" if option else "correct or delete the line"
                raise error(
                    raw.path,
                    f"{key} = {s.values[key]} is outside the plausible {low:g} to {high:g} {unit}",
                    fix,
                    line=s.lines[key],
                    where=s.label if s.kind else "",
                )


def known(value: float | None, key: str) -> float | None:
    """``value``, or None where 0 means unknown for ``key``."""
    return None if value == 0 and key in UNKNOWN_WHEN_ZERO else value
