"""Truth-side measures of the accuracy matrix: the motion oracle, X-ray hits left in a sum,
bead pixels touched, and alignment against the true geometry (``accuracy_matrix.py``).

Conventions: DESIGN.md §2 (frame shifts: a feature at p in the sum lies at p + shift in the frame).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tiltflow.core import geometry
from tiltflow.core.align import alignment_residual_against_truth
from tiltflow.testing import detector
from tiltflow.testing.demo import iter_expected_frames

HIT_RADIUS_PX = 3  # a hit's left-overs (ringing lobes) are looked for this far from its pixels
HIT_SD = 5.0  # a hit remains while its left-over reaches this many SD of the local noise


def _taper(h: int, w: int) -> torch.Tensor:
    """Separable cosine edge taper, 1/8 of each side."""

    def one(n: int) -> torch.Tensor:
        e = max(n // 8, 1)
        v = torch.ones(n, dtype=torch.float64)
        ramp = 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(e, dtype=torch.float64) + 0.5) / e)
        v[:e], v[n - e :] = ramp, ramp.flip(0)
        return v

    return one(h)[:, None] * one(w)[None, :]


def register_to_template(frame: torch.Tensor, template: torch.Tensor) -> tuple[float, float]:
    """Shift s (x, y) with frame(q) ~ template(q - s): cross-correlation peak, refined on an
    upsampled DFT grid (0.01 px, Guizar-Sicairos et al. 2008)."""
    h, w = frame.shape
    win = _taper(h, w)
    a = (frame.double() - frame.double().mean()) * win
    b = (template.double() - template.double().mean()) * win
    g = torch.fft.fft2(a) * torch.fft.fft2(b).conj()
    cc = torch.fft.ifft2(g).real
    k = int(torch.argmax(cc))
    py, px = k // w, k % w
    centre = [float(py - h if py > h // 2 else py), float(px - w if px > w // 2 else px)]
    ky, kx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    for half, step in ((1.5, 0.05), (0.06, 0.002)):
        d = torch.arange(-half, half + step / 2, step, dtype=torch.float64)
        ey = torch.exp(2j * torch.pi * (centre[0] + d)[:, None] * ky[None, :])
        ex = torch.exp(2j * torch.pi * kx[:, None] * (centre[1] + d)[None, :])
        c = (ey @ g @ ex).real
        j = int(torch.argmax(c))
        centre = [centre[0] + float(d[j // len(d)]), centre[1] + float(d[j % len(d)])]
    return centre[1], centre[0]


def clean_movie_and_oracle(series: dict, i: int, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Movie ``i`` without its X-rays and without the camera's hot pixels (raw counts as
    ``demo.simulate_movie`` makes them: same noise seed) and the oracle: (t, 2) shifts of each of its
    frames (gain applied as the camera's reference does) registered to the frame's own noise-free
    image. The truth of the oracle is zero; its scatter is the noise floor of per-frame estimation.

    The movie is the X-ray reference: hot pixels are left out because the pipeline removes them
    (in the frames, and the eraser on sums), so a reference that kept them would count a removed
    hot pixel near a hit as a hit left over."""
    t = series["tilts"][i]
    rng = np.random.default_rng(t["noise_seed"])
    nx, ny = series["image_size"]
    movie = np.empty((series["n_frames"], ny, nx), dtype=np.uint16)
    oracle = []
    g = gain.astype(np.float64)
    for f, expected in enumerate(iter_expected_frames(series, i)):
        clean = detector.count_frame(expected.cpu().numpy(), gain, rng, frame_index=f, hot_pixels=[], xray_hits=[])
        oracle.append(register_to_template(torch.from_numpy(clean * g), expected))
        movie[f] = np.clip(clean, 0, 65535)
    return detector.to_movie_dtype(movie), np.asarray(oracle)


