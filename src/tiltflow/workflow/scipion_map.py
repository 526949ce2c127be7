"""Which tiltflow step each Scipion pre-processing protocol becomes, with its parameters translated
(:mod:`tiltflow.workflow.scipion_convert`). Names, defaults and enums follow each plugin's
``_defineParams`` (scipion-em-tomo, -imod, -motioncorr, -cistem, -aretomo, -warp, -tomo3d, -fidder).

The README's "Scipion workflows" table is :func:`markdown_table` (a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tiltflow.workflow import scipion_convert as cv


@dataclass
class ProtocolMap:
    """How one Scipion protocol becomes tiltflow steps.

    ``step=None`` folds the protocol into whatever consumes its output (IMOD's coarse prealignment and
    fiducial model are stages of our one ``align`` step; IMOD's CTF correction is the reconstruction's
    phase flipping): pointers to it resolve to its input, and its mapped ``params`` (and extra inputs)
    travel downstream to the next step that accepts them. ``extras`` add steps that provide some of
    its outputs (AreTomo aligns, reconstructs and estimates the CTF); ``then``/``then_outputs`` is the
    older spelling of one extra fed by the first step's ``TiltSeries``. ``fallback`` is used while
    ``step`` is not a registered step; ``variant(protocol, kinds referenced)`` may pick another map.
    """

    step: str | None
    params: dict[str, str] = field(default_factory=dict)  # Scipion name -> our parameter name
    inputs: dict[str, str] = field(default_factory=dict)  # Scipion pointer param -> our input name
    convert: Callable[[dict[str, Any], dict[str, Any]], None] | None = None  # (scipion, ours) fix-ups
    then: ProtocolMap | None = None
    then_outputs: tuple[str, ...] = ()
    extras: tuple[Extra, ...] = ()
    fallback: ProtocolMap | None = None
    variant: Callable[[dict[str, Any], set[str]], ProtocolMap | None] | None = None
    plugin: str = ""
    doc: str = ""

    def all_extras(self) -> tuple[Extra, ...]:
        if self.then is None:
            return self.extras
        legacy = Extra(
            self.then,
            feed="main",
            outputs=self.then_outputs,
            when=lambda src, refs: src.get("makeTomo", True) is not False,
        )
        return (legacy, *self.extras)


@dataclass(frozen=True)
class Extra:
    """A further step made from the same protocol: fed by the main step's ``TiltSeries`` (``feed="main"``)
    or by the protocol's own input (``"input"``), providing the Scipion outputs named in ``outputs``."""

    mapping: ProtocolMap
    feed: str = "main"
    outputs: tuple[str, ...] = ()
    when: Callable[[dict[str, Any], set[str]], bool] | None = None


_ACQ = {
    "voltage": "voltage_kv",
    "sphericalAberration": "cs_mm",
    "amplitudeContrast": "amplitude_contrast",
    "magnification": "magnification",
    "samplingRate": "pixel_size_a",
    "tiltAxisAngle": "tilt_axis_deg",
    "doseInitial": "initial_dose_e_a2",
}
_TS = {"inputSetOfTiltSeries": "input"}


def _aretomo_variant(src: dict[str, Any], refs: set[str]) -> ProtocolMap | None:
    """AreTomo run only for its CTF (the streaming HIV template), or on aligned stacks (skipAlign)."""
    if src.get("skipAlign"):
        return ProtocolMap("reconstruct", {"doEvenOdd": "even_odd"}, _TS, cv.aretomo_reconstruct)
    if not src.get("makeTomo", True) and src.get("doEstimateCtf", True) and refs and refs <= {"ctf"}:
        return ProtocolMap("ctf", {}, _TS, cv.aretomo_ctf)
    return None


_IMOD_NORMALIZATION = ProtocolMap(
    "normalize",
    {"binning": "binning"},
    _TS,
    cv.imod_normalization,
    plugin="imod",
    fallback=ProtocolMap(None, {"binning": "binning"}, _TS, cv.normalization_folded),
    doc="binning, `floatDensities` 0/2/4 -> `scale` none/mean_sd/min_max with mean, SD, min, max; "
    "`modeToOutput` -> `mode` (odd/even stacks always follow)",
)

