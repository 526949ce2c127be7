"""Sum the frames of a movie after undoing their motion: total, even/odd halves, dose weighting.

Frames are moved back by their shifts (DESIGN.md §2: a feature at p in the sum lies at
p + shift in the frame, so the aligned frame at p is the frame at p + shift). Global shifts use a
Fourier shift of the whole frame (periodic at the edges), streamed in blocks; local motion moves
overlapping tiles by Fourier shifts at their centres (all frames of a tile summed in Fourier space,
one inverse transform per sum; a first-order slope term when the field is strong) and blends them
(edge pixels repeated). Binning crops the spectrum (as
:func:`tiltflow.core.fourier.fourier_crop_2d`), so the mean is kept and nothing aliases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tiltflow.core.motion_local import LocalMotion
from tiltflow.core.motion_xcorr import (
    TWO_PI,
    fast_fft_size,
    frequency_vectors,
    ramp_vectors,
    streamed_cropped_spectrum,
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
        raise ValueError(f"dose weighting: voltage_kv {voltage_kv} is outside the fitted 200-300 kV range")
    scale = 0.8 + 0.2 * (voltage_kv - 200.0) / 100.0  # 0.8 at 200 kV, 1 at 300 kV
    return (0.245 * k_per_a.clamp_min(1e-6) ** -1.665 + 2.81) * scale


def _mid_frame_exposure(dw: DoseWeighting, t: int, device) -> torch.Tensor:
    dose = torch.as_tensor(dw.dose_per_frame_e_a2, dtype=torch.float32, device=device).reshape(-1)
    if dose.numel() == 1:
        dose = dose.expand(t)
    if dose.numel() != t or bool((dose < 0).any()):
        raise ValueError(f"dose weighting: need one non-negative dose per frame ({t}), got {dose.numel()}")
    return dw.pre_exposure_e_a2 + torch.cumsum(dose, 0) - 0.5 * dose


def _window_1d(stride: int, overlap: int, device) -> torch.Tensor:
    """Tile weights of length stride + overlap that sum to 1 when tiles step by ``stride``."""
    i = torch.arange(overlap, dtype=torch.float32, device=device) + 0.5
    rise = torch.sin(0.5 * math.pi * i / overlap) ** 2
    flat = torch.ones(stride - overlap, device=device)
    return torch.cat([rise, flat, 1.0 - rise])


TILE_STRIDES = (512, 448, 384, 320, 256, 192, 160, 128, 96, 64)
MAX_TILES = 4096  # per frame: strong fields on large frames get their smallest stride above this
TILE_MARGIN_PX = 8  # beyond each tile's window: room for the periodic wrap of its Fourier shift


def tile_plan(motion: LocalMotion, *, max_error_px: float = 0.05, max_stride_px: int = 512) -> tuple[int, bool]:
    """Choose (stride, first_order) of the tiles that apply ``motion`` within ``max_error_px``.

    With slopes s' and curvatures s'' of the residual field (taken on a 17 x 17 grid of points,
    in every frame), a tile of stride S departs from the value at its centre by at most
    ``s' * S / 2`` (a plain tile), or, with the slope inside each tile applied to first order, by
    ``s'' * (S / 2)^2 / 2`` (with ``s' * S / 2`` kept below 0.5 px, where the first-order term
    holds). Plain tiles are used when they can be 256 px or larger; otherwise first-order tiles if
    they can be larger than plain ones, or if no plain tile meets ``max_error_px``. Strides come
    from ``TILE_STRIDES`` (<= ``max_stride_px``) and are never so small that a frame has more
    than ``MAX_TILES`` tiles.
    """
    h, w = motion.image_shape
    dev = motion.grid.device
    ys = torch.linspace(0, h - 1, 17, device=dev)
    xs = torch.linspace(0, w - 1, 17, device=dev)
    f = torch.arange(motion.n_frames, device=dev, dtype=torch.float32)[:, None, None]
    f, yy, xx = torch.broadcast_tensors(f, ys[None, :, None], xs[None, None, :])
    r = motion.residual_at(f, xx, yy)  # (t, 17, 17, 2)
    step_x, step_y = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    slope = float((r[:, :, 1:] - r[:, :, :-1]).norm(dim=-1).max()) / step_x
    slope += float((r[:, 1:] - r[:, :-1]).norm(dim=-1).max()) / step_y
    curvature = float((r[:, :, 2:] - 2 * r[:, :, 1:-1] + r[:, :, :-2]).norm(dim=-1).max()) / step_x**2
    curvature += float((r[:, 2:] - 2 * r[:, 1:-1] + r[:, :-2]).norm(dim=-1).max()) / step_y**2
    smallest = math.sqrt(h * w / MAX_TILES)
    allowed = [s for s in TILE_STRIDES if s <= max_stride_px and s >= smallest] or [max_stride_px]
    plain = [s for s in allowed if slope * s / 2 <= max_error_px]
    if plain and plain[0] >= min(256, allowed[0]):
        return plain[0], False
    taylor = [s for s in allowed if curvature * (s / 2) ** 2 / 2 <= max_error_px and slope * s / 2 <= 0.5]
    if taylor and (not plain or taylor[0] > plain[0]):
        return taylor[0], True
    return (plain[0], False) if plain else (allowed[-1], True)


@dataclass(frozen=True)
class _TileLayout:
    stride: int
    overlap: int
    margin: int
    size: int  # FFT size of one tile
    origins_y: list[int]  # output row of each tile window's first pixel (may be < 0)
    origins_x: list[int]

    @property
    def window(self) -> int:
        return self.stride + self.overlap


def _tile_layout(h: int, w: int, stride: int) -> _TileLayout:
    """Lay out tiles stepping by ``stride`` over an (h, w) frame.

    Their windows overlap by >= stride / 16 (all the room up to the next fast FFT size) and are
    read with ``TILE_MARGIN_PX`` more on each side.
    """
    margin = TILE_MARGIN_PX
    size = fast_fft_size(stride + max(8, stride // 16) + 2 * margin)
    overlap = size - stride - 2 * margin
    ny, nx = math.ceil((h + overlap) / stride), math.ceil((w + overlap) / stride)
    return _TileLayout(
        stride,
        overlap,
        margin,
        size,
        [j * stride - overlap for j in range(ny)],
        [j * stride - overlap for j in range(nx)],
    )


def _read_tile(frame: torch.Tensor, top: int, left: int, size: int, out: torch.Tensor) -> None:
    """Copy frame[top : top + size, left : left + size] into ``out`` (edge pixels repeated)."""
    h, w = frame.shape
    if top >= 0 and left >= 0 and top + size <= h and left + size <= w:
        out.copy_(frame[top : top + size, left : left + size])
        return
    r0, r1 = min(max(top, 0), h), min(max(top + size, 0), h)
    c0, c1 = min(max(left, 0), w), min(max(left + size, 0), w)
    pads = (c0 - left, left + size - c1, r0 - top, top + size - r1)
    if r1 - r0 > max(pads[2:]) and c1 - c0 > max(pads[:2]):
        part = frame[r0:r1, c0:c1].to(torch.float32)[None]
        out.copy_(torch.nn.functional.pad(part, pads, mode="replicate")[0])
        return
    rows = (torch.arange(size, device=frame.device) + top).clamp(0, h - 1)
    cols = (torch.arange(size, device=frame.device) + left).clamp(0, w - 1)
    out.copy_(frame[rows[:, None], cols[None, :]])


def _sum_tiles(
    frames: torch.Tensor,  # (t, h, w)
    motion: LocalMotion,
    layout: _TileLayout,
    parity: list[int],  # accumulator of each frame
    n_sums: int,
    filters: torch.Tensor | None,  # (t, size, size//2+1) per-frame Fourier weights on the tile grid
    frame_ids: list[int],  # frame index (for the motion) of each frame in ``frames``
    first_order: bool = False,
) -> torch.Tensor:  # (n_sums, h, w) float32
    """Sum warped frames tile by tile.

    For each row of tiles every frame's tiles are moved by the motion at their centres (whole
    pixels by where they are read, the rest by a Fourier shift), filtered, accumulated in Fourier
    space, transformed back once per sum and blended.

    ``first_order`` adds the field's slope inside each tile: with J the Jacobian of the shift at
    the tile centre c, the tile at p is G(p + J (p - c)) ~ G(p) + sum_ab J_ab (p - c)_b d_a G(p), and
    since the sums are linear only ``sum_t J_t,ab G_t`` are accumulated (two more inverse
    transforms per sum).
    """
    t, h, w = frames.shape
    dev = frames.device
    n, m, win = layout.size, layout.margin, layout.window
    ky, kx = frequency_vectors((n, n), (1.0, 1.0), device=dev)
    window = _window_1d(layout.stride, layout.overlap, dev)
    window = window[:, None] * window[None, :]
    out = torch.zeros((n_sums, h, w), dtype=torch.float32, device=dev)
    nx = len(layout.origins_x)
    cx = torch.tensor(layout.origins_x, dtype=torch.float32, device=dev) + (win - 1) / 2
    ids = torch.tensor(frame_ids, device=dev)
    buf = torch.empty((nx, n, n), dtype=torch.float32, device=dev)
    spec = torch.empty((nx, n, n // 2 + 1), dtype=torch.complex64, device=dev)
    acc = torch.empty((n_sums, nx, n, n // 2 + 1), dtype=torch.complex64, device=dev)
    slopes = torch.empty((n_sums, 2, 2, nx, n, n // 2 + 1), dtype=torch.complex64, device=dev) if first_order else None
    local = torch.arange(win, dtype=torch.float32, device=dev) - (win - 1) / 2  # p - c inside a window
    deriv = (TWO_PI * 1j * kx, TWO_PI * 1j * ky[:, None])  # d/dx, d/dy in Fourier space
    for y0 in layout.origins_y:
        cy = torch.full_like(cx, y0 + (win - 1) / 2)
        # (t, nx, 2): source of output pixel p is p + shift
        shift = motion.shifts_at(ids[:, None], cx[None, :], cy[None, :]).to(dev, torch.float32)
        rounded = torch.round(shift)
        frac = shift - rounded
        whole = rounded.long().tolist()
        acc.zero_()
        if slopes is not None:
            slopes.zero_()
            jac = _tile_jacobians(motion, ids, cx, cy, layout.stride / 2).to(torch.complex64)  # (t, nx, a, b)
        for i in range(t):
            for j, x0 in enumerate(layout.origins_x):
                _read_tile(frames[i], y0 - m + whole[i][j][1], x0 - m + whole[i][j][0], n, buf[j])
            torch.fft.rfft2(buf, out=spec)
            py, px = ramp_vectors(ky, kx, frac[i])  # moves each tile by -frac
            spec.mul_(py[:, :, None]).mul_(px[:, None, :])
            if filters is not None:
                spec.mul_(filters[i])
            acc[parity[i]] += spec
            if slopes is not None:
                for a in range(2):
                    for b in range(2):
                        slopes[parity[i], a, b].addcmul_(spec, jac[i, :, a, b, None, None])
        for k in range(n_sums):
            tiles = torch.fft.irfft2(acc[k], s=(n, n))[:, m : m + win, m : m + win]
            if slopes is not None:
                for b, coordinate in enumerate((local[None, None, :], local[None, :, None])):
                    grad = deriv[0] * slopes[k, 0, b] + deriv[1] * slopes[k, 1, b]
                    tiles += torch.fft.irfft2(grad, s=(n, n))[:, m : m + win, m : m + win] * coordinate
            tiles *= window
            r0, r1 = max(y0, 0), min(y0 + win, h)
            for j, x0 in enumerate(layout.origins_x):
                c0, c1 = max(x0, 0), min(x0 + win, w)
                if r1 > r0 and c1 > c0:
                    out[k, r0:r1, c0:c1] += tiles[j, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
    return out


def _tile_jacobians(motion: LocalMotion, ids, cx, cy, step: float) -> torch.Tensor:
    """Central differences ``d shift_a / d x_b`` (t, n, 2, 2) of the residual field.

    Taken over +- ``step`` px around the tile centres (cx, cy) (n,), in every frame ``ids``.
    """
    f = ids[:, None]

    def at(dx: float, dy: float) -> torch.Tensor:
        return motion.residual_at(f, cx[None, :] + dx, cy[None, :] + dy).to(torch.float32)

    d_dx = (at(step, 0.0) - at(-step, 0.0)) / (2 * step)
    d_dy = (at(0.0, step) - at(0.0, -step)) / (2 * step)
    return torch.stack([d_dx, d_dy], dim=-1)


def warp_frame_2d(
    frame: torch.Tensor,  # (h, w)
    motion: LocalMotion,
    index: int,
    *,
    tile_px: int | None = None,
    max_error_px: float = 0.05,
) -> torch.Tensor:  # (h, w) float32
    """Frame ``index`` (h, w) moved back by its total (global + local) motion.

    Tiles stepping by ``tile_px`` (default: :func:`tile_plan` for ``max_error_px``; a window of at
    least 1/16 of that blends neighbours) are cut from the frame, each Fourier-shifted by the
    motion at its centre, and blended with weights that sum to one.
    """
    h, w = frame.shape
    stride, first_order = tile_plan(motion, max_error_px=max_error_px)
    if tile_px is not None:
        stride = int(tile_px)
    layout = _tile_layout(h, w, stride)
    return _sum_tiles(frame[None], motion, layout, [0], 1, None, [int(index)], first_order)[0]


def _dose_filters(dw: DoseWeighting, t: int, ky, kx) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame exposure weights (t, h, w') and the sum rescaling ``sqrt(t / sum w^2)`` (h, w')."""
    exposure = _mid_frame_exposure(dw, t, ky.device)
    k_a = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / dw.pixel_size_a  # 1/Å
    critical = critical_exposure_e_a2(k_a, dw.voltage_kv)
    weights = torch.exp(-exposure[:, None, None] / (2.0 * critical))
    return weights, torch.sqrt(t / weights.square().sum(0).clamp_min(1e-30))


