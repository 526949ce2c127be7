"""The data model of sets, mirroring Scipion's: sets of tilt series (or tilt-series movies) keyed
by ``ts_id``, each holding tilt images sorted by tilt angle; sets of CTF series keyed by ``ts_id``,
each holding per-tilt CTF keyed by acquisition order.

Excluding is setting ``enabled = False``; a subset is a new set with its own items.
Plain dataclasses: the project store (``workflow.store``) maps them to tables. The values steps,
exports and the viewer agree on are typed fields (keyword-only, after ``attrs``), each a table
column; ``attrs`` holds free-form extras a step records for its own use.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, Literal

TiltSeriesKind = Literal["TiltSeriesM", "TiltSeries"]


@dataclass
class Acquisition:
    """Microscope values of one tilt series (what Scipion calls its acquisition)."""

    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    pixel_size_a: float
    tilt_axis_deg: float
    magnification: float | None = None
    dose_per_tilt_e_a2: float | None = None
    initial_dose_e_a2: float = 0.0


@dataclass
class TiltImage:
    """One view: a movie (``frames`` > 0, ``index`` None) or an image of a stack file."""

    tilt_angle_deg: float
    acquisition_order: int  # 1-based
    dose_prior_e_a2: float | None
    dose_e_a2: float | None
    dose_accumulated_e_a2: float | None
    file: str  # absolute path, or relative to the project folder
    index: int | None = None  # 0-based section in a stack file; None for a movie
    frames: int | None = None  # frames of a movie
    enabled: bool = True
    odd_file: str | None = None
    even_file: str | None = None
    transform: list[float] | None = None  # IMOD .xf row: A11 A12 A21 A22 DX DY
    attrs: dict[str, Any] = field(default_factory=dict)  # free-form extras (mdoc section, step notes)
    _: KW_ONLY
    movie: str | None = None  # the movie this view was summed from (motion-ctf)
    total_motion_px: float | None = None  # frame motion, unbinned movie pixels
    defocus_u_a: float | None = None  # the CTF series pass's defocus of this view (motion-ctf)
    defocus_v_a: float | None = None
    refined_tilt_angle_deg: float | None = None  # the alignment's tilt angle
    residual_px: float | None = None  # fiducial alignment: mean bead residual
    projection_matching_error: float | None = None  # patch alignment: the view's error

    @property
    def best_tilt_angle_deg(self) -> float:
        """The alignment's refined tilt angle, else the microscope's."""
        return self.tilt_angle_deg if self.refined_tilt_angle_deg is None else self.refined_tilt_angle_deg

    @property
    def section(self) -> int:
        """The 0-based section of the stack file holding this view (ValueError for a movie)."""
        if self.index is None:
            raise ValueError(f"{self.file}: a movie, not a section of a stack")
        return self.index


@dataclass
class TiltSeries:
    ts_id: str
    acquisition: Acquisition
    images: list[TiltImage]  # sorted by tilt angle
    size: tuple[int, int]  # (nx, ny) of each view
    enabled: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    alignment: dict[str, Any] | None = None  # method, verdict, residuals, files (xf, tlt, fid...), plots
    motion_star_dir: str | None = None  # the per-movie motion STAR files (motion-ctf)

    @property
    def enabled_images(self) -> list[TiltImage]:
        return [im for im in self.images if im.enabled]

    def sorted_by_angle(self) -> TiltSeries:
        return replace(self, images=sorted(self.images, key=lambda im: im.tilt_angle_deg))


@dataclass
class TiltSeriesSet:
    kind: TiltSeriesKind
    items: list[TiltSeries]
    attrs: dict[str, Any] = field(default_factory=dict)  # e.g. gain_fits, aligned, dose_filtered
    _: KW_ONLY
    odd_even: bool = False  # every view has odd/even halves
    gain_file: str | None = None
    dark_file: str | None = None

    def summary(self) -> str:
        """Scipion's summary: ``TiltSeriesM (5 items, 41 x 5760 x 4092 x 8, 1.38 Å/px)``."""
        n = len(self.items)
        if not n:
            return f"{self.kind} (0 items)"
        first = self.items[0]
        counts = sorted({len(ts.images) for ts in self.items})
        views = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        nx, ny = first.size
        dims = f"{views} x {nx} x {ny}"
        if self.kind == "TiltSeriesM":
            frames = sorted({im.frames or 0 for ts in self.items for im in ts.images})
            dims += f" x {frames[0]}" if len(frames) == 1 else f" x {frames[0]}-{frames[-1]}"
        extras = ""
        if self.odd_even:
            extras += ", +oe"
        excluded = sum(1 for ts in self.items for im in ts.images if not im.enabled)
        disabled_ts = sum(1 for ts in self.items if not ts.enabled)
        if disabled_ts:
            extras += f", {disabled_ts} series excluded"
        if excluded:
            extras += f", {excluded} views excluded"
        if self.attrs.get("xray_erased_px") is not None:
            extras += f", {self.attrs['xray_erased_px']} px erased"
        extras += self._verdict_summary()
        pix = first.acquisition.pixel_size_a
        items = "item" if n == 1 else "items"
        return f"{self.kind} ({n} {items}, {dims}{extras}, {pix:.4g} Å/px)"

    def _verdict_summary(self) -> str:
        """``, aligned: 2 good, 1 failed (TS_03)`` when the series carry alignment verdicts."""
        return verdict_summary(
            "aligned", {ts.ts_id: alignment_verdict(ts)["status"] for ts in self.items if ts.enabled}
        )


