"""SIRT (simultaneous iterative reconstruction technique) with the matched projector pair.

``x <- x + relaxation * C A^T R (b - A x)`` with ``A`` = :func:`project_volume`, ``R`` = 1 / ray
lengths (row sums of A) and ``C`` = 1 / number of views reaching each voxel (column sums), the
normalisation used by ASTRA and IMOD; converges for ``0 < relaxation < 2`` (Gregor & Benson,
IEEE TMI 27:918 (2008), doi:10.1109/TMI.2008.923696).
"""

from __future__ import annotations

import torch

from tiltflow.core.backproject import VolumeOffset, _angles_rad, _as_float, _Projector

_CPU_BLOCK_VOXELS = 1 << 20  # voxels per block of rows on CPUs (4 MiB of float32)


def _safe_inverse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 1e-6, 1.0 / x.clamp(min=1e-6), torch.zeros_like(x))


def sirt(
    views: torch.Tensor,  # (..., t, ny, nx) aligned views
    tilt_angles_deg,  # (t,)
    *,
    thickness_px: int,
    iterations: int = 20,
    relaxation: float = 1.0,
    positivity: bool = False,
    initial: torch.Tensor | None = None,  # (..., nz, ny, nx) start volume, zeros if None
    offset: VolumeOffset | None = None,  # specimen coordinates of the volume's centre; None: (0, 0)
) -> torch.Tensor:  # (..., nz, ny, nx)
    """Reconstruct by ``iterations`` SIRT updates (module docstring); geometry as ``backproject``.

    ``positivity`` clamps the volume at 0 after every update (for contrast-inverted data where the
    specimen is bright).  Calling again with ``initial`` set to the result continues the iteration.

    Parameters
    ----------
    views : torch.Tensor
        ``(..., t, ny, nx)`` aligned views; never modified.
    tilt_angles_deg : sequence of float or torch.Tensor
        ``(t,)`` tilt angles, degrees within [-90, 90].
    thickness_px : int
        Number of z planes ``nz`` of the volume.
    iterations : int
        Number of updates (0 returns the start volume).
    relaxation : float
        Step size, in (0, 2).
    positivity : bool
        Clamp the volume at 0 after every update.
    initial : torch.Tensor, optional
        ``(..., nz, ny, nx)`` start volume (default zeros); never modified.
    offset : VolumeOffset, optional
        Specimen coordinates (px) of the volume's centre (default: 0, 0).

    Returns
    -------
    torch.Tensor
        ``(..., nz, ny, nx)`` volume, dtype of ``views`` (float32 for integer input).

    Raises
    ------
    ValueError
        If the angles do not match the views, ``relaxation`` is outside (0, 2), ``iterations`` < 0
        or ``initial`` has the wrong shape.

    Examples
    --------
    >>> import torch
    >>> views = torch.ones(3, 4, 16)
    >>> sirt(views, [-30.0, 0.0, 30.0], thickness_px=8, iterations=2).shape
    torch.Size([8, 4, 16])
    """
    views = _as_float(views, "views", 3)
    t, ny, nx = views.shape[-3:]
    nz = int(thickness_px)
    if nz < 1:
        raise ValueError(f"thickness_px must be a positive number of voxels, got {thickness_px}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not 0.0 < relaxation < 2.0:
        raise ValueError(f"relaxation must lie in (0, 2) for SIRT to converge, got {relaxation}")
    theta = _angles_rad(tilt_angles_deg, t, views.device)
    offset = VolumeOffset() if offset is None else offset
    op = _Projector(
        theta, nx_view=nx, nx=nx, nz=nz, x_offset_px=offset.x_px, z_offset_px=offset.z_px, dtype=views.dtype, cache=True
    )
    b = views.reshape(-1, t, ny, nx)
    # every y row sees the same geometry: (1, t, 1, nx) 1 / ray length, (1, nz, 1, nx) 1 / views
    row_w = _safe_inverse(op.project(b.new_ones((1, nz, 1, nx))))
    col_w = _safe_inverse(op.backproject(b.new_ones((1, t, 1, nx))))
    if initial is None:
        x = b.new_zeros((b.shape[0], nz, ny, nx))
    else:
        expected = (*views.shape[:-3], nz, ny, nx)
        if tuple(initial.shape) != expected:
            raise ValueError(f"initial has shape {tuple(initial.shape)}, expected {expected}")
        x = initial.to(dtype=views.dtype, device=views.device).reshape(-1, nz, ny, nx).clone()
    # y rows are independent problems: all iterations on a block of rows at a time keep the
    # working set in cache on CPUs (benchmarks/README.md)
    rows = ny if views.device.type == "cuda" else max(1, _CPU_BLOCK_VOXELS // (nz * nx))
    for y0 in range(0, ny, rows):
        xs, bs = x[:, :, y0 : y0 + rows], b[:, :, y0 : y0 + rows]
        for _ in range(iterations):  # in place: the block, one update and its views in memory
            residual = (bs - op.project(xs)) * row_w
            update = op.backproject(residual).mul_(col_w)
            xs.add_(update, alpha=relaxation)
            del update
            if positivity:
                xs.clamp_(min=0.0)
    return x.reshape(*views.shape[:-3], nz, ny, nx)
