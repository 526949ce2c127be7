"""Parameter translations of Scipion protocols (read from each plugin's ``_defineParams``).

Each ``fix(src, out)`` gets the protocol as Scipion wrote it (enums as indices) and the parameters
mapped so far, and completes them. What is known along the protocol's input lineage is in ``out``
as ``_pixel_size_a`` (Scipion's pixel size of the input stack, Å), ``_binning`` (how much coarser
Scipion's stack is than tiltflow's because an earlier protocol was folded: a binning not applied),
``_binned`` (binning applied by earlier normalize steps) and ``_bead_diameter_nm`` (the workflow's
gold size). A fix may add ``_notes`` (shown in the plan) and ``_scale`` (the output's pixel size over
the input's). Keys starting with ``_`` never reach a step.
"""

from __future__ import annotations

from typing import Any

Params = dict[str, Any]


def note(out: Params, text: str) -> None:
    out.setdefault("_notes", []).append(text)


def tiltflow_pixel(out: Params) -> float | None:
    """Pixel size of the stack tiltflow's step reads (Scipion's, less any folded binning)."""
    pixel = out.get("_pixel_size_a")
    return float(pixel) / float(out.get("_binning", 1)) if pixel else None


def _words(value: Any) -> list[str]:
    return value.split() if isinstance(value, str) and value.strip() else []


def _int_binning(out: Params, factor: Any, what: str) -> int:
    factor = float(factor or 1)
    binning = max(1, round(factor))
    if abs(binning - factor) > 1e-6:
        note(out, f"{what} {factor:g} rounded to binning {binning} (tiltflow bins by integers)")
    return binning


# --- imports -----------------------------------------------------------------------------------
def import_ts_movies(src: Params, out: Params) -> None:
    out["exclusion_words"] = _words(src.get("exclusionWords"))
    for key in ("gain", "dark"):
        if not out.get(key):
            out.pop(key, None)
    if src.get("dosePerFrame") is not None:  # "Dose per tilt image" in the tilt-series imports
        out["dose_per_tilt_e_a2"] = src["dosePerFrame"]


def import_tilt_series(src: Params, out: Params) -> None:
    from tiltflow.workflow.steps.import_tilt_series import STACK_SUFFIXES

    import_ts_movies(src, out)
    pattern = str(src.get("filesPattern") or "")
    if pattern.endswith(".mdoc"):  # Scipion: one stack per mdoc, named like it
        base = pattern[: -len(".mdoc")]
        out["pattern"] = base if any(base.lower().endswith(s) for s in STACK_SUFFIXES) else base + ".*"
        out["angles"] = "mdoc"
        note(out, f"stacks beside the mdocs: pattern '{out['pattern']}', tilt angles from the mdocs")
    else:
        angles_from = int(src.get("anglesFrom") or 0)  # Range, Header, Tlt file
        out["angles"] = ["auto", "header", "tlt"][min(angles_from, 2)]
        if angles_from == 0:
            note(
                out,
                f"tilt angles given as a range ({src.get('minAngle', -60)}..{src.get('maxAngle', 60)} step "
                f"{src.get('stepAngle', 3)}): tiltflow reads them from .tlt/.rawtlt, mdoc or the header",
            )
    if src.get("isTomo5"):
        note(out, "Tomo5 mdoc: give --tilt-axis as -TiltAxisAngle - 90 if the stacks' mdocs hold it")
    for key, what in (("ctfCorrected", "CTF-corrected"), ("interpolated", "already aligned")):
        if src.get(key):
            note(out, f"the stacks are {what}: tiltflow treats them as raw tilt images")


def import_movies_composed(src: Params, out: Params) -> None:
    """pwem's ProtImportMovies + ProtComposeTS (the 2026 streaming templates): the movies become tilt
    series through ComposeTS's mdocs, which is what import-movies reads."""
    compose = src.get("_compose") or {}
    out["files"] = compose.get("filesPath") or src.get("filesPath")
    out["pattern"] = compose.get("mdocPattern") or "*.mdoc"
    out["tomo5"] = bool(compose.get("isTomo5"))
    out["exclusion_words"] = _words(compose.get("excludedWords"))
    import_ts_movies({**src, "exclusionWords": None}, out)
    out["exclusion_words"] = _words(compose.get("excludedWords"))
    movies = str(src.get("filesPath") or "").rstrip("/")
    if movies and movies != str(out["files"]).rstrip("/"):
        note(out, f"movies in {movies}: import-movies finds them beside the mdocs or in a subfolder")


