"""Pure functions on tensors: no files, no prints, no project. The device follows the input.

The public API of the core is the names in ``__all__``: each has a numpydoc docstring with one
runnable example (run as a doctest by ``make test``). Other module-level functions are building
blocks of these and may change.
"""

# the imports of both sections, one sorted block
from tiltflow.core.align.bundle import solve_alignment as solve_alignment
from tiltflow.core.align.checked import check_fiducial as check_fiducial
from tiltflow.core.align.checked import checked_projection_matching as checked_projection_matching
from tiltflow.core.align.coarse import coarse_align as coarse_align
from tiltflow.core.align.fiducial import align_fiducial as align_fiducial
from tiltflow.core.align.projection_matching import projection_matching_align as projection_matching_align
from tiltflow.core.bead_erase import erase_beads as erase_beads
from tiltflow.core.ctf import fit_ctf as fit_ctf
from tiltflow.core.ctf import fit_ctf_series as fit_ctf_series
from tiltflow.core.ctf_model import ctf_2d as ctf_2d
from tiltflow.core.ctf_verdict import ctf_series_verdict as ctf_series_verdict
from tiltflow.core.dose import dose_weight_views as dose_weight_views
from tiltflow.core.frames import prepare_frames as prepare_frames
from tiltflow.core.geometry import defocus_offset_a as defocus_offset_a
from tiltflow.core.motion import estimate_motion as estimate_motion
from tiltflow.core.motion_checked import estimate_motion_checked as estimate_motion_checked
from tiltflow.core.motion_sum import align_and_sum as align_and_sum
from tiltflow.core.normalize import scale_views as scale_views
from tiltflow.core.phase_flip import ctf_phase_flip_strips as ctf_phase_flip_strips
from tiltflow.core.reconstruct import apply_xf as apply_xf
from tiltflow.core.reconstruct import bin_views as bin_views
from tiltflow.core.reconstruct import wbp as wbp
from tiltflow.core.sirt_solver import sirt as sirt
from tiltflow.core.transforms import geometry_to_xf as geometry_to_xf
from tiltflow.core.xray import erase_xrays as erase_xrays
from tiltflow.core.xray_frames import remove_frame_xrays as remove_frame_xrays

# --- motion, X-rays, dose, normalization, reconstruction (section A) -------------------------
_SECTION_A: list[str] = [
    "prepare_frames",  # raw frames -> gain-corrected float32
    "estimate_motion",  # global + local motion of a movie
    "estimate_motion_checked",  # the same, trajectory checked, dim frames aligned in groups
    "align_and_sum",  # motion-corrected (dose-weighted, even/odd) sum
    "remove_frame_xrays",  # X-ray hits in the frames of a movie
    "erase_xrays",  # X-rays and hot pixels in images (ccderaser -find)
    "erase_beads",  # gold beads in views, replaced by local noise
    "dose_weight_views",  # exposure filter of tilt-series views
    "scale_views",  # density scaling of views (newstack -float / -scale)
    "apply_xf",  # raw views -> aligned views (newstack -xform)
    "bin_views",  # Fourier binning, IMOD's centre kept
    "ctf_phase_flip_strips",  # strip-based CTF phase flipping (ctfphaseflip)
    "wbp",  # weighted backprojection
    "sirt",  # SIRT reconstruction
]

# --- alignment and CTF (section B) -----------------------------------------------------------
_SECTION_B: list[str] = [
    "coarse_align",  # cosine-stretched cross-correlation (tiltxcorr)
    "align_fiducial",  # gold beads: coarse -> tracking -> bundle adjustment (beadtrack + tiltalign)
    "solve_alignment",  # bundle adjustment of bead tracks (tiltalign)
    "check_fiducial",  # plausibility checks and verdict of a fiducial alignment
    "projection_matching_align",  # patch / projection-matching alignment without beads (AreTomo-style)
    "checked_projection_matching",  # the same, checked, with its verdict
    "fit_ctf",  # CTF of one tilt image or spectrum (CTFFIND-style)
    "fit_ctf_series",  # CTF of a tilt series, with the series pass (defocus trend, one astigmatism)
    "ctf_series_verdict",  # is a series' CTF supported by its spectra?
    "ctf_2d",  # the CTF model (DESIGN.md §2)
    "defocus_offset_a",  # defocus change across a tilted specimen plane
    "geometry_to_xf",  # tilt axis + shifts -> IMOD .xf rows
]

__all__ = [*_SECTION_A, *_SECTION_B]
