"""Per-tilt CTF estimation: the public entry points.

``fit_ctf`` fits one tilt image (or a ready spectrum); ``fit_ctf_series`` a whole tilt series with
neighbouring tilts seeding each other and an optional local defocus grid (Warp's spatial/temporal
model); ``radial_average``, ``ctf_fit_profile`` and ``ctf_fit_image`` give the plots and the picture
for the viewer. Conventions and method: ``ctf_fit`` (fitting) and ``ctf_spectra`` (spectra).

Tilted images: a first pass uses only the tiles close to the tilt axis (defocus offset at most
``0.25 / (lambda k_max^2)``, a quarter ring at the fit's high-resolution limit); the second pass
averages all tiles after rescaling each tile spectrum to the centre defocus of the first pass
(``tiled_power_spectrum(reference_defocus_a=...)``) and refits from the first pass.
The defocus at raw pixel p is ``mean + geometry.defocus_offset_a(p) + grid(p)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltflow.core.ctf_fit import CtfFit, CtfParams, fit_ctf_spectrum, search_defocus_local
from tiltflow.core.ctf_model import ctf_2d, electron_wavelength_a
from tiltflow.core.ctf_rings import equiphase_average, ring_correlation
from tiltflow.core.ctf_series import refine_series
from tiltflow.core.ctf_spectra import (
    pixel_radius,
    radial_bins,
    subtract_background,
    tile_grid,
    tiled_power_spectrum,
)
from tiltflow.core.geometry import defocus_offset_a

__all__ = [
    "CtfFit",
    "CtfParams",
    "CtfProfile",
    "ctf_fit_image",
    "ctf_fit_profile",
    "fit_ctf",
    "fit_ctf_series",
    "fit_defocus_grid",
    "radial_average",
    "subtract_background",
    "tiled_power_spectrum",
]


def _is_spectrum(data: torch.Tensor, params: CtfParams) -> bool:
    return data.ndim == 2 and data.shape == (params.window_px, params.window_px // 2 + 1)


def _spectrum(image, params, *, tilt_angle_deg, tilt_axis_deg, reference=None, max_offset_a=None):
    return tiled_power_spectrum(
        image,
        params,
        tilt_angle_deg=tilt_angle_deg,
        tilt_axis_deg=tilt_axis_deg,
        reference_defocus_a=reference,
        max_offset_a=max_offset_a,
    )


def _reference(fit: CtfFit) -> tuple[float, float, float]:
    return fit.defocus_u_a, fit.defocus_v_a, fit.astigmatism_angle_deg


def fit_ctf(
    data: torch.Tensor,  # (h, w) tilt image, or (window_px, window_px//2+1) power spectrum
    params: CtfParams,
    *,
    tilt_angle_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    initial: CtfFit | None = None,
) -> CtfFit:
    """Fit the CTF of one tilt image (defocus at the image centre) or of a ready power spectrum.

    A spectrum is recognised by its shape ``(window_px, window_px // 2 + 1)``; tilt arguments are
    then ignored. A tilted image is fitted twice (module docstring): tiles near the axis first, then
    every tile rescaled to the first fit's defocus. ``initial`` (e.g. a neighbouring tilt) narrows the
    defocus search to its mean ± 1.5 µm and adds its astigmatism to the starting points.

    Parameters
    ----------
    data : torch.Tensor
        ``(h, w)`` tilt image, or ``(window_px, window_px // 2 + 1)`` power spectrum (rfft layout).
    params : CtfParams
        Optics and search settings (Å, kV, mm).
    tilt_angle_deg : float
        Tilt angle of the image, degrees.
    tilt_axis_deg : float
        Tilt-axis angle, degrees from +y, counter-clockwise.
    initial : CtfFit, optional
        A fit to start from.

    Returns
    -------
    CtfFit
        Defocus ``u >= v`` (Å, underfocus positive), astigmatism angle (degrees from +x), phase
        shift (rad), score and fit resolution (Å).

    Raises
    ------
    ValueError
        For data that are neither one image nor one spectrum.

    Examples
    --------
    >>> from tiltflow.core.ctf_model import ctf_2d
    >>> params = CtfParams(pixel_size_a=2.0, window_px=128, resolution_range_a=(30.0, 6.0))
    >>> ctf = ctf_2d((128, 128), params.optics, defocus_u_a=21000.0, defocus_v_a=19000.0, astigmatism_angle_deg=30.0)
    >>> spectrum = ctf**2
    >>> fit = fit_ctf(spectrum + 0.5, params)
    >>> round(fit.defocus_u_a, -2), round(fit.defocus_v_a, -2), round(fit.astigmatism_angle_deg)
    (21000.0, 19000.0, 30)
    """
    if data.ndim != 2:
        raise ValueError(f"fit_ctf: expected one (h, w) image or (n, n//2+1) spectrum, got shape {tuple(data.shape)}")
    if _is_spectrum(data, params):
        return fit_ctf_spectrum(data, params, initial=initial)
    tilted = abs(tilt_angle_deg) > 1e-3
    max_offset = None
    if tilted:
        lam = electron_wavelength_a(params.voltage_kv)
        max_offset = 0.25 / (lam * (1.0 / params.resolution_range_a[1]) ** 2)
    spec = _spectrum(data, params, tilt_angle_deg=tilt_angle_deg, tilt_axis_deg=tilt_axis_deg, max_offset_a=max_offset)
    fit = fit_ctf_spectrum(spec, params, initial=initial)
    if tilted:
        spec = _spectrum(
            data, params, tilt_angle_deg=tilt_angle_deg, tilt_axis_deg=tilt_axis_deg, reference=_reference(fit)
        )
        fit = fit_ctf_spectrum(spec, params, initial=fit, search_halfwidth_a=2000.0)
    return fit


def _neighbour_order(tilt_angles: list[float]) -> list[tuple[int, int | None]]:
    """Visit tilts from the lowest |angle| outwards; each with the nearest visited tilt as seed."""
    order = sorted(range(len(tilt_angles)), key=lambda i: (abs(tilt_angles[i]), tilt_angles[i]))
    done: list[int] = []
    plan = []
    for i in order:
        seed = min(done, key=lambda j: abs(tilt_angles[j] - tilt_angles[i])) if done else None
        plan.append((i, seed))
        done.append(i)
    return plan


def fit_ctf_series(
    images: torch.Tensor,  # (t, h, w) tilt images (any order)
    params: CtfParams,
    *,
    tilt_angles_deg,  # (t,) degrees
    tilt_axis_deg: float,
    defocus_grid: tuple[int, int, int] | None = None,  # (nx, ny, nt)
    acquisition_order=None,  # (t,) for the series pass; None: the order of ``images``
    series_pass: bool = True,
) -> list[CtfFit]:  # in the order of ``images``
    """Fit the CTF of every tilt of a series, then refine them together (the series pass).

    Tilts are visited from 0° outwards, each seeded by its nearest fitted neighbour. Then
    (``series_pass``, 4 tilts or more) ``ctf_series.refine_series`` finds the series' defocus trend in
    tilt angle from all tilts' spectra and one astigmatism, and re-fits every tilt with the trend as
    prior and that astigmatism. ``defocus_grid=(nx, ny, nt)`` adds a local defocus field (Warp's
    spatial + temporal grid): each tilt image is split into ny x nx cells; in each, the tiles
    (rescaled to the cell centre's tilt-plane defocus) give the local mean defocus, and
    ``defocus_grid_a[iy, ix]`` is its departure from the tilt plane (Å; bilinear between cell
    centres). Along the series (the order of ``images``; pass them in acquisition order for a temporal
    model) the grids are smoothed by a least-squares piecewise-linear fit with ``nt`` nodes
    (``nt >= t``: independent).

    Parameters
    ----------
    images : torch.Tensor
        ``(t, h, w)`` tilt images, any order.
    params : CtfParams
        Optics and search settings.
    tilt_angles_deg : array_like
        ``(t,)`` tilt angles, degrees.
    tilt_axis_deg : float
        Tilt-axis angle, degrees from +y, counter-clockwise.
    defocus_grid : tuple of int, optional
        ``(nx, ny, nt)`` of a local defocus grid.
    acquisition_order : array_like, optional
        ``(t,)`` for the series pass; default the order of ``images``.
    series_pass : bool
        Refine the fits together (4 tilts or more).

    Returns
    -------
    list of CtfFit
        One fit per image, in the order of ``images``.

    Raises
    ------
    ValueError
        For images that are not ``(t, h, w)`` with one angle each, or a grid without positive sizes.

    Examples
    --------
    >>> import torch
    >>> params = CtfParams(pixel_size_a=2.0, window_px=64, resolution_range_a=(20.0, 5.0))
    >>> images = torch.randn(4, 128, 128, generator=torch.Generator().manual_seed(0))
    >>> len(fit_ctf_series(images, params, tilt_angles_deg=[-6.0, -3.0, 0.0, 3.0], tilt_axis_deg=0.0))
    4
    """
    if images.ndim != 3:
        raise ValueError(f"fit_ctf_series: expected (t, h, w) images, got shape {tuple(images.shape)}")
    angles = [float(a) for a in torch.as_tensor(tilt_angles_deg).reshape(-1)]
    if len(angles) != images.shape[0]:
        raise ValueError(f"fit_ctf_series: {len(angles)} tilt angles for {images.shape[0]} images; pass one per image")
    fitted: dict[int, CtfFit] = {}
    for i, seed in _neighbour_order(angles):
        fitted[i] = fit_ctf(
            images[i],
            params,
            tilt_angle_deg=angles[i],
            tilt_axis_deg=tilt_axis_deg,
            initial=fitted[seed] if seed is not None else None,
        )
    fits = [fitted[i] for i in range(len(angles))]
    if series_pass and len(angles) >= 4:
        order = list(range(len(angles))) if acquisition_order is None else acquisition_order
        fits = refine_series(
            fits,
            lambda i, ref: _spectrum(
                images[i], params, tilt_angle_deg=angles[i], tilt_axis_deg=tilt_axis_deg, reference=ref
            ),
            params,
            tilt_angles_deg=angles,
            acquisition_order=order,
        ).fits
    if defocus_grid is not None:
        nx, ny, nt = defocus_grid
        if min(nx, ny, nt) < 1:
            raise ValueError(f"fit_ctf_series: defocus_grid={defocus_grid} needs positive (nx, ny, nt)")
        grids = torch.stack(
            [
                fit_defocus_grid(
                    images[i],
                    params,
                    fits[i],
                    tilt_angle_deg=angles[i],
                    tilt_axis_deg=tilt_axis_deg,
                    grid_shape=(ny, nx),
                )
                for i in range(len(angles))
            ]
        )
        grids = smooth_grids_along_series(grids, nt)
        for i, f in enumerate(fits):
            f.defocus_grid_a = grids[i]
    return fits


def fit_defocus_grid(
    image: torch.Tensor,
    params: CtfParams,
    fit: CtfFit,
    *,
    tilt_angle_deg: float,
    tilt_axis_deg: float,
    grid_shape: tuple[int, int],
) -> torch.Tensor:  # (ny, nx) Å beyond the tilt plane
    """Local defocus departures from the tilt plane, one per cell of a (ny, nx) grid over the image.

    Each cell's value is measured at the centre of the tiles whose centres fall in the cell.
    """
    ny, nx = grid_shape
    h, w = image.shape
    out = torch.zeros(ny, nx, dtype=torch.float64)
    if ny * nx == 1:
        return out
    n = params.window_px
    ys, xs, centres = tile_grid((h, w), window_px=n)
    cell_x = (centres[:, 0] / w * nx).floor().clamp(0, nx - 1)
    cell_y = (centres[:, 1] / h * ny).floor().clamp(0, ny - 1)
    u, v, ang = _reference(fit)
    for iy in range(ny):
        for ix in range(nx):
            idx = ((cell_x == ix) & (cell_y == iy)).nonzero()[:, 0]
            if idx.numel() == 0:
                raise ValueError(
                    f"fit_defocus_grid: cell ({ix}, {iy}) of a {nx}x{ny} grid holds no {n}-px tile; "
                    "use fewer grid cells or a smaller window_px"
                )
            rows = sorted({ys[int(i) // len(xs)] for i in idx})
            cols = sorted({xs[int(i) % len(xs)] for i in idx})
            crop = image[rows[0] : rows[-1] + n, cols[0] : cols[-1] + n]
            centre = torch.tensor(
                [[(cols[0] + cols[-1] + n - 1) / 2.0, (rows[0] + rows[-1] + n - 1) / 2.0]], dtype=torch.float64
            )
            plane = float(
                defocus_offset_a(
                    centre,
                    tilt_angle_deg=tilt_angle_deg,
                    tilt_axis_deg=tilt_axis_deg,
                    pixel_size_a=params.pixel_size_a,
                    image_shape=(h, w),
                )[0]
            )
            # offsets inside the crop are relative to its centre: rescale the tiles to the plane there
            spec = _spectrum(
                crop,
                params,
                tilt_angle_deg=tilt_angle_deg,
                tilt_axis_deg=tilt_axis_deg,
                reference=(u + plane, v + plane, ang),
            )
            local = search_defocus_local(spec, params, fit, mean_defocus_a=fit.defocus_mean_a + plane)
            out[iy, ix] = local - (fit.defocus_mean_a + plane)
    return out


def smooth_grids_along_series(grids: torch.Tensor, nt: int) -> torch.Tensor:
    """Least-squares piecewise-linear fit with ``nt`` nodes along dim 0 of ``grids (t, ny, nx)``."""
    t = grids.shape[0]
    if nt >= t:
        return grids
    if nt == 1:
        return grids.mean(0, keepdim=True).expand_as(grids).clone()
    pos = torch.linspace(0, nt - 1, t, dtype=torch.float64)
    lo = pos.floor().long().clamp_max(nt - 2)
    frac = pos - lo
    basis = torch.zeros(t, nt, dtype=torch.float64)
    basis[torch.arange(t), lo] = 1 - frac
    basis[torch.arange(t), lo + 1] += frac
    nodes = torch.linalg.lstsq(basis, grids.reshape(t, -1)).solution
    return (basis @ nodes).reshape(grids.shape)


def radial_average(
    spectrum: torch.Tensor,  # (n, n//2+1) power, rfft layout
    *,
    params: CtfParams | None = None,
    fit: CtfFit | None = None,
) -> torch.Tensor:  # (n//2+1,) bin i at k = i / (n * pixel_size_a)
    """Average a power spectrum in one-pixel rings (equi-phase with a fit).

    Rotational average in one-pixel rings; with ``fit`` (and ``params``) the astigmatism-corrected
    (equi-phase) average of the background-subtracted, envelope-normalised spectrum.
    """
    n = spectrum.shape[-2]
    if fit is None:
        return radial_bins(spectrum, pixel_radius(n, device=spectrum.device), n // 2 + 1)[0].to(torch.float32)
    if params is None:
        raise ValueError("radial_average: pass params together with fit (optics are needed for the equi-phase average)")
    return equiphase_average(spectrum, params, fit)[0].to(torch.float32)


@dataclass
class CtfProfile:
    """Compute the 1-D plot data of a CTF fit.

    1-D plot data, each (n//2+1,): frequency (1/Å), observed equi-phase average (normalised),
    fitted ctf^2 rescaled to zero mean / unit RMS, per-ring correlation.
    """

    k_per_a: torch.Tensor
    observed: torch.Tensor
    fitted: torch.Tensor
    ring_correlation: torch.Tensor


def ctf_fit_profile(spectrum: torch.Tensor, fit: CtfFit, params: CtfParams) -> CtfProfile:
    """Profile (k, observed, fitted, ring correlation) of a fit, for plots."""
    k, observed, model, frc = ring_correlation(spectrum, params, fit)
    fitted = (model - 0.5) * 2.0**1.5  # sin^2 - 1/2 has RMS 1/(2 sqrt 2)
    return CtfProfile(*(t.to(torch.float32) for t in (k, observed, fitted, frc)))


def _full_from_rfft(half: torch.Tensor) -> torch.Tensor:
    """(n, n//2+1) real spectrum -> (n, n) using P(-k) = P(k); column j >= n//2+1 is kx = j - n."""
    n = half.shape[-2]
    mirrored = torch.roll(torch.flip(half, (0,)), 1, 0)  # row i -> row (-i) mod n
    negative = torch.flip(mirrored[:, 1 : n - n // 2], (1,))  # columns n - j for j = n//2+1 .. n-1
    return torch.cat([half, negative], dim=1)


def ctf_fit_image(spectrum: torch.Tensor, fit: CtfFit, params: CtfParams) -> torch.Tensor:
    """Draw a spectrum beside its fitted ``ctf^2``, for the viewer.

    Picture (n, n) in [0, 1], origin at (n//2, n//2): left half the background-subtracted spectrum,
    right half the fitted ``ctf^2`` (2-D, with astigmatism), for the viewer.
    """
    n = spectrum.shape[-2]
    norm = subtract_background(
        spectrum,
        pixel_size_a=params.pixel_size_a,
        defocus_a=fit.defocus_mean_a,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
    )
    observed = torch.fft.fftshift(_full_from_rfft(norm), dim=(0, 1))
    model = ctf_2d(
        (n, n),
        params.optics,
        defocus_u_a=fit.defocus_u_a,
        defocus_v_a=fit.defocus_v_a,
        astigmatism_angle_deg=fit.astigmatism_angle_deg,
        phase_shift_rad=fit.phase_shift_rad,
        rfft=False,
        device=spectrum.device,
    )
    model = torch.fft.fftshift((model.square() - 0.5) * 2.0**1.5, dim=(0, 1))
    picture = torch.where(torch.arange(n, device=spectrum.device)[None, :] < n // 2, observed.clamp(-3, 3), model)
    return ((picture + 3.0) / 6.0).clamp(0, 1).to(torch.float32)