# --- motion correction -------------------------------------------------------------------------
def _grid(out: Params, src: Params, keys: tuple[str, str, str], target: str) -> None:
    grid = [src.get(k) for k in keys]
    if all(isinstance(v, int) and v > 0 for v in grid):
        out[target] = grid


def _dihedral(cells, flip: str, transpose: bool):
    if flip == "x":
        cells = [row[::-1] for row in cells]
    elif flip == "y":
        cells = cells[::-1]
    return [list(r) for r in zip(*cells, strict=False)] if transpose else [list(r) for r in cells]


def motioncor_gain(src: Params, out: Params) -> None:
    """MotionCor's gain rotation (counter-clockwise as 3dmod shows the MRC, row 0 at the bottom) then
    flip (1 upside down, 2 left-right) as tiltflow's flip-then-transpose; rotating 180° without a flip
    (or 90°/270° with one) has no such equivalent and is reported."""
    rot, flip = int(src.get("gainRot") or 0) % 4, int(src.get("gainFlip") or 0)
    cells = [[0, 1, 2], [3, 4, 5]]
    want = cells
    for _ in range(rot):  # CCW with row 0 at the bottom = clockwise in array order
        want = [list(r) for r in zip(*want[::-1], strict=False)]
    if flip == 1:
        want = want[::-1]
    elif flip == 2:
        want = [row[::-1] for row in want]
    for fl in ("none", "x", "y"):
        for tr in (False, True):
            if _dihedral(cells, fl, tr) == want:
                out["gain_flip"], out["gain_transpose"] = fl, "transpose" if tr else "none"
                return
    note(out, f"gain rotation {90 * rot}° + flip {flip} has no flip+transpose equivalent: orient the gain file itself")


def motioncor(src: Params, out: Params) -> None:
    """motioncorr's ProtTsMotionCorr / ProtMotionCorr: motion only (no CTF), binFactor, gain orientation."""
    out["binning"] = _int_binning(out, src.get("binFactor"), "binFactor")
    out["_scale"] = out["binning"]
    out["estimate_ctf"] = False
    out["even_odd"] = bool(src.get("splitEvenOdd"))
    if "doApplyDoseFilter" in src:
        out["dose_weighting"] = bool(src["doApplyDoseFilter"])
    motioncor_gain(src, out)
    first, last = int(src.get("alignFrame0") or 1), int(src.get("alignFrameN") or 0)
    if (first, last) != (1, 0):
        note(out, f"MotionCor frames {first}-{last or 'last'}: tiltflow aligns and sums every frame")
    if int(src.get("patchX") or 0) > 0 or int(src.get("patchY") or 0) > 0:
        note(
            out,
            f"MotionCor patches {src.get('patchX')}x{src.get('patchY')}: tiltflow's motion grid is chosen "
            "from the movie size",
        )
    if src.get("eerGroup") not in (None, 8):
        note(
            out,
            f"EER: MotionCor groups {src['eerGroup']} raw frames per frame; tiltflow sums the fractions "
            "into eer_groups frames (16 unless set)",
        )
    for key, what in (
        ("defectFile", "camera defects file"),
        ("defectMap", "camera defects map"),
        ("doMagCor", "anisotropic magnification correction"),
    ):
        if src.get(key):
            note(out, f"{what}: not applied by tiltflow")
    if any(int(src.get(k) or 0) for k in ("cropDimX", "cropDimY")):
        note(out, "cropping the movies: not done by tiltflow")


def warp_gain(src: Params, out: Params) -> None:
    out["gain_transpose"] = ["none", "transpose"][int(src.get("gainSwap") or 0)]
    out["gain_flip"] = ["none", "x", "y"][int(src.get("gainFlip") or 0)]


def warp_ts_motion_ctf(src: Params, out: Params) -> None:
    """warp's ProtWarpTSMotionCorr (Scipion's defaults where a key is missing)."""
    out["fit_range_a"] = [src.get("m_range_min", 500.0), src.get("m_range_max", 10.0)]
    out["ctf_range_a"] = [src.get("range_min", 30.0), src.get("range_max", 4.0)]
    out["defocus_range_um"] = [src.get("defocus_min", 0.5), src.get("defocus_max", 5.0)]
    _grid(out, src, ("x", "y", "z"), "motion_grid")
    _grid(out, src, ("c_x", "c_y", "c_z"), "defocus_grid")
    warp_gain(src, out)
    out["binning"] = _int_binning(out, src.get("binFactor"), "binFactor")  # the tutorial's 1.0 = unbinned
    out["_scale"] = out["binning"]


