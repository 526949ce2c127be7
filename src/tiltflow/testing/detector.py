"""Movie frames from a noise-free tilt image: beam-induced motion, gain, counting noise, X-rays,
hot pixels.

Frame shifts follow DESIGN.md §2: a feature at p in the aligned sum lies at
``p + shift[f] + local(p, f)`` in frame f. Shifts are mean-zero over the frames, and so are the
local weights, so the frame average has the geometry of the tilt image. The local field is a
quadratic polynomial (``local_displacement_px``). Counting: ``raw = Poisson(expected / gain)``
so that ``raw * gain`` (the gain-corrected frame) has mean ``expected``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tiltflow.core.fourier import shift_image_2d

ROW_CHUNK = 1024  # rows resampled at a time
LOCAL_BASIS = "[xn, yn, xn*yn, xn**2 - 1/3, yn**2 - 1/3], xn = (x - (nx-1)/2) / (nx/2), same for y"


def motion_weights(n_frames: int, decay_frames: float) -> np.ndarray:
    """Smooth path shape ``1 - exp(-(f + 1) / decay)`` per frame, scaled to span 1, mean zero."""
    f = np.arange(n_frames, dtype=np.float64) + 1.0
    w = 1.0 - np.exp(-f / decay_frames)
    span = w[-1] - w[0] if n_frames > 1 else 1.0
    return (w - w.mean()) / span


def global_trajectory_px(
    n_frames: int, rng: np.random.Generator, *, total_px: tuple[float, float] = (0.5, 3.0)
) -> np.ndarray:  # (n_frames, 2) x, y shifts, mean zero
    """Beam-induced drift: a curved path, fastest in the first frames, ``total_px`` end to end."""
    length = rng.uniform(*total_px)
    w = motion_weights(n_frames, decay_frames=rng.uniform(0.8, 2.5))
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    bend = rng.uniform(-0.25, 0.25) * length * np.sin(np.pi * (w - w[0]))  # 0 at both ends
    path = length * w[:, None] * direction + bend[:, None] * direction[::-1] * [-1, 1]
    return path - path.mean(axis=0)


def add_drift_and_jitter(
    trajectory_px: np.ndarray,
    rng: np.random.Generator,
    *,
    drift_px_per_frame: float,
    jitter_px: float,
) -> np.ndarray:  # (n_frames, 2) mean zero
    """A beam-induced path plus a linear stage drift (random direction) and per-frame jitter."""
    n = trajectory_px.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    drift = drift_px_per_frame * np.arange(n)[:, None] * np.array([np.cos(angle), np.sin(angle)])
    path = trajectory_px + drift + rng.normal(0.0, jitter_px, (n, 2))
    return path - path.mean(axis=0)


def local_displacement_px(
    points_xy: torch.Tensor,  # (..., 2) raw pixel coordinates (x, y)
    *,
    coefficients_px: torch.Tensor,  # (2, 5) x and y displacement per basis function
    frame_weight: float,
    image_shape: tuple[int, int],  # (ny, nx)
) -> torch.Tensor:  # (..., 2) local displacement (x, y) px in this frame
    """Local beam-induced motion ``frame_weight * coefficients @ basis(p)`` (``LOCAL_BASIS``)."""
    p = points_xy if points_xy.is_floating_point() else points_xy.to(torch.float64)
    c = (frame_weight * coefficients_px.to(p)).tolist()
    dx, dy = _poly2_field(p[..., 0], p[..., 1], c, image_shape)
    return torch.stack([dx, dy], -1)


def _poly2_field(
    x: torch.Tensor, y: torch.Tensor, c: list[list[float]], image_shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) of the quadratic field with (weighted) coefficients ``c`` (2 x 5 nested list)."""
    ny, nx = image_shape
    xn = (x - (nx - 1) / 2) / (nx / 2)
    yn = (y - (ny - 1) / 2) / (ny / 2)
    x2, y2, xy = xn * xn - 1 / 3, yn * yn - 1 / 3, xn * yn
    dx = c[0][0] * xn + c[0][1] * yn + c[0][2] * xy + c[0][3] * x2 + c[0][4] * y2
    dy = c[1][0] * xn + c[1][1] * yn + c[1][2] * xy + c[1][3] * x2 + c[1][4] * y2
    return dx, dy


