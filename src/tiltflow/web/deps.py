"""What the viewer's routes share, as FastAPI dependencies: the project store, the thumbnail cache,
the curator and the slice server of this app (``create_app`` puts them in ``app.state``), and the
output or curated tilt / CTF series a URL names (``{pointer}``, ``{ts_id}``), read through the
registered-set cache (``web.set_cache``, one per process, keyed by project and run).

The token check is not a dependency: it is a middleware (``web.app``), so that it also guards the
static files and answers 403 before any 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from tiltflow.web import project_data as pd
from tiltflow.web.curate import Curator
from tiltflow.web.thumbnails import ThumbnailCache
from tiltflow.web.tomograms import SliceServer
from tiltflow.workflow.sets import CtfTomoSeries, TiltSeries
from tiltflow.workflow.store import OutputRecord, ProjectStore


def get_store(request: Request) -> ProjectStore:
    return request.app.state.store


def get_cache(request: Request) -> ThumbnailCache:
    return request.app.state.cache


def get_curator(request: Request) -> Curator:
    return request.app.state.curator


def get_slices(request: Request) -> SliceServer:
    return request.app.state.slices


StoreDep = Annotated[ProjectStore, Depends(get_store)]
CacheDep = Annotated[ThumbnailCache, Depends(get_cache)]
CuratorDep = Annotated[Curator, Depends(get_curator)]
SlicesDep = Annotated[SliceServer, Depends(get_slices)]


@dataclass(frozen=True)
class TiltSeriesOf:
    """A tilt series of an output, with the viewer's exclusions applied."""

    output: OutputRecord
    series: TiltSeries


@dataclass(frozen=True)
class CtfSeriesOf:
    """A CTF series of an output, with the viewer's exclusions applied."""

    output: OutputRecord
    series: CtfTomoSeries


def curatable_output(pointer: str, store: StoreDep) -> OutputRecord:
    """The tilt-series or CTF set ``{pointer}`` names (404 for anything else)."""
    return pd.get_output(store, pointer, pd.TILT_TYPES + pd.CTF_TYPES)


def tilt_series_of(pointer: str, ts_id: str, store: StoreDep) -> TiltSeriesOf:
    out = pd.get_output(store, pointer, pd.TILT_TYPES)
    series = pd.load_curated_series(store, out, ts_id)
    if not isinstance(series, TiltSeries):
        raise TypeError(f"{out.pointer}: {ts_id} is not a tilt series")
    return TiltSeriesOf(out, series)


def ctf_series_of(pointer: str, ts_id: str, store: StoreDep) -> CtfSeriesOf:
    out = pd.get_output(store, pointer, pd.CTF_TYPES)
    series = pd.load_curated_series(store, out, ts_id)
    if not isinstance(series, CtfTomoSeries):
        raise TypeError(f"{out.pointer}: {ts_id} is not a CTF series")
    return CtfSeriesOf(out, series)


CuratableDep = Annotated[OutputRecord, Depends(curatable_output)]
TiltSeriesDep = Annotated[TiltSeriesOf, Depends(tilt_series_of)]
CtfSeriesDep = Annotated[CtfSeriesOf, Depends(ctf_series_of)]
