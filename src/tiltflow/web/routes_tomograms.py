"""Routes of the tomogram viewer: the tomograms of a set, and slices through one as PNG."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from tiltflow.web import project_data as pd
from tiltflow.web import tomograms as tomo
from tiltflow.web.deps import SlicesDep, StoreDep
from tiltflow.web.limits import served_path
from tiltflow.web.models import TomogramInfo

PNG = "image/png"

router = APIRouter()


class SliceQuery(BaseModel):
    """Which slice, and its contrast: the query parameters of ``slice.png``."""

    axis: Literal["xy", "xz", "yz"] = "xy"
    index: int | None = Field(None, ge=0)  # None: the centre
    half: Literal["full", "even", "odd"] = "full"
    slab: int = Field(1, ge=1, le=64)  # slices averaged around ``index``
    lo: float = Field(1.0, ge=0, le=100)  # percentiles of the volume's grey levels
    hi: float = Field(99.0, ge=0, le=100)
    gamma: float = Field(1.0, gt=0.05, le=10)
    max_px: int = Field(1024, ge=32, le=4096)


@router.get("/api/outputs/{pointer}/tomograms")
def tomogram_list(pointer: str, store: StoreDep) -> list[TomogramInfo]:
    out = pd.get_output(store, pointer, pd.TOMOGRAM_TYPES)
    return tomo.tomogram_infos(store, tomo.load_tomograms(store, out))


@router.get("/api/outputs/{pointer}/tomograms/{ts_id}/slice.png")
def tomogram_slice(
    pointer: str, ts_id: str, q: Annotated[SliceQuery, Query()], store: StoreDep, slices: SlicesDep
) -> Response:
    """A slice (``xy`` at z ``index``, ``xz`` at y, ``yz`` at x; None: the centre) read by mmap, as
    PNG between the volume's ``lo`` and ``hi`` percentiles (grey levels in ``X-Contrast``)."""
    t = tomo.find_tomogram(tomo.load_tomograms(store, pd.get_output(store, pointer, pd.TOMOGRAM_TYPES)), ts_id)
    path = served_path(store.root, tomo.tomogram_path(store, t, q.half))
    data, g_lo, g_hi = slices.png(
        path, tomo.SliceRequest(q.axis, q.index, q.slab, q.max_px), lo_pct=q.lo, hi_pct=q.hi, gamma=q.gamma
    )
    return Response(
        data, media_type=PNG, headers={"X-Contrast": f"{g_lo:.6g},{g_hi:.6g}", "Cache-Control": "private, no-cache"}
    )
