"""The viewer's HTTP API and page (FastAPI). Routes are short: they call ``project_data``,
``curate``, ``quality`` and ``thumbnails``, which call the workflow layer.

Safety: every request needs the session token — ``?token=`` once (then a cookie), or the header
``X-Tiltflow-Token``; without one, or with a wrong one, the answer is 403. No route takes a path:
images are found from the project's items and rendered server-side into ``.cache/thumbs``.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tiltflow.web import project_data as pd
from tiltflow.web import tomograms as tomo
from tiltflow.web.ctf_source import find_ctf_source
from tiltflow.web.curate import Curator
from tiltflow.web.limits import RequestLimits, served_path
from tiltflow.web.models import (
    CtfSeriesDetail,
    CurationResult,
    ExcludeRequest,
    ProjectInfo,
    SavePreview,
    SaveRequest,
    SaveResult,
    SeriesInfo,
    Suggestion,
    TomogramInfo,
    ViewInfo,
)
from tiltflow.web.quality import suggest_for_ctf, suggest_for_tilt_series
from tiltflow.web.save_preview import save_preview as preview_save
from tiltflow.web.save_preview import save_result
from tiltflow.web.spectra import ctf_power_image
from tiltflow.web.thumbnails import ImageRef, ThumbnailCache, render_png
from tiltflow.workflow.errors import InputError, ProjectError
from tiltflow.workflow.sets import CtfTomoSeries, TiltSeries
from tiltflow.workflow.store import ProjectStore

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-tiltflow-token"
PNG = "image/png"


def cookie_name(token: str) -> str:
    """Per-session cookie name, so two viewers on one host do not overwrite each other's cookie."""
    return "tiltflow_" + hashlib.sha256(token.encode()).hexdigest()[:10]


def _install_token_check(app: FastAPI, token: str) -> None:
    expected = token.encode()
    name = cookie_name(token)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        from_query = request.query_params.get("token")
        supplied = [t for t in (from_query, request.headers.get(TOKEN_HEADER), request.cookies.get(name)) if t]
        if not supplied:
            return JSONResponse({"detail": "token required — open the URL that `tiltflow view` printed"}, 403)
        if not any(secrets.compare_digest(t.encode(), expected) for t in supplied):
            return JSONResponse({"detail": "wrong token — open the URL that `tiltflow view` printed"}, 403)
        if from_query and request.method == "GET" and request.url.path == "/":
            response: Response = RedirectResponse("/", status_code=303)  # drop the token from the address bar
        else:
            response = await call_next(request)
        if from_query:
            response.set_cookie(name, token, httponly=True, samesite="strict")
        return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProjectError)
    async def not_found(_request: Request, err: ProjectError):
        return JSONResponse({"detail": str(err)}, 404)

    @app.exception_handler(InputError)
    async def bad_input(_request: Request, err: InputError):
        return JSONResponse({"detail": "; ".join(err.problems)}, 400)

    @app.exception_handler(FileNotFoundError)
    async def missing_file(_request: Request, err: FileNotFoundError):
        return JSONResponse({"detail": str(err)}, 404)

    @app.exception_handler(ValueError)
    async def unreadable(_request: Request, err: ValueError):  # MovieError, StackError: unreadable data
        return JSONResponse({"detail": str(err)}, 422)


