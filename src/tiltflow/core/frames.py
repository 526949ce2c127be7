"""Raw movie frames to gain-corrected float32 frames: dark subtraction, gain orientation and gain.

A gain reference written by the camera software is often stored transposed or flipped relative to
the frames. The orientation options act on the gain (and the dark) before they are applied, in
Warp's order: flip x (reverse columns), then flip y (reverse rows), then transpose. Unlike Warp,
the gain is used as given (Warp divides it by its mean and sets zeros to one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GainOrientation:
    """How a stored gain reference turns into the frames' orientation (flips, then transpose)."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False


def orient_gain(
    gain: torch.Tensor, *, transpose: bool = False, flip_x: bool = False, flip_y: bool = False
) -> torch.Tensor:
    """Orient ``gain`` (h, w): flip x (reverse columns), flip y (reverse rows), then transpose."""
    out = gain
    if flip_x:
        out = torch.flip(out, dims=(-1,))
    if flip_y:
        out = torch.flip(out, dims=(-2,))
    if transpose:
        out = out.transpose(-2, -1)
    return out


def gain_orientations_matching(gain_shape: tuple[int, int], frame_shape: tuple[int, int]) -> list[GainOrientation]:
    """All orientations that turn a gain of ``gain_shape`` (h, w) into ``frame_shape`` (h, w).

    Flips never change the shape, so a non-square gain matches 4 orientations (and a square one 8);
    an empty list means the gain belongs to another camera or binning.
    """
    gh, gw = (int(n) for n in tuple(gain_shape)[-2:])
    fh, fw = (int(n) for n in tuple(frame_shape)[-2:])
    found = []
    for transpose in (False, True):
        shape = (gw, gh) if transpose else (gh, gw)
        if shape == (fh, fw):
            found += [GainOrientation(transpose, fx, fy) for fx in (False, True) for fy in (False, True)]
    return found


def _as_tensor(x, device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x, device=device)


def _oriented_reference(ref, name, frame_shape, device, transpose, flip_x, flip_y) -> torch.Tensor:
    ref = _as_tensor(ref, device).to(torch.float32)
    if ref.ndim != 2:
        shape = tuple(ref.shape)
        raise ValueError(f"prepare_frames: {name} must be a 2-D image, got shape {shape}")
    oriented = orient_gain(ref, transpose=transpose, flip_x=flip_x, flip_y=flip_y)
    if tuple(oriented.shape) != tuple(frame_shape):
        options = gain_orientations_matching(tuple(ref.shape), tuple(frame_shape))
        hint = (
            "set gain_transpose=True"
            if any(o.transpose for o in options)
            else "use the gain reference of this camera and binning"
        )
        raise ValueError(
            f"prepare_frames: {name} of shape {tuple(ref.shape)} (transpose={transpose}) does not "
            f"match frames of shape {tuple(frame_shape)}; {hint}"
        )
    bad = ~torch.isfinite(oriented)
    if bool(bad.any()):
        # stacklevel 3: the caller of prepare_frames
        warnings.warn(f"prepare_frames: {int(bad.sum())} non-finite {name} values set to 0", stacklevel=3)
        oriented = torch.where(bad, torch.zeros_like(oriented), oriented)
    return oriented


def prepare_frames(
    frames_raw: torch.Tensor,  # (t, h, w) counts, any real dtype
    *,
    gain: torch.Tensor | np.ndarray | None = None,  # (h, w) or (w, h) multiplicative gain
    dark: torch.Tensor | np.ndarray | None = None,  # dark reference, same orientation as the gain
    gain_transpose: bool = False,
    gain_flip_x: bool = False,
    gain_flip_y: bool = False,
    out: torch.Tensor | None = None,  # (t, h, w) float32 to write into (e.g. reused between movies)
) -> torch.Tensor:  # (t, h, w) float32
    """Gain-correct raw frames: ``(frame - dark) * gain``, as float32 on the frames' device.

    The orientation options (flip x, flip y, then transpose) are applied to the gain and the dark
    before use. The input is never modified; frames are converted in blocks of rows, so the only
    large allocation is the result (none when ``out`` is given).

    Parameters
    ----------
    frames_raw : torch.Tensor
        ``(t, h, w)`` raw frames, counts, any real dtype.
    gain : torch.Tensor or numpy.ndarray, optional
        Multiplicative gain reference, ``(h, w)`` once oriented; non-finite values become 0 (with
        a warning).
    dark : torch.Tensor or numpy.ndarray, optional
        Dark reference, counts, in the same orientation as the gain.
    gain_transpose, gain_flip_x, gain_flip_y : bool
        Orientation of the stored gain and dark relative to the frames (see :func:`orient_gain`).
    out : torch.Tensor, optional
        ``(t, h, w)`` float32 tensor on the frames' device to write the result into.

    Returns
    -------
    torch.Tensor
        ``(t, h, w)`` float32 gain-corrected frames on the frames' device (``out`` when given).

    Raises
    ------
    ValueError
        If the frames are not ``(t, h, w)``, the oriented gain/dark does not match their shape, or
        ``out`` is not a float32 tensor of the frames' shape and device.

    Examples
    --------
    >>> import torch
    >>> raw = torch.full((2, 16, 16), 3, dtype=torch.int16)
    >>> frames = prepare_frames(raw, gain=torch.full((16, 16), 2.0))
    >>> frames.dtype, frames.shape, float(frames[0, 0, 0])
    (torch.float32, torch.Size([2, 16, 16]), 6.0)
    """
    frames_raw = _as_tensor(frames_raw, None)
    if frames_raw.ndim != 3 or frames_raw.is_complex():
        raise ValueError(f"prepare_frames: frames must be a real (t, h, w) stack, got shape {tuple(frames_raw.shape)}")
    t, h, w = frames_raw.shape
    device = frames_raw.device
    opts = (gain_transpose, gain_flip_x, gain_flip_y)
    g = None if gain is None else _oriented_reference(gain, "gain", (h, w), device, *opts)
    d = None if dark is None else _oriented_reference(dark, "dark", (h, w), device, *opts)
    if out is None:
        out = torch.empty((t, h, w), dtype=torch.float32, device=device)
    elif out.shape != frames_raw.shape or out.dtype != torch.float32 or out.device != device:
        raise ValueError(
            f"prepare_frames: out must be float32 of shape {(t, h, w)} on {device}, "
            f"got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    rows = h if device.type != "cpu" else max(1, min(h, (1 << 21) // max(w, 1)))
    for i in range(t):
        for r0 in range(0, h, rows):
            block = out[i, r0 : r0 + rows]
            block.copy_(frames_raw[i, r0 : r0 + rows])
            if d is not None:
                block.sub_(d[r0 : r0 + rows])
            if g is not None:
                block.mul_(g[r0 : r0 + rows])
    return out
