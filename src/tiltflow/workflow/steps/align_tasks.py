"""The per-series task of the ``align`` step (module level, so a Dask worker can run it): the views
in, the alignment files and plots written, a small typed result out."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from tiltflow.core.verdict import Verdict
from tiltflow.workflow.steps.views import load_binned_views
from tiltflow.workflow.tasks import ItemResult, ItemTask, ViewRefs

if TYPE_CHECKING:
    from tiltflow.workflow.steps.align import AlignParams

_FORWARD_AD_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class AlignTask(ItemTask):
    """One series to align (``key``: its tsId): its enabled views in tilt order."""

    refs: ViewRefs
    angles: list[float]  # tilt angles of the views, degrees
    params: AlignParams
    tilt_axis_deg: float
    pixel_size_a: float
    out_dir: str
    device: str
    model_px: list | None = None  # --resolve: (beads, views, 2) unbinned raw positions of the input's model


@dataclass(frozen=True)
class FiducialStats:
    """The bead model's numbers (pixels of the unbinned stack)."""

    mean_residual_px: float
    per_view_residual_px: list[float]
    per_bead_residual_px: list[float]
    flagged_beads: list[int]
    flagged_views: list[int]
    n_beads: int
    per_view_beads: list[int]
    per_bead_views: list[int]
    bead_xyz_px: list[list[float]]


@dataclass(frozen=True)
class PatchStats:
    """Projection matching's numbers."""

    per_view_error: list[float]
    dark_views: list[bool]
    align_z_nm_used: float
    align_z_nm_asked: float
    slab_narrowed: bool = False  # narrowed to the specimen's measured thickness (else capped by the field)


