"""Parameters of the simulated demo session (``tiltflow demo-data``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

REFERENCE_AREA_PX = 512 * 512  # object counts below are per this image area


@dataclass
class DemoConfig:
    """A simulated cryo-ET session; every random choice follows from ``seed``.

    Tilt scheme: dose-symmetric (Hagen et al. 2017, doi:10.1016/j.jsb.2016.06.007) from 0°:
    with ``dose_group_size = 2`` (Tomo5 / PACEtomo style) 0, +3, -3, -6, +6, +9, -9, -12, ...;
    with 1 plain alternation 0, +3, -3, +6, -6, ...; n tilts span
    ``step * (i - (n - 1) // 2)`` for i in 0..n-1 (one more positive tilt when n is even).
    Object counts (``n_beads``, ``n_vesicles``, ``n_blobs``) are per image area (None: 12, 2
    and 150 per 512² pixels, beads capped at 60, vesicles at 40); the simulator fills the wider
    region seen at high tilt at the same density. ``size`` is (nx, ny).
    """

    n_series: int = 3
    n_tilts: int = 21
    tilt_step_deg: float = 3.0
    dose_group_size: int = 2
    size: tuple[int, int] = (512, 512)
    n_frames: int = 6
    pixel_size_a: float = 2.76
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    dose_per_tilt_e_a2: float = 3.0
    flavour: Literal["serialem", "tomo5"] = "serialem"
    seed: int = 0
    # specimen
    ice_thickness_nm: float = 150.0
    ice_mean_free_path_nm: float = 350.0  # inelastic: counts fall as exp(-t / cos(tilt) / mfp)
    ice_texture_rad: float = 0.15  # white phase noise of amorphous ice (shows Thon rings)
    bead_diameter_nm: float = 10.0
    n_beads: int | None = None
    n_vesicles: int | None = None
    n_blobs: int | None = None
    # geometry and optics per series / tilt
    tilt_axis_deg: float = 85.0  # written in the mdoc; the true axis adds U(-jitter, jitter)
    tilt_axis_jitter_deg: float = 2.0
    tilt_offset_max_deg: float = 2.0  # true angle = mdoc angle + U(-max, max) per series
    defocus_range_um: tuple[float, float] = (2.0, 5.0)
    astigmatism_range_a: tuple[float, float] = (200.0, 1500.0)
    defocus_jitter_a: float = 300.0
    stage_shift_step_px: float = 5.0  # random walk in acquisition order
    stage_shift_max_px: float = 20.0
    # movies and detector
    motion_total_px: tuple[float, float] = (0.5, 3.0)
    local_motion: bool = True
    local_motion_px: float = 0.6
    xray_hits_per_frame_mpx: float = 2.0  # events per frame per 10^6 pixels
    n_hot_pixels: int = 4
    gain_range: tuple[float, float] = (0.8, 1.2)
    gain_pixel_noise: float = 0.02
    dose_rate_e_px_s: float = 10.0  # sets ExposureTime in the mdoc
    # scenario extensions (issue 11); the defaults keep the session above unchanged, and a
    # non-default value draws from its own generator, so every other draw stays as it was
    tilt_offset_deg: float | None = None  # exact true-minus-mdoc tilt offset (None: drawn)
    tilt_axis_error_deg: float | None = None  # exact true-minus-mdoc axis angle (None: drawn)
    defocus_slope_a_per_deg: float = 0.0  # defocus drifts with tilt: + slope * true tilt angle
    astigmatism_drift_a: float = 0.0  # astigmatism changes linearly by this over the series
    astigmatism_angle_drift_deg: float = 0.0  # its azimuth likewise
    drift_px_per_frame: float = 0.0  # linear stage drift added to the beam-induced path
    jitter_px: float = 0.0  # per-frame random jitter, SD per axis, px
    xray_events_per_frame: tuple[int, int] | None = None  # uniform count per frame (replaces
    # xray_hits_per_frame_mpx): single pixels, pairs and streaks (``detector.draw_xray_events``)
    xray_counts: tuple[float, float] = (40.0, 250.0)  # raw excess counts of an event's peak
    xray_streak_max_px: int = 5
    gain_stripe_amplitude: float = 0.0  # SD of the relative gain of column stripes
    gain_stripe_width_px: int = 16
    n_dark_views: int = 0  # the highest-|tilt| views darkened (a grid bar), by dark_view_factor
    dark_view_factor: float = 0.05
    prior_dose_scale: float = 1.0  # prior dose of acquisition i = scale * i * dose per tilt: a few
    # tilts standing for a longer series (scale = its tilts per simulated tilt) carry its damage

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        checks = [
            (self.n_series >= 1, f"n_series must be >= 1, got {self.n_series}"),
            (self.n_tilts >= 1, f"n_tilts must be >= 1, got {self.n_tilts}"),
            (self.n_frames >= 1, f"n_frames must be >= 1, got {self.n_frames}"),
            (min(self.size) >= 64, f"size (nx, ny) must be at least 64 px each, got {self.size}"),
            (self.tilt_step_deg > 0, f"tilt_step_deg must be > 0, got {self.tilt_step_deg}"),
            (self.dose_group_size >= 1, f"dose_group_size must be >= 1, got {self.dose_group_size}"),
            (
                self.max_nominal_tilt_deg() < 80,
                f"the tilt scheme reaches {self.max_nominal_tilt_deg()}°; keep it below 80°",
            ),
            (self.pixel_size_a > 0, f"pixel_size_a must be > 0, got {self.pixel_size_a}"),
            (self.flavour in ("serialem", "tomo5"), f"flavour must be 'serialem' or 'tomo5', got {self.flavour!r}"),
            (self.dose_per_tilt_e_a2 > 0, f"dose_per_tilt_e_a2 must be > 0, got {self.dose_per_tilt_e_a2}"),
            (2 * self.bead_diameter_nm < self.ice_thickness_nm, "ice_thickness_nm must exceed twice bead_diameter_nm"),
            (0 <= self.n_dark_views < self.n_tilts, f"n_dark_views must be in [0, n_tilts), got {self.n_dark_views}"),
            (self.prior_dose_scale >= 0, f"prior_dose_scale must be >= 0, got {self.prior_dose_scale}"),
            (
                self.xray_events_per_frame is None or 0 <= min(self.xray_events_per_frame),
                f"xray_events_per_frame must be >= 0, got {self.xray_events_per_frame}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DemoConfig: {message}")

    def extension_values(self) -> dict:
        """The scenario extensions set away from their defaults (``EXTENSION_DEFAULTS``)."""
        return {k: getattr(self, k) for k, v in EXTENSION_DEFAULTS.items() if getattr(self, k) != v}

    def max_nominal_tilt_deg(self) -> float:
        """Largest |nominal tilt| of the scheme."""
        return self.tilt_step_deg * (self.n_tilts // 2)

    def object_counts(self) -> tuple[int, int, int]:
        """(beads, vesicles, blobs) per image area, defaults scaled from 512² pixels."""
        scale = self.size[0] * self.size[1] / REFERENCE_AREA_PX
        beads = self.n_beads if self.n_beads is not None else min(max(round(12 * scale), 1), 60)
        ves = self.n_vesicles if self.n_vesicles is not None else min(round(2 * scale), 40)
        blobs = self.n_blobs if self.n_blobs is not None else round(150 * scale)
        return beads, ves, blobs


EXTENSION_DEFAULTS = {
    "tilt_offset_deg": None,
    "tilt_axis_error_deg": None,
    "defocus_slope_a_per_deg": 0.0,
    "astigmatism_drift_a": 0.0,
    "astigmatism_angle_drift_deg": 0.0,
    "drift_px_per_frame": 0.0,
    "jitter_px": 0.0,
    "xray_events_per_frame": None,
    "xray_counts": (40.0, 250.0),
    "xray_streak_max_px": 5,
    "gain_stripe_amplitude": 0.0,
    "gain_stripe_width_px": 16,
    "n_dark_views": 0,
    "dark_view_factor": 0.05,
    "prior_dose_scale": 1.0,
}  # truth.json lists these only when set (the default session's truth stays as it was)
