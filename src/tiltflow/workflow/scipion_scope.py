"""What a Scipion protocol is when tiltflow does not run it: out of scope (and the export that hands
over to the tool that does it), known but not a tiltflow step (and what to do instead), or unknown.

Also the *kind* of a Scipion output (``outputTiltSeriesM``, ``TiltSeries_3``, ``CTFs``,
``goodSetOfCTFTomoSeries2``, ``tomograms`` ...), which lets a pointer find the matching output of a
tiltflow step, and lets a protocol that is not run hand its input on to its consumers.
"""

from __future__ import annotations

import re

KIND_WORDS = {
    "movies": "tilt-series movies",
    "tiltseries": "tilt series",
    "ctf": "CTF estimates",
    "tomograms": "tomograms",
    "fiducials": "fiducial models",
    "other": "such output",
}


def output_kind(name: str) -> str:
    """The kind of a Scipion output name or a tiltflow output type."""
    n = name.lower()
    if "ctf" in n:
        return "ctf"
    if "tiltseriesm" in n or n.endswith("movies"):
        return "movies"
    if "tiltseries" in n or "micrographs" in n:
        return "tiltseries"
    if "tomogram" in n or n == "tomos":
        return "tomograms"
    if "fiducialmodel" in n or "landmark" in n:
        return "fiducials"
    return "other"


def is_subset_name(scipion: str, ours: str) -> bool:
    """``TiltSeries_3`` / ``goodSetOfCTFTomoSeries2``: a subset a Scipion viewer creates from ``ours``
    (kept as written: tiltflow's viewer makes the same names, and until then the run's main output
    stands in, with a warning)."""
    return scipion != ours and scipion[-1:].isdigit() and ours.lower() in scipion.lower()


# (category, pattern on the class name, hand-over). Checked in order; the first match wins.
_RELION = (
    "`tiltflow export RUN --format relion --out DIR` (RELION 5 tomograms.star + per-tilt-series STAR) "
    "or `--format warp` (Warp XML for M)"
)
OUT_OF_SCOPE: list[tuple[str, re.Pattern, str]] = [
    (
        "denoising",
        re.compile(r"Denois|CryoCARE|Deconv|IsoNet|Noise2|Topaz", re.IGNORECASE),
        "`tiltflow export RUN --format imod --out DIR` (tomograms; reconstruct with even_odd for cryoCARE)",
    ),
    (
        "picking and segmentation",
        re.compile(
            r"Pick|Boxing|TemplateMatch|ModelWorkflow|Coordinates|DeepFinder|Membrain|Segment|Mesh", re.IGNORECASE
        ),
        "`tiltflow export RUN --format imod --out DIR` (DIR/<tsId>/<tsId>_rec.mrc for the picker) or `--format relion`",
    ),
    (
        "post-processing",
        re.compile(
            r"PostProcess|MonoRes|FSO|LocSharp|Sharpen|Mask|CropResize|ResMap|Resolution|ImportVolume|Volume",
            re.IGNORECASE,
        ),
        "follows subtomogram averaging: start from " + _RELION,
    ),
    (
        "subtomogram extraction and averaging",
        re.compile(
            r"Sub[Tt]omo|Extract|Particle|InitialModel|Refine|MRA|Average|Classif|HighRes|Relion|Dynamo|Eman|Pyseg",
            re.IGNORECASE,
        ),
        _RELION,
    ),
]

# Tilt-series protocols tiltflow knows but does not run as a step; their consumers take their input.
NOT_A_STEP: dict[str, str] = {
    "ProtImodEtomo": "interactive etomo session: tiltflow's align step, curated in `tiltflow view`",
    "ProtImodManualCtfEstimation": "interactive ctfplotter: tiltflow's ctf step and the CTF viewer",
    "ProtImodExcludeViews": "views are excluded in `tiltflow view` (Save, re-stack) or with "
    "`tiltflow subset --exclude-views TS:N --restack`",
    "ProtSubSet": "Scipion set operation: curate with `tiltflow view` or `tiltflow subset`",
    "ProtUnionSet": "Scipion set operation: tiltflow steps take one set",
    "ProtCorrectTiltOffset": "tilt-angle offsets are refined by tiltflow's align (refine_tilt_offset)",
    "ProtInvertTiltAngles": "not a tiltflow step (fix the angles at import: .rawtlt or mdoc)",
    "ProtConsensusAlignmentTS": "not a tiltflow step (compare alignments in `tiltflow view`)",
    "ProtTomoMisalignTiltSeries": "test protocol: not a tiltflow step",
    "CistemProtTsResample": "not a tiltflow step (bin with normalize's binning)",
    "ProtJjsoftAlignTs": "motion-compensated alignment (tomo3d/tomoalign): not implemented in tiltflow",
    "ProtJjsoftAlignTomo3dTomogram": "motion-compensated reconstruction: not implemented in tiltflow",
    "ProtImportTsCTF": "CTF import: not a tiltflow step (tiltflow estimates the CTF with its ctf step)",
    "ProtImportTomograms": "tomogram import: tiltflow makes tomograms from tilt series",
    "ProtImodTomoNormalization": "tomogram binning/normalization: not a tiltflow step",
    "ProtImodTomoProjection": "tomogram reprojection: not a tiltflow step",
    "ProtImodCropTomograms": "tomogram cropping: not a tiltflow step",
    "ProtTsCorrectMotion": "generic Scipion base protocol: use a concrete motion-correction protocol",
}


def out_of_scope(cls: str) -> tuple[str, str, str] | None:
    """``(category, hand-over, kind of tiltflow output handed over)`` for a protocol outside
    pre-processing, else None."""
    if cls in NOT_A_STEP:
        return None
    for category, pattern, handover in OUT_OF_SCOPE:
        if pattern.search(cls):
            return (
                category,
                handover,
                "tomograms" if category in ("denoising", "picking and segmentation") else "tiltseries",
            )
    return None
