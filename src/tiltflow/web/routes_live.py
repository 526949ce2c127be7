"""Routes of the session dashboard (issue 14 item 5): ``/dashboard`` and its read-only JSON under
``/api/watch`` (what ``tiltflow watch`` writes into the project, read by ``web.live``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from tiltflow.web import live
from tiltflow.web.deps import StoreDep

STATIC = Path(__file__).parent / "static"

router = APIRouter()


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})


@router.get("/api/watch/state")
def watch_state(store: StoreDep) -> dict[str, Any]:
    return live.watch_state(store.root)


@router.get("/api/watch/series/{ts_id}/tilts")
def watch_tilts(ts_id: str, store: StoreDep) -> list[dict]:
    return live.tilt_rows(store.root, live.checked_name(ts_id, "series"))


@router.get("/api/watch/series/{ts_id}/tilts/{name}/thumb.png")
def watch_thumb(ts_id: str, name: str, store: StoreDep) -> Response:
    png = live.tilt_thumbnail(store.root, ts_id, name)
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get("/api/watch/series/{ts_id}/preview.png")
def watch_preview(ts_id: str, store: StoreDep) -> FileResponse:
    """The series' tomogram (central XY slice) once made, else the coarse live reconstruction."""
    picture, kind = live.series_picture(store, ts_id)
    return FileResponse(
        picture, media_type="image/png", headers={"Cache-Control": "no-store", "X-Tiltflow-Picture": kind}
    )
