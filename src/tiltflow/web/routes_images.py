"""Routes that serve pictures of views: thumbnails, float previews and CTF power spectra.

No route takes a path: images are found from the project's items and rendered server-side into
the thumbnail cache (served from memory when the cache cannot be written).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from tiltflow.web import project_data as pd
from tiltflow.web.deps import CacheDep, CtfSeriesDep, CtfSeriesOf, StoreDep, TiltSeriesDep, TiltSeriesOf
from tiltflow.web.limits import served_path
from tiltflow.web.spectra import ctf_power_image
from tiltflow.web.thumbnails import ImageRef, ThumbnailCache, render_png
from tiltflow.workflow.errors import ProjectError
from tiltflow.workflow.store import ProjectStore

PNG = "image/png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_PX = 256

router = APIRouter()


def _png(cache: ThumbnailCache, ref: ImageRef, headers: dict[str, str]) -> Response:
    """The thumbnail of ``ref`` (see ``ThumbnailCache.thumbnail_png``)."""
    return Response(cache.thumbnail_png(ref), media_type=PNG, headers=headers)


def _shown_ref(store: ProjectStore, ts: TiltSeriesOf, order: int) -> ImageRef:
    """The picture of one view: a movie's motion-corrected sum when a run made one."""
    pd.find_image(ts.series, order)  # 404 for an unknown view
    shown = pd.shown_images(store, pd.motion_corrected(store, ts.output), ts.series)
    return pd.image_ref(shown[order])


@router.get("/api/outputs/{pointer}/series/{ts_id}/views/{order}/thumbnail.png")
def thumbnail(ts: TiltSeriesDep, order: int, store: StoreDep, cache: CacheDep) -> Response:
    return _png(cache, _shown_ref(store, ts, order), {"Cache-Control": "private, max-age=3600"})


@router.get("/api/outputs/{pointer}/series/{ts_id}/views/{order}/preview")
def preview(ts: TiltSeriesDep, order: int, store: StoreDep, cache: CacheDep) -> Response:
    """The view at <= 1024 px as little-endian float32, row 0 first; shape in ``X-Shape`` (ny,nx)."""
    data = cache.preview(_shown_ref(store, ts, order))
    return Response(
        data.astype("<f4").tobytes(),
        media_type="application/octet-stream",
        headers={"X-Shape": f"{data.shape[0]},{data.shape[1]}", "Cache-Control": "private, max-age=3600"},
    )


@router.get("/api/outputs/{pointer}/ctf/{ts_id}/{order}/spectrum.png")
def spectrum(ctf: CtfSeriesDep, order: int, store: StoreDep, cache: CacheDep, model: bool = False) -> Response:
    """The spectrum the CTF step saved (PNG, or MRC rendered), else the fitted model's CTF²."""
    path = None if model else pd.spectrum_file(store, ctf.series, order)
    if path is None:
        return _model_spectrum(store, ctf, order)
    path = served_path(store.root, path, inside_only=True)
    headers = {"X-Spectrum-Source": "file"}
    if path.suffix.lower() == ".png" and path.is_file() and path.read_bytes()[:8] == PNG_MAGIC:
        return FileResponse(path, media_type=PNG, headers=headers)
    if path.suffix.lower() in (".mrc", ".mrcs"):
        return _png(cache, ImageRef(path, 0), headers)
    raise ProjectError(f"{ctf.series.ts_id}:{order}: spectrum file {path.name} is missing or not a PNG/MRC image")


def _model_spectrum(store: ProjectStore, ctf: CtfSeriesOf, order: int) -> Response:
    """The fitted model's CTF² drawn at the spectrum's pixel size (the acquisition's when not saved)."""
    series = ctf.series
    acq = pd.find_acquisition(store, ctf.output, series.ts_id)
    if acq is None:
        raise ProjectError(f"{series.ts_id}: no acquisition values (voltage, Cs, pixel size) to draw the CTF model")
    fit = pd.find_ctf(series, order)
    pixel = series.attrs.get("spectrum_pixel_size_a") or acq.pixel_size_a
    image = ctf_power_image(MODEL_PX, fit, acquisition=acq, pixel_size_a=pixel)
    return Response(render_png(image, MODEL_PX), media_type=PNG, headers={"X-Spectrum-Source": "model"})