def warp_motion(src: Params, out: Params) -> None:
    """warp's ProtWarpMotionCorr (single movies, composed into tilt series by ProtComposeTS)."""
    out["fit_range_a"] = [src.get("range_min", 500.0), src.get("range_max", 10.0)]
    _grid(out, src, ("x", "y", "z"), "motion_grid")
    warp_gain(src, out)
    out["estimate_ctf"] = False
    out["binning"] = _int_binning(out, src.get("binFactor"), "binFactor")
    out["_scale"] = out["binning"]


# --- CTF ---------------------------------------------------------------------------------------
def ctffind(src: Params, out: Params) -> None:
    """cisTEM's CistemProtTsCtffind: resolution (Å) and defocus (Å) ranges."""
    out["ctf_range_a"] = [src.get("lowRes", 30.0), src.get("highRes", 5.0)]
    out["defocus_range_um"] = [float(src.get("minDefocus", 5000.0)) / 1e4, float(src.get("maxDefocus", 50000.0)) / 1e4]


def imod_ctf_estimation(src: Params, out: Params) -> None:
    """IMOD's ProtImodAutomaticCtfEstimation (ctfplotter): expected defocus +- tolerances (nm)."""
    if int(src.get("expectedDefocusOrigin") or 0) == 0:
        expected = float(src.get("expectedDefocusValue", 6000.0))
        low = max(100.0, expected - float(src.get("leftDefTol", 2000.0)))
        out["defocus_range_um"] = [low / 1000.0, (expected + float(src.get("rightDefTol", 2000.0))) / 1000.0]
    else:
        note(out, "expected defocus from a file: tiltflow searches its default defocus range")
    start, end = float(src.get("startFreq") or 0), float(src.get("endFreq") or 0)
    pixel = tiltflow_pixel(out)
    if start > 0 and end > start and pixel:  # cycles/px -> Å
        out["ctf_range_a"] = [pixel / start, pixel / end]


# --- tilt-series processing --------------------------------------------------------------------
def imod_dose_filter(src: Params, out: Params) -> None:
    out["mode"] = "exposure"
    out["dose_per_tilt_e_a2"] = float(src.get("fixedImageDose", 1.0)) if int(src.get("inputDoseType") or 0) else None


_MODES = {0: "float", 1: "uint8", 2: "uint8", 3: "int16", 4: "int16", 5: "float"}


def imod_normalization(src: Params, out: Params) -> None:
    """IMOD's ProtImodTsNormalization (newstack): binning, -floatDensities, output mode."""
    out["_scale"] = int(out.get("binning") or 1)
    mode = int(src.get("floatDensities", 2))
    if mode == 0:
        out["scale"] = "none"
    elif mode in (2, 3):
        out.update(scale="mean_sd", mean=src.get("scaleMean", 0.0), sd=src.get("scaleSd", 1.0))
        if mode == 3:
            note(out, "mode 3 (shift to a mean without scaling, deprecated in Scipion) becomes mean/SD scaling")
    else:  # 4: shifted to a mean and rescaled to min/max; 1 deprecated
        out.update(scale="min_max", min=src.get("scaleMin", 0.0), max=src.get("scaleMax", 255.0))
    storage = int(src.get("modeToOutput") or 0)
    out["mode"] = _MODES.get(storage, "float")
    if storage in (1, 4):
        note(out, f"storage mode {['', '4-bit', '', '', 'unsigned 16-bit'][storage]} written as {out['mode']}")


def normalization_folded(src: Params, out: Params) -> None:
    note(out, "its binning is folded into the next steps (no densities scaled)")


def imod_ctf_correction(src: Params, out: Params) -> None:
    if "ctf" in out.get("_missing", ()):
        out.pop("ctf_defocus_tol_nm", None)
        note(out, "its CTF input is not mapped: no phase flipping")
        return
    out["ctf_correct"] = "phaseflip"
    out.setdefault("ctf_defocus_tol_nm", 200)  # Scipion's default


