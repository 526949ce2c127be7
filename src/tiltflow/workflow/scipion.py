"""Read Scipion's exported workflow JSON (a list of protocols) into a tiltflow workflow.

Scipion writes each protocol with ``object.className``, ``object.id`` (a string), form parameters
(enums as integer indices) and pointers ``"<id>.<outputName>"``. Templates may carry description
lines before the JSON array and ``~Title|default|type|alias~`` / ``%(ENV)s`` fields; those are
expanded before this module sees the list. Protocols we do not implement are reported by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tiltflow.workflow.errors import InputError


@dataclass
class ProtocolMap:
    """How one Scipion protocol becomes tiltflow steps.

    ``step=None`` folds the protocol into whatever consumes its output (IMOD's preprocessing, coarse
    prealignment and fiducial-model protocols are stages of our one ``align`` step): pointers to it
    resolve to its input, and its mapped ``params`` travel downstream to the next step that accepts them.
    ``then`` adds a second step fed by the first one's ``TiltSeries`` (AreTomo aligns *and*
    reconstructs); ``then_outputs`` are the Scipion output names that the second step provides.
    """

    step: str | None
    params: dict[str, str]                      # Scipion name -> our parameter name
    inputs: dict[str, str] = field(default_factory=dict)   # Scipion pointer param -> our input name
    convert: Callable[[dict[str, Any], dict[str, Any]], None] | None = None   # (scipion, ours) fix-ups
    then: ProtocolMap | None = None
    then_outputs: tuple[str, ...] = ()


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
    out["binning"] = max(1, round(float(src.get("binFactor") or 1)))    # the tutorial's 1.0 = unbinned


def _imod_reconstruction_fix(src: dict[str, Any], out: dict[str, Any]) -> None:
    out["method"] = "wbp"
    out.setdefault("binning", int(out.get("_binning", 1)))   # Scipion's stack may have been binned upstream
    out["fake_sirt_iterations"] = src.get("fakeInteractionsSIRT") or None


def _imod_fiducial_alignment_fix(src: dict[str, Any], out: dict[str, Any]) -> None:
    out.setdefault("method", "fiducial")
    if src.get("magnificationSolutionType") is not None:      # 0 = fixed at 1.0
        out["solve_magnification"] = int(src["magnificationSolutionType"]) > 0
    if src.get("tiltAngleSolutionType") is not None:          # 0 = fixed tilt angles
        out["solve_tilt_angles"] = int(src["tiltAngleSolutionType"]) > 0


def _aretomo_align_fix(src: dict[str, Any], out: dict[str, Any]) -> None:
    out["method"] = "patch"
    out["binning"] = max(1, int(src.get("binFactor") or 1)) * int(out.get("_binning", 1))
    out["refine_tilt_axis"] = int(src.get("refineTiltAxis") or 0) > 0
    out["refine_tilt_offset"] = int(src.get("refineTiltAngles") or 0) == 2     # "measure and correct"
    pixel = out.get("_pixel_size_a")
    if src.get("alignZ") and pixel:                                           # unbinned voxels -> nm
        out["align_z_nm"] = float(src["alignZ"]) * pixel / 10.0


def _aretomo_reconstruct_fix(src: dict[str, Any], out: dict[str, Any]) -> None:
    binning = max(1, int(src.get("binFactor") or 1))
    out["binning"] = binning * int(out.get("_binning", 1))
    out["method"] = "sirt" if int(src.get("reconMethod") or 0) == 0 else "wbp"   # AreTomo: 0 SART, 1 WBP
    if out["method"] == "sirt" and src.get("SARTiter"):
        out["sirt_iterations"] = int(src["SARTiter"])
    if src.get("tomoThickness"):
        out["thickness_px"] = max(1, round(int(src["tomoThickness"]) / binning))   # unbinned -> binned voxels


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
        convert=_imod_reconstruction_fix),
    # IMOD's fiducial route is five protocols in Scipion and one `align` step here: the preprocessing
    # (binning), the coarse prealignment and the fiducial model fold into the fiducial alignment.
    "ProtImodTsNormalization": ProtocolMap(
        step=None, params={"binning": "binning"}, inputs={"inputSetOfTiltSeries": "input"}),
    # IMOD's ctfphaseflip on the aligned stack: our reconstruction flips phases strip by strip itself
    "ProtImodCtfCorrection": ProtocolMap(
        step=None, params={"defocusTol": "ctf_defocus_tol_nm"},
        inputs={"inputSetOfTiltSeries": "input", "inputSetOfCtfTomoSeries": "ctf"},
        convert=lambda src, out: out.update(ctf_correct="phaseflip")),
    "ProtImodXcorrPrealignment": ProtocolMap(step=None, params={}, inputs={"inputSetOfTiltSeries": "input"}),
    "ProtImodFiducialModel": ProtocolMap(
        step=None, params={"fiducialDiameter": "bead_diameter_nm"}, inputs={"inputSetOfTiltSeries": "input"},
        convert=lambda src, out: out.update(method="patch" if int(src.get("typeOfModel") or 0) == 1 else "fiducial")),
    "ProtImodFiducialAlignment": ProtocolMap(
        step="align", params={}, inputs={"inputSetOfLandmarkModels": "input", "inputSetOfTiltSeries": "input"},
        convert=_imod_fiducial_alignment_fix),
    "ProtAreTomoAlignRecon": ProtocolMap(
        step="align", params={}, inputs={"inputSetOfTiltSeries": "input"}, convert=_aretomo_align_fix,
        then=ProtocolMap(step="reconstruct", params={"doEvenOdd": "even_odd"}, convert=_aretomo_reconstruct_fix),
        then_outputs=("Tomograms",)),
}


def register_protocol(class_name: str, mapping: ProtocolMap) -> None:
    """Steps add their Scipion mapping here when they land."""
    PROTOCOLS[class_name] = mapping


def _pointer_heads(proto: dict[str, Any], mapping: ProtocolMap | None) -> list[str]:
    names = mapping.inputs if mapping else [k for k in proto if k.startswith("input")]
    return [str(proto[k]).partition(".")[0] for k in names if isinstance(proto.get(k), str) and proto[k]]


def _in_dependency_order(protocols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scipion lists protocols in creation order, which is not always the order they depend on."""
    by_id = {str(p.get("object.id")): p for p in protocols}
    placed: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(pid: str, stack: tuple[str, ...]) -> None:
        if pid in seen or pid not in by_id or pid in stack:
            return
        proto = by_id[pid]
        for head in _pointer_heads(proto, PROTOCOLS.get(proto.get("object.className") or "")):
            visit(head, stack + (pid,))
        seen.add(pid)
        placed.append(proto)

    for proto in protocols:
        visit(str(proto.get("object.id")), ())
    return placed


