"""Read Scipion's exported workflow JSON (a list of protocols) into a tiltflow workflow.

Scipion writes each protocol with ``object.className``, ``object.id`` (a string), form parameters
(enums as integer indices) and pointers ``"<id>.<outputName>"``. Templates may carry description
lines before the JSON array and ``~Title|default|type|alias~`` / ``%(ENV)s`` fields; those are
expanded before this module sees the list. Protocols we do not implement are reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tiltflow.workflow.errors import InputError


@dataclass
class ProtocolMap:
    step: str
    params: dict[str, str]                      # Scipion name -> our parameter name
    inputs: dict[str, str] = field(default_factory=dict)   # Scipion pointer param -> our input name
    convert: Callable[[dict[str, Any], dict[str, Any]], None] | None = None   # (scipion, ours) fix-ups


def _import_movies_fix(src: dict[str, Any], out: dict[str, Any]) -> None:
    words = src.get("exclusionWords")
    out["exclusion_words"] = words.split() if isinstance(words, str) and words.strip() else []
    if not src.get("gainFile"):
        out.pop("gain", None)
    if src.get("dosePerFrame") is not None:
        # Scipion's "dose per tilt" field in the tilt-series-movie import
        out["dose_per_tilt_e_a2"] = src["dosePerFrame"]


def _warp_fix(src: dict[str, Any], out: dict[str, Any]) -> None:
    out["fit_range_a"] = [src.get("m_range_min", 500.0), src.get("m_range_max", 10.0)]
    out["ctf_range_a"] = [src.get("range_min", 30.0), src.get("range_max", 8.0)]
    out["defocus_range_um"] = [src.get("defocus_min", 0.5), src.get("defocus_max", 8.0)]
    grid = [src.get(k) for k in ("x", "y", "z")]
    if all(isinstance(v, int) and v > 0 for v in grid):
        out["motion_grid"] = grid
    cgrid = [src.get(k) for k in ("c_x", "c_y", "c_z")]
    if all(isinstance(v, int) and v > 0 for v in cgrid):
        out["defocus_grid"] = cgrid
    out["gain_transpose"] = ["none", "transpose"][int(src.get("gainSwap") or 0)]
    out["gain_flip"] = ["none", "x", "y"][int(src.get("gainFlip") or 0)]
    out["binning"] = max(1, int(round(float(src.get("binFactor") or 1))))    # the tutorial's 1.0 = unbinned


PROTOCOLS: dict[str, ProtocolMap] = {
    "ProtImportTsMovies": ProtocolMap(
        step="import-movies",
        params={"filesPath": "files", "filesPattern": "pattern", "isTomo5": "tomo5", "voltage": "voltage_kv",
                "sphericalAberration": "cs_mm", "amplitudeContrast": "amplitude_contrast",
                "magnification": "magnification", "samplingRate": "pixel_size_a", "tiltAxisAngle": "tilt_axis_deg",
                "doseInitial": "initial_dose_e_a2", "gainFile": "gain", "darkFile": "dark"},
        convert=_import_movies_fix),
    "ProtWarpTSMotionCorr": ProtocolMap(
        step="motion-ctf",
        params={"bfactor": "bfactor_a2", "average_halves": "even_odd", "eer_ngroups": "eer_groups",
                "estimateCTF": "estimate_ctf", "window": "window_px", "fit_phase": "fit_phase",
                "use_sum": "use_movie_average"},
        inputs={"inputTSMovies": "input"}, convert=_warp_fix),
    "ProtImodXraysEraser": ProtocolMap(
        step="xray-erase",
        params={"peakCriterion": "peak_criterion", "diffCriterion": "diff_criterion",
                "maximumRadius": "max_radius_px", "bigDiffCriterion": "big_diff_criterion",
                "processOddEven": "odd_even"},
        inputs={"inputSetOfTiltSeries": "input"}),
    "ProtImodTomoReconstruction": ProtocolMap(
        step="reconstruct",
        params={"tomoThickness": "thickness_px", "radialFirstParameter": "radial_cutoff",
                "radialSecondParameter": "radial_falloff", "processOddEven": "even_odd"},
        inputs={"inputSetOfTiltSeries": "input"},
        convert=lambda src, out: out.update(method="wbp", binning=1,
                                            fake_sirt_iterations=src.get("fakeInteractionsSIRT") or None)),
}


def register_protocol(class_name: str, mapping: ProtocolMap) -> None:
    """Steps add their Scipion mapping here when they land."""
    PROTOCOLS[class_name] = mapping


def workflow_from_scipion(protocols: list[dict[str, Any]], origin: str):
    from tiltflow.workflow.steps.base import all_steps
    from tiltflow.workflow.workflow_file import Workflow, WorkflowStep

    known = all_steps()
    steps, unmapped, ids = [], [], set()
    for proto in protocols:
        cls = proto.get("object.className")
        pid = str(proto.get("object.id"))
        mapping = PROTOCOLS.get(cls or "")
        if mapping is None or mapping.step not in known:
            unmapped.append(f"{cls} (id {pid})")
            continue
        params: dict[str, Any] = {}
        for s_name, our in mapping.params.items():
            if proto.get(s_name) is not None:
                params[our] = proto[s_name]
        if mapping.convert:
            mapping.convert(proto, params)
        inputs = {}
        for s_name, our in mapping.inputs.items():
            ref = proto.get(s_name)
            if ref:
                head, _, out = str(ref).partition(".")
                inputs[our] = f"{head}.{out}" if out else head
        missing = [v.split(".")[0] for v in inputs.values() if v.split(".")[0] not in ids]
        if missing:
            unmapped.append(f"{cls} (id {pid}): its input protocol {missing[0]} is not mapped")
            continue
        steps.append(WorkflowStep(id=pid, step=mapping.step, params=params, inputs=inputs))
        ids.add(pid)
    if not steps:
        raise InputError(f"{origin}: no protocol of this Scipion workflow can be run by tiltflow"
                         f" (cannot map: {', '.join(unmapped)})")
    wf = Workflow(steps=steps, name="scipion")
    wf.unmapped = unmapped  # type: ignore[attr-defined]
    return wf


def parse_scipion_template(text: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A Scipion ``.json.template``: drop description lines, fill ``~...|default|...~`` with defaults and
    ``%(NAME)s`` from ``env``."""
    import json
    import re

    start = text.find("[")
    if start < 0:
        raise InputError("not a Scipion workflow: no JSON array")
    body = text[start:]

    def default(m: re.Match) -> str:
        parts = m.group(1).split("|")
        return parts[1] if len(parts) > 1 else ""

    body = re.sub(r"~([^~]*)~", default, body)
    env = env or {}
    body = re.sub(r"%\((\w+)\)s", lambda m: env.get(m.group(1), m.group(0)), body)
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise InputError(f"Scipion workflow: invalid JSON at line {err.lineno} ({err.msg})") from None
