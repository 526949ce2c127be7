"""A scenario matrix for the simulator: sessions that vary what real sessions vary (issue 11).

``draw_scenarios(n, seed)`` draws ``n`` :class:`Scenario` s; scenario ``i`` depends only on
``(seed, i)``, so a longer list starts with the shorter one.

What is drawn (``RANGES`` holds the numbers): pixel size (log-uniform), dose per frame
(log-uniform), frame count, EER or TIFF, ice thickness, the field width as a multiple of the ice
thickness, bead count and size, beam-induced motion (a fast start that decays,
``detector.global_trajectory_px``) plus linear drift, per-frame jitter and local motion, defocus
with a drift with tilt, one astigmatism per series with a slow drift, tilt offset and tilt-axis
error of the mdoc, X-ray events (single pixels, pairs, streaks), gain variation with column
stripes, dark views. Thickness attenuation at high tilt follows from the ice
(``DemoConfig.ice_mean_free_path_nm``).

Each scenario is simulated three times, each where its quantities are physically meaningful, as
real sessions measure them:

- **movies** (``movie_config``): a ``movie_size_px`` crop at the *unbinned* pixel size with the
  scenario's dose and frames, ``movie_n_tilts`` tilts ``movie_tilt_step_deg`` apart (0, ±20, ±40,
  ±60 by default), for motion and X-rays. Each carries the prior dose (damage) it would have
  in the full series (``prior_dose_scale`` = the full series' tilts per simulated one). The bead
  density is the alignment field's, but at least 4 beads (where the scenario has any) so that the
  eraser's bead rule is tested; no dark views (they are left out of these measures anyway).
- **CTF field** (``ctf_config``): motion-corrected sums of a ``ctf_size_px``² field (1536 px: a
  tenth of a 5760 x 4092 frame; one 512-px crop holds too few Thon-ring tiles to stand for a
  session) at the unbinned pixel size, ``ctf_n_tilts`` tilts ``ctf_tilt_step_deg`` apart (13 x
  10° to ±60° by default), with the full series' prior dose;
- **alignment series** (``align_config``): ``align_n_tilts`` views ``align_tilt_step_deg`` apart
  (41 x 3° by default) as the align step sees them, at the binned pixel size
  ``align_pixel_size_a`` = pixel size x ``align_binning``, views ``align_size_px`` wide (256-320 px
  by default) showing ``align_field_ratio`` x the ice thickness; the drawn ratio (1-6x) is kept
  unless the camera (``camera_px`` unbinned pixels) or the beads (at least ``MIN_BEAD_PX`` across
  after binning, as a user would bin) limit the field. Beads are ``n_beads`` per view, the
  scenario's tilt offset, axis error and dark views apply here. The stack is the noise of the
  summed dose (``demo.simulate_stack``: no motion, X-rays or gain; those are the movies' part).

Limits of the simulation, stated where they apply: an ``eer`` scenario is simulated as the frames an
EER movie is grouped into (the same counts), so the EER decoder is not exercised; the movie crop's
local motion spans the crop (a real 4k frame's deformation seen on part of it is smaller).
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
}
AXIS_FAMILIES_DEG = (85.0, -95.0, 175.0, -5.0)  # mdoc axes of common microscope set-ups
MIN_BEAD_PX = 4.0  # a bead at least this many binned pixels across (users bin no coarser)
MIN_MOVIE_BEADS = 4


@dataclass(frozen=True)
class Scenario:
    """One simulated acquisition (a single tilt series); lengths in Å or nm as named."""

    name: str
    seed: int
    pixel_size_a: float  # unbinned
    dose_e_px_frame: float  # incident electrons per unbinned pixel per frame (before the ice)
    n_frames: int
    eer: bool
    ice_thickness_nm: float
    field_ratio: float  # drawn field width / ice thickness
    n_beads: int  # per alignment view
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
    # the movies (unbinned)
    movie_size_px: int
    movie_n_tilts: int
    movie_tilt_step_deg: float
    window_px: int  # motion-ctf's CTF window
    # the alignment series (binned)
    align_binning: int
    align_size_px: int
    align_n_tilts: int
    align_tilt_step_deg: float
    # the CTF field (unbinned, motion-corrected sums)
    ctf_size_px: int = 1536
    ctf_n_tilts: int = 13
    ctf_tilt_step_deg: float = 10.0

    @property
    def field_width_nm(self) -> float:
        """The drawn field width (the alignment field may be narrower: ``align_field_nm``)."""
        return self.field_ratio * self.ice_thickness_nm

    @property
    def align_pixel_size_a(self) -> float:
        return self.pixel_size_a * self.align_binning

    @property
    def align_field_nm(self) -> float:
        return self.align_size_px * self.align_pixel_size_a / 10.0

    @property
    def align_field_ratio(self) -> float:
        return self.align_field_nm / self.ice_thickness_nm

    @property
    def movie_field_nm(self) -> float:
        return self.movie_size_px * self.pixel_size_a / 10.0

    @property
    def dose_per_tilt_e_a2(self) -> float:
        return self.dose_e_px_frame * self.n_frames / self.pixel_size_a**2

    @property
    def movie_n_beads(self) -> int:
        """Beads per movie crop: the alignment field's density, at least ``MIN_MOVIE_BEADS``."""
        density = self.n_beads * (self.movie_field_nm / self.align_field_nm) ** 2
        return min(self.n_beads, max(round(density), MIN_MOVIE_BEADS))

    def describe(self) -> str:
        """One line: the numbers that matter most for the methods."""
        top = self.movie_tilt_step_deg * (self.movie_n_tilts // 2)
        return (
            f"{self.name}: {self.pixel_size_a:.2f} Å, ice {self.ice_thickness_nm:.0f} nm, "
            f"{self.n_frames} frames{' (EER as frames)' if self.eer else ''} at "
            f"{self.dose_e_px_frame:.2f} e/px/frame "
            f"({self.dose_per_tilt_e_a2:.1f} e/Å²/tilt), "
            f"defocus {self.defocus_um:.1f} µm ({self.defocus_slope_a_per_deg:+.0f} Å/°), "
            f"astig {self.astigmatism_a:.0f} Å | movies {self.movie_size_px}² x "
            f"{self.movie_n_tilts} tilts to ±{top:g}°, window {self.window_px} | "
            f"CTF field {self.ctf_size_px}² x {self.ctf_n_tilts} tilts | "
            f"align bin {self.align_binning} ({self.align_pixel_size_a:.1f} Å) "
            f"{self.align_size_px}² x {self.align_n_tilts} x {self.align_tilt_step_deg:g}°, "
            f"field {self.align_field_nm:.0f} nm = {self.align_field_ratio:.1f}x ice "
            f"(drawn {self.field_ratio:.1f}x), {self.n_beads} beads of "
            f"{self.bead_diameter_nm:.1f} nm, "
            f"offset {self.tilt_offset_deg:+.1f}°, axis {self.mdoc_tilt_axis_deg:.0f}"
            f"{self.tilt_axis_error_deg:+.1f}°, {self.n_dark_views} dark"
        )

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "align_pixel_size_a": self.align_pixel_size_a,
            "align_field_nm": self.align_field_nm,
            "align_field_ratio": self.align_field_ratio,
            "movie_field_nm": self.movie_field_nm,
            "movie_n_beads": self.movie_n_beads,
            "dose_per_tilt_e_a2": self.dose_per_tilt_e_a2,
        }

    def _common(self) -> dict:
        return dict(
            n_series=1,
            dose_per_tilt_e_a2=self.dose_per_tilt_e_a2,
            n_frames=self.n_frames,
            seed=self.seed,
            ice_thickness_nm=self.ice_thickness_nm,
            bead_diameter_nm=self.bead_diameter_nm,
            tilt_axis_deg=self.mdoc_tilt_axis_deg,
            tilt_axis_error_deg=self.tilt_axis_error_deg,
            tilt_offset_deg=self.tilt_offset_deg,
            defocus_range_um=(self.defocus_um, self.defocus_um),
            astigmatism_range_a=(self.astigmatism_a, self.astigmatism_a),
            defocus_jitter_a=self.defocus_jitter_a,
            defocus_slope_a_per_deg=self.defocus_slope_a_per_deg,
            astigmatism_drift_a=self.astigmatism_drift_a,
            astigmatism_angle_drift_deg=self.astigmatism_angle_drift_deg,
        )

    def movie_config(self) -> DemoConfig:
        """The movies: unbinned crop, a few tilts with the full series' prior dose (SerialEM)."""
        g = self.gain_variation
        return DemoConfig(
            **self._common(),
            n_tilts=self.movie_n_tilts,
            tilt_step_deg=self.movie_tilt_step_deg,
            size=(self.movie_size_px, self.movie_size_px),
            pixel_size_a=self.pixel_size_a,
            n_beads=self.movie_n_beads,
            prior_dose_scale=self.movie_tilt_step_deg / self.align_tilt_step_deg,
            motion_total_px=(0.5 * self.motion_burst_px, 1.5 * self.motion_burst_px),
            local_motion=self.local_motion_px > 0,
            local_motion_px=self.local_motion_px,
            drift_px_per_frame=self.drift_px_per_frame,
            jitter_px=self.jitter_px,
            xray_events_per_frame=self.xray_events_per_frame,
            xray_counts=self.xray_counts,
            gain_range=(1.0 - g, 1.0 + g),
            gain_stripe_amplitude=self.gain_stripe_amplitude,
        )

    def ctf_config(self) -> DemoConfig:
        """The CTF field: ``ctf_size_px``² at the unbinned pixel size (a tenth of a 5760 x 4092
        frame at the default 1536), ``ctf_n_tilts`` tilts ``ctf_tilt_step_deg`` apart with the full
        series' prior dose, beads at the alignment field's density; the motion-corrected sums are
        drawn from it (``demo.simulate_stack``'s noise), without motion, X-rays or gain."""
        density = self.n_beads * (self.ctf_size_px * self.pixel_size_a / 10.0 / self.align_field_nm) ** 2
        return DemoConfig(
            **self._common(),
            n_tilts=self.ctf_n_tilts,
            tilt_step_deg=self.ctf_tilt_step_deg,
            size=(self.ctf_size_px, self.ctf_size_px),
            pixel_size_a=self.pixel_size_a,
            n_beads=min(round(density), 4 * self.n_beads),
            prior_dose_scale=self.ctf_tilt_step_deg / self.align_tilt_step_deg,
            local_motion=False,
            xray_events_per_frame=(0, 0),
        )

    def align_config(self) -> DemoConfig:
        """The alignment series at the binned pixel size (``demo.simulate_stack``)."""
        return DemoConfig(
            **self._common(),
            n_tilts=self.align_n_tilts,
            tilt_step_deg=self.align_tilt_step_deg,
            size=(self.align_size_px, self.align_size_px),
            pixel_size_a=self.align_pixel_size_a,
            n_beads=self.n_beads,
            n_dark_views=self.n_dark_views,
            local_motion=False,
            xray_events_per_frame=(0, 0),
        )

    def demo_config(self) -> DemoConfig:
        """The movies' configuration (kept for callers of the first matrix)."""
        return self.movie_config()


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _dose_and_frames(rng: np.random.Generator, px: float, max_frames: int | None) -> tuple[float, int]:
    """(e/px/frame, frames) within ``RANGES``, aiming at a tilt dose of ``dose_per_tilt_e_a2``
    as sessions do (fine pixels get few electrons per frame, coarse ones many)."""
    lo_d, hi_d = RANGES["dose_e_px_frame"]
    lo_f, hi_f = RANGES["n_frames"]
    hi_f = min(hi_f, max_frames) if max_frames else hi_f
    per_px = float(rng.uniform(*RANGES["dose_per_tilt_e_a2"])) * px * px  # e/Å² * Å²/px = e/px
    frames = int(np.clip(round(per_px / _log_uniform(rng, lo_d, hi_d)), lo_f, hi_f))
    return float(np.clip(per_px / frames, lo_d, hi_d)), frames


