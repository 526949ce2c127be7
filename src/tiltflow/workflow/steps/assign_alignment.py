"""Step ``assign-alignment``: one set's alignment given to another set of the same tilt series (Scipion's
``ProtAssignTransformationMatrixTiltSeries``): align on one set, reconstruct another, e.g. the
dose-filtered, bead-erased, normalized or odd/even stacks.

Series are matched by ``ts_id``, views by acquisition order (tilt angles must agree within 1°). Each view
receives the ``.xf`` of its match, its shifts rescaled to the receiving stack's pixel size
(``core.normalize.rescale_xf_shifts``), the refined tilt angle and residuals; each series receives the
refined tilt axis and the alignment record (verdict, bead model files). A view the alignment left out
(no transform) is excluded. Refused with one line: a series or view missing from the alignment, a
series without any alignment, views of another field of view. No image is read or written."""

from __future__ import annotations

from dataclasses import replace

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.base import InputSpec, Step, StepContext, StepParams, register
from tiltflow.workflow.steps.citations import SCIPION_TOMO

PER_VIEW = ("refined_tilt_angle_deg", "residual_px", "projection_matching_error")  # alignment's view fields


class AssignAlignmentParams(StepParams):
    """No parameters: everything comes from the two inputs."""


def _check_field(ts: TiltSeries, a: TiltSeries, pointer: str) -> None:
    """Both series image the same field: sizes in Å agree within two pixels."""
    px_in, px_al = ts.acquisition.pixel_size_a, a.acquisition.pixel_size_a
    tol = 2.0 * max(px_in, px_al)
    if any(abs(n_in * px_in - n_al * px_al) > tol for n_in, n_al in zip(ts.size, a.size, strict=False)):
        raise InputError(
            f"{pointer}: {ts.ts_id} was aligned on {a.size[0]} x {a.size[1]} px views at {px_al:g} Å/px, "
            f"the input's are {ts.size[0]} x {ts.size[1]} px at {px_in:g} Å/px — not the same field "
            "of view (cropped, or another pixel size recorded)"
        )


def assign_series(ts: TiltSeries, a: TiltSeries, pointer: str) -> tuple[TiltSeries, int]:
    """``ts`` with the alignment of ``a``; also the number of views excluded because ``a`` left them out."""
    from tiltflow.core.normalize import rescale_xf_shifts

    _check_field(ts, a, pointer)
    by_order = {im.acquisition_order: im for im in a.images}
    aligned = any(im.transform is not None for im in a.images)
    images, dropped = [], 0
    for im in ts.images:
        src = by_order.get(im.acquisition_order)
        where = f"{ts.ts_id} view at {im.tilt_angle_deg:.1f}° (acquisition order {im.acquisition_order})"
        if src is None:
            raise InputError(
                f"{pointer}: {where} is not in the alignment's series — exclude it (subset) or align "
                "a set that holds it"
            )
        if abs(src.tilt_angle_deg - im.tilt_angle_deg) > 1.0:
            raise InputError(
                f"{pointer}: {where}: the alignment's view of that order is at "
                f"{src.tilt_angle_deg:.1f}° — is --alignment from another tilt series?"
            )
        xf = (
            None
            if src.transform is None
            else rescale_xf_shifts([src.transform], a.acquisition.pixel_size_a, ts.acquisition.pixel_size_a)[0].tolist()
        )
        enabled = im.enabled and (xf is not None or not aligned)
        dropped += im.enabled and not enabled
        images.append(
            replace(im, transform=xf, enabled=enabled, attrs=dict(im.attrs), **{k: getattr(src, k) for k in PER_VIEW})
        )
    acq = replace(ts.acquisition, tilt_axis_deg=a.acquisition.tilt_axis_deg)
    return replace(ts, acquisition=acq, images=images, attrs=dict(ts.attrs), alignment=a.alignment), dropped


def run_assign_alignment(ctx: StepContext[AssignAlignmentParams]) -> dict[str, TiltSeriesSet]:
    source = ctx.input_set("input", TiltSeriesSet)
    alignment = ctx.input_set("alignment", TiltSeriesSet)
    pointer = ctx.input_pointers["alignment"]
    by_id = {ts.ts_id: ts for ts in alignment.items}
    items = []
    for ts in source.items:
        if not ts.enabled:
            items.append(ts)
            continue
        a = by_id.get(ts.ts_id)
        if a is None:
            held = ", ".join(sorted(by_id)[:5]) + (" ..." if len(by_id) > 5 else "")
            raise InputError(
                f"{pointer}: no tilt series {ts.ts_id} (it holds {held or 'none'}) — give the "
                "alignment of the same tilt series, or exclude it (subset --exclude)"
            )
        if not any(im.transform is not None for im in a.images) and not a.alignment:
            raise InputError(f"{pointer}: {ts.ts_id} carries no alignment — align it first (align --input ...)")
        new, dropped = assign_series(ts, a, pointer)
        items.append(new)
        verdict = ((a.alignment or {}).get("verdict") or {}).get("status")
        line = (
            f"{ts.ts_id}: alignment of {pointer} assigned to {sum(im.transform is not None for im in new.images)} "
            f"views (axis {new.acquisition.tilt_axis_deg:.2f}°"
            + (f", verdict {verdict}" if verdict else "")
            + ")"
            + (f"; {dropped} views excluded: the alignment left them out" if dropped else "")
        )
        ctx.log.info(line)
        ctx.report.note(line)
    if not any(ts.enabled for ts in items):
        raise InputError(f"{ctx.input_pointers['input']}: every tilt series is excluded")
    attrs = dict(source.attrs, aligned=alignment.attrs.get("aligned"), alignment_from=pointer)
    return {"TiltSeries": replace(source, kind="TiltSeries", items=items, attrs=attrs)}


register(
    Step(
        id="assign-alignment",
        title="Assign alignment",
        params=AssignAlignmentParams,
        inputs=(
            InputSpec("input", ("TiltSeries",), "Tilt series to receive the alignment"),
            InputSpec("alignment", ("TiltSeries",), "Tilt series carrying the alignment (align's output)"),
        ),
        outputs={"TiltSeries": "TiltSeries"},
        run=run_assign_alignment,
        scipion_class="ProtAssignTransformationMatrixTiltSeries",
        methods=(SCIPION_TOMO,),
        help="Give one set's alignment (transforms, refined angles and axis, verdict) to another set of the same "
        "series.",
    )
)
