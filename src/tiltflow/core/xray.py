"""X-ray and hot-pixel removal after IMOD's ``ccderaser -find``.

Reference: D. Mastronarde, ccderaser(1), https://bio3d.colorado.edu/imod/doc/man/ccderaser.html

Images are ``(..., h, w)``; X-rays are BRIGHT outliers. Dark objects (gold beads) never qualify,
nor do their rims (below), so their pixels are never changed. Each image is cut into
``scan_size_px`` scan areas whose trimmed mean and robust SD (``sqrt(pi/2) x`` mean absolute
deviation, values beyond 4 SD left out, so strong hits neither hide others nor move the
statistics once erased) drive two detectors:

1. Peak stage: 3 x 3 maxima above ``scan_criterion`` SDs are tested against the mean/SD of the
   annulus ``max_radius_px < r <= max_radius_px + annulus_width_px`` (``peak_criterion``);
   8-connected neighbours inside ``max_radius_px`` above ``grow_criterion`` SDs join the patch.
   Maxima that fail but exceed ``scan_criterion + 1`` are tested against an annulus starting at
   ``extra_large_radius_px`` (``giant_criterion``); such a giant patch is erased only if the mean
   of its pixels' largest adjacent differences over its most extreme quarter exceeds
   ``big_diff_criterion`` SDs of the scan area's adjacent differences (smooth blobs survive).
2. Difference stage: ``pixel - mean of its 8 neighbours`` above ``diff_criterion`` SDs (of that
   difference in the scan area) seeds a patch grown by ``grow_criterion``; patches of more than
   ``max_diff_patch_px`` pixels are ignored.

Departures from IMOD, so that hits anywhere are found and gold beads are never taken for hits:

- The search reaches the image border (``edge_exclusion_px`` 0 by default): annulus statistics use
  only in-image pixels, and an edge pixel's difference is taken from its 5 (3 in a corner)
  in-image neighbours, scaled to the interior's noise.
- A normal peak must be sharp, ``(peak - mean of its 8 neighbours) >= MIN_SHARPNESS x (peak -
  annulus mean)``, and a normal patch of more than ``MAX_COMPACT_PX`` pixels must pass the giant
  patches' sharp-edge test: smooth blobs (beads in a stack of inverted contrast) are not hits.
- A patch next to a dark feature (its ring 1.5 < r <= 4.5 px has a 10th percentile more than
  ``RIM_DARK_SD`` scan-area SDs below its 75th: a bead's edge and bright Fresnel fringe) must be
  ``peak_criterion`` SDs above the ring's bright side, not only above the bead-lowered mean.
- A difference seed must also stand out from the differences of its own 15 x 15 neighbourhood
  (beads lower the noise of part of a scan area, and so its SD).
- At a few counts per pixel (where Poisson tails reach 6-7 Gaussian SDs) a patch's peak must be
  ``POISSON_MIN_Z`` above its ring on the Anscombe (variance-stabilised) scale.

Each 8-connected patch is replaced by a polynomial fitted to the unmasked pixels within
``border_px`` of it. The search is repeated on the erased image, in the scan areas that changed,
until nothing changes, so erasing an erased image changes nothing. Pure torch; no files, no
prints; the device follows the input.

This module holds the parameters, the public functions and the search loop; the detection
(candidates and the tests above) is in :mod:`tiltflow.core.xray_criteria`, the neighbourhood
statistics, connected components and polynomial fill in :mod:`tiltflow.core.xray_patches`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from tiltflow.core.xray_criteria import (
    MAX_COMPACT_PX,
    MIN_SHARPNESS,
    POISSON_MAX_COUNTS,
    POISSON_MIN_Z,
    RIM_DARK_SD,
    _drop_unlike_xrays,
    _find,
)
from tiltflow.core.xray_patches import _components, _fit_values, _quantize

__all__ = [
    "MAX_COMPACT_PX",
    "MIN_SHARPNESS",
    "POISSON_MAX_COUNTS",
    "POISSON_MIN_Z",
    "RIM_DARK_SD",
    "XrayParams",
    "XrayResult",
    "erase_xrays",
    "find_xrays",
    "replace_patches",
]

_MAX_PASSES = 8


def _check_fit_options(border_px: int, poly_order: int) -> None:
    if not (isinstance(border_px, int) and 1 <= border_px <= 5):
        raise ValueError(f"border_px must be an integer 1..5, got {border_px!r}")
    if not (isinstance(poly_order, int) and 0 <= poly_order <= 3):
        raise ValueError(f"poly_order must be an integer 0..3, got {poly_order!r}")


@dataclass(frozen=True)
class XrayParams:
    """ccderaser ``-find`` parameters, defaults as Scipion passes them (criteria in SDs)."""

    peak_criterion: float = 8.0
    diff_criterion: float = 6.0
    grow_criterion: float = 4.0
    scan_criterion: float = 3.0
    max_radius_px: float = 4.2
    giant_criterion: float = 12.0
    extra_large_radius_px: float = 8.0
    big_diff_criterion: float = 19.0
    annulus_width_px: float = 2.0
    scan_size_px: int = 100
    edge_exclusion_px: int = 0  # IMOD/Scipion use 4; 0 reaches the border
    border_px: int = 2
    poly_order: int = 2
    max_diff_patch_px: int = 2  # IMOD's MaxPixelsInDiffPatch default

    def __post_init__(self) -> None:
        """Check the parameters; raise a one-line ValueError."""
        for name in (
            "peak_criterion",
            "diff_criterion",
            "grow_criterion",
            "scan_criterion",
            "max_radius_px",
            "giant_criterion",
            "extra_large_radius_px",
            "big_diff_criterion",
            "annulus_width_px",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"XrayParams.{name} must be a positive number, got {value!r}")
        if self.extra_large_radius_px < self.max_radius_px:
            raise ValueError("XrayParams.extra_large_radius_px must be >= max_radius_px")
        if self.scan_size_px < 10:
            raise ValueError(f"XrayParams.scan_size_px must be >= 10, got {self.scan_size_px}")
        if self.edge_exclusion_px < 0 or self.max_diff_patch_px < 1:
            raise ValueError("XrayParams: edge_exclusion_px must be >= 0, max_diff_patch_px >= 1")
        _check_fit_options(self.border_px, self.poly_order)


@dataclass
class XrayResult:
    """Result of :func:`erase_xrays`.

    ``image``: erased copy (input shape/dtype); ``mask``: bool, pixels replaced; ``n_patches``:
    connected patches replaced (int for one image, else a tensor (...)).
    """

    image: torch.Tensor
    mask: torch.Tensor
    n_patches: int | torch.Tensor


def find_xrays(image: torch.Tensor, params: XrayParams = XrayParams()) -> torch.Tensor:
    """Bool mask ``(..., h, w)`` of the X-ray pixels of ``image`` ``(..., h, w)``."""
    x, owned = _as_stack(image, "find_xrays")
    lin, _ = _search(x, owned, params, image.dtype)
    return _mask(x, lin).reshape(image.shape)


def replace_patches(
    image: torch.Tensor, mask: torch.Tensor, *, border_px: int = 2, poly_order: int = 2
) -> torch.Tensor:
    """Replace each 8-connected patch of ``mask`` in a copy of ``image`` ``(..., h, w)``.

    Each patch becomes a polynomial in (x, y) of ``poly_order`` (0-3) fitted to the unmasked
    pixels within ``border_px`` (Chebyshev distance) of the patch; too few such pixels: their mean.
    """
    x, _ = _as_stack(image, "replace_patches")
    _check_fit_options(border_px, poly_order)
    if not isinstance(mask, torch.Tensor) or mask.shape != image.shape or mask.dtype != torch.bool:
        raise ValueError(f"replace_patches: mask must be a bool tensor of the image's shape {tuple(image.shape)}")
    lin = mask.to(x.device).reshape(-1).nonzero().flatten()
    if not lin.numel():
        return image.clone(memory_format=torch.contiguous_format)
    values = _quantize(_fit_values(x, lin, border_px, poly_order), image.dtype)
    out = x.clone()  # the work dtype: index_put is not implemented for every dtype (uint16)
    out.view(-1)[lin] = values.to(out.dtype)
    return out.to(image.dtype).reshape(image.shape)


def erase_xrays(image: torch.Tensor, params: XrayParams = XrayParams()) -> XrayResult:
    """Find X-rays in ``image`` ``(..., h, w)`` and replace them; the input is never modified.

    The method is IMOD's ``ccderaser -find`` with the departures of the module docstring; every
    image of the batch is searched on its own.

    Parameters
    ----------
    image : torch.Tensor
        ``(..., h, w)`` real images, h, w >= 16, any real dtype; X-rays are bright.
    params : XrayParams
        Detection and fill parameters (criteria in SDs, sizes in px).

    Returns
    -------
    XrayResult
        ``image`` the erased copy (input shape and dtype), ``mask`` the pixels replaced (bool,
        input shape), ``n_patches`` the patches replaced (int for one image, else a tensor ``(...)``).

    Raises
    ------
    TypeError
        If ``image`` is not a tensor.
    ValueError
        If it is not a real ``(..., h, w)`` image of at least 16 x 16 px, or holds NaN or inf.

    Examples
    --------
    >>> import torch
    >>> image = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    >>> image[20, 30] = 50.0  # an X-ray hit
    >>> erased = erase_xrays(image)
    >>> bool(erased.mask[20, 30]), bool(erased.image[20, 30] < 5), float(image[20, 30])
    (True, True, 50.0)
    """
    x, owned = _as_stack(image, "erase_xrays")
    lin, work = _search(x, owned, params, image.dtype)
    out = work.clone() if work is x and not owned else work  # never hand out the input
    if not image.dtype.is_floating_point:
        info = torch.iinfo(image.dtype)
        out = out.round().clamp(info.min, info.max)
    nb, h, w = x.shape
    comp = _components(lin, lin // w % h, lin % w, h, w)
    n_comp = int(comp.max()) + 1 if comp.numel() else 0
    comp_b = torch.zeros(n_comp, dtype=lin.dtype, device=x.device).scatter_(0, comp, lin // (h * w))
    counts = torch.bincount(comp_b, minlength=nb)
    n = int(counts[0]) if image.ndim == 2 else counts.reshape(image.shape[:-2])
    return XrayResult(
        image=out.to(image.dtype).reshape(image.shape), mask=_mask(x, lin).reshape(image.shape), n_patches=n
    )


# ----------------------------------------------------------------------------- search


def _search(x, owned, p, dtype):
    """Find and replace X-rays until nothing changes.

    Returns (sorted flat indices of every pixel replaced, erased images). Each pass scans the
    current images; pass 1 every area, later passes only the areas whose inputs changed, reusing
    the others' results (which equals a full scan). The search ends when the patches found would
    be replaced by their own values.
    """
    _, h, w = x.shape
    size = min(p.scan_size_px, h, w)
    grid = (size, -(-h // size), -(-w // size))
    todo = torch.ones(grid[1:], dtype=torch.bool)
    work = x
    found = keep_lin = keep_area = torch.zeros(0, dtype=torch.long, device=x.device)
    for _ in range(_MAX_PASSES):
        new_lin, new_area = _find(work, p, grid, todo)
        done = todo.to(x.device).flatten()[keep_area]
        keep_lin = torch.cat([keep_lin[~done], new_lin])
        keep_area = torch.cat([keep_area[~done], new_area])
        lin = _drop_unlike_xrays(work, torch.unique(keep_lin), size, p)  # as a full scan would
        if lin.numel() == 0:
            return found, work
        found = torch.unique(torch.cat([found, lin]))
        if work is x and not owned:
            work = x.clone()
        flat = work.view(-1)
        values = _quantize(_fit_values(work, lin, p.border_px, p.poly_order), dtype)
        changed = values != flat[lin]
        if not bool(changed.any()):
            return found, work
        flat[lin] = values.to(flat.dtype)
        todo = _affected_areas(lin[changed], h, w, grid, p)
    warnings.warn(
        f"erase_xrays: the X-ray search did not settle in {_MAX_PASSES} passes; "
        "erasing the result again may change more pixels",
        stacklevel=3,
    )
    return found, work


def _affected_areas(lin, h, w, grid, p):
    """(ny, nx) bool: scan areas whose detection reads any of the pixels ``lin``."""
    size, ny, nx = grid
    reach = (
        max(math.ceil(max(p.extra_large_radius_px, p.max_radius_px) + p.annulus_width_px), p.max_diff_patch_px + 1) + 2
    )
    y, x = (lin // w % h).cpu(), (lin % w).cpu()

    def hits(v, n, extent):  # (len(v), count) bool: v inside each area's region +- reach
        start = torch.arange(n) * size
        lo = torch.minimum(start, torch.tensor(extent - size)) - reach
        hi = torch.maximum(torch.clamp(start + size, max=extent), lo + reach + size) + reach
        return (v[:, None] >= lo) & (v[:, None] < hi)

    return (hits(y, ny, h).T.float() @ hits(x, nx, w).float()) > 0


# ----------------------------------------------------------------------------- input and output


def _mask(x, lin):
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    mask.view(-1)[lin] = True
    return mask


def _as_stack(image: torch.Tensor, fn: str) -> tuple[torch.Tensor, bool]:
    """Turn a (..., h, w) real image into a contiguous (B, h, w) float32 stack (float64 stays).

    Also returns whether that tensor is a copy (owned) rather than the input itself.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{fn}: image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim < 2 or image.is_complex() or image.dtype == torch.bool:
        raise ValueError(
            f"{fn}: image must be a real (..., h, w) tensor, got {image.dtype} of shape {tuple(image.shape)}"
        )
    h, w = image.shape[-2:]
    if h < 16 or w < 16:
        raise ValueError(f"{fn}: image is {h} x {w} px; X-ray search needs at least 16 x 16")
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    x = image.reshape(-1, h, w).to(dtype).contiguous()
    return x, x.data_ptr() != image.data_ptr()
