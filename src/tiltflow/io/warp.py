"""Warp / WarpTools tilt-series metadata XML (``<TiltSeries>``), UTF-8 (with BOM) or UTF-16.

Per-tilt values are newline-separated texts of child elements, one value per tilt in the order
of the tilt-series stack (ascending or descending): ``Angles`` (deg), ``Dose`` (e/Å²
accumulated before the tilt), ``UseTilt``, ``AxisAngle`` (tilt-axis angle, deg; RELION's
``rlnTomoZRot`` in Warp 2 exports), ``AxisOffsetX/Y`` (Å), ``MoviePath``, ``FOVFraction``.
``CTF`` and ``OptionsCTF`` hold ``<Param Name= Value=>`` lists. Everything else (grids, power
spectra) is kept as XML elements and written back unchanged, in the original order.
Per-tilt grids (``GridCTF``, ``GridCTFDefocusDelta``, ``GridCTFDefocusAngle``: defocus and
astigmatism in µm, angle in degrees) are ``Width=1 Height=1 Depth=<tilts>`` grids of ``<Node>``s;
:func:`grid_element` / :func:`grid_values` make and read them. A ``.tomostar`` (the tilt-series
list Warp loads, columns ``wrpMovieName wrpAngleTilt wrpAxisAngle wrpAxisOffsetX wrpAxisOffsetY
wrpDose``) is written with :func:`write_tomostar`. A per-movie ``<Movie>`` XML (a frame series'
metadata: ``CTF``, ``GridCTF*``, ``GridMovementX/Y`` in Å per frame, ...) is a ``WarpTiltSeries``
with ``root="Movie"`` and no per-tilt lists. :func:`ctf_param_values` gives the whole ``<CTF>``
parameter list that WarpTools writes; :data:`DEFAULT_GRIDS` the neutral grids it carries.
"""

from __future__ import annotations

import copy
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_GRIDS",
    "PER_TILT",
    "WarpFormatError",
    "WarpTiltSeries",
    "ctf_param_values",
    "grid_element",
    "grid_values",
    "read_warp_xml",
    "volume_warp_element",
    "write_tomostar",
    "write_warp_xml",
]

# element -> value type of its per-tilt lines
PER_TILT = {
    "Angles": float,
    "Dose": float,
    "UseTilt": bool,
    "AxisAngle": float,
    "AxisOffsetX": float,
    "AxisOffsetY": float,
    "MoviePath": str,
    "FOVFraction": float,
}
_PARAMS = ("CTF", "OptionsCTF")


class WarpFormatError(ValueError):
    """A malformed Warp XML; the message names the file and the element or line."""


@dataclass
class WarpTiltSeries:
    """A Warp tilt-series XML; per-tilt lists keyed by element name (see ``PER_TILT``)."""

    attributes: dict[str, str]  # <TiltSeries ...> attributes as written
    per_tilt: dict[str, list]  # e.g. per_tilt['Angles'] -> [float, ...]
    params: dict[str, dict[str, str]] = field(default_factory=dict)  # 'CTF' -> {Name: Value}
    other: list[ET.Element] = field(default_factory=list)  # unknown elements (may repeat), verbatim
    order: list[str] = field(default_factory=list)  # child tags in file order (with repeats)
    encoding: str = "utf-8-sig"  # 'utf-8-sig' (Warp) or 'utf-16' (older Warp)
    newline: str = "\n"  # between elements: '\r\n' in Windows-written files
    root: str = "TiltSeries"  # 'Movie' for a frame series' XML

    @property
    def n_tilts(self) -> int:
        return len(self.per_tilt.get("Angles", []))

    def param(self, group: str, name: str) -> str | None:
        """A ``<Param>`` value, e.g. ``param('CTF', 'PixelSize')``."""
        return self.params.get(group, {}).get(name)


def _problem(strict: bool, message: str) -> None:
    if strict:
        raise WarpFormatError(message)
    warnings.warn(message, stacklevel=3)


def _parse_value(kind: type, text: str, where: str) -> object:
    if kind is bool:
        if text not in ("True", "False"):
            raise WarpFormatError(f"{where}: expected True/False, got {text!r}")
        return text == "True"
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise WarpFormatError(f"{where}: not a number: {text!r}") from None
    return text