def imod_fiducial_model(src: Params, out: Params) -> None:
    out["method"] = "patch" if int(src.get("typeOfModel") or 0) == 1 else "fiducial"


def xcorr_prealignment(src: Params, out: Params) -> None:
    if src.get("tiltAxisAngle") is not None:
        note(out, f"tilt-axis override {src['tiltAxisAngle']}°: tiltflow's align refines the axis from the import's")


def _working_binning(out: Params) -> None:
    """IMOD aligns the stack as given. A binning folded upstream is carried in; a stack already binned by
    a normalize step is aligned as is; otherwise tiltflow aligns at its own working binning."""
    if "binning" in out:
        return
    if float(out.get("_binned", 1)) > 1:
        out["binning"] = 1
    else:
        note(out, "aligns at tiltflow's working binning (align.binning, default 4); IMOD's works on the full stack")


def imod_fiducial_alignment(src: Params, out: Params) -> None:
    out.setdefault("method", "fiducial")
    # Scipion's defaults: fixed magnification (0), grouped tilt angles (1), grouped rotations (2)
    out["solve_magnification"] = int(src.get("magnificationSolutionType", 0) or 0) > 0
    out["solve_tilt_angles"] = int(src.get("tiltAngleSolutionType", 1) or 0) > 0
    out["refine_tilt_axis"] = int(src.get("rotationSolutionType", 2) or 0) > 0
    _working_binning(out)


def imod_brt(src: Params, out: Params) -> None:
    """teamtomo's batchruntomo (ProtImodBRT): aligns at about 10 Å/px."""
    out["method"] = "patch" if int(src.get("alignMode") or 0) == 1 else "fiducial"
    pixel = tiltflow_pixel(out)
    if pixel:
        out["binning"] = max(1, round(10.0 / pixel))
    else:
        _working_binning(out)


def imod_fiducial_eraser(src: Params, out: Params) -> None:
    """IMOD's ProtImodFiducialEraser: imodfindbeads + ccderaser, erasing a diameter (nm) around each bead."""
    out["detect"] = True
    pixel = tiltflow_pixel(out)
    grow_nm = (float(src.get("erasedDiameter", 12.0)) - float(src.get("fidDiameter", 10.0))) / 2
    if pixel:
        out["expand_px"] = max(0.0, grow_nm * 10.0 / pixel)
    else:
        note(out, "pixel size unknown here: erase-beads' default margin around the beads")


def fidder(src: Params, out: Params) -> None:
    """fidder's U-Net finds the beads; the bead size comes from the workflow's IMOD protocols."""
    out["detect"] = True
    if out.get("_bead_diameter_nm"):
        out["bead_diameter_nm"] = out["_bead_diameter_nm"]
    else:
        note(out, "no bead size in the workflow: erase-beads' default bead diameter")
    if src.get("probThreshold") not in (None, 0.5):
        note(out, f"fidder's probability threshold {src['probThreshold']} has no equivalent")


def import_transforms(src: Params, out: Params) -> None:
    ratio = float(src.get("binningTM") or 1) / float(src.get("binningTS") or 1)
    out["binning"] = ratio * float(out.get("_binning", 1))


# --- reconstruction ----------------------------------------------------------------------------
def _reconstruct_common(out: Params) -> None:
    out.setdefault("binning", int(out.get("_binning", 1)))  # Scipion's stack may have been binned upstream


def imod_reconstruction(src: Params, out: Params) -> None:
    out["method"] = "wbp"
    _reconstruct_common(out)
    out.setdefault("thickness_px", 300)  # Scipion's default (voxels)
    out["fake_sirt_iterations"] = src.get("fakeInteractionsSIRT") or None
    voxel = out.get("_pixel_size_a")  # tomogram voxel = Scipion's input pixel
    for key, ours, sign in (("tomoShiftZ", "z_offset_nm", -1), ("tomoShiftX", "x_offset_nm", -1)):
        shift = float(src.get(key) or 0)
        if shift and voxel:
            out[ours] = sign * shift * float(voxel) / 10.0
        elif shift:
            note(out, f"{key} {shift} px not applied (pixel size unknown here)")
    for key, what in (
        ("tomoWidth", "tomogram width"),
        ("angleOffset", "tilt-angle offset"),
        ("tiltAxisOffset", "tilt-axis offset"),
    ):
        if src.get(key):
            note(out, f"{what} {src[key]}: not applied by tiltflow")