def align_geometry(
    px: float,
    ice_nm: float,
    ratio: float,
    bead_nm: float,
    *,
    min_px: int,
    max_px: int,
    camera_px: int,
) -> tuple[int, int]:
    """(binning, view side px) of the alignment series: a field of ``ratio`` x ``ice_nm``, at most
    the camera's (``camera_px`` unbinned pixels), binned so that the view is at most ``max_px`` but
    no coarser than a bead ``MIN_BEAD_PX`` across (the field shrinks instead); side a multiple of
    32 within ``[min_px, max_px]``."""
    field_px = min(ratio * ice_nm * 10.0 / px, camera_px)  # unbinned px
    binning = max(1, math.ceil(field_px / max_px))
    coarsest = max(1, math.floor(bead_nm * 10.0 / MIN_BEAD_PX / px))
    binning = min(binning, coarsest)
    side = int(np.clip(round(field_px / binning / 32.0) * 32, min_px, max_px))
    return binning, side


@dataclass(frozen=True)
class SimulationSizes:
    """How the scenarios are simulated, not what is drawn (module docstring): the movie crop, the
    alignment series and the CTF field, the camera and an optional cap on the frames."""

    movie_size_px: int = 512
    movie_n_tilts: int = 7
    movie_tilt_step_deg: float = 20.0
    window_px: int = 512
    align_n_tilts: int = 41
    align_tilt_step_deg: float = 3.0
    align_min_px: int = 256
    align_max_px: int = 320
    camera_px: int = 4096
    max_frames: int | None = None
    ctf_size_px: int = 1536
    ctf_n_tilts: int = 13
    ctf_tilt_step_deg: float = 10.0


