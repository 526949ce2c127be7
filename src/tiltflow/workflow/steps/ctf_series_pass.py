"""The series pass of the ``motion-ctf`` and ``ctf`` steps: after every tilt of a series has been
fitted on its own, ``core.ctf_series.refine_series`` finds the series' defocus trend in tilt angle
and one astigmatism from all tilts' spectra and re-fits every tilt with the trend as prior (wrong
minima at high tilt and low dose); values, spectrum pictures, profiles and grids are replaced (the
old values are kept under ``series_refit``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tiltflow.workflow.steps.ctf_common import TiltCtf, _mean_spectrum, tilt_ctf_outputs


def refine_series_results(
    results: dict[int, TiltCtf],  # per tilt, keyed by acquisition order: fit_tilt_ctf's results
    images_of: Callable[[int], list],  # acquisition order -> the images the tilt was fitted on
    params,
    *,
    tilt_angles_deg: dict[int, float],  # acquisition order -> tilt angle, degrees
    tilt_axis_deg: float,
    grid_xy: tuple[int, int] | None,
) -> list[int]:
    """Run the series pass on one series' per-tilt results (replacing the tilts of ``results``);
    returns the acquisition orders whose fit changed (marked ``series_refit`` in their results)."""
    from tiltflow.core.ctf_fit import CtfFit
    from tiltflow.core.ctf_series import refine_series

    orders = sorted(results)
    if len(orders) < 4:
        return []
    fits = [
        CtfFit(
            results[o].defocus_u_a,
            results[o].defocus_v_a,
            results[o].astigmatism_angle_deg,
            results[o].phase_shift_rad,
            results[o].fit_resolution_a,
            results[o].score,
        )
        for o in orders
    ]

    def spectrum_of(i: int, reference: tuple[float, float, float]):
        # the spectrum of the summed images (the aligned even + odd half sums are the sum): at low dose
        # its rings stand sqrt(2) x higher above the noise than in the mean of the halves' spectra
        o = orders[i]
        return _mean_spectrum(
            [sum(images_of(o))],
            params,
            tilt_angle_deg=tilt_angles_deg[o],
            tilt_axis_deg=tilt_axis_deg,
            reference=reference,
        )

    refined = refine_series(
        fits, spectrum_of, params, tilt_angles_deg=[tilt_angles_deg[o] for o in orders], acquisition_order=orders
    )
    changed = []
    for i, spectrum in refined.spectra.items():
        o = orders[i]
        old = results[o]
        grid_images = images_of(o) if grid_xy and tuple(grid_xy) != (1, 1) else []  # read again only for a grid
        new = tilt_ctf_outputs(
            grid_images,
            spectrum,
            refined.fits[i],
            params,
            tilt_angle_deg=tilt_angles_deg[o],
            tilt_axis_deg=tilt_axis_deg,
            grid_xy=grid_xy,
            out_png=Path(old.spectrum_file),
        )
        results[o] = replace(
            new,
            series_refit={
                "defocus_mean_a": 0.5 * (old.defocus_u_a + old.defocus_v_a),
                "astigmatism_a": old.defocus_u_a - old.defocus_v_a,
                "trend_defocus_a": float(refined.trend.defocus_a[i]),
            },
        )
        changed.append(o)
    if refined.trend.strength is not None:
        for i, o in enumerate(orders):
            results[o] = replace(results[o], ring_strength=float(refined.trend.strength[i]))
    return sorted(changed)


def stack_images_of(ts, *, halves: bool, device: str = "cpu") -> Callable[[int], list]:
    """Acquisition order -> the images of that view read from the series' stacks: the even and odd
    half sums when ``halves`` and they exist (the CTF's frame-spectra mode), else the sum."""
    import numpy as np
    import torch

    from tiltflow.io.mrc import read_section

    views = {im.acquisition_order: im for im in ts.images}

    def images_of(order: int) -> list:
        im = views[order]
        files = [im.even_file, im.odd_file] if halves and im.even_file and im.odd_file else [im.file]
        return [torch.from_numpy(np.ascontiguousarray(read_section(f, im.index))).to(device) for f in files]

    return images_of