def _detect_encoding(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"


def read_warp_xml(path: str | Path, *, strict: bool = True) -> WarpTiltSeries:
    """Read a Warp tilt-series XML; per-tilt lists of unequal length raise (``strict``) or warn."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        line, col = err.position
        raise WarpFormatError(f"{path}:{line}:{col}: not well-formed XML ({err.msg})") from None
    if root.tag != "TiltSeries":
        raise WarpFormatError(f"{path}: root element is <{root.tag}>, expected <TiltSeries>")
    enc = _detect_encoding(raw)
    newline = "\r\n" if "\r\n" in raw.decode(enc, errors="replace") else "\n"
    ts = WarpTiltSeries(dict(root.attrib), {}, encoding=enc, newline=newline)
    for child in root:
        known = child.tag in PER_TILT or child.tag in _PARAMS
        if known and child.tag in ts.order:
            _problem(strict, f"{path}: <{child.tag}> appears twice; keeping the first")
            continue
        ts.order.append(child.tag)
        if child.tag in PER_TILT:
            text = (child.text or "").strip()
            where = f"{path}: <{child.tag}>"
            ts.per_tilt[child.tag] = (
                [_parse_value(PER_TILT[child.tag], v.strip(), where) for v in text.split("\n")] if text else []
            )
        elif child.tag in _PARAMS:
            ts.params[child.tag] = {p.get("Name", ""): p.get("Value", "") for p in child}
        else:
            ts.other.append(child)
    if "Angles" not in ts.per_tilt:
        raise WarpFormatError(f"{path}: no <Angles> element; not a Warp tilt-series XML")
    n = ts.n_tilts
    for tag, values in ts.per_tilt.items():
        if len(values) != n:
            _problem(strict, f"{path}: <{tag}> has {len(values)} values, <Angles> has {n}")
    return ts


def _with_newlines(el: ET.Element, nl: str) -> ET.Element:
    """A copy of ``el`` whose whitespace-only texts/tails use ``nl`` (the parser made them \\n)."""
    if nl == "\n":
        return copy.copy(el)
    el = copy.deepcopy(el)
    for sub in el.iter():
        if sub.text and not sub.text.strip():
            sub.text = sub.text.replace("\n", nl)
        if sub.tail and not sub.tail.strip():
            sub.tail = sub.tail.replace("\n", nl)
    return el


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def write_warp_xml(path: str | Path, ts: WarpTiltSeries, *, encoding: str | None = None) -> None:
    """Write the XML (``encoding`` defaults to the one read: ``'utf-8-sig'`` or ``'utf-16'``)."""
    n = ts.n_tilts
    bad = {k: len(v) for k, v in ts.per_tilt.items() if len(v) != n}
    if bad:
        raise ValueError(f"write_warp_xml: per-tilt lists {bad} differ from {n} Angles")
    nl = ts.newline
    root = ET.Element(ts.root, ts.attributes)
    tags = ts.order + [t for t in (*ts.per_tilt, *ts.params) if t not in ts.order]
    others = iter(ts.other)
    for tag in tags:
        if tag in ts.per_tilt:
            el = ET.SubElement(root, tag)
            el.text = "\n".join(_format(v) for v in ts.per_tilt[tag])
        elif tag in ts.params:
            el = ET.SubElement(root, tag)
            for name, value in ts.params[tag].items():
                ET.SubElement(el, "Param", {"Name": name, "Value": value})
            el.text, last = nl + "\t\t", None
            for last in el:
                last.tail = nl + "\t\t"
            if last is not None:
                last.tail = nl + "\t"
        else:
            other = next(others, None)
            if other is None or other.tag != tag:
                raise ValueError(f"write_warp_xml: order lists <{tag}> but ts.other does not match")
            root.append(_with_newlines(other, nl))  # a copy: the tail is set below
    root.text = nl + "\t"
    for i, el in enumerate(root):
        el.tail = nl if i == len(root) - 1 else nl + "\t"
    enc = encoding or ts.encoding
    label = "utf-16" if enc.startswith("utf-16") else "utf-8"
    text = f'<?xml version="1.0" encoding="{label}"?>{nl}' + ET.tostring(root, encoding="unicode")
    Path(path).write_bytes(text.encode(enc))


def grid_element(tag: str, values: list[float], *, newline: str = "\n") -> ET.Element:
    """A grid ``<tag Width="1" Height="1" Depth="n">`` with one ``<Node>`` per value (per tilt, or per
    frame for a movie's ``GridMovementX/Y``), as WarpTools' ``CubicGrid`` writes it."""
    depth = len(values)
    el = ET.Element(
        tag, {"Width": "1", "Height": "1", "Depth": str(depth), "MarginX": "0", "MarginY": "0", "MarginZ": "0"}
    )
    for z, v in enumerate(values):
        ET.SubElement(el, "Node", {"X": "0", "Y": "0", "Z": str(z), "Value": _format(float(v))})
    return _indent_nodes(el, newline)


def volume_warp_element(tag: str, *, newline: str = "\n") -> ET.Element:
    """A neutral ``GridVolumeWarpX/Y/Z`` (WarpTools' 1x1x1, one time point, value 0)."""
    el = ET.Element(tag, {"Width": "1", "Height": "1", "Depth": "1", "Duration": "1"})
    ET.SubElement(el, "Node", {"X": "0", "Y": "0", "Z": "0", "W": "0", "Value": "0"})
    return _indent_nodes(el, newline)


def _indent_nodes(el: ET.Element, newline: str) -> ET.Element:
    nodes = list(el)
    for i, node in enumerate(nodes):
        node.tail = newline + ("\t\t" if i < len(nodes) - 1 else "\t")
    el.text = newline + "\t\t" if nodes else None
    return el


# the grids WarpTools writes before any refinement: name -> the value of its single node
DEFAULT_GRIDS = {
    "GridAngleX": 0.0,
    "GridAngleY": 0.0,
    "GridAngleZ": 0.0,
    "GridDoseBfacs": 0.0,
    "GridDoseBfacsDelta": 0.0,
    "GridDoseBfacsAngle": 0.0,
    "GridDoseWeights": 1.0,
    "GridLocationBfacs": 0.0,
    "GridLocationWeights": 1.0,
}


def ctf_param_values(
    *,
    pixel_size_a: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude: float,
    defocus_um: float = 0.0,
    defocus_delta_um: float = 0.0,
    defocus_angle_deg: float = 0.0,
    phase_shift_pi: float = 0.0,
) -> dict[str, str]:
    """Every ``<Param>`` of a WarpTools ``<CTF>``, in its order (Cc 2.7 mm, no beam tilt, no Zernike
    terms, as in real files). Defocus is the mean (µm), ``DefocusDelta`` = U - V (µm), phase in pi."""
    g = "{:.7g}".format
    return {
        "PixelSize": g(pixel_size_a),
        "ZernikeCoeffsOdd": "",
        "BeamTilt2": "1,0,1",
        "BeamTilt": "0,0",
        "PhaseShift": g(phase_shift_pi),
        "Scale": "1.0",
        "BfactorAngle": "0",
        "BfactorDelta": "0",
        "Bfactor": "0",
        "ZernikeCoeffsEven": "",
        "Amplitude": g(amplitude),
        "DefocusDelta": g(defocus_delta_um),
        "Defocus": g(defocus_um),
        "Voltage": g(voltage_kv),
        "Cc": "2.7",
        "Cs": g(cs_mm),
        "Distortion": "1, 0, 0, 1",
        "PixelSizeAngle": "0",
        "PixelSizeDeltaPercent": "0",
        "DefocusAngle": g(defocus_angle_deg),
        "Thickness": "0",
    }


def grid_values(el: ET.Element) -> list[float]:
    """The values of a per-tilt grid (``Width = Height = 1``) in ``Z`` order."""
    if el.get("Width", "1") != "1" or el.get("Height", "1") != "1":
        raise WarpFormatError(
            f"<{el.tag}> is a {el.get('Width')}x{el.get('Height')} spatial grid, not one value per tilt"
        )
    nodes = sorted(el.iter("Node"), key=lambda n: int(n.get("Z", "0")))
    try:
        return [float(n.get("Value", "")) for n in nodes]
    except ValueError:
        raise WarpFormatError(f"<{el.tag}>: a <Node> has no numeric Value") from None


def write_tomostar(path: str | Path, table) -> None:
    """Write a Warp ``.tomostar`` (one ``data_`` loop; ``table`` is a DataFrame of wrp columns)."""
    import starfile

    starfile.write({"": table}, path, float_format="%.6f", sep=" ")
    text = Path(path).read_text()
    Path(path).write_text(re.sub(r"^# Created by the starfile.*\n", "", text))
