"""Sum the frames of a movie after undoing their motion: total, even/odd halves, dose weighting.

Frames are moved back by their shifts (DESIGN.md §2: a feature at p in the sum lies at
p + shift in the frame, so the aligned frame at p is the frame at p + shift). Global shifts use a
Fourier shift of the whole frame (periodic at the edges); local motion moves overlapping tiles by
Fourier shifts at their centres and blends them (edge pixels repeated). Binning crops the spectrum
(as :func:`tiltflow.core.fourier.fourier_crop_2d`), so the mean is kept and nothing aliases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tiltflow.core.fourier import fourier_crop_2d
from tiltflow.core.motion_local import LocalMotion
from tiltflow.core.motion_xcorr import (
    cropped_spectrum_2d,
    fast_fft_size,
    frequency_vectors,
    phase_ramp,
)


@dataclass(frozen=True)
class DoseWeighting:
    """Inputs of the Grant & Grigorieff (2015, doi:10.7554/eLife.06980) exposure filter.

    ``dose_per_frame_e_a2`` is a number or one value per frame (e/Å²); ``pre_exposure_e_a2`` is
    the dose the specimen received before this movie (earlier tilts).
    """

    pixel_size_a: float
    dose_per_frame_e_a2: float | Sequence[float] | torch.Tensor
    pre_exposure_e_a2: float = 0.0
    voltage_kv: float = 300.0


@dataclass
class MotionSum:
    """Aligned sums (h', w'); ``even``/``odd`` sum frames 0, 2, 4... / 1, 3, 5... (0-based).

    ``shifts_px`` (t, 2) are the global shifts applied (unbinned px; a LocalMotion's own), ``local``
    the local motion applied on top of them (or None). ``even + odd == total``.
    """

    total: torch.Tensor
    even: torch.Tensor | None
    odd: torch.Tensor | None
    shifts_px: torch.Tensor
    local: LocalMotion | None
    binning: int


def critical_exposure_e_a2(k_per_a: torch.Tensor, voltage_kv: float) -> torch.Tensor:
    """Grant & Grigorieff critical exposure (e/Å²) at spatial frequency ``k_per_a`` (1/Å)."""
    if not 200.0 <= voltage_kv <= 300.0:
        raise ValueError(
            f"dose weighting: voltage_kv {voltage_kv} is outside the fitted 200-300 kV range"
        )
    scale = 0.8 + 0.2 * (voltage_kv - 200.0) / 100.0  # 0.8 at 200 kV, 1 at 300 kV
    return (0.245 * k_per_a.clamp_min(1e-6) ** -1.665 + 2.81) * scale


def _mid_frame_exposure(dw: DoseWeighting, t: int, device) -> torch.Tensor:
    dose = torch.as_tensor(dw.dose_per_frame_e_a2, dtype=torch.float32, device=device).reshape(-1)
    if dose.numel() == 1:
        dose = dose.expand(t)
    if dose.numel() != t or bool((dose < 0).any()):
        raise ValueError(
            f"dose weighting: need one non-negative dose per frame ({t}), got {dose.numel()}"
        )
    return dw.pre_exposure_e_a2 + torch.cumsum(dose, 0) - 0.5 * dose


def _window_1d(stride: int, overlap: int, device) -> torch.Tensor:
    """Tile weights of length stride + overlap that sum to 1 when tiles step by ``stride``."""
    i = torch.arange(overlap, dtype=torch.float32, device=device) + 0.5
    rise = torch.sin(0.5 * math.pi * i / overlap) ** 2
    flat = torch.ones(stride - overlap, device=device)
    return torch.cat([rise, flat, 1.0 - rise])


def warp_frame_2d(
    frame: torch.Tensor,  # (h, w)
    motion: LocalMotion,
    index: int,
    *,
    tile_px: int = 256,
) -> torch.Tensor:  # (h, w) float32
    """Frame ``index`` (h, w) moved back by its total (global + local) motion.

    Tiles stepping by ``tile_px`` (a quarter of that overlapping) are cut from the frame, each
    Fourier-shifted by the motion at its centre, and blended with weights that sum to one.
    """
    h, w = frame.shape
    dev = frame.device
    stride, overlap = tile_px, max(tile_px // 4, 4)
    size = stride + overlap
    ny, nx = math.ceil((h + overlap) / stride), math.ceil((w + overlap) / stride)
    y0 = torch.arange(ny, device=dev) * stride - overlap  # tile origins in output pixels
    x0 = torch.arange(nx, device=dev) * stride - overlap
    cy, cx = torch.meshgrid(y0 + (size - 1) / 2, x0 + (size - 1) / 2, indexing="ij")
    shift = motion.shifts_at(index, cx.reshape(-1), cy.reshape(-1)).to(dev, torch.float32)  # (n, 2)
    common = torch.round(shift.mean(dim=0)).long()
    rest = shift - common  # moved by a Fourier shift inside each tile
    margin = 16 + math.ceil(float(rest.abs().max()))
    ext = fast_fft_size(size + 2 * margin)
    # source of output pixel p is p + shift: pad the frame so every tile is a plain slice
    top, left = overlap + margin - int(common[1]), overlap + margin - int(common[0])
    bottom = (ny - 1) * stride + ext - top - h
    right = (nx - 1) * stride + ext - left - w
    pads = [max(0, v) for v in (left, right, top, bottom)]
    padded = torch.nn.functional.pad(frame.to(torch.float32)[None, None], pads, mode="replicate")
    r0, c0 = pads[2] - top, pads[0] - left
    padded = padded[0, 0, r0 : r0 + (ny - 1) * stride + ext, c0 : c0 + (nx - 1) * stride + ext]
    tiles = padded.unfold(0, ext, stride).unfold(1, ext, stride).reshape(ny * nx, ext, ext)
    ky, kx = frequency_vectors((ext, ext), (1.0, 1.0), device=dev)
    spec = torch.fft.rfft2(tiles) * phase_ramp(ky, kx, rest)  # moves each tile by -rest
    tiles = torch.fft.irfft2(spec, s=(ext, ext))[:, margin : margin + size, margin : margin + size]
    win = _window_1d(stride, overlap, dev)
    tiles = (tiles * (win[:, None] * win[None, :])).reshape(ny, nx, size, size)
    canvas = torch.zeros(((ny - 1) * stride + size, (nx - 1) * stride + size), device=dev)
    for i in range(ny):
        for j in range(nx):
            canvas[i * stride : i * stride + size, j * stride : j * stride + size] += tiles[i, j]
    return canvas[overlap : overlap + h, overlap : overlap + w]


def align_and_sum(
    frames: torch.Tensor,  # (t, h, w) gain-corrected
    shifts: torch.Tensor | LocalMotion,  # (t, 2) x, y unbinned px, or global + local motion
    *,
    even_odd: bool = False,
    dose_weights: DoseWeighting | None = None,
    binning: int = 1,
    tile_px: int = 256,
) -> MotionSum:
    """Sum of the aligned frames, binned to ``(h // binning, w // binning)`` by Fourier cropping.

    With ``dose_weights`` each frame's spectrum is weighted by ``exp(-N / 2 Ne(k))`` (N: exposure
    at mid-frame, Ne: critical exposure) and the sum rescaled per frequency by
    ``sqrt(t / sum_i w_i(k)^2)``, which keeps the mean and the noise power of a plain sum.
    ``even``/``odd`` (with ``even_odd``) use the same weights and scaling, so they add up to
    ``total``. Frames are processed one at a time; the input is never modified.
    """
    name = "align_and_sum"
    if not isinstance(frames, torch.Tensor) or frames.ndim != 3 or frames.is_complex():
        shape = tuple(getattr(frames, "shape", ()))
        raise ValueError(f"{name}: frames must be a real (t, h, w) tensor, got shape {shape}")
    t, h, w = frames.shape
    motion = shifts if isinstance(shifts, LocalMotion) else None
    glob = motion.global_shifts if motion is not None else torch.as_tensor(shifts)
    glob = glob.to(torch.float32)
    # a local field below 0.001 px everywhere is applied as the (exact, faster) global shift
    local = motion if motion is not None and float(motion.grid.abs().max()) >= 1e-3 else None
    if tuple(glob.shape) != (t, 2):
        raise ValueError(f"{name}: shifts must be ({t}, 2) for {t} frames, got {tuple(glob.shape)}")
    if motion is not None and tuple(motion.image_shape) != (h, w):
        raise ValueError(f"{name}: local motion is for frames {motion.image_shape}, not {(h, w)}")
    if int(binning) != binning or not 1 <= binning <= min(h, w):
        raise ValueError(
            f"{name}: binning must be an integer between 1 and {min(h, w)}, got {binning}"
        )
    if int(tile_px) != tile_px or tile_px < 16:
        raise ValueError(f"{name}: tile_px must be an integer >= 16, got {tile_px}")
    if dose_weights is not None and not dose_weights.pixel_size_a > 0:
        raise ValueError(f"{name}: dose_weights.pixel_size_a must be > 0 Å/px")
    dev = frames.device
    glob = glob.to(dev)
    out_shape = (h // int(binning), w // int(binning))
    ky, kx = frequency_vectors(out_shape, (h / out_shape[0], w / out_shape[1]), device=dev)
    if dose_weights is not None:
        exposure = _mid_frame_exposure(dose_weights, t, dev)
        k_a = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / dose_weights.pixel_size_a  # 1/Å
        critical = critical_exposure_e_a2(k_a, dose_weights.voltage_kv)
        sum_w2 = torch.zeros_like(critical)
    # sum spectra (needed for global shifts and dose weights), or warped frames in real space
    in_fourier = local is None or dose_weights is not None
    n_sums = 3 if even_odd else 1
    if in_fourier:
        spec_shape = (n_sums, out_shape[0], out_shape[1] // 2 + 1)
        sums = torch.zeros(spec_shape, dtype=torch.complex64, device=dev)
    else:
        sums = torch.zeros((n_sums, h, w), dtype=torch.float32, device=dev)
    for i in range(t):
        if local is not None:
            item = warp_frame_2d(frames[i], local, i, tile_px=tile_px)
            if in_fourier:
                item = cropped_spectrum_2d(item, out_shape)
        else:
            item = cropped_spectrum_2d(frames[i], out_shape)
            item = item * phase_ramp(ky, kx, glob[i])  # moves the frame by -shift
        if dose_weights is not None:
            weight = torch.exp(-exposure[i] / (2.0 * critical))
            item = item * weight
            sum_w2 += weight**2
        sums[0] += item
        if even_odd:
            sums[1 + i % 2] += item
    if dose_weights is not None:
        sums = sums * torch.sqrt(t / sum_w2.clamp_min(1e-30))
    images = torch.fft.irfft2(sums, s=out_shape) if in_fourier else fourier_crop_2d(sums, out_shape)
    return MotionSum(
        total=images[0],
        even=images[1] if even_odd else None,
        odd=images[2] if even_odd else None,
        shifts_px=glob,
        local=motion,
        binning=int(binning),
    )
