"""The simulated demo session behind ``tiltflow demo-data``: truth first, pixels from the truth.

``write_demo_dataset(DIR, DemoConfig())`` writes, one movie at a time:

- ``DIR/<tsId>.mdoc`` per series (SerialEM or Tomo5 flavour, ``mdoc_writer``);
- ``DIR/frames/<movie>`` LZW-compressed multi-page TIFF movies ``(n_frames, ny, nx)``, uint8 when
  every count fits, else uint16 (raw counts, not gain-corrected);
- ``DIR/gain_ref.gain`` float32 TIFF ``(ny, nx)``: gain-corrected = raw * gain;
- ``DIR/truth.json``: every true value (``acquisition.CONVENTIONS`` states each convention).

Tests of later steps can re-render any tilt without noise from the truth: ``render_truth_tilt``,
``expected_frames``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tifffile
import torch

from tiltflow.testing import detector
from tiltflow.testing.acquisition import CONVENTIONS, plan_series
from tiltflow.testing.config import EXTENSION_DEFAULTS, DemoConfig
from tiltflow.testing.imaging import ImageCtf, ImageExposure, TiltView, render_tilt_image
from tiltflow.testing.mdoc_writer import format_mdoc
from tiltflow.testing.phantom import specimen_from_dict

MARGIN_PX = 32  # canvas margin: > frame shift + local motion + resampling support
GAIN_FILE = "gain_ref.gain"
TRUTH_FILE = "truth.json"


def make_detector(config: DemoConfig) -> dict:
    """The session's camera (same for every series): gain ``(ny, nx)`` and hot pixels."""
    nx, ny = config.size
    rng = np.random.default_rng([config.seed, 7919])
    gain = detector.make_gain((ny, nx), rng, smooth_range=config.gain_range, pixel_noise=config.gain_pixel_noise)
    hot = detector.make_hot_pixels((ny, nx), rng, n=config.n_hot_pixels)
    if config.gain_stripe_amplitude > 0:
        gain = detector.add_gain_stripes(
            gain,
            np.random.default_rng([config.seed, 7919, 1]),
            amplitude=config.gain_stripe_amplitude,
            width_px=config.gain_stripe_width_px,
        )
    return {"gain": gain, "hot_pixels": hot}


def series_rng(config: DemoConfig, index: int) -> np.random.Generator:
    """The generator ``write_demo_dataset`` hands to ``simulate_series`` for series ``index``."""
    return np.random.default_rng([config.seed, 1, index])