def create_app(
    store: ProjectStore, token: str, *, cache_dir: Path | None = None, hosts: list[str] | tuple[str, ...] | None = None
) -> FastAPI:
    """The viewer for ``store``; ``app.state.cache`` / ``app.state.curator`` are its helpers.
    ``hosts``: names it answers besides loopback (``view --host``), see ``web.limits``."""
    if len(token) < 16:
        raise ValueError("create_app: the token must be at least 16 characters (use secrets.token_urlsafe())")
    app = FastAPI(title="tiltflow viewer", docs_url=None, redoc_url=None, openapi_url=None)
    cache = ThumbnailCache(
        cache_dir or store.root / ".cache" / "thumbs", guard=lambda f: served_path(store.root, f)
    )  # no symlinks out
    curator = Curator(store)
    slices = tomo.SliceServer()
    app.state.cache, app.state.curator, app.state.store = cache, curator, store
    _install_token_check(app, token)
    _install_error_handlers(app)
    app.add_middleware(RequestLimits, hosts=hosts)  # outermost: Host check, body limit
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def tilt_series(pointer: str, ts_id: str) -> tuple[pd.OutputRecord, TiltSeries]:
        out = pd.get_output(store, pointer, pd.TILT_TYPES)
        series = pd.find_series(pd.load_curated(store, out), ts_id)
        assert isinstance(series, TiltSeries)
        return out, series

    def ctf_series(pointer: str, ts_id: str) -> tuple[pd.OutputRecord, CtfTomoSeries]:
        out = pd.get_output(store, pointer, pd.CTF_TYPES)
        series = pd.find_series(pd.load_curated(store, out), ts_id)
        assert isinstance(series, CtfTomoSeries)
        return out, series

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/project")
    def project() -> ProjectInfo:
        return pd.project_info(store)

    @app.get("/api/outputs/{pointer}/series")
    def series_list(pointer: str) -> list[SeriesInfo]:
        out = pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES)
        ctf = find_ctf_source(store, out) if out.type in pd.TILT_TYPES else None
        return pd.series_infos(pd.load_curated(store, out), ctf)

    def shown_ref(out: pd.OutputRecord, series: TiltSeries, order: int) -> ImageRef:
        """The picture of one view: a movie's motion-corrected sum when a run made one."""
        pd.find_image(series, order)  # 404 for an unknown view
        return pd.image_ref(pd.shown_images(store, pd.motion_corrected(store, out), series)[order])

    @app.get("/api/outputs/{pointer}/series/{ts_id}/views")
    def views(pointer: str, ts_id: str) -> list[ViewInfo]:
        out, series = tilt_series(pointer, ts_id)
        sums = pd.motion_corrected(store, out)
        return pd.view_infos(series, find_ctf_source(store, out), pd.shown_images(store, sums, series))

    @app.get("/api/outputs/{pointer}/series/{ts_id}/views/{order}/thumbnail.png")
    def thumbnail(pointer: str, ts_id: str, order: int) -> FileResponse:
        out, series = tilt_series(pointer, ts_id)
        path = cache.thumbnail_png(shown_ref(out, series, order))
        return FileResponse(path, media_type=PNG, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/outputs/{pointer}/series/{ts_id}/views/{order}/preview")
    def preview(pointer: str, ts_id: str, order: int) -> Response:
        """The view at <= 1024 px as little-endian float32, row 0 first; shape in ``X-Shape`` (ny,nx)."""
        out, series = tilt_series(pointer, ts_id)
        data = cache.preview(shown_ref(out, series, order))
        return Response(
            data.astype("<f4").tobytes(),
            media_type="application/octet-stream",
            headers={"X-Shape": f"{data.shape[0]},{data.shape[1]}", "Cache-Control": "private, max-age=3600"},
        )

    @app.get("/api/outputs/{pointer}/series/{ts_id}/suggestions")
    def tilt_suggestions(pointer: str, ts_id: str) -> list[Suggestion]:
        out, series = tilt_series(pointer, ts_id)
        sums = pd.motion_corrected(store, out)
        stats = pd.series_stats(cache, list(pd.shown_images(store, sums, series).values()))
        ctf = find_ctf_source(store, out)
        ctf_s = ctf.series(ts_id) if ctf else None
        return suggest_for_tilt_series(series, stats, ctf_s)

    @app.get("/api/outputs/{pointer}/ctf/{ts_id}")
    def ctf_detail(pointer: str, ts_id: str) -> CtfSeriesDetail:
        out, series = ctf_series(pointer, ts_id)
        spectrum_pixel = series.attrs.get("spectrum_pixel_size_a", out.attrs.get("spectrum_pixel_size_a"))
        return pd.ctf_detail(series, pd.find_acquisition(store, out, ts_id), spectrum_pixel)

    @app.get("/api/outputs/{pointer}/ctf/{ts_id}/suggestions")
    def ctf_suggestions(pointer: str, ts_id: str) -> list[Suggestion]:
        return suggest_for_ctf(ctf_series(pointer, ts_id)[1])

    @app.get("/api/outputs/{pointer}/ctf/{ts_id}/{order}/spectrum.png")
    def spectrum(pointer: str, ts_id: str, order: int, model: bool = False) -> Response:
        """The spectrum the CTF step saved (PNG, or MRC rendered), else the fitted model's CTF²."""
        out, series = ctf_series(pointer, ts_id)
        path = None if model else pd.spectrum_file(store, series, order)
        path = served_path(store.root, path, inside_only=True) if path is not None else None
        if path is not None:
            if path.suffix.lower() == ".png" and path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
                return FileResponse(path, media_type=PNG, headers={"X-Spectrum-Source": "file"})
            if path.suffix.lower() in (".mrc", ".mrcs"):
                return FileResponse(
                    cache.thumbnail_png(ImageRef(path, 0)), media_type=PNG, headers={"X-Spectrum-Source": "file"}
                )
            raise ProjectError(f"{ts_id}:{order}: spectrum file {path.name} is missing or not a PNG/MRC image")
        acq = pd.find_acquisition(store, out, ts_id)
        if acq is None:
            raise ProjectError(f"{ts_id}: no acquisition values (voltage, Cs, pixel size) to draw the CTF model")
        c = pd.find_ctf(series, order)
        pixel = series.attrs.get("spectrum_pixel_size_a") or acq.pixel_size_a
        image = ctf_power_image(
            256,
            pixel_size_a=pixel,
            voltage_kv=acq.voltage_kv,
            cs_mm=acq.cs_mm,
            amplitude_contrast=acq.amplitude_contrast,
            defocus_u_a=c.defocus_u_a,
            defocus_v_a=c.defocus_v_a,
            astigmatism_angle_deg=c.astigmatism_angle_deg,
            phase_shift_rad=c.phase_shift_rad or 0.0,
        )
        return Response(render_png(image, 256), media_type=PNG, headers={"X-Spectrum-Source": "model"})

    @app.post("/api/outputs/{pointer}/exclude")
    def exclude(pointer: str, req: ExcludeRequest) -> CurationResult:
        return curator.exclude(pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES), req)

    @app.post("/api/outputs/{pointer}/undo")
    def undo(pointer: str) -> CurationResult:
        return curator.undo(pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES))

    @app.get("/api/outputs/{pointer}/tomograms")
    def tomogram_list(pointer: str) -> list[TomogramInfo]:
        out = pd.get_output(store, pointer, pd.TOMOGRAM_TYPES)
        return tomo.tomogram_infos(store, tomo.load_tomograms(store, out))

    @app.get("/api/outputs/{pointer}/tomograms/{ts_id}/slice.png")
    def tomogram_slice(
        pointer: str,
        ts_id: str,
        axis: Literal["xy", "xz", "yz"] = "xy",
        index: int | None = Query(None, ge=0),
        half: Literal["full", "even", "odd"] = "full",
        slab: int = Query(1, ge=1, le=64),
        lo: float = Query(1.0, ge=0, le=100),
        hi: float = Query(99.0, ge=0, le=100),
        gamma: float = Query(1.0, gt=0.05, le=10),
        max_px: int = Query(1024, ge=32, le=4096),
    ) -> Response:
        """A slice (``xy`` at z ``index``, ``xz`` at y, ``yz`` at x; None: the centre) read by mmap, as
        PNG between the volume's ``lo`` and ``hi`` percentiles (grey levels in ``X-Contrast``)."""
        t = tomo.find_tomogram(tomo.load_tomograms(store, pd.get_output(store, pointer, pd.TOMOGRAM_TYPES)), ts_id)
        path = served_path(store.root, tomo.tomogram_path(store, t, half))
        data, g_lo, g_hi = slices.png(
            path, tomo.SliceRequest(axis, index, slab, max_px), lo_pct=lo, hi_pct=hi, gamma=gamma
        )
        return Response(
            data, media_type=PNG, headers={"X-Contrast": f"{g_lo:.6g},{g_hi:.6g}", "Cache-Control": "private, no-cache"}
        )

    @app.get("/api/outputs/{pointer}/save-preview")
    def save_preview(pointer: str) -> SavePreview:
        return preview_save(store, pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES))

    @app.post("/api/outputs/{pointer}/save")
    def save(pointer: str, req: SaveRequest) -> SaveResult:
        new = curator.save(pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES), restack=req.restack)
        return save_result(store, new)

    from tiltflow.web.live import add_live_routes  # the session dashboard (issue 14)

    add_live_routes(app, store)
    return app