def local_motion_model(n_frames: int, rng: np.random.Generator, *, amplitude_px: float = 0.6) -> dict:
    """Random quadratic deformation: coefficients (2, 5) px and mean-zero frame weights."""
    coefficients = rng.normal(0.0, amplitude_px / 2, (2, 5))
    weights = motion_weights(n_frames, decay_frames=rng.uniform(0.8, 2.5))
    return {
        "model": "poly2",
        "basis": LOCAL_BASIS,
        "coefficients_px": coefficients.tolist(),
        "frame_weights": weights.tolist(),
        "displacement": "frame_weights[f] * coefficients_px @ basis(x, y), x and y in raw px",
    }


def bspline_coefficients_2x(image: torch.Tensor) -> torch.Tensor:  # (2h, 2w)
    """Cubic B-spline coefficients of the band-limited 2x upsampled image (index j is x = j / 2):
    the spectrum is zero-padded and divided by the B-spline response ``(2 + cos 2 pi k) / 3``."""
    h, w = image.shape[-2:]
    spec = torch.fft.rfft2(image)
    out = torch.zeros((2 * h, w + 1), dtype=spec.dtype, device=spec.device)
    cols = w // 2 + 1
    pos, neg = (h + 1) // 2, h // 2  # rows 0..pos-1 are k >= 0, the last `neg` rows k < 0
    out[:pos, :cols] = spec[:pos]
    out[2 * h - neg :, :cols] = spec[h - neg :]
    if h % 2 == 0:  # split the Nyquist row between +N and -N
        out[2 * h - neg] *= 0.5
        out[h // 2] = out[2 * h - neg]
    if w % 2 == 0:  # the Nyquist column stands for +N and -N
        out[:, w // 2] *= 0.5
    ky = torch.fft.fftfreq(2 * h, device=spec.device)[:, None]
    kx = torch.fft.rfftfreq(2 * w, device=spec.device)[None, :]
    response = (2 + torch.cos(2 * torch.pi * ky)) * (2 + torch.cos(2 * torch.pi * kx)) / 9
    return torch.fft.irfft2(out / response, s=(2 * h, 2 * w)) * 4.0


def sample_bspline_2d(coefficients: torch.Tensor, points_x: torch.Tensor, points_y: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline interpolation of the coefficient image (h, w) at pixel coordinates
    ``points_x``, ``points_y`` (ny, nx); four bilinear look-ups (positive weights merge taps)."""
    h, w = coefficients.shape[-2:]

    def taps(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x0 = x.floor()
        t = x - x0
        t2 = t * t
        u = 1 - t
        w1 = 0.5 * t2 * t - t2 + 2 / 3
        g0 = u * u * u / 6 + w1
        return g0, 1 - g0, x0 - 1 + w1 / g0, x0 + 1 + (t2 * t / 6) / (1 - g0)

    gx0, gx1, hx0, hx1 = taps(points_x)
    gy0, gy1, hy0, hy1 = taps(points_y)
    grid = torch.empty((4, *points_x.shape, 2), dtype=coefficients.dtype, device=coefficients.device)
    for i, (gx, gy) in enumerate([(hx0, hy0), (hx1, hy0), (hx0, hy1), (hx1, hy1)]):
        grid[i, ..., 0] = gx * (2.0 / (w - 1)) - 1
        grid[i, ..., 1] = gy * (2.0 / (h - 1)) - 1
    v = F.grid_sample(
        coefficients[None, None],
        grid.reshape(1, -1, points_x.shape[-1], 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    v = v.reshape(4, *points_x.shape)
    return gy0 * (gx0 * v[0] + gx1 * v[1]) + gy1 * (gx0 * v[2] + gx1 * v[3])


def move_frame(
    canvas: torch.Tensor,  # (ny + 2m, nx + 2m) tilt image with margin
    shift_px: tuple[float, float],
    *,
    margin_px: int,
    image_shape: tuple[int, int],  # (ny, nx)
    local: dict | None = None,
    frame_index: int = 0,
    spline_2x: torch.Tensor | None = None,  # bspline_coefficients_2x(canvas), reused per movie
) -> torch.Tensor:  # (ny, nx)
    """One noise-free frame cropped from the canvas moved by ``shift_px`` and, if given, deformed
    by the local field. Without local motion: an exact Fourier shift. With it: frame pixel q shows
    the sum position p solving ``p + s + d(p) = q`` (two fixed-point steps from ``p = q - s``),
    interpolated by a cubic B-spline of the 2x band-limited upsampled canvas (error ~1e-3 px)."""
    ny, nx = image_shape
    m = margin_px
    dev = canvas.device
    if local is None:
        moved = shift_image_2d(canvas, torch.tensor(shift_px, dtype=torch.float32, device=dev))
        return moved[m : m + ny, m : m + nx]
    spline = bspline_coefficients_2x(canvas) if spline_2x is None else spline_2x
    c = (float(local["frame_weights"][frame_index]) * np.asarray(local["coefficients_px"])).tolist()
    qx = torch.arange(nx, dtype=torch.float32, device=dev)[None, :] - shift_px[0]  # q - s
    out = torch.empty((ny, nx), dtype=spline.dtype, device=dev)
    for y0 in range(0, ny, ROW_CHUNK):  # bounded memory for camera-size frames
        qy = torch.arange(y0, min(y0 + ROW_CHUNK, ny), dtype=torch.float32, device=dev)[:, None] - shift_px[1]
        dx, dy = _poly2_field(qx, qy, c, image_shape)
        dx, dy = _poly2_field(qx - dx, qy - dy, c, image_shape)
        # canvas pixel p + m = q - s - d + m, at twice the coordinate in the 2x spline
        out[y0 : y0 + ROW_CHUNK] = sample_bspline_2d(spline, 2.0 * (qx - dx + m), 2.0 * (qy - dy + m))
    return out


def make_gain(
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    smooth_range: tuple[float, float] = (0.8, 1.2),
    pixel_noise: float = 0.02,
) -> np.ndarray:  # (ny, nx) float32, multiply raw counts by it
    """Gain reference: a smooth field spanning ``smooth_range`` times (1 + pixel_noise * N(0,1))."""
    ny, nx = image_shape
    y = np.linspace(-1, 1, ny)[:, None]
    x = np.linspace(-1, 1, nx)[None, :]
    field = np.zeros((ny, nx))
    for _ in range(6):
        kx, ky = rng.uniform(0.3, 2.0, 2)
        field += np.cos(np.pi * (kx * x + ky * y * rng.choice([-1, 1])) + rng.uniform(0, 2 * np.pi))
    field = (field - field.min()) / (np.ptp(field) + 1e-12)
    smooth = smooth_range[0] + (smooth_range[1] - smooth_range[0]) * field
    gain = smooth * (1.0 + pixel_noise * rng.standard_normal((ny, nx)))
    return gain.astype(np.float32)


def add_gain_stripes(
    gain: np.ndarray,
    rng: np.random.Generator,
    *,
    amplitude: float,
    width_px: int = 16,
) -> np.ndarray:  # (ny, nx) float32
    """Column stripes of a camera's readout sectors: each block of ``width_px`` columns times
    ``1 + amplitude * N(0, 1)`` (clipped at 0.5), and a weaker ripple of single columns."""
    ny, nx = gain.shape
    blocks = np.clip(1.0 + amplitude * rng.standard_normal(-(-nx // width_px)), 0.5, None)
    columns = np.repeat(blocks, width_px)[:nx] * (1.0 + 0.25 * amplitude * rng.standard_normal(nx))
    return (gain * columns[None, :]).astype(np.float32)


def draw_xray_events(
    n_frames: int,
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    events_per_frame: tuple[int, int] = (1, 5),
    counts: tuple[float, float] = (40.0, 250.0),
    streak_max_px: int = 5,
) -> list[dict]:
    """X-ray events anywhere on the frame, borders included: a count drawn uniformly from
    ``events_per_frame`` per frame; each a single pixel (50 %), a pair (25 %) or a straight streak
    of 3..``streak_max_px`` pixels (25 %); the first pixel ``counts`` raw counts above the frame,
    the others 30-100 % of it. One dict per pixel, as ``draw_xray_hits``."""
    ny, nx = image_shape
    steps = [(1, 0), (0, 1), (1, 1), (1, -1)]
    hits: list[dict] = []
    n_events = 0
    for f in range(n_frames):
        for _ in range(int(rng.integers(events_per_frame[0], events_per_frame[1] + 1))):
            x, y = int(rng.integers(0, nx)), int(rng.integers(0, ny))
            peak = rng.uniform(*counts)
            kind = rng.choice(3, p=[0.5, 0.25, 0.25])
            length = 1 if kind == 0 else 2 if kind == 1 else int(rng.integers(3, max(streak_max_px, 3) + 1))
            dx, dy = steps[rng.integers(4)]
            pixels = [
                (x + k * dx, y + k * dy, peak * (1.0 if k == 0 else rng.uniform(0.3, 1.0))) for k in range(length)
            ]
            hits += [
                {"frame": f, "x": qx, "y": qy, "excess_counts": max(int(round(e)), 1), "event": n_events}
                for qx, qy, e in pixels
                if 0 <= qx < nx and 0 <= qy < ny
            ]
            n_events += 1
    return hits


def make_hot_pixels(
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    n: int,
    excess_counts: tuple[float, float] = (40.0, 150.0),
) -> list[dict]:
    """Persistent hot pixels: the same raw excess (counts) in every frame of every movie."""
    ny, nx = image_shape
    flat = rng.choice(ny * nx, size=min(n, ny * nx), replace=False)
    return [
        {"x": int(i % nx), "y": int(i // nx), "excess_counts_per_frame": int(round(rng.uniform(*excess_counts)))}
        for i in flat
    ]


def draw_xray_hits(
    n_frames: int,
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    hits_per_frame: float,
    frame_sd_counts: float,
    excess_sd: tuple[float, float] = (10.0, 200.0),
) -> list[dict]:
    """X-ray events: Poisson(hits_per_frame) per frame, each 1-3 adjacent pixels, the first
    ``excess_sd`` x frame SD above the counts, neighbours 30-100 % of it. One dict per pixel."""
    ny, nx = image_shape
    hits: list[dict] = []
    n_events = 0
    for f in range(n_frames):
        for _ in range(rng.poisson(hits_per_frame)):
            x, y = int(rng.integers(1, nx - 1)), int(rng.integers(1, ny - 1))
            excess = rng.uniform(*excess_sd) * frame_sd_counts
            pixels = [(x, y, excess)]
            for _ in range(int(rng.choice([0, 1, 2], p=[0.6, 0.25, 0.15]))):
                dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][rng.integers(4)]
                qx, qy = pixels[-1][0] + dx, pixels[-1][1] + dy
                if 0 <= qx < nx and 0 <= qy < ny and (qx, qy) not in [p[:2] for p in pixels]:
                    pixels.append((qx, qy, excess * rng.uniform(0.3, 1.0)))
            hits += [
                {"frame": f, "x": qx, "y": qy, "excess_counts": max(int(round(e)), 1), "event": n_events}
                for qx, qy, e in pixels
            ]
            n_events += 1
    return hits


def count_frame(
    expected: np.ndarray,  # (ny, nx) expected gain-corrected counts
    gain: np.ndarray,  # (ny, nx)
    rng: np.random.Generator,
    *,
    frame_index: int,
    hot_pixels: list[dict],
    xray_hits: list[dict],
) -> np.ndarray:  # (ny, nx) int64 raw counts
    """``Poisson(expected / gain)`` plus the hot pixels and this frame's X-ray pixels."""
    raw = rng.poisson(np.clip(expected.astype(np.float64) / gain, 0.0, None))
    for hp in hot_pixels:
        raw[hp["y"], hp["x"]] += hp["excess_counts_per_frame"]
    for h in xray_hits:
        if h["frame"] == frame_index:
            raw[h["y"], h["x"]] += h["excess_counts"]
    return raw


def to_movie_dtype(raw: np.ndarray) -> np.ndarray:
    """uint8 when every count fits, else uint16 (clipped at 65535)."""
    if raw.max(initial=0) <= 255:
        return raw.astype(np.uint8)
    return raw if raw.dtype == np.uint16 else np.clip(raw, 0, 65535).astype(np.uint16)


def frame_sd(mean_counts: float) -> float:
    """Poisson SD of a pixel's counts in a frame of this mean (at least 1)."""
    return math.sqrt(max(mean_counts, 1.0))