def render_truth_tilt(
    series: dict,
    acquisition_index: int,
    *,
    margin_px: int = 0,
    with_damage: bool = True,
    with_texture: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:  # (ny + 2m, nx + 2m) float32
    """Noise-free tilt image (expected gain-corrected counts per frame) of one tilt of a series
    truth dict, at the frame-average geometry; canvas pixel [y + m, x + m] is raw pixel (x, y)."""
    t = series["tilts"][acquisition_index]
    nx, ny = series["image_size"]
    sx, sy = t["stage_shift_px"]
    return render_tilt_image(
        specimen_from_dict(series["specimen"]),
        TiltView(
            tilt_angle_deg=t["true_tilt_angle_deg"],
            tilt_axis_deg=series["tilt_axis_deg"],
            image_shape=(ny, nx),
            shift_px=(sx, sy),
            margin_px=margin_px,
        ),
        ImageCtf(
            defocus_u_a=t["defocus_u_a"],
            defocus_v_a=t["defocus_v_a"],
            astigmatism_angle_deg=t["astigmatism_angle_deg"],
            voltage_kv=series["voltage_kv"],
            cs_mm=series["cs_mm"],
            amplitude_contrast=series["amplitude_contrast"],
        ),
        ImageExposure(
            exposure_e_a2=t["damage_exposure_e_a2"] if with_damage else 0.0,
            mean_counts=t["mean_counts_per_frame_px"],
            ice_texture_rad=series["ice_texture_rad"] if with_texture else 0.0,
            texture_seed=t["texture_seed"],
        ),
        device=device,
    )


def iter_expected_frames(
    series: dict, acquisition_index: int, *, device: torch.device | str | None = None
) -> Iterator[torch.Tensor]:
    """Noise-free frames ``(ny, nx)`` of one movie, one at a time (gain-corrected counts)."""
    t = series["tilts"][acquisition_index]
    nx, ny = series["image_size"]
    canvas = render_truth_tilt(series, acquisition_index, margin_px=MARGIN_PX, device=device)
    spline = detector.bspline_coefficients_2x(canvas) if t["local_motion"] else None
    for f, shift in enumerate(t["frame_shifts_px"]):
        yield detector.move_frame(
            canvas,
            tuple(shift),
            margin_px=MARGIN_PX,
            image_shape=(ny, nx),
            local=t["local_motion"],
            frame_index=f,
            spline_2x=spline,
        )


def expected_frames(series: dict, acquisition_index: int, **kw) -> torch.Tensor:
    """All noise-free frames ``(n_frames, ny, nx)`` of one movie (small data only)."""
    return torch.stack(list(iter_expected_frames(series, acquisition_index, **kw)))


def simulate_movie(series: dict, acquisition_index: int, camera: dict) -> np.ndarray:
    """Raw counts ``(n_frames, ny, nx)`` uint8/uint16 of one movie, seeded by the truth."""
    t = series["tilts"][acquisition_index]
    rng = np.random.default_rng(t["noise_seed"])
    nx, ny = series["image_size"]
    movie = np.empty((series["n_frames"], ny, nx), dtype=np.uint16)
    for f, frame in enumerate(iter_expected_frames(series, acquisition_index)):
        raw = detector.count_frame(
            frame.cpu().numpy(),
            camera["gain"],
            rng,
            frame_index=f,
            hot_pixels=camera["hot_pixels"],
            xray_hits=t["xray_hits"],
        )
        movie[f] = np.clip(raw, 0, 65535)
    return detector.to_movie_dtype(movie)


def simulate_series(config: DemoConfig, index: int, rng: np.random.Generator) -> tuple[Iterator[np.ndarray], dict]:
    """Truth of series ``index`` and a lazy iterator over its movies in acquisition order.

    The truth is complete before the first movie is rendered; each movie is rendered only when
    the iterator reaches it, so a series is never held in memory.
    """
    truth = plan_series(config, index, rng)
    camera = make_detector(config)
    truth["hot_pixels"] = camera["hot_pixels"]
    movies = (simulate_movie(truth, i, camera) for i in range(len(truth["tilts"])))
    return movies, truth


def _config_dict(config: DemoConfig) -> dict:
    """``asdict(config)`` without the scenario extensions left at their defaults."""
    d = asdict(config)
    for k in EXTENSION_DEFAULTS:
        if k not in config.extension_values():
            d.pop(k)
    return d


def _clear_previous(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite an earlier dataset unless ``force``; then remove only its files."""
    old = [out_dir / TRUTH_FILE, out_dir / GAIN_FILE, out_dir / "frames", *out_dir.glob("*.mdoc")]
    old = [p for p in old if p.exists()]
    if old and not force:
        raise FileExistsError(
            f"{out_dir} already holds a demo dataset ({old[0].name}); "
            "choose an empty folder or pass force=True (--force)"
        )
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def write_demo_dataset(out_dir: Path | str, config: DemoConfig, *, force: bool = False) -> dict:
    """Write the simulated session (module docstring) and return its truth (also ``truth.json``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir, force)
    (out_dir / "frames").mkdir()
    camera = make_detector(config)
    tifffile.imwrite(out_dir / GAIN_FILE, camera["gain"], photometric="minisblack")
    nx, ny = config.size
    all_series: list[dict] = []
    truth = {
        "format": "tiltflow-demo-truth",
        "version": 1,
        "config": _config_dict(config),
        "conventions": CONVENTIONS,
        "detector": {
            "gain_file": GAIN_FILE,
            "image_size": [nx, ny],
            "hot_pixels": camera["hot_pixels"],
            "gain_convention": CONVENTIONS["gain"],
        },
        "series": all_series,
    }
    for index in range(config.n_series):
        movies, series = simulate_series(config, index, series_rng(config, index))
        for tilt, movie in zip(series["tilts"], movies, strict=False):
            tifffile.imwrite(out_dir / tilt["movie"], movie, compression="lzw", photometric="minisblack")
        (out_dir / series["mdoc"]).write_text(format_mdoc(series), newline="\r\n")
        all_series.append(series)
    text = json.dumps(truth, indent=1)
    tmp = out_dir / (TRUTH_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out_dir / TRUTH_FILE)
    return json.loads(text)  # exactly what the file holds (tuples as lists)


def simulate_stack(config: DemoConfig, index: int = 0) -> tuple[np.ndarray, dict]:
    """A tilt series as the aligned sums of its movies would give it, without the movies: truth of
    series ``index`` (as ``simulate_series`` plans it) and a float32 stack ``(n_tilts, ny, nx)`` in
    tilt-angle order of gain-corrected counts, ``Poisson(n_frames * expected)`` per pixel (the
    frame-average geometry; no motion, X-rays, hot pixels or gain). For alignment at a binned
    pixel size: give ``config.pixel_size_a`` the binned size (the dose per Å² stays)."""
    truth = plan_series(config, index, series_rng(config, index))
    rng = np.random.default_rng([config.seed, 3, index])
    nx, ny = config.size
    stack = np.empty((len(truth["tilts"]), ny, nx), dtype=np.float32)
    for k, i in enumerate(truth["tilt_order_by_angle"]):
        expected = render_truth_tilt(truth, i).cpu().numpy().astype(np.float64)
        stack[k] = rng.poisson(np.clip(expected * config.n_frames, 0.0, None))
    return stack, truth
