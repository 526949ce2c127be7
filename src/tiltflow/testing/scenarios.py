"""A scenario matrix for the simulator: sessions that vary what real sessions vary (issue 11).

``draw_scenarios(n, seed)`` draws ``n`` :class:`Scenario` s; scenario ``i`` depends only on
``(seed, i)``, so a longer list starts with the shorter one. ``Scenario.demo_config()`` maps one
onto :class:`~tiltflow.testing.config.DemoConfig` (one tilt series).

What is drawn (``RANGES`` holds the numbers): pixel size (log-uniform), dose per frame
(log-uniform), frame count, EER or TIFF, ice thickness, the field width as a multiple of the ice
thickness, bead count and size, beam-induced motion (a fast start that decays,
``detector.global_trajectory_px``) plus linear drift, per-frame jitter and local motion, defocus with a drift with tilt, one
astigmatism per series with a slow drift, tilt offset and tilt-axis error of the mdoc, X-ray events
(single pixels, pairs, streaks), gain variation with column stripes, dark views. Thickness
attenuation at high tilt follows from the ice (``DemoConfig.ice_mean_free_path_nm``).

Limits of the simulation, stated where they apply:

- the field is simulated at most ``max_size_px`` wide (``size_px``). By default (``fit_field``)
  ice and field are drawn within what fits, so wide fields come with coarse pixels and thin ice;
  at fine pixels the field is cropped to a part of the session and ``simulated_field_ratio``
  falls below the drawn ``field_ratio`` (below 1: a field narrower than the ice is thick);
- EER: the simulator writes TIFF movies only; an ``eer`` scenario is simulated as the frames an EER
  movie is grouped into (the same counts), so the EER decoder is not exercised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tiltflow.testing.config import DemoConfig

RANGES = {
    "pixel_size_a": (0.8, 5.5),
    "dose_e_px_frame": (0.3, 3.0),
    "n_frames": (4, 40),
    "dose_per_tilt_e_a2": (1.5, 6.0),  # aimed at; e/px/frame and frames take precedence
    "ice_thickness_nm": (50.0, 300.0),
    "field_ratio": (1.0, 6.0),
    "n_beads": (0, 40),
    "bead_diameter_nm": (5.0, 15.0),
    "motion_burst_px": (0.3, 4.0),
    "drift_px_per_frame": (0.0, 0.3),
    "jitter_px": (0.0, 0.15),
    "local_motion_px": (0.0, 0.8),
    "defocus_um": (1.5, 5.0),
    "defocus_slope_a_per_deg": (-60.0, 60.0),
    "defocus_jitter_a": (20.0, 150.0),
    "astigmatism_a": (100.0, 1200.0),
    "astigmatism_drift_a": (0.0, 150.0),
    "astigmatism_angle_drift_deg": (0.0, 10.0),
    "tilt_offset_deg": (-5.0, 5.0),
    "tilt_axis_error_deg": (-3.0, 3.0),
    "xray_events_per_frame": (1, 5),
    "xray_counts": (40.0, 250.0),
    "gain_variation": (0.02, 0.2),
    "gain_stripe_amplitude": (0.0, 0.05),
    "n_dark_views": (0, 2),
    "tilt_step_deg": (7.0, 10.0),
}
AXIS_FAMILIES_DEG = (85.0, -95.0, 175.0, -5.0)  # mdoc axes of common microscope set-ups


@dataclass(frozen=True)
class Scenario:
    """One simulated acquisition (a single tilt series); lengths in Å or nm as named."""

    name: str
    seed: int
    pixel_size_a: float
    dose_e_px_frame: float  # incident electrons per pixel per frame (before ice attenuation)
    n_frames: int
    eer: bool
    ice_thickness_nm: float
    field_ratio: float  # drawn field width / ice thickness
    size_px: int  # simulated square image side
    n_tilts: int
    tilt_step_deg: float
    n_beads: int  # per image area
    bead_diameter_nm: float
    motion_burst_px: float  # end-to-end length of the decaying beam-induced path (median)
    drift_px_per_frame: float
    jitter_px: float
    local_motion_px: float
    defocus_um: float
    defocus_slope_a_per_deg: float
    defocus_jitter_a: float
    astigmatism_a: float
    astigmatism_drift_a: float
    astigmatism_angle_drift_deg: float
    mdoc_tilt_axis_deg: float
    tilt_offset_deg: float
    tilt_axis_error_deg: float
    xray_events_per_frame: tuple[int, int]
    xray_counts: tuple[float, float]
    gain_variation: float  # smooth gain spans 1 -/+ this
    gain_stripe_amplitude: float
    n_dark_views: int

    @property
    def field_width_nm(self) -> float:
        """The drawn field width (may exceed the simulated one)."""
        return self.field_ratio * self.ice_thickness_nm

    @property
    def simulated_field_nm(self) -> float:
        return self.size_px * self.pixel_size_a / 10.0

    @property
    def simulated_field_ratio(self) -> float:
        return self.simulated_field_nm / self.ice_thickness_nm

    @property
    def dose_per_tilt_e_a2(self) -> float:
        return self.dose_e_px_frame * self.n_frames / self.pixel_size_a**2

    def describe(self) -> str:
        """One line: the numbers that matter most for the methods."""
        return (f"{self.name}: {self.size_px}² px at {self.pixel_size_a:.2f} Å "
                f"({self.simulated_field_nm:.0f} nm field = {self.simulated_field_ratio:.1f}x ice, "
                f"drawn {self.field_ratio:.1f}x), ice {self.ice_thickness_nm:.0f} nm, "
                f"{self.n_frames} frames{' (EER as frames)' if self.eer else ''} at "
                f"{self.dose_e_px_frame:.2f} e/px/frame, {self.n_tilts} tilts x "
                f"{self.tilt_step_deg:g}°, {self.n_beads} beads of "
                f"{self.bead_diameter_nm:.1f} nm, "
                f"defocus {self.defocus_um:.1f} µm ({self.defocus_slope_a_per_deg:+.0f} Å/°), "
                f"astig {self.astigmatism_a:.0f} Å, offset {self.tilt_offset_deg:+.1f}°, "
                f"axis {self.mdoc_tilt_axis_deg:.0f}{self.tilt_axis_error_deg:+.1f}°, "
                f"{self.n_dark_views} dark")

    def as_dict(self) -> dict:
        return {**asdict(self), "simulated_field_nm": self.simulated_field_nm,
                "simulated_field_ratio": self.simulated_field_ratio,
                "dose_per_tilt_e_a2": self.dose_per_tilt_e_a2}

    def demo_config(self) -> DemoConfig:
        """The simulator's configuration of this scenario (one series, SerialEM flavour)."""
        g = self.gain_variation
        return DemoConfig(
            n_series=1, n_tilts=self.n_tilts, tilt_step_deg=self.tilt_step_deg,
            size=(self.size_px, self.size_px), n_frames=self.n_frames,
            pixel_size_a=self.pixel_size_a, dose_per_tilt_e_a2=self.dose_per_tilt_e_a2,
            seed=self.seed, ice_thickness_nm=self.ice_thickness_nm,
            bead_diameter_nm=self.bead_diameter_nm, n_beads=self.n_beads,
            tilt_axis_deg=self.mdoc_tilt_axis_deg, tilt_axis_error_deg=self.tilt_axis_error_deg,
            tilt_offset_deg=self.tilt_offset_deg,
            defocus_range_um=(self.defocus_um, self.defocus_um),
            astigmatism_range_a=(self.astigmatism_a, self.astigmatism_a),
            defocus_jitter_a=self.defocus_jitter_a,
            defocus_slope_a_per_deg=self.defocus_slope_a_per_deg,
            astigmatism_drift_a=self.astigmatism_drift_a,
            astigmatism_angle_drift_deg=self.astigmatism_angle_drift_deg,
            motion_total_px=(0.5 * self.motion_burst_px, 1.5 * self.motion_burst_px),
            local_motion=self.local_motion_px > 0, local_motion_px=self.local_motion_px,
            drift_px_per_frame=self.drift_px_per_frame, jitter_px=self.jitter_px,
            xray_events_per_frame=self.xray_events_per_frame, xray_counts=self.xray_counts,
            gain_range=(1.0 - g, 1.0 + g), gain_stripe_amplitude=self.gain_stripe_amplitude,
            n_dark_views=self.n_dark_views,
        )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _dose_and_frames(
    rng: np.random.Generator, px: float, max_frames: int | None
) -> tuple[float, int]:
    """(e/px/frame, frames) within ``RANGES``, aiming at a tilt dose of ``dose_per_tilt_e_a2``
    as sessions do (fine pixels get few electrons per frame, coarse ones many)."""
    lo_d, hi_d = RANGES["dose_e_px_frame"]
    lo_f, hi_f = RANGES["n_frames"]
    hi_f = min(hi_f, max_frames) if max_frames else hi_f
    per_px = float(rng.uniform(*RANGES["dose_per_tilt_e_a2"])) * px * px  # e/Å² * Å²/px = e/px
    frames = int(np.clip(round(per_px / _log_uniform(rng, lo_d, hi_d)), lo_f, hi_f))
    return float(np.clip(per_px / frames, lo_d, hi_d)), frames


