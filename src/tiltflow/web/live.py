"""What the session dashboard (issue 14 item 5, ``web.routes_live``) shows of a watch.

It reads what ``tiltflow watch`` writes into the project (``watch/state.json``, the per-tilt records,
their binned sums, the coarse previews) and never writes; with no watch it says so. Every route is
behind the viewer's token check, like the rest of the viewer.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from tiltflow.web.limits import served_path
from tiltflow.workflow.sets import TomogramSet
from tiltflow.workflow.store import ProjectStore

_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,200}$")


def checked_name(name: str, what: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise HTTPException(404, f"no {what} '{name}'")
    return name


def png_of(image: np.ndarray) -> bytes:
    from tiltflow.io.png import encode_png_gray8

    lo, hi = np.percentile(image, [1, 99])
    scaled = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return encode_png_gray8((scaled * 255).astype(np.uint8))


def tilt_rows(root: Path, ts_id: str) -> list[dict]:
    """The series' processed tilts, in acquisition time: name, seconds, motion, defocus, error."""
    rows = []
    for path in (root / "watch" / "tilts" / ts_id / "records").glob("*.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        r = rec.get("result") or {}
        ctf = r.get("ctf") or {}
        rows.append(
            {
                "name": Path(rec["sig"]["movie"]).name,
                "angle_deg": rec["sig"].get("tilt_angle_deg"),
                "when": rec.get("when"),
                "seconds": rec.get("seconds"),
                "error": rec.get("error"),
                "motion_px": r.get("total_motion_px"),
                "defocus_um": (ctf["defocus_u_a"] + ctf["defocus_v_a"]) / 2e4 if ctf else None,
            }
        )
    return sorted(rows, key=lambda row: row["when"] or 0)


def tomogram_snapshot(store: ProjectStore, pointer: str, ts_id: str) -> Path | None:
    from tiltflow.io.snapshots import snapshot_paths

    try:
        tomos = store.load(store.resolve(pointer))
    except Exception:  # noqa: BLE001 — a run removed since: no picture
        return None
    if not isinstance(tomos, TomogramSet):
        return None
    for item in tomos.items:
        if item.ts_id == ts_id:
            xy = snapshot_paths(item.file)["xy"]
            return xy if xy.is_file() else None
    return None


def watch_state(root: Path) -> dict[str, Any]:
    """What ``watch/state.json`` says, with ``watching`` and its age; a hint when no watch has run."""
    from tiltflow.workflow.watch.status import read_state

    state = read_state(root)
    if state is None:
        return {
            "watching": False,
            "series": [],
            "counts": {},
            "lines": [],
            "detail": f"no watch has run in {root} — start one with `tiltflow watch DIR -p {root}`",
        }
    state["watching"] = True
    state["age_s"] = round(time.time() - float(state.get("updated") or 0), 1)
    return state


def tilt_thumbnail(root: Path, ts_id: str, name: str) -> bytes:
    """The PNG of one processed tilt's binned sum (404 while there is none)."""
    folder = root / "watch" / "tilts" / checked_name(ts_id, "series") / "thumbs"
    path = folder / f"{Path(checked_name(name, 'tilt')).stem}.npy"
    if not path.is_file():
        raise HTTPException(404, f"{name}: no picture yet")
    return png_of(np.load(served_path(root, path, inside_only=True)))


def series_picture(store: ProjectStore, ts_id: str) -> tuple[Path, str]:
    """The series' tomogram (central XY slice) once made, else the coarse live reconstruction; and
    which of the two it is (``tomogram`` / ``preview``)."""
    from tiltflow.workflow.watch.status import read_state

    root = store.root
    checked_name(ts_id, "series")
    state = read_state(root) or {}
    series: dict[str, Any] = next((s for s in state.get("series", []) if s["ts"] == ts_id), {})
    pointer = (series.get("verdicts") or {}).get("tomogram")
    picture = tomogram_snapshot(store, pointer, ts_id) if pointer else None
    if picture is None:
        picture = root / "watch" / "preview" / f"{ts_id}.png"
    if not picture.is_file():
        raise HTTPException(404, f"{ts_id}: no reconstruction yet (the preview needs 3 tilts)")
    kind = "tomogram" if pointer and picture.name.endswith("_xy.png") else "preview"
    return served_path(root, picture), kind
