"""Matched linear-interpolation projector and backprojector for single-axis tomography.

Geometry (``core/geometry.py``): the tilt axis is +y; a specimen point (x, y, z) seen at tilt
``theta`` lands in the ALIGNED view at column ``u = x cos(theta) + z sin(theta) + (nx_view-1)/2``
and row ``y + (ny - 1) / 2``.  Volumes are ``(nz, ny, nx)`` with z the beam / thickness axis
(DESIGN.md §2); voxel ``(iz, iy, ix)`` is the specimen point

    x = ix - (nx-1)/2 + x_offset_px,   y = iy - (ny-1)/2,   z = iz - (nz-1)/2 + z_offset_px,

so ``z_offset_px`` / ``x_offset_px`` are the specimen coordinates of the volume's centre (IMOD's
``SHIFT x z`` moves the content the other way: ``SHIFT = -offset``).

Every y row is an independent 2-D problem sharing the same interpolation weights, so for a chunk
of z planes the weights form one sparse CSR matrix ``W`` (``nz_chunk * nx`` rows,
``t * (nx_view + 2)`` columns, two entries per view: linear interpolation in u, one zero column
padding each side of a view).  Backprojection is ``W @ V`` with the views laid out as
``(t * (nx_view + 2), batch * ny)``; projection is ``W.T @ vol``.  Exact adjoints, contiguous rows,
bounded memory (one chunk of ``W`` at a time unless cached).

Callers that project or backproject with the same geometry many times (projection matching) pass
an ``operators`` dict they own: the matrices of the last ``OPERATOR_CACHE_SIZE`` geometries
(angles, shapes, offsets, dtype, device) are kept there instead of being rebuilt on every call.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

# nonzeros per chunk of the interpolation matrix (~50 MB of indices and values)
_CHUNK_NNZ = 4_000_000
# geometries kept in an ``operators`` dict (each holds W and W.T: ~16 bytes per nonzero)
OPERATOR_CACHE_SIZE = 2


@dataclass(frozen=True)
class VolumeOffset:
    """Specimen coordinates (px) of a volume's centre (module docstring); IMOD's ``SHIFT x z`` is minus these."""

    x_px: float = 0.0
    z_px: float = 0.0


def _angles_rad(tilt_angles_deg, n_views: int | None, device: torch.device) -> torch.Tensor:
    """Validate tilt angles; return them ``(t,)`` in radians, float64 on ``device``."""
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).to(device).reshape(-1)
    if angles.numel() == 0:
        raise ValueError("tilt_angles_deg is empty; pass one angle per view")
    if n_views is not None and angles.numel() != n_views:
        raise ValueError(
            f"tilt_angles_deg has {angles.numel()} angles but the views have {n_views}; pass one angle per view"
        )
    if not torch.isfinite(angles).all() or angles.abs().max() > 90.0:
        raise ValueError("tilt_angles_deg must be finite degrees within [-90, 90]")
    return torch.deg2rad(angles)


def _interp_matrix(
    theta_rad: torch.Tensor,  # (t,) float64
    *,
    nx_view: int,
    nx: int,
    nz: int,
    z_range: tuple[int, int],
    x_offset_px: float,
    z_offset_px: float,
    dtype: torch.dtype,
) -> torch.Tensor:  # CSR (nzc * nx, t * (nx_view + 2))
    """Linear-interpolation weights from padded view columns to the voxels of planes ``z_range``."""
    dev = theta_rad.device
    t = theta_rad.shape[0]
    x = torch.arange(nx, dtype=torch.float64, device=dev) - (nx - 1) / 2.0 + x_offset_px
    z = torch.arange(*z_range, dtype=torch.float64, device=dev) - (nz - 1) / 2.0 + z_offset_px
    # u: (nzc, nx, t) aligned column, px; clamped so that far-off voxels fall on the zero padding
    u = x[None, :, None] * torch.cos(theta_rad) + z[:, None, None] * torch.sin(theta_rad)
    u = (u + (nx_view - 1) / 2.0).clamp(-1.0, float(nx_view))
    i0 = torch.floor(u).clamp(max=nx_view - 1)
    frac = u - i0
    view_base = torch.arange(t, device=dev) * (nx_view + 2)
    col = i0.to(torch.int64) + 1 + view_base  # padded column of the left tap
    cols = torch.stack([col, col + 1], -1).reshape(-1).to(torch.int32)
    vals = torch.stack([1.0 - frac, frac], -1).reshape(-1).to(dtype)
    n_rows = (z_range[1] - z_range[0]) * nx
    crow = torch.arange(n_rows + 1, device=dev, dtype=torch.int32) * (2 * t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks sparse CSR as beta
        return torch.sparse_csr_tensor(crow, cols, vals, (n_rows, t * (nx_view + 2)))


def _transpose_csr(w: torch.Tensor) -> torch.Tensor:
    """CSR of ``w.T`` (the CSC arrays of ``w`` read as CSR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csc = w.to_sparse_csc()
        return torch.sparse_csr_tensor(csc.ccol_indices(), csc.row_indices(), csc.values(), (w.shape[1], w.shape[0]))


class _Projector:
    """The matched pair (project, backproject) for one geometry; keeps the chunks if ``cache``."""

    def __init__(self, theta_rad, *, nx_view, nx, nz, x_offset_px, z_offset_px, dtype, cache=False) -> None:
        self.theta, self.nx_view, self.nx, self.nz = theta_rad, nx_view, nx, nz
        self.offsets = (float(x_offset_px), float(z_offset_px))
        self.dtype, self.cache = dtype, cache
        step = max(1, _CHUNK_NNZ // (2 * theta_rad.shape[0] * nx))
        self.chunks = [(z0, min(nz, z0 + step)) for z0 in range(0, nz, step)]
        self._w: dict[int, torch.Tensor] = {}
        self._wt: dict[int, torch.Tensor] = {}

    def _matrix(self, i: int, transposed: bool) -> torch.Tensor:
        store = self._wt if transposed else self._w
        if i in store:
            return store[i]
        w = self._w.get(i)
        if w is None:
            w = _interp_matrix(
                self.theta,
                nx_view=self.nx_view,
                nx=self.nx,
                nz=self.nz,
                z_range=self.chunks[i],
                x_offset_px=self.offsets[0],
                z_offset_px=self.offsets[1],
                dtype=self.dtype,
            )
            if self.cache:
                self._w[i] = w
        if transposed:
            w = _transpose_csr(w)
            if self.cache:
                self._wt[i] = w
        return w

    def backproject(self, views: torch.Tensor) -> torch.Tensor:
        """``(B, t, ny, nx_view)`` -> ``(B, nz, ny, nx)`` (plain sum over views)."""
        b, t, ny, _ = views.shape
        padded = torch.nn.functional.pad(views, (1, 1))
        v = padded.permute(1, 3, 0, 2).reshape(t * (self.nx_view + 2), b * ny)
        out = views.new_empty((b, self.nz, ny, self.nx))
        for i, (z0, z1) in enumerate(self.chunks):
            r = self._matrix(i, False) @ v  # (nzc * nx, b * ny)
            out[:, z0:z1] = r.reshape(z1 - z0, self.nx, b, ny).permute(2, 0, 3, 1)
        return out

    def project(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, nz, ny, nx)`` -> ``(B, t, ny, nx_view)`` (sum of voxel values along each ray)."""
        b, _, ny, _ = volume.shape
        t = self.theta.shape[0]
        acc = volume.new_zeros((t * (self.nx_view + 2), b * ny))
        for i, (z0, z1) in enumerate(self.chunks):
            vol = volume[:, z0:z1].permute(1, 3, 0, 2).reshape((z1 - z0) * self.nx, b * ny)
            acc += self._matrix(i, True) @ vol
        acc = acc.reshape(t, self.nx_view + 2, b, ny)[:, 1:-1]
        return acc.permute(2, 0, 3, 1).contiguous()


def _projector(
    theta: torch.Tensor,
    operators: dict | None,
    *,
    nx_view: int,
    nx: int,
    nz: int,
    x_offset_px: float,
    z_offset_px: float,
    dtype: torch.dtype,
) -> _Projector:
    """Return a projector for this geometry: the one kept in ``operators``, or a throw-away one.

    A new geometry's projector is built and kept in ``operators``, evicting the least recently
    used beyond ``OPERATOR_CACHE_SIZE``.
    """
    geometry = {
        "nx_view": nx_view,
        "nx": nx,
        "nz": nz,
        "x_offset_px": float(x_offset_px),
        "z_offset_px": float(z_offset_px),
        "dtype": dtype,
    }
    if operators is None:
        return _Projector(theta, **geometry)
    key = (theta.detach().cpu().numpy().tobytes(), *geometry.values(), str(theta.device))
    proj = operators.pop(key, None)  # re-inserted below: the most recently used comes last
    if proj is None:
        proj = _Projector(theta, cache=True, **geometry)
        while len(operators) >= OPERATOR_CACHE_SIZE:
            operators.pop(next(iter(operators)))
    operators[key] = proj
    return proj


def _as_float(x: torch.Tensor, name: str, min_dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < min_dim:
        got = getattr(x, "shape", type(x))
        raise ValueError(f"{name} must be a tensor with at least {min_dim} dimensions, got {got}")
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
    return x


def project_volume(
    volume: torch.Tensor,  # (..., nz, ny, nx)
    tilt_angles_deg,  # (t,)
    *,
    z_offset_px: float = 0.0,
    x_offset_px: float = 0.0,
    nx_view: int | None = None,
    operators: dict | None = None,
) -> torch.Tensor:  # (..., t, ny, nx_view) aligned views
    """Forward-project a volume into aligned views: the exact adjoint of :func:`backproject`.

    Each voxel's value is split between the two view columns around ``u`` (module docstring), so a
    view holds sums of voxel values along the beam (line integrals in voxel units).  ``nx_view``
    defaults to the volume width.  ``operators``: a dict to keep the interpolation matrices in
    between calls with the same geometry (module docstring).
    """
    volume = _as_float(volume, "volume", 3)
    nz, ny, nx = volume.shape[-3:]
    nxv = nx if nx_view is None else int(nx_view)
    theta = _angles_rad(tilt_angles_deg, None, volume.device)
    proj = _projector(
        theta,
        operators,
        nx_view=nxv,
        nx=nx,
        nz=nz,
        x_offset_px=x_offset_px,
        z_offset_px=z_offset_px,
        dtype=volume.dtype,
    )
    flat = volume.reshape(-1, nz, ny, nx)
    return proj.project(flat).reshape(*volume.shape[:-3], theta.shape[0], ny, nxv)


def backproject(
    views: torch.Tensor,  # (..., t, ny, nx_view) aligned (and filtered) views
    tilt_angles_deg,  # (t,)
    *,
    thickness_px: int,
    z_offset_px: float = 0.0,
    x_offset_px: float = 0.0,
    weights: torch.Tensor | None = None,  # (t,) per-view factors, e.g. angular increments in rad
    nx: int | None = None,
    operators: dict | None = None,
) -> torch.Tensor:  # (..., nz = thickness_px, ny, nx)
    """Backproject aligned views into a volume (z = beam axis); linear interpolation along x'.

    Sums ``weights[i] * views[i]`` sampled at each voxel's projected column (zero outside the view).
    The volume width ``nx`` defaults to the view width.  Memory: the output, one transposed copy of
    the views and one chunk of about 4 M interpolation weights (all of them, kept, with
    ``operators``: see :func:`project_volume`).
    """
    views = _as_float(views, "views", 3)
    t, ny, nxv = views.shape[-3:]
    nz = int(thickness_px)
    if nz < 1:
        raise ValueError(f"thickness_px must be a positive number of voxels, got {thickness_px}")
    theta = _angles_rad(tilt_angles_deg, t, views.device)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=views.dtype, device=views.device).reshape(-1)
        if w.numel() != t:
            raise ValueError(f"weights has {w.numel()} values for {t} views; give one per view")
        views = views * w[:, None, None]
    proj = _projector(
        theta,
        operators,
        nx_view=nxv,
        nx=nxv if nx is None else int(nx),
        nz=nz,
        x_offset_px=x_offset_px,
        z_offset_px=z_offset_px,
        dtype=views.dtype,
    )
    flat = views.reshape(-1, t, ny, nxv)
    out = proj.backproject(flat)
    return out.reshape(*views.shape[:-3], nz, ny, proj.nx)