@dataclass(frozen=True)
class AlignResult(ItemResult):
    """One series' alignment. Always a ``verdict`` and ``fixed`` (parameters held at their given
    value, and why); a failed series has no ``xf``. ``xf`` shifts in pixels of the unbinned stack."""

    verdict: Verdict
    fixed: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    xf: list[list[float]] | None = None
    refined_tilt_angles_deg: list[float] | None = None
    tilt_axis_deg: float | None = None
    tilt_offset_deg: float | None = None
    fiducial: FiducialStats | None = None
    patch: PatchStats | None = None

    @property
    def failed(self) -> bool:
        return self.verdict.status == "failed"

    @property
    def per_view(self) -> list[float]:
        """The per-view residual (beads) or projection-matching error (patch), enabled views."""
        if self.fiducial is not None:
            return self.fiducial.per_view_residual_px
        return self.patch.per_view_error if self.patch is not None else []

    def to_record(self) -> dict[str, Any]:
        """Flat, as the results of earlier versions were recorded."""
        out: dict[str, Any] = {"verdict": self.verdict.to_dict(), "fixed": self.fixed, "files": self.files}
        out["plots"] = self.plots
        for name in ("xf", "refined_tilt_angles_deg", "tilt_axis_deg", "tilt_offset_deg"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for stats in (self.fiducial, self.patch):
            if stats is not None:
                out.update(stats.__dict__)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        v = record["verdict"]
        return cls(
            Verdict(v["status"], tuple(v.get("reasons", ()))),
            dict(record.get("fixed") or {}),
            dict(record.get("files") or {}),
            dict(record.get("plots") or {}),
            record.get("xf"),
            record.get("refined_tilt_angles_deg"),
            record.get("tilt_axis_deg"),
            record.get("tilt_offset_deg"),
            FiducialStats(**{f.name: record[f.name] for f in fields(FiducialStats)}) if "n_beads" in record else None,
            PatchStats(**{f.name: record[f.name] for f in fields(PatchStats) if f.name in record})
            if "per_view_error" in record
            else None,
        )


def align_series_task(task: AlignTask) -> AlignResult:
    """Align one series (enabled views in tilt order): files and plots in ``task.out_dir``."""
    import torch

    from tiltflow.io.imod import write_tlt, write_xf

    views = load_binned_views(task.refs, task.params.binning, task.device)
    angles_t = torch.tensor(task.angles, dtype=torch.float64)
    out = Path(task.out_dir)
    if task.params.method == "fiducial":
        result = _fiducial_task(views, angles_t, task)
    else:
        result = _patch_task(views, angles_t, task)
    if result.failed or result.xf is None or result.refined_tilt_angles_deg is None:
        return replace(result, xf=None, refined_tilt_angles_deg=None)  # a failed series has no alignment
    ts_id = task.key
    write_xf(out / f"{ts_id}.xf", torch.tensor(result.xf, dtype=torch.float64))
    write_tlt(out / f"{ts_id}.tlt", torch.tensor(result.refined_tilt_angles_deg, dtype=torch.float64))
    write_tlt(out / f"{ts_id}.rawtlt", angles_t)
    files = {**result.files, "xf": str(out / f"{ts_id}.xf"), "tlt": str(out / f"{ts_id}.tlt")}
    return replace(result, files=files)


def _unbinned_xf(xf, binning: int) -> list[list[float]]:
    """``.xf`` rows with the shifts in pixels of the unbinned stack."""
    xf = xf.clone()
    xf[:, 4:] *= binning
    return xf.tolist()


def _fiducial_task(views, angles_t, task: AlignTask) -> AlignResult:
    """Beads, bundle adjustment, plausibility checks (``core.align.checked``), model files, plots."""
    import torch

    from tiltflow.core.align import BundleOptions, align_fiducial, resolve_fiducial
    from tiltflow.core.align.checked import check_fiducial

    p, b = task.params, task.params.binning
    bead_px = p.bead_diameter_nm * 10.0 / (task.pixel_size_a * b)
    bundle = BundleOptions(
        solve_magnification=p.solve_magnification,
        solve_tilt_angles=p.solve_tilt_angles,
        solve_tilt_offset=p.refine_tilt_offset,
    )
    shape = tuple(views.shape[-2:])
    try:
        with _FORWARD_AD_LOCK:  # torch's forward-mode AD levels are process-global: one solve at a time
            if task.model_px is not None:  # (n, t, 2) unbinned raw positions of the input's model
                fid = resolve_fiducial(
                    torch.tensor(task.model_px, dtype=torch.float64) / b,
                    angles_t,
                    tilt_axis_deg=task.tilt_axis_deg,
                    image_shape=shape,
                    bundle=bundle,
                )
            else:
                fid = align_fiducial(
                    views, angles_t, tilt_axis_deg=task.tilt_axis_deg, bead_diameter_px=bead_px, bundle=bundle
                )
            checked = check_fiducial(
                fid,
                angles_t,
                tilt_axis_deg=task.tilt_axis_deg,
                image_shape=shape,
                bead_diameter_px=bead_px,
                bundle=bundle,
            )
    except ValueError as err:  # too few beads tracked, a degenerate model: the data, not the code
        return AlignResult(Verdict("failed", (str(err),)))
    fid, sol = checked.alignment, checked.alignment.solution
    observed = torch.isfinite(sol.residuals_px)
    stats = FiducialStats(
        mean_residual_px=sol.mean_residual_px * b,
        per_view_residual_px=(sol.per_view_residual_px * b).tolist(),
        per_bead_residual_px=(sol.per_bead_residual_px * b).tolist(),
        flagged_beads=sol.flagged_beads.tolist(),
        flagged_views=sol.flagged_views.tolist(),
        n_beads=int(sol.bead_xyz_px.shape[0]),
        per_view_beads=observed.sum(0).tolist(),
        per_bead_views=observed.sum(1).tolist(),
        bead_xyz_px=(sol.bead_xyz_px * b).tolist(),
    )
    pos = fid.tracks.positions_px * b
    out = Path(task.out_dir)
    return AlignResult(
        checked.verdict,
        checked.fixed,
        files=_write_bead_model(out, task, views, pos, sol),
        plots=fiducial_plots(out, task.key, views, pos, angles_t, sol, b),
        xf=_unbinned_xf(sol.xf, b),
        refined_tilt_angles_deg=sol.tilt_angles_deg.tolist(),
        tilt_axis_deg=float(sol.tilt_axis_deg),
        tilt_offset_deg=float(sol.tilt_offset_deg),
        fiducial=stats,
    )


def _write_bead_model(out: Path, task: AlignTask, views, pos, sol) -> dict[str, str]:
    """The IMOD fiducial model (``.fid``) of the tracks and the beads' 3-D positions (``fid.xyz``)."""
    import torch

    from tiltflow.io.imod import FidXyz, fiducial_model, write_fid_xyz, write_mod

    b, ts_id, pixel_size_a = task.params.binning, task.key, task.pixel_size_a
    contours = [
        torch.cat([pos[i][ok], torch.nonzero(ok).to(pos.dtype)], 1)
        for i in range(pos.shape[0])
        if (ok := torch.isfinite(pos[i]).all(-1)).any()
    ]
    h, w = views.shape[-2] * b, views.shape[-1] * b
    write_mod(
        out / f"{ts_id}.fid",
        fiducial_model(
            contours, image_shape=(h, w), n_views=len(task.angles), pixel_size_a=pixel_size_a, name=f"{ts_id} fiducials"
        ),
    )
    n = sol.bead_xyz_px.shape[0]
    write_fid_xyz(
        out / f"{ts_id}fid.xyz",
        FidXyz(
            point=torch.arange(1, n + 1),
            xyz=sol.bead_xyz_px * b,
            object=torch.ones(n),
            contour=torch.arange(1, n + 1),
            pixel_size_a=pixel_size_a,
            image_size=(w, h),
        ),
    )
    return {"fid": str(out / f"{ts_id}.fid"), "fid_xyz": str(out / f"{ts_id}fid.xyz")}


def _patch_task(views, angles_t, task: AlignTask) -> AlignResult:
    """Projection matching, checked (``core.align.checked``), and its plot."""
    from tiltflow.core.align.checked import checked_projection_matching
    from tiltflow.core.align.projection_matching import MatchingOptions

    p, b, pixel_size_a = task.params, task.params.binning, task.pixel_size_a
    checked = checked_projection_matching(
        views,
        angles_t,
        tilt_axis_deg=task.tilt_axis_deg,
        align_z_px=p.align_z_nm * 10.0 / (pixel_size_a * b),
        binning=1,
        pixel_size_a=pixel_size_a * b,
        options=MatchingOptions(
            iterations=p.iterations,
            refine_tilt_axis=p.refine_tilt_axis,
            refine_tilt_offset=p.refine_tilt_offset,
            exclude_dark=p.exclude_dark,
        ),
    )
    pm = checked.result
    if pm is None:  # too few usable views: nothing was matched
        return AlignResult(checked.verdict, checked.fixed)
    err = pm.per_view_error
    slab = [h for h in pm.history if h["stage"] == "slab"][-1]  # the slab the shifts were refined with
    stats = PatchStats(
        per_view_error=err.tolist(),
        dark_views=pm.dark_views.tolist(),
        align_z_nm_used=slab["align_z_px"] * pixel_size_a * b / 10.0,
        align_z_nm_asked=float(p.align_z_nm),
        slab_narrowed=bool(slab.get("narrowed_to_specimen")),
    )
    return AlignResult(
        checked.verdict,
        checked.fixed,
        plots=patch_plots(Path(task.out_dir), task.key, pm.tilt_angles_deg, err, pm.dark_views),
        xf=_unbinned_xf(pm.xf, b),
        refined_tilt_angles_deg=pm.tilt_angles_deg.tolist(),
        tilt_axis_deg=float(pm.tilt_axis_deg),
        tilt_offset_deg=float(pm.tilt_offset_deg),
        patch=stats,
    )


def fiducial_plots(out: Path, ts_id: str, views, positions_px, angles, sol, binning: int) -> dict[str, str]:
    """Residual vs tilt angle and bead tracks over the view nearest 0° (PNG in ``out``)."""
    import numpy as np

    from tiltflow.io.plots import Series, line_chart, tracks_over_image, write_png

    refined = sol.tilt_angles_deg.cpu().numpy()
    per_view = (sol.per_view_residual_px * binning).cpu().numpy()
    flagged = np.zeros(len(refined), dtype=bool)
    flagged[sol.flagged_views.cpu().numpy()] = True
    chart = line_chart(
        [Series(refined, per_view, "mean residual per view", highlight=flagged)],
        x_label="refined tilt angle (deg)",
        y_label="mean residual (px, unbinned)",
        title=f"{ts_id}: residual vs tilt angle (mean {sol.mean_residual_px * binning:.2f} px)",
        legend_notes=("flagged view",) if flagged.any() else (),
    )
    zero = int(angles.abs().argmin())
    bad = np.zeros(positions_px.shape[0], dtype=bool)
    bad[sol.flagged_beads.cpu().numpy()] = True
    tracks = tracks_over_image(
        views[zero].cpu().numpy(),
        positions_px.cpu().numpy() / binning,
        scale=binning,
        flagged=bad,
        anchor=zero,
        labels=[str(i + 1) for i in range(positions_px.shape[0])],
        title=f"{ts_id}: bead tracks over {views.shape[0]} views, on the {float(angles[zero]):.0f}° view",
    )
    return {
        "residual_vs_tilt": str(write_png(out / f"{ts_id}_residuals.png", chart)),
        "bead_tracks": str(write_png(out / f"{ts_id}_bead_tracks.png", tracks)),
    }


def patch_plots(out: Path, ts_id: str, angles, error, dark) -> dict[str, str]:
    """Projection-matching error vs tilt angle (PNG in ``out``); dark views have none."""
    import numpy as np

    from tiltflow.io.plots import Series, line_chart, write_png

    err = error.cpu().numpy()
    mean = float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")
    notes = (f"{int(dark.sum())} dark views left out",) if bool(dark.any()) else ()
    chart = line_chart(
        [Series(angles.cpu().numpy(), err, "1 - NCC with the leave-one-out reprojection")],
        x_label="refined tilt angle (deg)",
        y_label="projection-matching error",
        title=f"{ts_id}: projection-matching error vs tilt angle (mean {mean:.3f})",
        legend_notes=notes,
    )
    return {"error_vs_tilt": str(write_png(out / f"{ts_id}_pm_error.png", chart))}
