"""Strip-based CTF phase flipping of aligned tilt-series views (like IMOD ``ctfphaseflip``).

Views are ALIGNED (tilt axis along y, IMOD centres; ``core/geometry.py``).  A tilted specimen plane
is in different focus across the axis: at aligned column x' (px from the view centre) the defocus
is ``df_centre + x' tan(theta) * pixel_size_a`` (``geometry.defocus_offset_a``), so each view is
corrected in strips parallel to the axis, each with the defocus at its centre.  The CTF fitted on
a RAW view (defocus at the raw image centre, astigmatism azimuth in the raw frame) is carried to
the aligned view by its ``.xf`` row (:func:`defocus_in_aligned_views`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core import geometry
from tiltflow.core.ctf_model import Optics, ctf_2d, electron_wavelength_a


@dataclass(frozen=True)
class AlignedDefocus:
    """Per-view CTF parameters ``(t,)`` in the frame of the aligned views."""

    defocus_u_a: torch.Tensor  # Å at the aligned view centre, underfocus positive
    defocus_v_a: torch.Tensor  # Å
    astigmatism_angle_deg: torch.Tensor  # degrees from the aligned +x, counter-clockwise


def defocus_in_aligned_views(
    xf: torch.Tensor,  # (t, 6) .xf rows, raw -> aligned, px of these views
    tilt_angles_deg,  # (t,) true (refined) tilt angles
    *,
    defocus_u_a,  # (t,) Å at the raw image centre
    defocus_v_a,  # (t,) Å
    astigmatism_angle_deg,  # (t,) degrees from the raw +x, counter-clockwise
    pixel_size_a: float,  # of the views the .xf applies to
    image_shape: tuple[int, int],  # (h, w) of the raw views
) -> AlignedDefocus:
    """Defocus at each aligned view's centre and the astigmatism azimuth in the aligned frame.

    The aligned centre is the raw point ``A^-1 (-D) + c``; its defocus is the raw centre's plus
    ``geometry.defocus_offset_a`` there (tilt axis read from ``A``: ``A = R(-axis)`` up to scale).
    ``A`` rotates the image, and so its spectrum, by ``atan2(A21, A11)``.
    """
    xf = torch.as_tensor(xf, dtype=torch.float64).cpu()
    t = xf.shape[0]
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)
    values = [
        torch.as_tensor(v, dtype=torch.float64).reshape(-1).expand(t)
        for v in (defocus_u_a, defocus_v_a, astigmatism_angle_deg)
    ]
    if xf.shape != (t, 6) or angles.numel() != t:
        raise ValueError(f"need one .xf row and one tilt angle per view, got {tuple(xf.shape)} and {angles.numel()}")
    a = xf[:, :4].reshape(t, 2, 2)
    rotation_deg = torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0]))  # -tilt axis
    cx, cy = geometry.image_centre(image_shape)
    centre_raw = torch.linalg.solve(a, -xf[:, 4:6]) + torch.tensor([cx, cy], dtype=torch.float64)
    offset = torch.stack(
        [
            geometry.defocus_offset_a(
                centre_raw[i],
                tilt_angle_deg=float(angles[i]),
                tilt_axis_deg=-float(rotation_deg[i]),
                pixel_size_a=pixel_size_a,
                image_shape=image_shape,
            )
            for i in range(t)
        ]
    )
    return AlignedDefocus(values[0] + offset, values[1] + offset, torch.remainder(values[2] + rotation_deg, 180.0))


def strip_width_for_tolerance(
    tilt_angles_deg,  # (t,)
    *,
    pixel_size_a: float,
    width_px: int,  # view width: the largest strip
    defocus_tol_a: float | None = None,  # defocus change allowed within a strip
    voltage_kv: float = 300.0,
    min_width_px: int = 16,
) -> list[int]:  # (t,) strip widths, px
    """Choose strip widths over which the defocus changes by at most ``defocus_tol_a`` (IMOD ``DefocusTol``).

    By default the tolerance is the defocus change that moves the CTF phase by pi/4 at Nyquist:
    ``pi lambda dz k^2 = pi / 4`` with ``k = 1 / (2 pixel_size_a)``.
    """
    if defocus_tol_a is None:
        k2 = (0.5 / pixel_size_a) ** 2  # 1/Å^2
        defocus_tol_a = 0.25 / (electron_wavelength_a(voltage_kv) * k2)  # (pi/4) / (pi lambda k^2), Å
    if not defocus_tol_a > 0:
        raise ValueError(f"defocus tolerance must be > 0 Å, got {defocus_tol_a}")
    widths = []
    for angle in torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).tolist():
        slope = abs(math.tan(math.radians(angle))) * pixel_size_a  # Å of defocus per px
        n = width_px if slope < 1e-9 else int(defocus_tol_a / slope)
        widths.append(int(min(width_px, max(min_width_px, n))))
    return widths


STRIPS_PER_BATCH = 8  # strips whose CTFs are made at once: (8, h, w // 2 + 1) float64


def ctf_phase_flip_strips(
    views: torch.Tensor,  # (t, h, w) ALIGNED views (tilt axis along y)
    tilt_angles_deg,  # (t,)
    optics: Optics,
    *,
    defocus_u_a,  # (t,) Å at the view centre, underfocus positive
    defocus_v_a=None,  # (t,) Å, default = defocus_u_a (no astigmatism)
    astigmatism_angle_deg=0.0,  # (t,) or float, in the frame of these views
    phase_shift_rad=0.0,  # (t,) or float
    strip_width_px: int | list[int] = 64,  # one width, or one per view
) -> torch.Tensor:  # (t, h, w)
    """Phase-flip tilted views in strips parallel to the tilt axis (like IMOD ``ctfphaseflip``).

    Each strip of ``strip_width_px`` columns is corrected with the defocus at its centre,
    ``df + x' tan(theta) * pixel_size_a`` (``geometry.defocus_offset_a``; x' from the view centre).
    The image is multiplied by ``-sign(CTF)`` so low frequencies keep their sign: contrast stays
    as in the images (dark protein, DESIGN.md §2) and every frequency band agrees with it.

    Parameters
    ----------
    views : torch.Tensor
        ``(t, h, w)`` aligned views (tilt axis along y); never modified.
    tilt_angles_deg : sequence of float or torch.Tensor
        ``(t,)`` tilt angles, degrees.
    optics : Optics
        Pixel size of these views (Å/px), voltage (kV), Cs (mm) and amplitude contrast.
    defocus_u_a, defocus_v_a : sequence of float or torch.Tensor
        ``(t,)`` defocus at each view centre, Å, underfocus positive; ``defocus_v_a`` defaults to
        ``defocus_u_a`` (no astigmatism).
    astigmatism_angle_deg : float or sequence of float
        Astigmatism azimuth ``(t,)`` or one value, degrees from +x of these views, counter-clockwise.
    phase_shift_rad : float or sequence of float
        Phase-plate shift ``(t,)`` or one value, radians.
    strip_width_px : int or list of int
        Strip width in pixels, one for all views or one per view
        (:func:`strip_width_for_tolerance`).

    Returns
    -------
    torch.Tensor
        ``(t, h, w)`` phase-flipped views, dtype of ``views`` (float32 for integer input).

    Raises
    ------
    ValueError
        If ``views`` is not ``(t, h, w)``, or the angles or strip widths do not match the views.

    Examples
    --------
    >>> import torch
    >>> from tiltflow.core.ctf_model import Optics
    >>> views = torch.randn(2, 32, 32)
    >>> flipped = ctf_phase_flip_strips(views, [0.0, 40.0], Optics(pixel_size_a=2.0), defocus_u_a=[2e4, 2e4])
    >>> flipped.shape
    torch.Size([2, 32, 32])
    """
    if not isinstance(views, torch.Tensor) or views.ndim != 3:
        raise ValueError(f"views must be a (t, h, w) tensor, got {getattr(views, 'shape', type(views))}")
    if not torch.is_floating_point(views):
        views = views.to(torch.float32)
    t, h, w = views.shape
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1)
    if angles.numel() != t:
        raise ValueError(f"tilt_angles_deg has {angles.numel()} angles for {t} views; pass one angle per view")

    def per_view(value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64).reshape(-1).expand(t)

    du = per_view(defocus_u_a)
    dv = du if defocus_v_a is None else per_view(defocus_v_a)
    da, ph = per_view(astigmatism_angle_deg), per_view(phase_shift_rad)
    widths = [int(strip_width_px)] * t if isinstance(strip_width_px, (int, float)) else list(strip_width_px)
    if len(widths) != t or min(widths) < 1:
        raise ValueError(f"strip_width_px must be a positive pixel count (or one per view), got {strip_width_px}")
    out = torch.empty_like(views)
    for i in range(t):
        starts = list(range(0, w, widths[i]))
        centres = torch.tensor([(s + min(s + widths[i], w) - 1) / 2.0 for s in starts], dtype=torch.float64)
        points = torch.stack([centres, torch.full_like(centres, (h - 1) / 2.0)], -1)
        offsets = geometry.defocus_offset_a(
            points,
            tilt_angle_deg=float(angles[i]),
            tilt_axis_deg=0.0,
            pixel_size_a=optics.pixel_size_a,
            image_shape=(h, w),
        )
        spectrum = torch.fft.rfft2(views[i])
        for b0 in range(0, len(starts), STRIPS_PER_BATCH):
            sl = slice(b0, b0 + STRIPS_PER_BATCH)
            ctf = ctf_2d(
                (h, w),
                optics,
                defocus_u_a=du[i] + offsets[sl],
                defocus_v_a=dv[i] + offsets[sl],
                astigmatism_angle_deg=da[i].expand(offsets[sl].shape),
                phase_shift_rad=ph[i],
                device=views.device,
            )
            flipped = torch.fft.irfft2(spectrum * -torch.sign(ctf).to(views.dtype), s=(h, w))
            for j, s in enumerate(starts[sl]):
                out[i, :, s : s + widths[i]] = flipped[j, :, s : s + widths[i]]
    return out
