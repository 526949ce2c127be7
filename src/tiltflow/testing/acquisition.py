"""The acquisition plan of one simulated tilt series: every true value, drawn before any pixel.

``plan_series`` returns the JSON-ready truth of a series (the ``truth.json`` entry); the images are
then rendered from this truth alone (``tiltflow.testing.demo``), so truth and pixels cannot drift.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import torch

from tiltflow.core import geometry
from tiltflow.testing import detector
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.phantom import SpecimenContents, make_specimen, specimen_to_dict

SESSION_START = datetime(2024, 3, 15, 9, 0, 0)
WINDOWS_FRAMES_DIR = "X:\\Session\\frames\\"

CONVENTIONS = {
    "arrays": "(..., y, x); raw pixel (x, y) = column, row, 0-based; image centre ((nx-1)/2, (ny-1)/2)",
    "specimen_frame": "tiltflow.core.geometry: px, origin at the volume centre, tilt axis +y, z towards the source",
    "true_tilt_angle": "mdoc TiltAngle + tilt_offset_deg",
    "tilt_axis": "degrees from image +y, counter-clockwise (DESIGN.md); mdoc_tilt_axis_deg is what the mdoc says",
    "projection": "raw = geometry.project_points(xyz, true angles, true tilt axis, stage_shift_px)",
    "defocus": "underfocus positive, Å, at the raw image centre; at raw pixel p: defocus_u/v_a + "
    "geometry.defocus_offset_a(p, true angle, true axis, shift_px=None) "
    "(the specimen mid-plane)",
    "frame_shifts": "a feature at p in the tilt image (aligned sum) lies at p + frame_shifts_px[f] "
    "(+ local motion) in frame f; mean zero over frames, so the tilt image has the "
    "frame-average geometry",
    "dose": "e/Å², incident; prior = before this tilt in acquisition order; accumulated = prior + dose",
    "damage": "Grant & Grigorieff filter at exposure prior + dose / 2 (mid-exposure)",
    "gain": "raw = Poisson(expected / gain); gain-corrected = raw * gain; gain_ref.gain is a float32 TIFF",
    "xf": "IMOD .xf rows of the true alignment (geometry.xf_from_geometry), in tilt-angle order",
    "mean_counts": "expected gain-corrected counts per pixel per frame of the empty field",
}


def dose_symmetric_order(n_tilts: int, step_deg: float, group_size: int = 2) -> list[float]:
    """Nominal tilt angles in acquisition order (see ``DemoConfig``'s docstring)."""
    k = np.arange(n_tilts) - (n_tilts - 1) // 2
    pos = [float(step_deg * i) for i in k if i > 0]
    neg = [float(step_deg * i) for i in k[::-1] if i < 0]
    order = [0.0]
    take, side = max(group_size - 1, 1), 1
    while pos or neg:
        src = pos if (side > 0 and pos) or not neg else neg
        order += src[:take]
        del src[:take]
        take, side = group_size, -side
    return order


def movie_name(config: DemoConfig, ts_id: str, index: int, nominal_deg: float, when: datetime) -> str:
    """SerialEM: ``<tsId>_<NNN>_<angle>.tif``; Tomo5: ``<Position>_<NNN, 1-based>_<angle>_<date>_
    <time>_fractions.tiff`` with the nominal angle rounded to 2 decimals."""
    if config.flavour == "tomo5":
        return f"{ts_id}_{index + 1:03d}_{nominal_deg:.2f}_{when:%Y%m%d}_{when:%H%M%S}_fractions.tiff"
    return f"{ts_id}_{index:03d}_{nominal_deg:.1f}.tif"


def _movie_events(config: DemoConfig, rng: np.random.Generator, flux: float, extra: np.random.Generator) -> dict:
    """Frame shifts, local motion and X-ray hits of one movie (truth entries); ``extra`` draws
    the scenario extensions (drift, jitter, X-ray events) so that ``rng`` is used as before."""
    nx, ny = config.size
    traj = detector.global_trajectory_px(config.n_frames, rng, total_px=config.motion_total_px)
    if config.drift_px_per_frame or config.jitter_px:
        traj = detector.add_drift_and_jitter(
            traj, extra, drift_px_per_frame=config.drift_px_per_frame, jitter_px=config.jitter_px
        )
    local = None
    if config.local_motion:
        local = detector.local_motion_model(config.n_frames, rng, amplitude_px=config.local_motion_px)
    if config.xray_events_per_frame is not None:
        xrays = detector.draw_xray_events(
            config.n_frames,
            (ny, nx),
            extra,
            events_per_frame=config.xray_events_per_frame,
            counts=config.xray_counts,
            streak_max_px=config.xray_streak_max_px,
        )
    else:
        xrays = detector.draw_xray_hits(
            config.n_frames,
            (ny, nx),
            rng,
            hits_per_frame=config.xray_hits_per_frame_mpx * nx * ny / 1e6,
            frame_sd_counts=detector.frame_sd(flux),
        )
    return {
        "frame_shifts_px": traj.tolist(),
        "motion_path_px": float(np.linalg.norm(np.diff(traj, axis=0), axis=1).sum()),
        "local_motion": local,
        "xray_hits": xrays,
    }


def plan_series(config: DemoConfig, index: int, rng: np.random.Generator) -> dict:
    """Draw specimen, geometry, defocus, doses, motion and detector events of series ``index``."""
    nx, ny = config.size
    shape = (ny, nx)
    ts_id = f"Position_{index + 1}" if config.flavour == "tomo5" else f"TS_{index + 1:02d}"
    nominal = dose_symmetric_order(config.n_tilts, config.tilt_step_deg, config.dose_group_size)
    n = len(nominal)
    axis = config.tilt_axis_deg + rng.uniform(-1, 1) * config.tilt_axis_jitter_deg
    offset = rng.uniform(-1, 1) * config.tilt_offset_max_deg
    if config.tilt_axis_error_deg is not None:  # drawn above all the same: later draws unchanged
        axis = config.tilt_axis_deg + config.tilt_axis_error_deg
    if config.tilt_offset_deg is not None:
        offset = config.tilt_offset_deg
    extra = np.random.default_rng([config.seed, 2, index])  # the extensions' own generator
    stored = np.round(np.array(nominal) + rng.uniform(-0.03, 0.03, n), 5)
    true = stored + offset
    n_beads, n_ves, n_blobs = config.object_counts()
    specimen = make_specimen(
        rng,
        SpecimenContents(config.bead_diameter_nm, n_beads=n_beads, n_vesicles=n_ves, n_blobs=n_blobs),
        image_shape=shape,
        pixel_size_a=config.pixel_size_a,
        ice_thickness_nm=config.ice_thickness_nm,
        max_tilt_deg=float(np.abs(true).max()),
    )
    # stage shifts: random walk in acquisition order
    steps = rng.normal(0.0, config.stage_shift_step_px, (n, 2))
    steps[0] *= 0.5
    limit = config.stage_shift_max_px
    shifts = np.clip(np.cumsum(steps, axis=0), -limit, limit)
    # defocus
    df_series = rng.uniform(*config.defocus_range_um) * 1e4
    astig = rng.uniform(*config.astigmatism_range_a)
    astig_angle = rng.uniform(0.0, 180.0)
    df = df_series + rng.uniform(-1, 1, n) * config.defocus_jitter_a
    df = df + config.defocus_slope_a_per_deg * true  # 0 by default
    ramp = np.arange(n) / max(n - 1, 1) - 0.5  # slow drift in acquisition order
    astig_i = np.clip(astig + config.astigmatism_drift_a * ramp, 0.0, None)
    angle_i = astig_angle + config.astigmatism_angle_drift_deg * ramp
    dark = set(np.argsort(-np.abs(np.array(nominal)), kind="stable")[: config.n_dark_views].tolist())
    # doses
    dose = config.dose_per_tilt_e_a2
    prior = dose * np.arange(n) * config.prior_dose_scale  # scale 1 by default
    px2 = config.pixel_size_a**2
    exposure_s = dose * px2 / config.dose_rate_e_px_s  # e/Å² * Å²/px / (e/px/s) = s
    beads_raw = geometry.project_points(
        specimen.bead_xyz_px,
        tilt_angles_deg=torch.tensor(true),
        tilt_axis_deg=axis,
        shifts_px=torch.tensor(shifts),
        image_shape=shape,
    )
    by_angle = [int(i) for i in np.argsort(stored, kind="stable")]
    xf = geometry.xf_from_geometry(axis, torch.tensor(shifts[by_angle]))
    when = SESSION_START + timedelta(minutes=45 * index)
    tilts = []
    for i in range(n):
        when += timedelta(seconds=exposure_s + 12.0 + float(rng.uniform(0, 6)))
        when = when.replace(microsecond=0)
        flux = (
            dose
            / config.n_frames
            * px2
            * math.exp(-config.ice_thickness_nm / math.cos(math.radians(true[i])) / config.ice_mean_free_path_nm)
        )
        if i in dark:
            flux *= config.dark_view_factor
        name = movie_name(config, ts_id, i, nominal[i], when)
        inside = (
            (beads_raw[i, :, 0] >= 0)
            & (beads_raw[i, :, 0] <= nx - 1)
            & (beads_raw[i, :, 1] >= 0)
            & (beads_raw[i, :, 1] <= ny - 1)
        )
        tilts.append(
            {
                "acquisition_order": i,
                "z_value": i,
                "stack_index": by_angle.index(i),
                "nominal_tilt_angle_deg": nominal[i],
                "mdoc_tilt_angle_deg": float(stored[i]),
                "true_tilt_angle_deg": float(true[i]),
                "dose_e_a2": dose,
                "prior_dose_e_a2": float(prior[i]),
                "accumulated_dose_e_a2": float(prior[i] + dose),
                "damage_exposure_e_a2": float(prior[i] + dose / 2),
                "movie": f"frames/{name}",
                "subframe_path": WINDOWS_FRAMES_DIR + name,
                "datetime": when.isoformat(),
                "exposure_time_s": exposure_s,
                **_movie_events(config, rng, flux, extra),
                "stage_shift_px": shifts[i].tolist(),
                "defocus_u_a": float(df[i] + astig_i[i] / 2),
                "defocus_v_a": float(df[i] - astig_i[i] / 2),
                "astigmatism_angle_deg": float(angle_i[i]) if config.astigmatism_angle_drift_deg else astig_angle,
                "mean_counts_per_frame_px": flux,
                "bead_projections_px": beads_raw[i].tolist(),
                "bead_in_image": inside.tolist(),
                "xf": xf[by_angle.index(i)].tolist(),
                "noise_seed": int(rng.integers(2**32)),
                "texture_seed": int(rng.integers(2**32)),
                **({"dark_view": i in dark} if config.n_dark_views else {}),
            }
        )
    return {
        "tsId": ts_id,
        "mdoc": f"{ts_id}.mdoc",
        "flavour": config.flavour,
        "tilt_axis_deg": axis,
        "mdoc_tilt_axis_deg": config.tilt_axis_deg,
        "tilt_offset_deg": offset,
        "pixel_size_a": config.pixel_size_a,
        "voltage_kv": config.voltage_kv,
        "cs_mm": config.cs_mm,
        "amplitude_contrast": config.amplitude_contrast,
        "image_size": [nx, ny],
        "n_frames": config.n_frames,
        "n_tilts": n,
        "dose_per_tilt_e_a2": dose,
        "dose_per_frame_e_a2": dose / config.n_frames,
        "ice_thickness_nm": config.ice_thickness_nm,
        "ice_texture_rad": config.ice_texture_rad,
        "defocus_series_a": df_series,
        "astigmatism_a": astig,
        "target_defocus_um": -round(df_series / 5e3) / 2,
        "bead_xyz_px": specimen.bead_xyz_px.tolist(),
        "specimen": specimen_to_dict(specimen),
        "tilt_order_by_angle": by_angle,
        "xf_rows": xf.tolist(),
        "conventions": CONVENTIONS,
        "tilts": tilts,
    }