def _step_fields(step: str) -> set[str]:
    from tiltflow.workflow.steps.base import all_steps

    return set(all_steps()[step].params.model_fields)


def _converted(mapping: ProtocolMap, proto: dict[str, Any], params: dict[str, Any],
               context: dict[str, float]) -> dict[str, Any]:
    """Run the mapping's fix-ups; they see the lineage as ``_pixel_size_a`` / ``_binning``."""
    if mapping.convert:
        params.update({f"_{k}": v for k, v in context.items()})
        mapping.convert(proto, params)
    return {k: v for k, v in params.items() if not k.startswith("_")}


def workflow_from_scipion(protocols: list[dict[str, Any]], origin: str):
    from tiltflow.workflow.steps.base import all_steps
    from tiltflow.workflow.workflow_file import Workflow, WorkflowStep

    known = all_steps()
    steps, unmapped = [], []
    ids: set[str] = set()                                  # Scipion ids that became steps
    # folded id -> (pointer it stands for, carried params, carried extra inputs such as a CTF set)
    folded: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {}
    second: dict[tuple[str, str], str] = {}                # (id, Scipion output) -> our pointer
    # what is known along each id's lineage: the import's pixel size (Å) and how much earlier
    # (folded) protocols binned the stack Scipion would pass on
    lineage: dict[str, dict[str, float]] = {}
    for proto in _in_dependency_order(protocols):
        cls = proto.get("object.className")
        pid = str(proto.get("object.id"))
        mapping = PROTOCOLS.get(cls or "")
        if mapping is None or (mapping.step is not None and mapping.step not in known):
            unmapped.append(f"{cls} (id {pid})")
            continue
        inputs: dict[str, str] = {}
        carried: dict[str, Any] = {}
        carried_inputs: dict[str, str] = {}
        missing = None
        for s_name, our in mapping.inputs.items():
            ref = proto.get(s_name)
            if not ref or our in inputs:
                continue
            head, _, out = str(ref).partition(".")
            if head in folded:
                inputs[our], more, more_inputs = folded[head]
                carried.update(more)
                carried_inputs.update(more_inputs)
            elif (head, out) in second:
                inputs[our] = second[(head, out)]
            elif head in ids:
                inputs[our] = f"{head}.{out}" if out else head
            else:
                missing = head
                break
            if head in lineage:
                lineage[pid] = dict(lineage[head])
        if missing is not None:
            unmapped.append(f"{cls} (id {pid}): its input protocol {missing} is not mapped")
            continue
        context = lineage.setdefault(pid, {})
        if proto.get("samplingRate"):
            context["pixel_size_a"] = float(proto["samplingRate"])
        own: dict[str, Any] = {our: proto[s] for s, our in mapping.params.items() if proto.get(s) is not None}
        if mapping.step is None:
            if mapping.convert:
                mapping.convert(proto, own)
            if own.get("binning"):
                context["binning"] = context.get("binning", 1) * int(own["binning"])
            extra = {k: v for k, v in inputs.items() if k != "input"}
            folded[pid] = (inputs.get("input", ""), {**carried, **own}, {**carried_inputs, **extra})
            continue
        fields = _step_fields(mapping.step)
        params = {k: v for k, v in carried.items() if k in fields}
        accepts = {spec.name for spec in known[mapping.step].inputs}
        inputs.update({k: v for k, v in carried_inputs.items() if k in accepts and k not in inputs})
        params.update(own)
        steps.append(WorkflowStep(id=pid, step=mapping.step, params=_converted(mapping, proto, params, context),
                                  inputs=inputs))
        ids.add(pid)
        then = mapping.then
        if then is not None and then.step in known and proto.get("makeTomo", True) is not False:
            sid = f"{pid}-{then.step}"
            tparams = {our: proto[s] for s, our in then.params.items() if proto.get(s) is not None}
            tparams = _converted(then, proto, tparams, context)
            steps.append(WorkflowStep(id=sid, step=then.step, params=tparams, inputs={"input": f"{pid}.TiltSeries"}))
            for name in mapping.then_outputs:
                second[(pid, name)] = f"{sid}.{name}"
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