def _float_rows(frame: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Return a reader of rows ``r0 .. r1 - 1`` of ``frame`` (h, w) as float32."""
    return lambda r0, r1: frame[r0:r1].float()


def _sum_fourier(frames, glob, parity, n_sums, out_shape, dose_weights) -> torch.Tensor:
    """Globally shifted frames summed in Fourier space, streamed; returns (n_sums, h', w') images."""
    t, h, w = frames.shape
    dev = frames.device
    ky, kx = frequency_vectors(out_shape, (h / out_shape[0], w / out_shape[1]), device=dev)
    spec_shape = (out_shape[0], out_shape[1] // 2 + 1)
    sums = torch.zeros((n_sums, *spec_shape), dtype=torch.complex64, device=dev)
    spec = torch.empty(spec_shape, dtype=torch.complex64, device=dev)
    work = None
    if dose_weights is not None:
        exposure = _mid_frame_exposure(dose_weights, t, dev)
        k_a = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / dose_weights.pixel_size_a  # 1/Å
        half_inverse = critical_exposure_e_a2(k_a, dose_weights.voltage_kv).reciprocal_().mul_(-0.5)
        weight = torch.empty_like(half_inverse)
        sum_w2 = torch.zeros_like(half_inverse)
    for i in range(t):
        if (h, w) == tuple(out_shape) and frames.dtype == torch.float32:
            torch.fft.rfft2(frames[i], out=spec)  # no crop: one 2-D transform is faster
        else:
            if work is None:
                work = torch.empty((h, spec_shape[1]), dtype=torch.complex64, device=dev)
            streamed_cropped_spectrum(_float_rows(frames[i]), (h, w), out_shape, out=spec, work=work)
        py, px = ramp_vectors(ky, kx, glob[i])  # moves the frame by -shift
        spec.mul_(py[:, None]).mul_(px[None, :])
        if dose_weights is not None:
            torch.mul(half_inverse, exposure[i], out=weight).exp_()  # exp(-N / 2 Ne)
            spec.mul_(weight)
            sum_w2.addcmul_(weight, weight)
        sums[parity[i]] += spec
    if dose_weights is not None:
        sums.mul_(sum_w2.clamp_min_(1e-30).reciprocal_().mul_(t).sqrt_())
    return torch.stack([torch.fft.irfft2(sums[k], s=out_shape) for k in range(n_sums)])


def _bin_image(image: torch.Tensor, out_shape: tuple[int, int]) -> torch.Tensor:
    """Fourier-crop one (h, w) image to ``out_shape`` (as ``fourier_crop_2d``), streamed."""
    h, w = image.shape
    if (h, w) == tuple(out_shape):
        return image
    spec = torch.empty((out_shape[0], out_shape[1] // 2 + 1), dtype=torch.complex64, device=image.device)
    streamed_cropped_spectrum(lambda r0, r1: image[r0:r1], (h, w), out_shape, out=spec)
    return torch.fft.irfft2(spec, s=out_shape)


def align_and_sum(
    frames: torch.Tensor,  # (t, h, w) gain-corrected
    shifts: torch.Tensor | LocalMotion,  # (t, 2) x, y unbinned px, or global + local motion
    *,
    even_odd: bool = False,
    dose_weights: DoseWeighting | None = None,
    binning: int = 1,
    tile_px: int | None = None,
    max_error_px: float = 0.05,
) -> MotionSum:
    """Sum of the aligned frames, binned to ``(h // binning, w // binning)`` by Fourier cropping.

    Global shifts only: each frame's spectrum is phase-shifted and added (exact, periodic edges).
    With local motion: tiles stepping by ``tile_px`` (default :func:`tile_plan`, so that the
    motion inside a tile is applied within ``max_error_px``) are read at whole-pixel offsets,
    Fourier-shifted by the rest of the motion at their centres (plus a first-order term for the
    field's slope inside each tile when the field is strong), summed over frames in Fourier space
    and blended (edge pixels repeated).

    With ``dose_weights`` each frame's spectrum is weighted by ``exp(-N / 2 Ne(k))`` (N: exposure
    at mid-frame, Ne: critical exposure) and the sum rescaled per frequency by
    ``sqrt(t / sum_i w_i(k)^2)``, which keeps the mean and the noise power of a plain sum (with
    local motion, on each tile's frequency grid). ``even``/``odd`` (with ``even_odd``) use the
    same weights and scaling, and ``total`` is their sum. The input is never modified, and no
    frame-sized temporaries are made beyond the sums.

    Parameters
    ----------
    frames : torch.Tensor
        ``(t, h, w)`` gain-corrected frames; the device follows them.
    shifts : torch.Tensor or LocalMotion
        ``(t, 2)`` x, y shifts in unbinned px (DESIGN.md §2), or global and local motion
        (:func:`tiltflow.core.motion.estimate_motion`).
    even_odd : bool
        Also return the sums of the even and odd frames.
    dose_weights : DoseWeighting, optional
        Exposure filter inputs (pixel size, dose per frame, pre-exposure, voltage).
    binning : int
        Output binning factor, by Fourier cropping.
    tile_px : int, optional
        Tile stride (px, >= 16) for local motion; default from :func:`tile_plan`.
    max_error_px : float
        Largest motion error, px, allowed inside a tile when the stride is chosen.

    Returns
    -------
    MotionSum
        ``total`` ``(h // binning, w // binning)`` float32, ``even`` / ``odd`` (or None), the
        shifts and local motion applied, and the binning.

    Raises
    ------
    ValueError
        If the frames are not ``(t, h, w)``, the shifts or motion do not match them, or an option
        is out of range.

    Examples
    --------
    >>> import torch
    >>> summed = align_and_sum(torch.ones(4, 16, 16), torch.zeros(4, 2), even_odd=True, binning=2)
    >>> summed.total.shape, round(float(summed.total.mean()), 3), round(float(summed.even.mean()), 3)
    (torch.Size([8, 8]), 4.0, 2.0)
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
        raise ValueError(f"{name}: binning must be an integer between 1 and {min(h, w)}, got {binning}")
    if tile_px is not None and (int(tile_px) != tile_px or tile_px < 16):
        raise ValueError(f"{name}: tile_px must be an integer >= 16, got {tile_px}")
    if dose_weights is not None and not dose_weights.pixel_size_a > 0:
        raise ValueError(f"{name}: dose_weights.pixel_size_a must be > 0 Å/px")
    dev = frames.device
    glob = glob.to(dev)
    out_shape = (h // int(binning), w // int(binning))
    parity = [i % 2 if even_odd else 0 for i in range(t)]
    n_sums = 2 if even_odd else 1
    if local is None:
        images = _sum_fourier(frames, glob, parity, n_sums, out_shape, dose_weights)
    else:
        stride, first_order = tile_plan(local, max_error_px=max_error_px)
        if tile_px is not None:
            stride = int(tile_px)
        layout = _tile_layout(h, w, stride)
        filters = None
        if dose_weights is not None:
            ky, kx = frequency_vectors((layout.size, layout.size), (1.0, 1.0), device=dev)
            weights, rescale = _dose_filters(dose_weights, t, ky, kx)
            filters = weights * rescale
        images = _sum_tiles(frames, local, layout, parity, n_sums, filters, list(range(t)), first_order)
        if out_shape != (h, w):
            images = torch.stack([_bin_image(im, out_shape) for im in images])
    total = images[0] + images[1] if even_odd else images[0]
    return MotionSum(
        total=total,
        even=images[0] if even_odd else None,
        odd=images[1] if even_odd else None,
        shifts_px=glob,
        local=motion,
        binning=int(binning),
    )