def tomo3d_reconstruction(src: Params, out: Params) -> None:
    """tomo3d's ProtTomo3dReconstrucTomo: WBP (0) or SIRT (1) with nIterations, height in px."""
    _reconstruct_common(out)
    out["method"] = "sirt" if int(src.get("method") or 0) == 1 else "wbp"
    if out["method"] == "sirt":
        out["sirt_iterations"] = int(src.get("nIterations") or 30)
    if out["method"] == "wbp":  # ramp x Hamming from this frequency (0: the whole range)
        out["hamming_start"] = min(0.5, max(0.0, float(src.get("Hamming") or 0.0)))
    if src.get("setShape", True) and int(src.get("height", 300) or 0) > 0:
        out["thickness_px"] = int(src.get("height", 300))
    else:
        note(out, "tomo3d's default thickness (the images' width) becomes tiltflow's thickness_nm (200 nm)")
    if src.get("setShape", True) and any(int(src.get(k) or 0) for k in ("width", "iniSlice", "finSlice")):
        note(out, "tomo3d's width / slice range: tiltflow reconstructs the whole field")


def warp_reconstruction(src: Params, out: Params) -> None:
    """warp's ProtWarpTomoReconstruct: output pixel size (Å) and thickness in unbinned pixels."""
    out["method"] = "wbp"
    pixel = tiltflow_pixel(out)
    angpix = float(src.get("angpix") or 10)
    if pixel:
        out["binning"] = max(1, round(angpix / pixel))
        if abs(out["binning"] * pixel - angpix) > 0.05 * angpix:
            note(out, f"{angpix} Å/px is not an integer binning of {pixel:.3g} Å/px: binning {out['binning']}")
        voxel = out["binning"] * pixel  # unbinned = Scipion's input pixels
        out["thickness_px"] = max(
            1, round(float(src.get("tomo_thickness") or 1000) * float(out["_pixel_size_a"]) / voxel)
        )
    else:
        note(out, "pixel size unknown here: reconstruct's default binning and thickness")
    if src.get("deconv"):
        note(out, "Warp's deconvolved tomograms: not made by tiltflow")


def aretomo_align(src: Params, out: Params) -> None:
    out["method"] = "patch"
    out["binning"] = max(1, int(src.get("binFactor") or 2)) * int(out.get("_binning", 1))
    out["refine_tilt_axis"] = int(src.get("refineTiltAxis", 1) or 0) > 0
    out["refine_tilt_offset"] = int(src.get("refineTiltAngles", 1) or 0) == 2  # "measure and correct"
    pixel, align_z = out.get("_pixel_size_a"), float(src.get("alignZ", 800) or 0)
    if align_z and pixel:  # voxels of AreTomo's input -> nm
        out["align_z_nm"] = align_z * float(pixel) / 10.0
    elif align_z:
        note(out, "pixel size unknown here: align_z_nm keeps its default")
    if int(src.get("sampleType") or 0):
        note(out, "AreTomo's local motion correction: not done by tiltflow")
    for key, what in (
        ("roiArea", "ROI for focused alignment"),
        ("alignZfile", "per-series alignZ file"),
        ("extraParams", "extra AreTomo parameters"),
    ):
        if src.get(key):
            note(out, f"{what} ({src[key]}): not used by tiltflow")


def aretomo_reconstruct(src: Params, out: Params) -> None:
    binning = max(1, int(src.get("binFactor") or 2))
    out["binning"] = binning * int(out.get("_binning", 1))
    out["method"] = "sirt" if int(src.get("reconMethod") or 0) == 0 else "wbp"  # AreTomo: 0 SART, 1 WBP
    if out["method"] == "sirt":
        out["sirt_iterations"] = int(src.get("SARTiter") or 15)
    thickness = int(src.get("tomoThickness", 1200) or 0)
    if thickness:
        out["thickness_px"] = max(1, round(thickness / binning))  # unbinned -> binned voxels
    if src.get("doDW"):
        out["dose_weight"] = True
    if src.get("flipInt"):
        out["invert"] = True


def aretomo_ctf(src: Params, out: Params) -> None:
    out["fit_phase"] = bool(src.get("doPhaseShiftSearch"))
