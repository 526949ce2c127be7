"""What the viewer shows, read from the project: runs, curated sets, per-view rows, CTF rows.

Every read goes through the store's snapshot methods, so pages load while runs register outputs.
Images are found from the items' own references only; the client never names a file.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Literal

from tiltflow.web.ctf_source import CtfSource
from tiltflow.web.models import (
    CtfInfo,
    CtfSeriesDetail,
    OutputInfo,
    ProjectInfo,
    RadialProfile,
    RunInfo,
    SeriesInfo,
    ViewInfo,
)
from tiltflow.web.set_cache import load_registered
from tiltflow.web.spectra import ctf_zero_frequencies
from tiltflow.web.thumbnails import ImageRef, ThumbnailCache, ViewStats
from tiltflow.workflow.curation import apply_exclusions, exclusions
from tiltflow.workflow.errors import ProjectError
from tiltflow.workflow.sets import (
    Acquisition,
    AnySet,
    CtfSeriesSet,
    CtfTomo,
    CtfTomoSeries,
    TiltImage,
    TiltSeries,
    TiltSeriesSet,
    alignment_verdict,
    ctf_verdict,
)
from tiltflow.workflow.store import OutputRecord, ProjectStore

TILT_TYPES = ("TiltSeries", "TiltSeriesM")
CTF_TYPES = ("CTFTomoSeries",)
TOMOGRAM_TYPES = ("Tomograms",)
VIEWERS: dict[str, Literal["tomo", "ctf", "tomogram"]] = {
    **{t: "tomo" for t in TILT_TYPES},
    **{t: "ctf" for t in CTF_TYPES},
    **{t: "tomogram" for t in TOMOGRAM_TYPES},
}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def project_info(store: ProjectStore) -> ProjectInfo:
    outputs = store.outputs()
    runs = []
    for r in store.runs():
        outs = [
            OutputInfo(pointer=o.pointer, name=o.name, type=o.type, summary=o.summary, viewer=VIEWERS.get(o.type))
            for o in outputs
            if o.run_id == r.id
        ]
        duration = r.ended - r.started if r.started and r.ended else None
        runs.append(
            RunInfo(
                id=r.id, step=r.step, label=r.label, status=r.status, duration_s=duration, error=r.error, outputs=outs
            )
        )
    return ProjectInfo(root=str(store.root), runs=runs)


def get_output(store: ProjectStore, pointer: str, types: tuple[str, ...] = ()) -> OutputRecord:
    """``RUN_ID.outputName`` -> the output; ProjectError (404) for anything else."""
    if "." not in pointer:
        raise ProjectError(f"output '{pointer}': expected RUN_ID.outputName, e.g. 2.TiltSeries")
    return store.resolve(pointer, types)


def load_curated(store: ProjectStore, output: OutputRecord) -> AnySet:
    """The set with the viewer's exclusion flags applied (``enabled`` = not excluded): copies of the
    set, its series and items over the shared registered set (``load_registered``)."""
    return apply_exclusions(load_registered(store, output), exclusions(store, output))


def load_curated_series(store: ProjectStore, output: OutputRecord, ts_id: str) -> TiltSeries | CtfTomoSeries:
    """One series of ``output`` with the viewer's exclusion flags applied, as in ``load_curated``; only
    that series is copied (the other series' flags do not matter to it)."""
    value = load_registered(store, output)
    one: TiltSeriesSet | CtfSeriesSet
    if isinstance(value, TiltSeriesSet):
        one = replace(value, items=[s for s in value.items if s.ts_id == ts_id][:1])
    elif isinstance(value, CtfSeriesSet):
        one = replace(value, items=[s for s in value.items if s.ts_id == ts_id][:1])
    else:
        raise ProjectError(f"{output.pointer} is a {output.type}, not a set of tilt series")
    if not one.items:
        raise ProjectError(f"no tilt series '{ts_id}' in this set")
    return apply_exclusions(one, exclusions(store, output)).items[0]


def find_series(value: TiltSeriesSet | CtfSeriesSet, ts_id: str) -> TiltSeries | CtfTomoSeries:
    for s in value.items:
        if s.ts_id == ts_id:
            return s
    raise ProjectError(f"no tilt series '{ts_id}' in this set")


def find_image(series: TiltSeries, order: int) -> TiltImage:
    for im in series.images:
        if im.acquisition_order == order:
            return im
    raise ProjectError(f"{series.ts_id}: no view with acquisition order {order}")


def image_ref(image: TiltImage) -> ImageRef:
    return ImageRef(Path(image.file), image.index)


def motion_corrected(store: ProjectStore, output: OutputRecord) -> OutputRecord | None:
    """For a movie set: the tilt-series set of the newest finished run that took it as input (its
    motion-corrected sums), if any; None for any other set."""
    if output.type != "TiltSeriesM":
        return None
    for run in sorted(store.runs(), key=lambda r: r.id, reverse=True):
        if run.status != "finished":
            continue
        for pointer in run.inputs.values():
            try:
                source = store.resolve(str(pointer))
            except ProjectError:
                continue
            sums = [o for o in store.outputs(run.id) if o.type == "TiltSeries"]
            if source.id == output.id and sums:
                return sums[0]
    return None


def shown_images(store: ProjectStore, sums: OutputRecord | None, series: TiltSeries) -> dict[int, TiltImage]:
    """Acquisition order -> the image the viewer draws for it: the motion-corrected sum in ``sums``
    where there is one, else the item itself (a stack section, or a movie's frame average)."""
    twin: dict[int, TiltImage] = {}
    if sums is not None:
        for s in load_registered(store, sums).items:
            if s.ts_id == series.ts_id and isinstance(s, TiltSeries):
                twin = {im.acquisition_order: im for im in s.images if im.index is not None}
    return {im.acquisition_order: twin.get(im.acquisition_order, im) for im in series.images}


def series_stats(cache: ThumbnailCache, images: list[TiltImage]) -> dict[int, ViewStats]:
    """Full-resolution statistics per acquisition order (rendering views not cached yet); views
    whose file is missing or unreadable are left out."""
    refs = {im.acquisition_order: image_ref(im) for im in images}
    stats = cache.stats_of(refs.values())
    return {order: stats[ref] for order, ref in refs.items() if ref in stats}


def series_infos(value: TiltSeriesSet | CtfSeriesSet, ctf: CtfSource | None = None) -> list[SeriesInfo]:
    """One row per series; a tilt series carries the verdict of its CTF in ``ctf`` (from
    ``ctf_source.find_ctf_source``), a CTF series its own."""
    return [_tilt_series_info(s, ctf) if isinstance(s, TiltSeries) else _ctf_series_info(s) for s in value.items]


def _tilt_series_info(s: TiltSeries, ctf: CtfSource | None) -> SeriesInfo:
    tilts = [im.tilt_angle_deg for im in s.images]
    verdict = alignment_verdict(s)
    ctf_s = ctf.series(s.ts_id) if ctf is not None else None
    cv = ctf_verdict(ctf_s) if ctf_s is not None else {"status": None, "reasons": []}
    return SeriesInfo(
        verdict=verdict["status"],
        verdict_reasons=verdict["reasons"],
        ctf_verdict=cv["status"],
        ctf_verdict_reasons=cv["reasons"],
        ctf_from=ctf.label if ctf is not None and ctf_s is not None else None,
        ts_id=s.ts_id,
        n_views=len(s.images),
        tilt_min_deg=min(tilts, default=None),
        tilt_max_deg=max(tilts, default=None),
        tilt_axis_deg=s.acquisition.tilt_axis_deg,
        pixel_size_a=s.acquisition.pixel_size_a,
        size_px=(s.size[0], s.size[1]),
        excluded=not s.enabled,
        n_excluded=sum(not im.enabled for im in s.images),
        is_movie=any(im.index is None for im in s.images),
    )


def _ctf_series_info(s: CtfTomoSeries) -> SeriesInfo:
    tilts = [c.tilt_angle_deg for c in s.items]
    cv = ctf_verdict(s)
    return SeriesInfo(
        ctf_verdict=cv["status"],
        ctf_verdict_reasons=cv["reasons"],
        ts_id=s.ts_id,
        n_views=len(s.items),
        tilt_min_deg=min(tilts, default=None),
        tilt_max_deg=max(tilts, default=None),
        tilt_axis_deg=None,
        pixel_size_a=None,
        size_px=None,
        excluded=not s.enabled,
        n_excluded=sum(not c.enabled for c in s.items),
    )


def _picture(item: TiltImage, shown: TiltImage) -> str:
    if shown is not item:
        return f"motion-corrected sum {Path(shown.file).name}[{shown.index}]"
    if item.index is None:
        return f"average of {item.frames or 'all'} frames, no gain correction"
    return ""


def view_infos(series: TiltSeries, ctf: CtfSource | None, shown: dict[int, TiltImage] | None = None) -> list[ViewInfo]:
    """One row per view in tilt-angle order; ``shown`` (from ``shown_images``) gives the drawn image,
    whose per-tilt values (total motion) complete those of a movie. Defocus comes from the CTF set
    ``ctf`` (``ctf_source.find_ctf_source``); an image's own defocus attributes (a step's per-tilt fit
    before its series pass) are shown, marked "attrs", only when no CTF set applies."""
    shown = shown or {}
    ctf_s = ctf.series(series.ts_id) if ctf is not None else None
    by_order = {c.acquisition_order: c for c in ctf_s.items} if ctf_s is not None else {}
    rows = []
    for pos, im in enumerate(sorted(series.images, key=lambda im: im.tilt_angle_deg), start=1):
        c = by_order.get(im.acquisition_order)
        du: float | None
        dv: float | None
        source: Literal["ctf", "attrs"] | None
        if c is not None:
            du, dv, source, origin = c.defocus_u_a, c.defocus_v_a, "ctf", ctf.label if ctf else None
        else:
            du = im.defocus_u_a
            dv = du if im.defocus_v_a is None else im.defocus_v_a
            source, origin = (
                ("attrs", "the image's attributes (no CTF set applies)") if du is not None else (None, None)
            )
        drawn = shown.get(im.acquisition_order, im)
        rows.append(
            ViewInfo(
                position=pos,
                acquisition_order=im.acquisition_order,
                tilt_angle_deg=im.tilt_angle_deg,
                dose_e_a2=_num(im.dose_e_a2),
                dose_accumulated_e_a2=_num(im.dose_accumulated_e_a2),
                defocus_u_a=_num(du),
                defocus_v_a=_num(dv),
                defocus_source=source,
                defocus_from=origin,
                ring_strength=_num(c.ring_strength) if c is not None else None,
                total_motion_px=_num(drawn.total_motion_px if im.total_motion_px is None else im.total_motion_px),
                excluded=not im.enabled,
                file_name=Path(im.file).name if im.index is None else f"{Path(im.file).name}[{im.index}]",
                frames=im.frames,
                picture=_picture(im, drawn),
            )
        )
    return rows


def find_acquisition(store: ProjectStore, output: OutputRecord, ts_id: str) -> Acquisition | None:
    """Microscope values for a CTF series: its own attrs, else a tilt-series set of the same run,
    else one of that run's inputs."""
    keys = ("voltage_kv", "cs_mm", "amplitude_contrast", "pixel_size_a")
    value = load_registered(store, output)
    for attrs in [s.attrs for s in value.items if s.ts_id == ts_id] + [value.attrs]:
        acq = attrs.get("acquisition", attrs)
        if all(acq.get(k) is not None for k in keys):
            return Acquisition(**{k: float(acq[k]) for k in keys}, tilt_axis_deg=float(acq.get("tilt_axis_deg", 0.0)))
    candidates = [o for o in store.outputs(output.run_id) if o.type in TILT_TYPES]
    for pointer in store.run(output.run_id).inputs.values():
        try:
            candidates.append(store.resolve(str(pointer), TILT_TYPES))
        except ProjectError:
            continue
    for o in candidates:
        for s in load_registered(store, o).items:
            if s.ts_id == ts_id and isinstance(s, TiltSeries):
                return s.acquisition
    return None


def _ctf_zeros(defocus_a: float, acq: Acquisition, phase_shift_rad: float | None, nyquist: float) -> list[float]:
    return ctf_zero_frequencies(
        defocus_a,
        voltage_kv=acq.voltage_kv,
        cs_mm=acq.cs_mm,
        amplitude_contrast=acq.amplitude_contrast,
        phase_shift_rad=phase_shift_rad or 0.0,
        k_max_per_a=nyquist,
    )


def ctf_detail(series: CtfTomoSeries, acq: Acquisition | None, spectrum_pixel_size_a: float | None) -> CtfSeriesDetail:
    pixel = spectrum_pixel_size_a or (acq.pixel_size_a if acq else None)
    nyquist = 0.5 / pixel if pixel else None
    items = []
    for c in sorted(series.items, key=lambda c: c.tilt_angle_deg):
        zeros_u: list[float] = []
        zeros_v: list[float] = []
        if acq is not None and nyquist:
            zeros_u = _ctf_zeros(c.defocus_u_a, acq, c.phase_shift_rad, nyquist)
            zeros_v = _ctf_zeros(c.defocus_v_a, acq, c.phase_shift_rad, nyquist)
        prof = c.attrs.get("radial_profile")
        radial = None
        if isinstance(prof, dict) and all(isinstance(prof.get(k), list) for k in ("k", "observed", "fitted")):
            radial = RadialProfile(k=prof["k"], observed=prof["observed"], fitted=prof["fitted"])
        items.append(
            CtfInfo(
                acquisition_order=c.acquisition_order,
                tilt_angle_deg=c.tilt_angle_deg,
                defocus_u_a=c.defocus_u_a,
                defocus_v_a=c.defocus_v_a,
                astigmatism_angle_deg=c.astigmatism_angle_deg,
                phase_shift_deg=math.degrees(c.phase_shift_rad or 0.0),
                fit_resolution_a=_num(c.fit_resolution_a),
                score=_num(c.score),
                excluded=not c.enabled,
                has_spectrum_file=bool(c.spectrum_file),
                ring_strength=_num(c.ring_strength),
                radial_profile=radial,
                zeros_u_per_a=zeros_u,
                zeros_v_per_a=zeros_v,
            )
        )
    verdict = ctf_verdict(series)
    return CtfSeriesDetail(
        ts_id=series.ts_id,
        excluded=not series.enabled,
        nyquist_per_a=nyquist,
        items=items,
        verdict=verdict["status"],
        verdict_reasons=verdict["reasons"],
    )


def find_ctf(series: CtfTomoSeries, order: int) -> CtfTomo:
    for c in series.items:
        if c.acquisition_order == order:
            return c
    raise ProjectError(f"{series.ts_id}: no CTF with acquisition order {order}")


def spectrum_file(store: ProjectStore, series: CtfTomoSeries, order: int) -> Path | None:
    """The spectrum image a CTF step recorded for one tilt (``CtfTomo.spectrum_file``), if any."""
    name = find_ctf(series, order).spectrum_file
    return store.abspath(str(name)) if name else None
