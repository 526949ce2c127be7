"""CTF pieces shared by the ``motion-ctf`` and ``ctf`` steps: parameters, the per-tilt fit with
its viewer files, and the per-series CTFFIND4 / IMOD ``.defocus`` files."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries, TiltSeries
from tiltflow.workflow.steps.base import param
from tiltflow.workflow.steps.checks import CheckedParams
from tiltflow.workflow.tasks import ItemResult

_CTF_ON = ("estimate_ctf", True)


class CtfOptions(CheckedParams):
    # (the condition applies where the model has ``estimate_ctf``, i.e. motion-ctf; ``ctf`` always estimates)
    window_px: int = param(512, "Periodogram window, px.", cli="--window", ge=64, group="ctf", condition=_CTF_ON)
    ctf_range_a: tuple[float, float] = param(
        (30.0, 8.0), "Fit resolution range (low, high), Å.", cli="--ctf-range", group="ctf", condition=_CTF_ON
    )
    defocus_range_um: tuple[float, float] = param(
        (0.5, 8.0), "Defocus search range (min, max), µm.", cli="--defocus-range", group="ctf", condition=_CTF_ON
    )
    defocus_grid: tuple[int, int, int] | None = param(
        None,
        "Defocus model grid: x, y cells over each tilt and t nodes along the acquisition order"
        " (a smooth temporal model), e.g. 2 2 8; empty: none.",
        cli="--defocus-grid",
        group="ctf",
        condition=_CTF_ON,
    )
    fit_phase: bool = param(
        False, "Fit a phase shift (phase plate).", cli="--fit-phase", group="ctf", condition=_CTF_ON
    )


@dataclass(frozen=True)
class TiltCtf(ItemResult):
    """One tilt's fitted CTF and what the viewer shows of it (its spectrum picture, radial profile)."""

    defocus_u_a: float
    defocus_v_a: float
    astigmatism_angle_deg: float
    phase_shift_rad: float
    fit_resolution_a: float
    score: float
    spectrum_file: str
    radial_profile: dict[str, list[float]]  # k (1/Å), observed, fitted
    defocus_grid_a: list[list[float]] | None = None  # (ny, nx), Å
    defocus_grid_skipped: str | None = None  # why no grid was fitted
    series_refit: dict[str, float] | None = None  # the first fit, when the series pass re-fitted the tilt
    ring_strength: float | None = None  # from the series pass

    def to_record(self) -> dict[str, Any]:
        """As earlier versions recorded it: the optional values only when set."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def ctf_params(o: CtfOptions, *, pixel_size_a: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float):
    from tiltflow.core.ctf_fit import CtfParams

    high = max(o.ctf_range_a[1], 2.0 * pixel_size_a * 1.001)
    return CtfParams(
        pixel_size_a=pixel_size_a,
        window_px=o.window_px,
        resolution_range_a=(o.ctf_range_a[0], high),
        defocus_range_um=o.defocus_range_um,
        fit_phase=o.fit_phase,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
    )


def _mean_spectrum(images, params, *, tilt_angle_deg, tilt_axis_deg, reference=None, max_offset_a=None):
    import torch

    from tiltflow.core.ctf_spectra import tiled_power_spectrum

    return torch.stack(
        [
            tiled_power_spectrum(
                im,
                params,
                tilt_angle_deg=tilt_angle_deg,
                tilt_axis_deg=tilt_axis_deg,
                reference_defocus_a=reference,
                max_offset_a=max_offset_a,
            )
            for im in images
        ]
    ).mean(0)


def fit_tilt_ctf(
    images, params, *, tilt_angle_deg: float, tilt_axis_deg: float, grid_xy: tuple[int, int] | None, out_png: Path
) -> TiltCtf:
    """Fit one tilt from the mean tilt-aware periodogram of ``images`` (the aligned sum, or the
    movie's frames: a shift does not change a power spectrum). Two passes when tilted: tiles near
    the axis first, then every tile rescaled to the fitted centre defocus (CTFFIND-tilt style).
    Writes the spectrum picture; returns the values a CtfTomo needs."""
    from tiltflow.core.ctf import fit_ctf
    from tiltflow.core.ctf_model import electron_wavelength_a

    angles = {"tilt_angle_deg": tilt_angle_deg, "tilt_axis_deg": tilt_axis_deg}
    tilted = abs(tilt_angle_deg) > 1e-3
    max_offset = 0.25 * params.resolution_range_a[1] ** 2 / electron_wavelength_a(params.voltage_kv) if tilted else None
    spectrum = _mean_spectrum(images, params, max_offset_a=max_offset, **angles)
    fit = fit_ctf(spectrum, params)
    if tilted:
        spectrum = _mean_spectrum(
            images, params, reference=(fit.defocus_u_a, fit.defocus_v_a, fit.astigmatism_angle_deg), **angles
        )
        fit = fit_ctf(spectrum, params, initial=fit)
    return tilt_ctf_outputs(images, spectrum, fit, params, grid_xy=grid_xy, out_png=out_png, **angles)


def tilt_ctf_outputs(
    images,
    spectrum,
    fit,
    params,
    *,
    tilt_angle_deg: float,
    tilt_axis_deg: float,
    grid_xy: tuple[int, int] | None,
    out_png: Path,
) -> TiltCtf:
    """The values a CtfTomo needs for one fitted tilt; writes its spectrum picture."""
    from tiltflow.core.ctf import ctf_fit_image, ctf_fit_profile, fit_defocus_grid
    from tiltflow.io.png import encode_png_gray8

    angles = {"tilt_angle_deg": tilt_angle_deg, "tilt_axis_deg": tilt_axis_deg}
    grid_a, skipped = None, None
    if grid_xy and tuple(grid_xy) != (1, 1):
        total = images[0] if len(images) == 1 else sum(images)
        try:
            grid = fit_defocus_grid(total, params, fit, grid_shape=(grid_xy[1], grid_xy[0]), **angles)
            grid_a = grid.cpu().tolist()
        except ValueError as err:  # image too small for this grid and window: the plane fit stands
            skipped = str(err)
    picture = ctf_fit_image(spectrum, fit, params).cpu().numpy()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_png.write_bytes(encode_png_gray8((picture * 255).astype(np.uint8)))
    prof = ctf_fit_profile(spectrum, fit, params)
    keep = prof.k_per_a <= 1.2 / params.resolution_range_a[1]
    return TiltCtf(
        defocus_u_a=fit.defocus_u_a,
        defocus_v_a=fit.defocus_v_a,
        astigmatism_angle_deg=fit.astigmatism_angle_deg,
        phase_shift_rad=fit.phase_shift_rad,
        fit_resolution_a=fit.fit_resolution_a,
        score=fit.score,
        spectrum_file=str(out_png),
        radial_profile={
            "k": prof.k_per_a[keep].cpu().tolist(),
            "observed": prof.observed[keep].cpu().tolist(),
            "fitted": prof.fitted[keep].cpu().tolist(),
        },
        defocus_grid_a=grid_a,
        defocus_grid_skipped=skipped,
    )


def smooth_grids_in_time(results: dict[int, TiltCtf], nt: int) -> None:
    """Smooth the per-tilt defocus grids along the acquisition order with ``nt`` nodes (the tilts
    of ``results`` replaced by the smoothed ones)."""
    import torch

    from tiltflow.core.ctf import smooth_grids_along_series

    orders = sorted(o for o, r in results.items() if r.defocus_grid_a is not None)
    if len(orders) < 2:
        return
    grids = torch.tensor([results[o].defocus_grid_a for o in orders], dtype=torch.float64)
    for o, g in zip(orders, smooth_grids_along_series(grids, nt), strict=False):
        results[o] = replace(results[o], defocus_grid_a=g.tolist())


def ctf_series_from_results(ts: TiltSeries, results: dict[int, TiltCtf], params) -> CtfTomoSeries:
    """Per tilt values keyed by acquisition order -> a CTF series (tilt-angle order)."""
    items = []
    for im in ts.images:
        r = results.get(im.acquisition_order)
        if r is None:
            continue
        attrs: dict[str, Any] = {"radial_profile": r.radial_profile}
        if r.defocus_grid_a is not None:
            attrs["defocus_grid_a"] = r.defocus_grid_a
        if r.series_refit is not None:
            attrs["series_refit"] = r.series_refit
        items.append(
            CtfTomo(
                acquisition_order=im.acquisition_order,
                tilt_angle_deg=im.tilt_angle_deg,
                defocus_u_a=r.defocus_u_a,
                defocus_v_a=r.defocus_v_a,
                astigmatism_angle_deg=r.astigmatism_angle_deg,
                phase_shift_rad=r.phase_shift_rad,
                fit_resolution_a=r.fit_resolution_a,
                score=r.score,
                enabled=im.enabled,
                attrs=attrs,
                spectrum_file=r.spectrum_file,
                ring_strength=r.ring_strength,
            )
        )
    attrs = {
        "pixel_size_a": params.pixel_size_a,
        "voltage_kv": params.voltage_kv,
        "cs_mm": params.cs_mm,
        "amplitude_contrast": params.amplitude_contrast,
        "spectrum_pixel_size_a": params.pixel_size_a,
    }
    strengths = [c.ring_strength for c in items]
    verdict = None
    if any(v is not None for v in strengths):  # the series pass ran: is the CTF supported by the spectra?
        from tiltflow.core.ctf_verdict import ctf_series_verdict

        verdict = ctf_series_verdict(
            [math.nan if v is None else v for v in strengths], [c.tilt_angle_deg for c in items]
        ).to_dict()
    return CtfTomoSeries(ts.ts_id, items, ts.enabled, attrs, verdict=verdict)


def note_ctf_verdict(ctx, series: CtfTomoSeries) -> None:
    """The series pass's verdict in run.log; a 'check' or 'failed' one also as a step warning."""
    from tiltflow.workflow.sets import ctf_verdict, verdict_text

    verdict = ctf_verdict(series)
    if not verdict["status"]:
        return
    ctx.log.info("%s: CTF verdict %s", series.ts_id, verdict_text(verdict))
    if verdict["status"] != "good":
        ctx.report.warn(f"{series.ts_id}: CTF {verdict_text(verdict)}")


def write_series_ctf_files(series: CtfTomoSeries, params, out_dir: Path) -> CtfTomoSeries:
    """CTFFIND4 text (tilt-angle order) and an IMOD version-3 ``.defocus`` for one series: the series
    naming them."""
    from tiltflow.io.ctffind import CtffindFile, CtffindRow, write_ctffind
    from tiltflow.io.imod_defocus import defocus_file_from_ctf, write_defocus

    rows = [
        CtffindRow.from_u_v_angle(
            i + 1,
            c.defocus_u_a,
            c.defocus_v_a,
            c.astigmatism_angle_deg,
            phase_shift_rad=c.phase_shift_rad,
            cross_correlation=c.score or 0.0,
            fit_resolution_a=c.fit_resolution_a or 0.0,
        )
        for i, c in enumerate(series.items)
    ]
    data = CtffindFile(
        version="4.1.14-compatible (tiltflow)",
        input_file=series.ts_id,
        number_of_micrographs=len(rows),
        pixel_size_a=params.pixel_size_a,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
        amplitude_contrast=params.amplitude_contrast,
        box_size_px=params.window_px,
        min_resolution_a=params.resolution_range_a[0],
        max_resolution_a=params.resolution_range_a[1],
        min_defocus_a=params.defocus_range_um[0] * 1e4,
        max_defocus_a=params.defocus_range_um[1] * 1e4,
        rows=rows,
    )
    ctffind = out_dir / f"{series.ts_id}_ctffind.txt"
    write_ctffind(ctffind, data)
    defocus = out_dir / f"{series.ts_id}.defocus"
    write_defocus(
        defocus,
        defocus_file_from_ctf(
            [c.tilt_angle_deg for c in series.items],
            [c.defocus_u_a for c in series.items],
            [c.defocus_v_a for c in series.items],
            [c.astigmatism_angle_deg for c in series.items],
            [c.phase_shift_rad for c in series.items],
        ),
    )
    return replace(series, ctffind_file=str(ctffind), defocus_file=str(defocus))


def ctf_set(series: list[CtfTomoSeries]) -> CtfSeriesSet:
    return CtfSeriesSet(series, {})