def draw_scenario(seed: int, index: int, sizes: SimulationSizes = SimulationSizes()) -> Scenario:
    """Scenario ``index`` of the matrix drawn from ``seed`` (module docstring). ``sizes`` set how it
    is simulated, not what is drawn: the same (seed, index) draws the same session."""
    rng = np.random.default_rng([seed, index, 11])
    r = RANGES
    u = lambda key: float(rng.uniform(*r[key]))  # noqa: E731
    px = _log_uniform(rng, *r["pixel_size_a"])
    dose, frames = _dose_and_frames(rng, px, sizes.max_frames)
    eer = bool(rng.uniform() < 0.25)
    ice, ratio = u("ice_thickness_nm"), u("field_ratio")
    beads = int(rng.integers(int(r["n_beads"][0]), int(r["n_beads"][1]) + 1))
    bead_nm = u("bead_diameter_nm")
    binning, side = align_geometry(
        px, ice, ratio, bead_nm, min_px=sizes.align_min_px, max_px=sizes.align_max_px, camera_px=sizes.camera_px
    )
    # keywords are evaluated in the order written: the draws below, then the seed, as ever
    return Scenario(
        name=f"S{index:02d}",
        pixel_size_a=px,
        dose_e_px_frame=dose,
        n_frames=frames,
        eer=eer,
        ice_thickness_nm=ice,
        field_ratio=ratio,
        n_beads=beads,
        bead_diameter_nm=bead_nm,
        motion_burst_px=u("motion_burst_px"),
        drift_px_per_frame=u("drift_px_per_frame"),
        jitter_px=u("jitter_px"),
        local_motion_px=u("local_motion_px"),
        defocus_um=u("defocus_um"),
        defocus_slope_a_per_deg=u("defocus_slope_a_per_deg"),
        defocus_jitter_a=u("defocus_jitter_a"),
        astigmatism_a=u("astigmatism_a"),
        astigmatism_drift_a=u("astigmatism_drift_a"),
        astigmatism_angle_drift_deg=u("astigmatism_angle_drift_deg"),
        mdoc_tilt_axis_deg=float(rng.choice(AXIS_FAMILIES_DEG) + rng.uniform(-3, 3)),
        tilt_offset_deg=u("tilt_offset_deg"),
        tilt_axis_error_deg=u("tilt_axis_error_deg"),
        xray_events_per_frame=(1, int(rng.integers(1, int(r["xray_events_per_frame"][1]) + 1))),
        xray_counts=r["xray_counts"],
        gain_variation=u("gain_variation"),
        gain_stripe_amplitude=u("gain_stripe_amplitude"),
        n_dark_views=int(rng.integers(int(r["n_dark_views"][0]), int(r["n_dark_views"][1]) + 1)),
        movie_size_px=sizes.movie_size_px,
        movie_n_tilts=sizes.movie_n_tilts,
        movie_tilt_step_deg=sizes.movie_tilt_step_deg,
        window_px=min(sizes.window_px, sizes.movie_size_px),
        align_binning=binning,
        align_size_px=side,
        align_n_tilts=sizes.align_n_tilts,
        align_tilt_step_deg=sizes.align_tilt_step_deg,
        ctf_size_px=sizes.ctf_size_px,
        ctf_n_tilts=sizes.ctf_n_tilts,
        ctf_tilt_step_deg=sizes.ctf_tilt_step_deg,
        seed=int(rng.integers(2**31)),
    )


def draw_scenarios(n: int, seed: int = 0, sizes: SimulationSizes = SimulationSizes()) -> list[Scenario]:
    """``n`` scenarios from ``seed``, all simulated with ``sizes``."""
    return [draw_scenario(seed, i, sizes) for i in range(n)]