def trajectory_sq_errors(est: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(t,) squared errors px² of mean-subtracted (t, 2) trajectories."""
    d = (est - est.mean(0)) - (true - true.mean(0))
    return (d**2).sum(-1)


def hit_events(tilt: dict) -> dict[int, list[dict]]:
    """X-ray pixels of one movie grouped by event."""
    events: dict[int, list[dict]] = {}
    for h in tilt["xray_hits"]:
        events.setdefault(h["event"], []).append(h)
    return events


def _event_mask(pixels: list[dict], shift: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sum pixels within HIT_RADIUS_PX of an event's pixels moved to the sum (p = q - shift)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    mask = np.zeros(shape, bool)
    for p in pixels:
        x, y = p["x"] - shift[0], p["y"] - shift[1]
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= HIT_RADIUS_PX**2
    return mask


def xray_leftovers(tilt: dict, gain: np.ndarray, without: np.ndarray, *sums: np.ndarray) -> list[int]:
    """[events that would reach HIT_SD in a sum, then per sum in ``sums`` how many still do].

    An event counts when its brightest pixel's gain-corrected excess reaches HIT_SD times the
    local noise of the sum (Poisson: sqrt of the hit-free sum's local mean, counts). Its left-over
    in a sum is ``sum - hit-free sum`` (the same movie motion-corrected without its X-rays) within
    HIT_RADIUS_PX of its pixels moved to the sum."""
    from scipy.ndimage import convolve

    shifts = np.asarray(tilt["frame_shifts_px"])
    box = np.ones((5, 5)) / 25.0
    sd = np.sqrt(np.clip(convolve(without.astype(np.float64), box, mode="nearest"), 1.0, None))
    counts = [0] * (1 + len(sums))
    for pixels in hit_events(tilt).values():
        mask = _event_mask(pixels, shifts[pixels[0]["frame"]], without.shape)
        peak = max(pixels, key=lambda p: p["excess_counts"])
        if not mask.any() or peak["excess_counts"] * gain[peak["y"], peak["x"]] < HIT_SD * sd[mask].max():
            continue
        counts[0] += 1
        for k, image in enumerate(sums):
            counts[k + 1] += int((np.abs(image - without)[mask] / sd[mask]).max() >= HIT_SD)
    return counts


def bead_pixels(tilt: dict, radius_px: float, mask: np.ndarray) -> int:
    """How many pixels of ``mask`` (erased) lie on a gold bead of this view."""
    ny, nx = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0
    beads = np.asarray(tilt["bead_projections_px"]).reshape(-1, 2)
    if len(beads) == 0:
        return 0
    d2 = (xs[:, None] - beads[None, :, 0]) ** 2 + (ys[:, None] - beads[None, :, 1]) ** 2
    return int((d2.min(1) <= radius_px**2).sum())


def true_markers(series: dict, order: list[int]) -> tuple[torch.Tensor, str]:
    """(n, t, 2) true raw positions in tilt order (NaN outside the image): the gold beads when
    at least 3 are seen in 3 views, else 27 virtual points spread through the specimen."""
    nx, ny = series["image_size"]
    tilts = [series["tilts"][i] for i in order]
    pos = torch.tensor([t["bead_projections_px"] for t in tilts], dtype=torch.float64)
    if pos.numel():
        inside = torch.tensor([t["bead_in_image"] for t in tilts])
        pos = torch.where(inside[..., None], pos, torch.nan).permute(1, 0, 2)
        if int((torch.isfinite(pos).all(-1).sum(1) >= 3).sum()) >= 3:
            return pos, "true beads"
    half_z = 0.4 * series["specimen"]["ice_thickness_px"]
    g = torch.tensor([-0.3, 0.0, 0.3], dtype=torch.float64)
    xyz = torch.cartesian_prod(g * nx, g * ny, g / 0.3 * half_z)
    proj = geometry.project_points(
        xyz,
        tilt_angles_deg=torch.tensor([t["true_tilt_angle_deg"] for t in tilts]),
        tilt_axis_deg=series["tilt_axis_deg"],
        shifts_px=torch.tensor([t["stage_shift_px"] for t in tilts]),
        image_shape=(ny, nx),
    )
    return proj.permute(1, 0, 2), "virtual markers (fewer than 3 beads in view)"


def alignment_errors(series: dict, order: list[int], r: dict) -> dict:
    """Residual px of the true markers under the alignment, and angle errors (°)."""
    nx, ny = series["image_size"]
    markers, kind = true_markers(series, order)
    refined = torch.tensor(r["refined_tilt_angles_deg"], dtype=torch.float64)
    true = torch.tensor([series["tilts"][i]["true_tilt_angle_deg"] for i in order])
    residual = math.nan
    if bool((refined.abs() < 90).all()):
        residual = alignment_residual_against_truth(torch.tensor(r["xf"]), refined, markers, (ny, nx))
    axis_err = (r["tilt_axis_deg"] - series["tilt_axis_deg"] + 180.0) % 360.0 - 180.0
    return {
        "residual_px": residual,
        "tilt_err_deg": float((refined - true).abs().max()),
        "axis_err_deg": abs(axis_err),
        "markers": kind,
    }
