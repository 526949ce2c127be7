"""Routes that list what the project holds: the page, runs and outputs, series, views, CTF tables."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from tiltflow.web import project_data as pd
from tiltflow.web.ctf_source import find_ctf_source
from tiltflow.web.deps import CtfSeriesDep, StoreDep, TiltSeriesDep
from tiltflow.web.models import CtfSeriesDetail, ProjectInfo, SeriesInfo, ViewInfo
from tiltflow.workflow.errors import ProjectError
from tiltflow.workflow.sets import CtfSeriesSet, TiltSeriesSet

STATIC = Path(__file__).parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


@router.get("/api/project")
def project(store: StoreDep) -> ProjectInfo:
    return pd.project_info(store)


@router.get("/api/outputs/{pointer}/series")
def series_list(pointer: str, store: StoreDep) -> list[SeriesInfo]:
    out = pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES)
    ctf = find_ctf_source(store, out) if out.type in pd.TILT_TYPES else None
    value = pd.load_curated(store, out)
    if not isinstance(value, (TiltSeriesSet, CtfSeriesSet)):
        raise ProjectError(f"{out.pointer} is a {out.type}, not a set of tilt series")
    return pd.series_infos(value, ctf)


@router.get("/api/outputs/{pointer}/series/{ts_id}/views")
def views(ts: TiltSeriesDep, store: StoreDep) -> list[ViewInfo]:
    sums = pd.motion_corrected(store, ts.output)
    return pd.view_infos(ts.series, find_ctf_source(store, ts.output), pd.shown_images(store, sums, ts.series))


@router.get("/api/outputs/{pointer}/ctf/{ts_id}")
def ctf_detail(ctf: CtfSeriesDep, store: StoreDep) -> CtfSeriesDetail:
    out, series = ctf.output, ctf.series
    spectrum_pixel = series.attrs.get("spectrum_pixel_size_a", out.attrs.get("spectrum_pixel_size_a"))
    return pd.ctf_detail(series, pd.find_acquisition(store, out, series.ts_id), spectrum_pixel)
