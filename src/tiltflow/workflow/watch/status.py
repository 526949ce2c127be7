"""The watch's state as plain data: for the terminal block, ``--json`` and the viewer's dashboard
(``<project>/watch/state.json``, rewritten atomically on every poll)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

_BATCH_LABEL = {"queued": "queued", "running": "processing", "done": "done", "failed": "failed"}


def _label(loop, v, last, good: list) -> str:
    if last is not None and last.status in ("queued", "running"):
        return _BATCH_LABEL[last.status]
    if v.state == "aborted":
        return "aborted"
    if last is not None and last.tilts == good:
        return _BATCH_LABEL[last.status]
    if v.state == "closed":
        return "finishing tilts"
    if v.ts_id in loop.blocked:
        return "waiting"
    return "reopened" if last is not None else "collecting"


def series_state(loop, v) -> dict:
    last = loop.book.last(v.ts_id)
    done = failed = 0
    motion, defocus = [], []
    good = []
    for t in v.accepted():
        rec = loop.tilt_result(v, t.name)
        if rec is None:
            continue
        if rec["result"] is None:
            failed += 1
            continue
        done += 1
        good.append([t.name, t.angle])
        r = rec["result"]
        if isinstance(r, dict):
            motion.append(r["total_motion_px"])
            if r.get("ctf"):
                defocus.append((r["ctf"]["defocus_u_a"] + r["ctf"]["defocus_v_a"]) / 2e4)
    good.sort()
    out = {
        "ts": v.ts_id,
        "state": _label(loop, v, last, good),
        "listed": len(v.tilts),
        "in": len(v.accepted()),
        "pending": len(v.pending()),
        "dropped": sum(t.state == "dropped" for t in v.tilts),
        "expected": v.expected,
        "tilts_done": done,
        "tilts_failed": failed,
        "reason": loop.blocked.get(v.ts_id) or v.reason,
        "flavour": v.flavour,
        "first_seen": v.first_seen,
        "last_activity": v.last_activity,
        "motion_px": round(statistics.median(motion), 2) if motion else None,
        "defocus_um": round(statistics.median(defocus), 2) if defocus else None,
    }
    if last is not None:
        out.update(
            batch=last.k,
            batch_status=last.status,
            runs=last.runs,
            summary=last.summary,
            error=last.error,
            verdicts=last.verdicts,
            lag_s=round(last.ended - last.last_tilt, 1)
            if last.ended and last.last_tilt and last.status == "done"
            else None,
        )
    return out


def batch_verdicts(store, run_ids) -> tuple[dict, list[str]]:
    """The series' verdicts from its batch's outputs, and one summary line per output."""
    from tiltflow.workflow.sets import alignment_verdict, ctf_verdict

    verdicts: dict = {}
    lines = []
    for run_id in run_ids:
        for o in store.outputs(run_id):
            lines.append(f"{o.pointer}: {o.summary}")
            value = store.load(o)
            for item in value.items:
                if o.type == "CTFTomoSeries":
                    verdicts["ctf"] = ctf_verdict(item)["status"]
                elif o.type == "TiltSeries" and alignment_verdict(item)["status"]:
                    verdicts["alignment"] = alignment_verdict(item)["status"]
                    verdicts["residual_px"] = (item.alignment or {}).get("mean_residual_px")
                elif o.type == "Tomograms":
                    verdicts["tomogram"] = o.pointer
    return verdicts, lines


def state(loop) -> dict:
    now = loop.clock()
    series = [
        series_state(loop, v) for v in sorted(loop.tracker.series.values(), key=lambda v: (v.first_seen, v.ts_id))
    ]
    recent = [t for t in loop.done_times if now - t <= 600]
    minutes = max(min(10.0, (now - loop.started) / 60), 1 / 60)
    counts: dict[str, int] = {}
    for s in series:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    lags = [s["lag_s"] for s in series if s.get("lag_s") is not None]
    return {
        "folder": str(loop.folder),
        "project": str(loop.store.root),
        "started": loop.started,
        "now": now,
        "updated": time.time(),
        "series": series,
        "counts": counts,
        "tilts_done": sum(s["tilts_done"] for s in series),
        "movies_per_min": round(len(recent) / minutes, 2),
        "queue": {"tilts": len(loop.inflight), "series": len(loop.queue) + (loop.running is not None)},
        "processing": loop.running[0] if loop.running else None,
        "lag_s": {"last": lags[-1], "median": statistics.median(lags)} if lags else None,
        "lines": list(loop.lines),
    }


def write_state(root: Path, data: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".state.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, root / "state.json")


def read_state(project: Path) -> dict | None:
    try:
        return json.loads((Path(project) / "watch" / "state.json").read_text())
    except (OSError, ValueError):
        return None