def _tilt_step(drawn_deg: float, n_tilts: int) -> float:
    """The drawn step rounded to 0.5°, raised where needed so that views beyond 30° remain when
    the outermost pair is dark (``n_dark_views`` <= 2); at most the range's top."""
    need = 30.0 / max(n_tilts // 2 - 1, 1)
    step = max(round(drawn_deg * 2) / 2, math.floor(need * 2) / 2 + 0.5)
    return min(step, RANGES["tilt_step_deg"][1])


def _ice_and_field(
    rng: np.random.Generator, px: float, max_size_px: int | None
) -> tuple[float, float]:
    """(ice nm, field / ice). With ``max_size_px`` both are drawn within what that many pixels
    show (ice first, then the ratio); where not even the thinnest ice fits, the field is cropped."""
    lo_i, hi_i = RANGES["ice_thickness_nm"]
    lo_r, hi_r = RANGES["field_ratio"]
    if max_size_px is None:
        return float(rng.uniform(lo_i, hi_i)), float(rng.uniform(lo_r, hi_r))
    field = max_size_px * px / 10.0  # nm
    ice = float(rng.uniform(lo_i, min(hi_i, max(lo_i, field))))
    return ice, float(rng.uniform(lo_r, min(hi_r, max(lo_r, field / ice))))


def draw_scenario(
    seed: int, index: int, *, n_tilts: int = 13, max_size_px: int = 320, min_size_px: int = 128,
    max_frames: int | None = None, fit_field: bool = True,
) -> Scenario:
    """Scenario ``index`` of the matrix drawn from ``seed`` (module docstring); ``fit_field``
    draws ice and field (``_ice_and_field``) so that the field fits ``max_size_px`` where it can."""
    rng = np.random.default_rng([seed, index, 11])
    r = RANGES
    u = lambda key: float(rng.uniform(*r[key]))  # noqa: E731
    px = _log_uniform(rng, *r["pixel_size_a"])
    dose, frames = _dose_and_frames(rng, px, max_frames)
    eer = bool(rng.uniform() < 0.25)
    ice, ratio = _ice_and_field(rng, px, max_size_px if fit_field else None)
    side = int(np.clip(round(ratio * ice * 10.0 / px / 32.0) * 32, min_size_px, max_size_px))
    beads = int(rng.integers(r["n_beads"][0], r["n_beads"][1] + 1))
    values = dict(
        pixel_size_a=px, dose_e_px_frame=dose,
        n_frames=frames, eer=eer,
        ice_thickness_nm=ice, field_ratio=ratio, size_px=side, n_tilts=n_tilts,
        tilt_step_deg=_tilt_step(u("tilt_step_deg"), n_tilts), n_beads=beads,
        bead_diameter_nm=u("bead_diameter_nm"), motion_burst_px=u("motion_burst_px"),
        drift_px_per_frame=u("drift_px_per_frame"), jitter_px=u("jitter_px"),
        local_motion_px=u("local_motion_px"), defocus_um=u("defocus_um"),
        defocus_slope_a_per_deg=u("defocus_slope_a_per_deg"),
        defocus_jitter_a=u("defocus_jitter_a"), astigmatism_a=u("astigmatism_a"),
        astigmatism_drift_a=u("astigmatism_drift_a"),
        astigmatism_angle_drift_deg=u("astigmatism_angle_drift_deg"),
        mdoc_tilt_axis_deg=float(rng.choice(AXIS_FAMILIES_DEG) + rng.uniform(-3, 3)),
        tilt_offset_deg=u("tilt_offset_deg"), tilt_axis_error_deg=u("tilt_axis_error_deg"),
        xray_events_per_frame=(1, int(rng.integers(1, r["xray_events_per_frame"][1] + 1))),
        xray_counts=r["xray_counts"], gain_variation=u("gain_variation"),
        gain_stripe_amplitude=u("gain_stripe_amplitude"),
        n_dark_views=int(rng.integers(r["n_dark_views"][0], r["n_dark_views"][1] + 1)),
    )
    return Scenario(name=f"S{index:02d}", seed=int(rng.integers(2**31)), **values)


def draw_scenarios(n: int, seed: int = 0, **kw) -> list[Scenario]:
    """``n`` scenarios from ``seed`` (``draw_scenario``'s keywords apply to all)."""
    return [draw_scenario(seed, i, **kw) for i in range(n)]