PROTOCOLS: dict[str, ProtocolMap] = {
    # --- imports (scipion-em-tomo, pwem) ---
    "ProtImportTsMovies": ProtocolMap(
        "import-movies",
        {
            "filesPath": "files",
            "filesPattern": "pattern",
            "isTomo5": "tomo5",
            **_ACQ,
            "gainFile": "gain",
            "darkFile": "dark",
        },
        convert=cv.import_ts_movies,
        plugin="tomo",
        doc="mdoc folder and pattern, optics, dose per tilt, gain/dark",
    ),
    "ProtImportTs": ProtocolMap(
        "import-tilt-series",
        {"filesPath": "files", "filesPattern": "pattern", **_ACQ},
        convert=cv.import_tilt_series,
        plugin="tomo",
        doc="stacks; angles from mdoc / header / .tlt (`anglesFrom`); a range is not supported",
    ),
    "ProtImportMovies": ProtocolMap(
        "import-movies",
        {**_ACQ, "gainFile": "gain", "darkFile": "dark"},
        convert=cv.import_movies_composed,
        plugin="pwem",
        doc="with a ProtComposeTS downstream: its mdoc folder/pattern, the movies' optics and dose",
    ),
    "ProtComposeTS": ProtocolMap(
        None, {}, {"inputMicrographs": "input"}, plugin="tomo", doc="its mdocs are what import-movies reads"
    ),
    # --- motion correction ---
    "ProtTsMotionCorr": ProtocolMap(
        "motion-ctf",
        {},
        {"inputTiltSeriesM": "input"},
        cv.motioncor,
        plugin="motioncorr",
        doc="motion only (`estimate_ctf` off), `binFactor` -> binning, `splitEvenOdd` -> even_odd, gain rotation/flip",
    ),
    "ProtMotionCorr": ProtocolMap(
        "motion-ctf",
        {},
        {"inputMovies": "input"},
        cv.motioncor,
        plugin="motioncorr",
        doc="as ProtTsMotionCorr, on the movies ProtComposeTS groups; `doApplyDoseFilter` -> dose_weighting",
    ),
    "ProtWarpTSMotionCorr": ProtocolMap(
        "motion-ctf",
        {
            "bfactor": "bfactor_a2",
            "average_halves": "even_odd",
            "eer_ngroups": "eer_groups",
            "estimateCTF": "estimate_ctf",
            "window": "window_px",
            "fit_phase": "fit_phase",
            "use_sum": "use_movie_average",
        },
        {"inputTSMovies": "input"},
        cv.warp_ts_motion_ctf,
        plugin="warp",
        doc="motion and CTF ranges, grids, B-factor, gain swap/flip, EER groups, binning",
    ),
    "ProtWarpMotionCorr": ProtocolMap(
        "motion-ctf",
        {"bfactor": "bfactor_a2", "eer_ngroups": "eer_groups"},
        {"inputMovies": "input"},
        cv.warp_motion,
        plugin="warp",
        doc="motion only, on the movies ProtComposeTS groups",
    ),
    # --- CTF ---
    "CistemProtTsCtffind": ProtocolMap(
        "ctf",
        {"windowSize": "window_px", "findPhaseShift": "fit_phase"},
        {"inputTiltSeries": "input"},
        cv.ctffind,
        plugin="cistem",
        doc="box, resolution range (Å), defocus range (Å -> µm), phase shift",
    ),
    "ProtTsCtffind": ProtocolMap(
        "ctf",
        {"windowSize": "window_px", "findPhaseShift": "fit_phase"},
        {"inputTiltSeries": "input"},
        cv.ctffind,
        plugin="cistem",
        doc="as CistemProtTsCtffind",
    ),
    "ProtImodAutomaticCtfEstimation": ProtocolMap(
        "ctf",
        {"tileSize": "window_px", "searchPhaseShift": "fit_phase"},
        _TS,
        cv.imod_ctf_estimation,
        plugin="imod",
        doc="expected defocus +- tolerances (nm) -> defocus range (µm), tile size",
    ),
    # --- tilt-series processing (IMOD, fidder, tomo) ---
    "ProtImodXraysEraser": ProtocolMap(
        "xray-erase",
        {
            "peakCriterion": "peak_criterion",
            "diffCriterion": "diff_criterion",
            "maximumRadius": "max_radius_px",
            "bigDiffCriterion": "big_diff_criterion",
            "processOddEven": "odd_even",
        },
        _TS,
        plugin="imod",
        doc="ccderaser's criteria",
    ),
    "ProtImodDoseFilter": ProtocolMap(
        "dose-filter",
        {"initialDose": "initial_dose_e_a2"},
        _TS,
        cv.imod_dose_filter,
        plugin="imod",
        doc="mtffilter's exposure filter; dose from the import, or `fixedImageDose` per tilt",
    ),
    "ProtImodTsNormalization": _IMOD_NORMALIZATION,
    "ProtImodFiducialEraser": ProtocolMap(
        "erase-beads",
        {"fidDiameter": "bead_diameter_nm"},
        _TS,
        cv.imod_fiducial_eraser,
        plugin="imod",
        doc="beads detected; erased diameter (nm) -> expand_px",
    ),
    "ProtFidderDetectAndEraseFiducials": ProtocolMap(
        "erase-beads",
        {},
        {"inTsSet": "input"},
        cv.fidder,
        plugin="fidder",
        doc="beads detected; bead size from the workflow's IMOD fiducial protocols",
    ),
    "ProtAssignTransformationMatrixTiltSeries": ProtocolMap(
        "assign-alignment",
        {},
        {"setTMSetOfTiltSeries": "input", "getTMSetOfTiltSeries": "alignment"},
        plugin="tomo",
        fallback=ProtocolMap(None, {}, {"getTMSetOfTiltSeries": "input"}),
        doc="the alignment of one set on another (e.g. the dose-filtered set's onto the raw one)",
    ),
    "ProtImodImportTransformationMatrix": ProtocolMap(
        "import-alignment",
        {"filesPath": "files", "filesPattern": "pattern"},
        _TS,
        cv.import_transforms,
        plugin="imod",
        doc="`.xf` files; `binningTM`/`binningTS` -> binning",
    ),
    "ProtImodApplyTransformationMatrix": ProtocolMap(
        None,
        {"binning": "binning"},
        _TS,
        plugin="imod",
        doc="reconstruct applies the `.xf` itself; its binning is carried",
    ),
    # --- alignment ---
    "ProtImodXcorrPrealignment": ProtocolMap(
        None, {}, _TS, cv.xcorr_prealignment, plugin="imod", doc="into align (its coarse stage)"
    ),
    "ProtImodFiducialModel": ProtocolMap(
        None,
        {"fiducialDiameter": "bead_diameter_nm"},
        _TS,
        cv.imod_fiducial_model,
        plugin="imod",
        doc="into align: bead diameter (nm); patch tracking -> method patch",
    ),
    "ProtImodFiducialAlignment": ProtocolMap(
        "align",
        {},
        {"inputSetOfLandmarkModels": "input", "inputSetOfTiltSeries": "input"},
        cv.imod_fiducial_alignment,
        plugin="imod",
        doc="method fiducial; rotation / magnification / tilt-angle solutions on or off",
    ),
    "ProtImodBRT": ProtocolMap(
        "align",
        {"fidSize": "bead_diameter_nm"},
        _TS,
        cv.imod_brt,
        plugin="imod",
        doc="`alignMode` -> method fiducial/patch, binning to ~10 Å/px as batchruntomo",
    ),
    "ProtAreTomoAlignRecon": ProtocolMap(
        "align",
        {},
        _TS,
        cv.aretomo_align,
        plugin="aretomo",
        variant=_aretomo_variant,
        extras=(
            Extra(
                ProtocolMap("reconstruct", {"doEvenOdd": "even_odd"}, convert=cv.aretomo_reconstruct),
                feed="main",
                outputs=("Tomograms",),
                when=lambda src, refs: src.get("makeTomo", True) is not False,
            ),
            Extra(
                ProtocolMap("ctf", {}, convert=cv.aretomo_ctf),
                feed="input",
                outputs=("CTFTomoSeries",),
                when=lambda src, refs: bool(src.get("doEstimateCtf", True)) and "ctf" in refs,
            ),
        ),
        doc="`align --method patch` (binFactor, alignZ voxels -> nm, tilt axis/angle refinement) + `reconstruct` "
        "(SART/WBP, unbinned thickness, dose weighting) + `ctf` when its CTF is used",
    ),
    # --- reconstruction ---
    "ProtImodCtfCorrection": ProtocolMap(
        None,
        {"defocusTol": "ctf_defocus_tol_nm"},
        {"inputSetOfTiltSeries": "input", "inputSetOfCtfTomoSeries": "ctf"},
        cv.imod_ctf_correction,
        plugin="imod",
        doc="into reconstruct: strip phase flipping with that CTF set, defocus tolerance (nm)",
    ),
    "ProtImodTomoReconstruction": ProtocolMap(
        "reconstruct",
        {
            "tomoThickness": "thickness_px",
            "radialFirstParameter": "radial_cutoff",
            "radialSecondParameter": "radial_falloff",
            "processOddEven": "even_odd",
        },
        _TS,
        cv.imod_reconstruction,
        plugin="imod",
        doc="WBP; thickness (voxels), radial filter, SIRT-like filter, shifts",
    ),
    "ProtTomo3dReconstrucTomo": ProtocolMap(
        "reconstruct",
        {"doEvenOdd": "even_odd"},
        _TS,
        cv.tomo3d_reconstruction,
        plugin="tomo3d",
        doc="WBP (ramp x Hamming from `Hamming`) or SIRT (`nIterations`), thickness `height` (px)",
    ),
    "ProtWarpTomoReconstruct": ProtocolMap(
        "reconstruct",
        {"halfmap_tilts": "even_odd", "invert": "invert"},
        {"inputSet": "input"},
        cv.warp_reconstruction,
        plugin="warp",
        doc="`angpix` -> binning, unbinned thickness",
    ),
}


def register_protocol(class_name: str, mapping: ProtocolMap) -> None:
    """Steps may add (or replace) their Scipion mapping here."""
    PROTOCOLS[class_name] = mapping


def markdown_table() -> str:
    """The README's table: every mapped Scipion protocol, its plugin, tiltflow step and translation."""
    rows = ["| Scipion protocol | plugin | tiltflow | translated |", "| --- | --- | --- | --- |"]
    for cls, m in sorted(PROTOCOLS.items(), key=lambda kv: (kv[1].plugin, kv[0])):
        steps = [f"`{m.step}`" if m.step else "folded"]
        steps += [f"`{x.mapping.step}`" for x in m.all_extras()]
        if m.fallback is not None and m.step:
            steps[0] += " (folded while absent)" if m.fallback.step is None else f" (else `{m.fallback.step}`)"
        rows.append(f"| {cls} | {m.plugin or '-'} | {' + '.join(steps)} | {m.doc} |")
    return "\n".join(rows) + "\n"
