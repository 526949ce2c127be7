"""Routes of curation: quality suggestions, exclude / undo, and Save (with its preview).

Suggestions only read; exclude and undo write curation flags (rows of the project); Save registers
a new output on the run that made the set.
"""

from __future__ import annotations

from fastapi import APIRouter

from tiltflow.web import project_data as pd
from tiltflow.web.ctf_source import find_ctf_source
from tiltflow.web.deps import CacheDep, CtfSeriesDep, CuratableDep, CuratorDep, StoreDep, TiltSeriesDep
from tiltflow.web.models import CurationResult, ExcludeRequest, SavePreview, SaveRequest, SaveResult, Suggestion
from tiltflow.web.quality import suggest_for_ctf, suggest_for_tilt_series
from tiltflow.web.save_preview import save_preview as preview_save
from tiltflow.web.save_preview import save_result

router = APIRouter()


@router.get("/api/outputs/{pointer}/series/{ts_id}/suggestions")
def tilt_suggestions(ts: TiltSeriesDep, store: StoreDep, cache: CacheDep) -> list[Suggestion]:
    sums = pd.motion_corrected(store, ts.output)
    stats = pd.series_stats(cache, list(pd.shown_images(store, sums, ts.series).values()))
    ctf = find_ctf_source(store, ts.output)
    return suggest_for_tilt_series(ts.series, stats, ctf.series(ts.series.ts_id) if ctf else None)


@router.get("/api/outputs/{pointer}/ctf/{ts_id}/suggestions")
def ctf_suggestions(ctf: CtfSeriesDep) -> list[Suggestion]:
    return suggest_for_ctf(ctf.series)


@router.post("/api/outputs/{pointer}/exclude")
def exclude(out: CuratableDep, req: ExcludeRequest, curator: CuratorDep) -> CurationResult:
    return curator.exclude(out, req)


@router.post("/api/outputs/{pointer}/undo")
def undo(out: CuratableDep, curator: CuratorDep) -> CurationResult:
    return curator.undo(out)


@router.get("/api/outputs/{pointer}/save-preview")
def save_preview(out: CuratableDep, store: StoreDep) -> SavePreview:
    return preview_save(store, out)


@router.post("/api/outputs/{pointer}/save")
def save(out: CuratableDep, req: SaveRequest, store: StoreDep, curator: CuratorDep) -> SaveResult:
    return save_result(store, curator.save(out, restack=req.restack))
