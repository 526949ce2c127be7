"""Request and response models of the viewer's HTTP API (pydantic; units in field names)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OutputInfo(BaseModel):
    pointer: str  # RUN_ID.outputName
    name: str
    type: str
    summary: str
    viewer: Literal["tomo", "ctf", "tomogram"] | None  # which viewer opens it, if any


class RunInfo(BaseModel):
    id: int
    step: str
    label: str | None
    status: str
    duration_s: float | None
    error: str | None
    outputs: list[OutputInfo]


class ProjectInfo(BaseModel):
    root: str
    runs: list[RunInfo]


class SeriesInfo(BaseModel):
    ts_id: str
    n_views: int
    tilt_min_deg: float | None
    tilt_max_deg: float | None
    tilt_axis_deg: float | None  # None for CTF series
    pixel_size_a: float | None
    size_px: tuple[int, int] | None  # (nx, ny)
    excluded: bool  # the whole series
    n_excluded: int  # views (or CTF tilts) excluded
    is_movie: bool = False
    verdict: str | None = None  # alignment verdict: good / check / failed (None: not judged)
    verdict_reasons: list[str] = []
    ctf_verdict: str | None = None  # the CTF series pass's verdict: good / check / failed (None: not judged)
    ctf_verdict_reasons: list[str] = []
    ctf_from: str | None = (
        None  # tilt series: the CTF set its defocus comes from, "2.CTFTomoSeries (motion-ctf, run 2)"
    )


class ViewInfo(BaseModel):
    position: int  # 1-based, tilt-angle order (IMOD EXCLUDELIST numbering)
    acquisition_order: int  # 1-based; the key of the view in every request
    tilt_angle_deg: float
    dose_e_a2: float | None
    dose_accumulated_e_a2: float | None
    defocus_u_a: float | None
    defocus_v_a: float | None
    defocus_source: Literal["ctf", "attrs"] | None  # attrs: no CTF set found, the image's own (unrefined) values
    defocus_from: str | None = None  # the CTF set and run the defocus comes from
    ring_strength: float | None = None  # Thon-ring evidence of the CTF fit (robust z; rings need >= 6)
    total_motion_px: float | None
    excluded: bool
    file_name: str  # the file's name only, for display
    frames: int | None  # movies: frames in the movie
    picture: str = ""  # what is drawn when not the item itself (a movie's sum or average)


class RadialProfile(BaseModel):
    k: list[float]  # 1/Å
    observed: list[float]
    fitted: list[float]


class CtfInfo(BaseModel):
    acquisition_order: int
    tilt_angle_deg: float
    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float  # from +x, counter-clockwise
    phase_shift_deg: float
    fit_resolution_a: float | None
    score: float | None
    excluded: bool
    has_spectrum_file: bool
    ring_strength: float | None = None  # Thon-ring evidence near the series' trend (robust z; rings need >= 6)
    radial_profile: RadialProfile | None
    zeros_u_per_a: list[float]  # CTF zeros along the u axis (1/Å); empty when unknown
    zeros_v_per_a: list[float]


class CtfSeriesDetail(BaseModel):
    ts_id: str
    excluded: bool
    nyquist_per_a: float | None  # edge of the drawn spectra (1/Å); None: acquisition unknown
    verdict: str | None = None  # the CTF series pass's verdict: good / check / failed (None: not judged)
    verdict_reasons: list[str] = []
    items: list[CtfInfo]  # tilt-angle order


class ExcludeRequest(BaseModel):
    """Exclude (or include) views, a whole series, or every view beyond a tilt angle."""

    model_config = ConfigDict(extra="forbid")
    ts_id: str | None = None  # None only with beyond_deg: every series
    views: list[int] | None = None  # acquisition orders; None with no beyond_deg = the whole series
    beyond_deg: float | None = Field(default=None, ge=0, le=90)  # |tilt| above this
    excluded: bool = True
    reason: str = Field(default="user", max_length=64)


class CurationResult(BaseModel):
    changed: int  # flags that changed state
    undo_depth: int  # operations that can still be undone


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    restack: bool = False  # write new stacks without the excluded views


class SavePreview(BaseModel):
    """What Save would create now (another writer may take the name first: Save returns the real one)."""

    pointer: str  # RUN_ID.outputName of the new output
    name: str
    run_id: int
    step: str
    restack_folder: str | None  # tilt series: where re-stacking writes the new stacks (project-relative)
    n_series: int  # series kept (not excluded)
    n_excluded_series: int
    n_excluded_items: int  # views (or CTF tilts) excluded in the kept series


class SaveResult(BaseModel):
    pointer: str
    name: str
    type: str
    summary: str
    run_id: int | None = None
    step: str | None = None
    folder: str | None = None  # re-stacked: the folder of the new stacks (project-relative)


class TomogramInfo(BaseModel):
    ts_id: str
    shape: tuple[int, int, int]  # (nz, ny, nx) voxels
    voxel_size_a: float
    file_name: str  # the file's name only, for display
    file: str  # project-relative path (for the terminal user)
    halves: bool  # even/odd tomograms exist
    method: str | None
    source: str | None  # the tilt-series set it was reconstructed from
    snapshots: list[str]  # PNGs of the central slices beside the tomogram (project-relative)
    missing: bool = False  # the MRC file is gone


SuggestionKind = Literal["dark", "blank", "intensity_drop", "motion", "defocus", "fit_resolution"]


class Suggestion(BaseModel):
    ts_id: str
    view: int  # acquisition order
    kind: SuggestionKind
    message: str
    score: float | None