def verdict_summary(label: str, status: dict[str, str | None]) -> str:
    """``, LABEL: 2 good, 1 failed (TS_03)`` from each series' status ('' when none is judged)."""
    status = {k: v for k, v in status.items() if v}
    if not status:
        return ""
    counts = [
        f"{sum(v == s for v in status.values())} {s}" for s in ("good", "check", "failed") if s in status.values()
    ]
    failed = [k for k, v in status.items() if v == "failed"]
    return f", {label}: " + ", ".join(counts) + (f" ({', '.join(failed)})" if failed else "")


def verdict_text(verdict: dict[str, Any]) -> str:
    """``check (reason; reason)``, or just the status when there are no reasons."""
    reasons = verdict.get("reasons") or []
    return f"{verdict['status']}" + (f" ({'; '.join(reasons)})" if reasons else "")


def ctf_verdict(series: CtfTomoSeries) -> dict[str, Any]:
    """The CTF series pass's verdict of one series: ``{"status": good|check|failed|None,
    "reasons": [...]}`` (status None when the series pass did not judge it)."""
    verdict = series.verdict or {}
    return {"status": verdict.get("status"), "reasons": list(verdict.get("reasons", []))}


def alignment_verdict(ts: TiltSeries) -> dict[str, Any]:
    """The series' alignment verdict: ``{"status": good|check|failed|None, "reasons": [...]}``
    (status None when the series carries no judged alignment)."""
    verdict = (ts.alignment or {}).get("verdict") or {}
    return {"status": verdict.get("status"), "reasons": list(verdict.get("reasons", []))}


@dataclass
class CtfTomo:
    """Per-tilt CTF, keyed by acquisition order (DESIGN.md §2 defocus convention)."""

    acquisition_order: int
    tilt_angle_deg: float
    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    phase_shift_rad: float = 0.0
    fit_resolution_a: float | None = None
    score: float | None = None
    enabled: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)  # grid values, radial profile, ...
    _: KW_ONLY
    spectrum_file: str | None = None  # the power spectrum image the fit saw
    ring_strength: float | None = None  # how clearly Thon rings show (the series pass)

    @property
    def defocus_mean_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)


@dataclass
class CtfTomoSeries:
    ts_id: str
    items: list[CtfTomo]
    enabled: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)  # microscope values of the fit
    _: KW_ONLY
    verdict: dict[str, Any] | None = None  # the series pass's {"status", "reasons"}
    ctffind_file: str | None = None  # CTFFIND4 text, tilt-angle order
    defocus_file: str | None = None  # IMOD .defocus


@dataclass
class CtfSeriesSet:
    items: list[CtfTomoSeries]
    attrs: dict[str, Any] = field(default_factory=dict)
    kind: Literal["CTFTomoSeries"] = "CTFTomoSeries"

    def summary(self) -> str:
        n = len(self.items)
        tilts = sum(len(s.items) for s in self.items)
        excluded = sum(1 for s in self.items for c in s.items if not c.enabled)
        extra = f", {excluded} excluded" if excluded else ""
        extra += verdict_summary("CTF", {s.ts_id: ctf_verdict(s)["status"] for s in self.items if s.enabled})
        return f"CTFTomoSeries ({n} {'item' if n == 1 else 'items'}, {tilts} tilts{extra})"


@dataclass
class Tomogram:
    ts_id: str
    file: str
    voxel_size_a: float
    shape: tuple[int, int, int]  # (nz, ny, nx)
    attrs: dict[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    method: str | None = None  # wbp | sirt
    binning: int | None = None
    source: str | None = None  # pointer to the tilt series reconstructed
    ctf: str | None = None  # pointer to the CTF series used, if any
    odd_file: str | None = None
    even_file: str | None = None


@dataclass
class TomogramSet:
    items: list[Tomogram]
    attrs: dict[str, Any] = field(default_factory=dict)
    kind: Literal["Tomograms"] = "Tomograms"

    def summary(self) -> str:
        if not self.items:
            return "Tomograms (0 items)"
        nz, ny, nx = self.items[0].shape
        return (
            f"Tomograms ({len(self.items)} {'item' if len(self.items) == 1 else 'items'}, "
            f"{nx} x {ny} x {nz}, {self.items[0].voxel_size_a:.4g} Å/px)"
        )


AnySet = TiltSeriesSet | CtfSeriesSet | TomogramSet
