"""The per-series task of the ``reconstruct`` step (module level, so a Dask worker can run it): the
enabled views binned, aligned by their ``.xf``, optionally phase-flipped and dose-weighted, then
reconstructed by WBP or SIRT; the tomogram (and its halves) written, a small typed result out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tiltflow.workflow.steps.views import load_binned_views
from tiltflow.workflow.tasks import ItemTask, StackRefs, StacksResult

if TYPE_CHECKING:
    from tiltflow.workflow.steps.reconstruct import ReconstructParams


@dataclass(frozen=True)
class Optics:
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float


@dataclass(frozen=True)
class ViewsCtf:
    """Per enabled view (tilt order) the CTF of the same acquisition order (raw frame)."""

    defocus_u_a: list[float]
    defocus_v_a: list[float]
    astigmatism_angle_deg: list[float]
    phase_shift_rad: list[float]


@dataclass(frozen=True)
class Corrections:
    """What is done to the aligned views before reconstructing: phase flipping (``ctf``), dose
    weighting (``exposure_e_a2``: per view mid-exposure, e/Å²)."""

    optics: Optics
    ctf: ViewsCtf | None = None
    exposure_e_a2: list[float] | None = None
    defocus_tol_nm: float | None = None


@dataclass(frozen=True, kw_only=True)
class ReconstructTask(ItemTask):
    """One tilt series to reconstruct (``key``: its tsId), from its enabled views in tilt order."""

    refs: StackRefs
    xf: list[list[float]]
    angles: list[float]
    params: ReconstructParams
    thickness_px: int
    z_offset_px: float
    x_offset_px: float
    voxel_size_a: float
    out_dir: str
    device: str
    corrections: Corrections


@dataclass(frozen=True)
class ReconstructResult(StacksResult):
    shape: list[int]  # (z, y, x) of the tomogram


def reconstruct_series_task(task: ReconstructTask) -> ReconstructResult:
    """Reconstruct one tilt series (and its halves); module level so a Dask worker can run it."""
    import torch

    from tiltflow.core.reconstruct import aligned_shape, apply_xf
    from tiltflow.io.mrc import write_mrc
    from tiltflow.io.snapshots import write_slice_snapshots

    p = task.params
    xf_b = torch.tensor(task.xf, dtype=torch.float64)
    xf_b[:, 4:] /= p.binning  # shifts are in pixels of the stack they apply to
    angles_t = torch.tensor(task.angles, dtype=torch.float64)
    files = {}
    shape: list[int] = []
    for key, view_refs in task.refs.items():
        raw = load_binned_views(view_refs, p.binning, task.device)
        raw_shape = (raw.shape[-2], raw.shape[-1])
        views = apply_xf(raw, xf_b.to(task.device), aligned_shape(raw_shape, xf_b))
        del raw
        views = correct_views(
            views, xf_b, angles_t, raw_shape=raw_shape, pixel_size_a=task.voxel_size_a, corrections=task.corrections
        )
        views = views - views.mean(dim=(-2, -1), keepdim=True)
        if p.invert:
            views = -views
        vol = _volume(views, angles_t, task)
        del views
        suffix = "" if key == "file" else f"_{key.split('_')[0]}"
        files[key] = str(
            write_mrc(
                Path(task.out_dir) / f"{task.key}_rec{suffix}.mrc",
                vol.cpu().numpy(),
                voxel_size_a=task.voxel_size_a,
                is_volume=True,
            )
        )
        if key == "file":  # PNGs of the central slices beside the tomogram, for the terminal user
            write_slice_snapshots(vol, files[key])
        shape = list(vol.shape)
        del vol
    return ReconstructResult(files, shape)


def _volume(views, angles_t, task: ReconstructTask):
    """WBP or SIRT of the corrected, aligned views ``(t, h, w)``."""
    from tiltflow.core.reconstruct import VolumeOffset, sirt, wbp

    p = task.params
    offset = VolumeOffset(x_px=task.x_offset_px, z_px=task.z_offset_px)
    if p.method == "sirt":
        return sirt(
            views,
            angles_t,
            thickness_px=task.thickness_px,
            iterations=p.sirt_iterations,
            positivity=p.positivity,
            offset=offset,
        )
    cutoff = p.radial_cutoff
    if p.hamming_start is not None:  # tomo3d: ramp x Hamming (core.wbp_window)
        from tiltflow.core.wbp_window import hamming_filter_views

        views, cutoff = hamming_filter_views(views, p.hamming_start), 0.5
    return wbp(
        views,
        angles_t,
        thickness_px=task.thickness_px,
        radial_cutoff=cutoff,
        radial_falloff=p.radial_falloff,
        fake_sirt_iterations=p.fake_sirt_iterations,
        offset=offset,
    )


def correct_views(views, xf_b, angles_t, *, raw_shape: tuple[int, int], pixel_size_a: float, corrections: Corrections):
    """Phase-flip (``corrections.ctf``) and dose-weight (``corrections.exposure_e_a2``) aligned binned
    views ``(t, h, w)``."""
    optics, ctf = corrections.optics, corrections.ctf
    if ctf is not None:
        from tiltflow.core.ctf_model import Optics as CtfOptics
        from tiltflow.core.phase_flip import (
            ctf_phase_flip_strips,
            defocus_in_aligned_views,
            strip_width_for_tolerance,
        )

        local = defocus_in_aligned_views(
            xf_b,
            angles_t,
            defocus_u_a=ctf.defocus_u_a,
            defocus_v_a=ctf.defocus_v_a,
            astigmatism_angle_deg=ctf.astigmatism_angle_deg,
            pixel_size_a=pixel_size_a,
            image_shape=raw_shape,
        )
        tol_nm = corrections.defocus_tol_nm
        widths = strip_width_for_tolerance(
            angles_t,
            pixel_size_a=pixel_size_a,
            width_px=views.shape[-1],
            voltage_kv=optics.voltage_kv,
            defocus_tol_a=None if tol_nm is None else tol_nm * 10.0,
        )
        views = ctf_phase_flip_strips(
            views,
            angles_t,
            CtfOptics(pixel_size_a, optics.voltage_kv, optics.cs_mm, optics.amplitude_contrast),
            defocus_u_a=local.defocus_u_a,
            defocus_v_a=local.defocus_v_a,
            astigmatism_angle_deg=local.astigmatism_angle_deg,
            phase_shift_rad=ctf.phase_shift_rad,
            strip_width_px=widths,
        )
    if corrections.exposure_e_a2 is not None:
        from tiltflow.core.dose import dose_weight_views

        views = dose_weight_views(
            views, corrections.exposure_e_a2, pixel_size_a=pixel_size_a, voltage_kv=optics.voltage_kv
        )
    return views
