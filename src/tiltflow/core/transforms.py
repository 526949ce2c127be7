"""Conversions between our tilt-series geometry and IMOD, AreTomo and RELION 5 alignments.

Our geometry (``core/geometry.py``): a raw view shows the aligned image rotated by the tilt-axis
angle ``a`` (degrees from +y, counter-clockwise) and displaced by ``s`` (px, x y):
``p_raw = c + R(a) @ p_aligned + s`` with IMOD's centre ``c = ((nx-1)/2, (ny-1)/2)``.

- **IMOD .xf** ``(t, 6)`` = ``A11 A12 A21 A22 DX DY`` maps raw to aligned:
  ``X' - c_out = A (X - c_in) + D``. For our geometry ``A = m R(-a)``, ``D = -A s``.
- **AreTomo .aln** (``ROT``, ``TX``, ``TY``): ``ROT`` is the tilt-axis angle and (TX, TY) the raw
  shift ``s``; AreTomo's own ``-OutImod`` writer (AreTomo2/3 ``CSaveXF``) gives ``A = R(-ROT)``,
  ``D = A (-TX, -TY)`` (``convention="aretomo"``, DESIGN.md). teamtomo ``alnfile`` writes
  ``A = R(+ROT)`` with the same ``D = A (-TX, -TY)`` (``convention="alnfile"``); the corpus
  ``alnfile_global_no_local.xf`` was written that way.
- **RELION 5** per-tilt columns project a specimen point ``p`` (px, centred) to
  ``Rz(rlnTomoZRot) Ry(rlnTomoYTilt) Rx(rlnTomoXTilt) p + shift_A / pixel_size + N // 2``
  (RELION ``TomogramSet``), so ``ZRot = a``, ``YTilt`` = tilt angle and
  ``shift = s + c - N // 2`` (half a pixel on even sizes; RELION's own IMOD importer drops it).

All functions are pure; outputs are float64 on the device of the first tensor input.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tiltflow.core.geometry import image_centre, rotation_matrix_2d

__all__ = [
    "RELION_ALIGNMENT_COLUMNS",
    "ImodAlignment",
    "XfGeometry",
    "aln_to_xf",
    "geometry_to_xf",
    "relion_rotation_matrices",
    "relion_to_xf",
    "xf_to_aln",
    "xf_to_geometry",
    "xf_to_relion",
]

AlnConvention = Literal["aretomo", "alnfile"]
RELION_ALIGNMENT_COLUMNS = (
    "rlnTomoXTilt",
    "rlnTomoYTilt",
    "rlnTomoZRot",
    "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst",
)
# a 2x2 part further than this from a scaled rotation loses information in conversions
_SIMILARITY_TOL = 1e-3


@dataclass(frozen=True)
class XfGeometry:
    """Per-view geometry recovered from an ``.xf``: ``A ~= magnification * R(-tilt_axis_deg)``."""

    tilt_axis_deg: torch.Tensor  # (t,) degrees from +y, counter-clockwise (AreTomo ROT)
    shifts_px: torch.Tensor  # (t, 2) raw-image shift s (x, y) in px (AreTomo TX, TY)
    magnification: torch.Tensor  # (t,) sqrt(det A)


@dataclass(frozen=True)
class ImodAlignment:
    """What RELION columns give back in IMOD terms."""

    xf: torch.Tensor  # (t, 6) raw -> aligned
    tilt_angles_deg: torch.Tensor  # (t,) rlnTomoYTilt
    xtilt_deg: torch.Tensor  # (t,) rlnTomoXTilt, passed through unchanged


def _as_xf(xf: torch.Tensor | object) -> torch.Tensor:
    xf = torch.as_tensor(xf, dtype=torch.float64)
    if xf.ndim != 2 or xf.shape[-1] != 6:
        raise ValueError(f"xf must have shape (t, 6) = A11 A12 A21 A22 DX DY per view, got {tuple(xf.shape)}")
    return xf


def _per_view(values: object, t: int, like: torch.Tensor, name: str) -> torch.Tensor:
    out = torch.as_tensor(values, dtype=torch.float64, device=like.device)
    if out.ndim == 0:
        return out.expand(t).clone()
    if out.shape != (t,):
        raise ValueError(f"{name} must be a scalar or have shape ({t},), got {tuple(out.shape)}")
    return out


def _check_shifts(shifts_px: object, like: torch.Tensor | None = None) -> torch.Tensor:
    device = None if like is None else like.device
    s = torch.as_tensor(shifts_px, dtype=torch.float64, device=device)
    if s.ndim != 2 or s.shape[-1] != 2:
        raise ValueError(f"shifts must have shape (t, 2) = x, y per view, got {tuple(s.shape)}")
    return s


def xf_to_geometry(xf: torch.Tensor) -> XfGeometry:
    """Tilt-axis angle, raw-image shift and magnification of each ``.xf`` row ``(t, 6)``.

    The rotation is the best-fitting one of the 2x2 part (skew and anisotropic stretch from
    tiltalign are dropped); the shift ``s = -A^-1 D`` is exact for any invertible ``A``.
    """
    xf = _as_xf(xf)
    a11, a12, a21, a22 = xf[:, 0], xf[:, 1], xf[:, 2], xf[:, 3]
    rotation_deg = torch.rad2deg(torch.atan2(a21 - a12, a11 + a22))  # A ~ m R(rotation)
    det = a11 * a22 - a12 * a21
    if bool((det <= 0).any()):
        raise ValueError("xf has a view whose 2x2 part is singular or mirrors the image (det <= 0)")
    mats = xf[:, :4].reshape(-1, 2, 2)
    shifts = -torch.linalg.solve(mats, xf[:, 4:6].unsqueeze(-1)).squeeze(-1)
    return XfGeometry(tilt_axis_deg=-rotation_deg, shifts_px=shifts, magnification=det.sqrt())


def geometry_to_xf(
    tilt_axis_deg: torch.Tensor | float,  # (t,) or scalar
    shifts_px: torch.Tensor,  # (t, 2) raw-image shifts s (x, y), px
    magnification: torch.Tensor | float | None = None,  # (t,) or scalar, default 1
) -> torch.Tensor:  # (t, 6)
    """Compute the IMOD ``.xf`` rows aligning views of our geometry: ``A = m R(-tilt_axis)``, ``D = -A s``.

    Parameters
    ----------
    tilt_axis_deg : torch.Tensor or float
        ``(t,)`` or one tilt-axis angle, degrees from +y, counter-clockwise.
    shifts_px : torch.Tensor
        ``(t, 2)`` raw-image shifts s (x, y), px.
    magnification : torch.Tensor or float, optional
        ``(t,)`` or one magnification, default 1.

    Returns
    -------
    torch.Tensor
        ``(t, 6)`` rows ``A11 A12 A21 A22 DX DY`` (DESIGN.md §2).

    Examples
    --------
    >>> import torch
    >>> geometry_to_xf(90.0, torch.tensor([[3.0, 0.0]])).round()
    tensor([[ 0.,  1., -1.,  0., -0.,  3.]], dtype=torch.float64)
    """
    s = _check_shifts(shifts_px)
    t = s.shape[0]
    axis = _per_view(tilt_axis_deg, t, s, "tilt_axis_deg")
    mag = _per_view(1.0 if magnification is None else magnification, t, s, "magnification")
    a = rotation_matrix_2d(-axis).to(s.device) * mag[:, None, None]
    d = -(a @ s.unsqueeze(-1)).squeeze(-1)
    return torch.cat([a.reshape(t, 4), d], dim=1)


def aln_to_xf(
    rot_deg: torch.Tensor,  # (t,) AreTomo ROT
    shifts_px: torch.Tensor,  # (t, 2) AreTomo (TX, TY), px of the aligned stack
    *,
    shift_scale: float = 1.0,
    convention: AlnConvention = "aretomo",
    raw_indices: torch.Tensor | None = None,  # (t,) 0-based rows of a raw stack with dark views
    n_raw: int | None = None,
) -> torch.Tensor:  # (t, 6), or (n_raw, 6) with identity rows for dark views
    """AreTomo global alignment -> IMOD ``.xf``.

    ``shift_scale`` converts (TX, TY) to pixels of the stack the ``.xf`` applies to (e.g.
    binning of the ``.aln`` stack / binning of the ``.xf`` stack). With ``raw_indices`` and
    ``n_raw`` the rows are placed into a raw stack whose other (dark) views get the identity,
    as AreTomo's ``-OutImod 1`` does.
    """
    s = _check_shifts(shifts_px) * shift_scale
    rot = _per_view(rot_deg, s.shape[0], s, "rot_deg")
    if convention == "aretomo":
        xf = geometry_to_xf(rot, s)
    elif convention == "alnfile":
        a = rotation_matrix_2d(rot).to(s.device)
        d = -(a @ s.unsqueeze(-1)).squeeze(-1)
        xf = torch.cat([a.reshape(-1, 4), d], dim=1)
    else:
        raise ValueError(f"convention must be 'aretomo' or 'alnfile', got {convention!r}")
    if raw_indices is None and n_raw is None:
        return xf
    if raw_indices is None or n_raw is None:
        raise ValueError("give both raw_indices and n_raw to place rows into a raw stack")
    idx = torch.as_tensor(raw_indices, dtype=torch.long, device=xf.device)
    if idx.shape != (xf.shape[0],) or bool((idx < 0).any()) or bool((idx >= n_raw).any()):
        raise ValueError(f"raw_indices must be ({xf.shape[0]},) indices in [0, {n_raw})")
    full = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64, device=xf.device)
    full = full.repeat(n_raw, 1)
    full[idx] = xf
    return full


def xf_to_aln(xf: torch.Tensor, *, shift_scale: float = 1.0, convention: AlnConvention = "aretomo") -> XfGeometry:
    """IMOD ``.xf`` -> AreTomo ``ROT`` (``tilt_axis_deg``), ``(TX, TY)`` (``shifts_px``), ``GMAG``.

    ``shift_scale`` is the factor applied by :func:`aln_to_xf`; the shifts are divided by it.
    """
    if convention not in ("aretomo", "alnfile"):
        raise ValueError(f"convention must be 'aretomo' or 'alnfile', got {convention!r}")
    geo = xf_to_geometry(xf)  # shifts -A^-1 D are the same in both conventions
    rot = geo.tilt_axis_deg if convention == "aretomo" else -geo.tilt_axis_deg
    return XfGeometry(rot, geo.shifts_px / shift_scale, geo.magnification)


def _relion_centre_offset(image_shape: tuple[int, int]) -> tuple[float, float]:
    """IMOD's centre minus RELION's (``N // 2``) as (x, y) px for an ``(ny, nx)`` image."""
    if len(image_shape) != 2 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (ny, nx) of the tilt images, got {image_shape}")
    cx, cy = image_centre(image_shape)
    ny, nx = image_shape
    return cx - nx // 2, cy - ny // 2


def xf_to_relion(
    xf: torch.Tensor,  # (t, 6) aligning the raw views of the stack RELION reads
    tilt_angles_deg: torch.Tensor,  # (t,) tilt angles (IMOD .tlt)
    *,
    pixel_size_a: float,  # Å/px of that stack
    image_shape: tuple[int, int],  # (ny, nx) of that stack
    xtilt_deg: torch.Tensor | float = 0.0,  # (t,) or scalar: IMOD x-axis tilt, passed through
) -> dict[str, torch.Tensor]:  # RELION_ALIGNMENT_COLUMNS -> (t,)
    """RELION 5 per-tilt alignment columns (``rlnTomoXTilt`` ... ``rlnTomoYShiftAngst``).

    ``pd.DataFrame(out)`` gives a table ready for a tilt-series STAR file. A magnification or
    skew in the ``.xf`` cannot be expressed in RELION and is dropped with a warning.
    """
    xf = _as_xf(xf)
    t = xf.shape[0]
    tilt = _per_view(tilt_angles_deg, t, xf, "tilt_angles_deg")
    xtilt = _per_view(xtilt_deg, t, xf, "xtilt_deg")
    if pixel_size_a <= 0:
        raise ValueError(f"pixel_size_a must be > 0 Å/px, got {pixel_size_a}")
    geo = xf_to_geometry(xf)
    rebuilt = geometry_to_xf(geo.tilt_axis_deg, geo.shifts_px)
    lost = (rebuilt[:, :4] - xf[:, :4]).abs().max().item()
    if lost > _SIMILARITY_TOL:
        warnings.warn(
            f"xf_to_relion: the .xf has magnification/skew (2x2 differs from a rotation by up to "
            f"{lost:.2g}); RELION columns keep only the rotation and shift",
            stacklevel=2,
        )
    ox, oy = _relion_centre_offset(image_shape)
    shift_px = geo.shifts_px + torch.tensor([ox, oy], dtype=torch.float64, device=xf.device)
    # px * Å/px = Å
    shift_a = shift_px * pixel_size_a
    return {
        "rlnTomoXTilt": xtilt,
        "rlnTomoYTilt": tilt,
        "rlnTomoZRot": geo.tilt_axis_deg,
        "rlnTomoXShiftAngst": shift_a[:, 0],
        "rlnTomoYShiftAngst": shift_a[:, 1],
    }


def relion_to_xf(
    columns: Mapping[str, object],  # RELION_ALIGNMENT_COLUMNS -> (t,) (a DataFrame works)
    *,
    pixel_size_a: float,
    image_shape: tuple[int, int],  # (ny, nx)
) -> ImodAlignment:
    """Inverse of :func:`xf_to_relion`; a missing ``rlnTomoXTilt`` counts as 0."""
    missing = [c for c in RELION_ALIGNMENT_COLUMNS[1:] if c not in columns]
    if missing:
        raise ValueError(f"relion_to_xf: missing columns {missing}; align the tilt series first")
    if pixel_size_a <= 0:
        raise ValueError(f"pixel_size_a must be > 0 Å/px, got {pixel_size_a}")

    first = columns["rlnTomoZRot"]
    device = first.device if isinstance(first, torch.Tensor) else None

    def col(name: str) -> torch.Tensor:
        values = columns[name]
        if not isinstance(values, torch.Tensor):
            values = np.array(values, dtype=np.float64)  # a copy: DataFrame columns are read-only
        return torch.as_tensor(values, dtype=torch.float64, device=device).reshape(-1)

    zrot, ytilt = col("rlnTomoZRot"), col("rlnTomoYTilt")
    shift_a = torch.stack([col("rlnTomoXShiftAngst"), col("rlnTomoYShiftAngst")], dim=1)
    xtilt = col("rlnTomoXTilt") if "rlnTomoXTilt" in columns else torch.zeros_like(zrot)
    ox, oy = _relion_centre_offset(image_shape)
    # Å / (Å/px) = px
    s = shift_a / pixel_size_a - torch.tensor([ox, oy], dtype=torch.float64, device=zrot.device)
    return ImodAlignment(xf=geometry_to_xf(zrot, s), tilt_angles_deg=ytilt, xtilt_deg=xtilt)


def relion_rotation_matrices(
    xtilt_deg: torch.Tensor | float,  # (t,) or scalar rlnTomoXTilt
    ytilt_deg: torch.Tensor | float,  # (t,) or scalar rlnTomoYTilt
    zrot_deg: torch.Tensor | float,  # (t,) or scalar rlnTomoZRot
) -> torch.Tensor:  # (t, 3, 3)
    """RELION 5's specimen rotation ``Rz(zrot) @ Ry(ytilt) @ Rx(xtilt)`` (active, right-handed).

    Its first two rows are the x, y rows of RELION's projection matrices (``rlnTomoProjX/Y``).
    """
    inputs = (xtilt_deg, ytilt_deg, zrot_deg)
    device = next((v.device for v in inputs if isinstance(v, torch.Tensor)), None)
    x, y, z = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64, device=device) for v in inputs))
    x, y, z = (torch.deg2rad(v.reshape(-1)) for v in (x, y, z))
    one, zero = torch.ones_like(x), torch.zeros_like(x)

    def stack(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = stack([[one, zero, zero], [zero, x.cos(), -x.sin()], [zero, x.sin(), x.cos()]])
    ry = stack([[y.cos(), zero, y.sin()], [zero, one, zero], [-y.sin(), zero, y.cos()]])
    rz = stack([[z.cos(), -z.sin(), zero], [z.sin(), z.cos(), zero], [zero, zero, one]])
    return rz @ ry @ rx
