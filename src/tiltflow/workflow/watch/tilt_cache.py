"""Per-tilt results of the motion-ctf step's per-movie task, kept across runs and restarts.

The watch computes each tilt as it arrives into ``<project>/watch/tilts/<tsId>/`` (sums, motion
STAR, CTF picture) and records it in ``records/<movie>.json``, written last and atomically: a kill
leaves either the record or a tilt still to do. A :class:`CachingExecutor` then serves these
results to the series' motion-ctf run, linking the files into the run's folder under the names the
run gives them, so the run finds every movie done. A result is reused when the task's arguments
match (the tilt angle and axis within 0.1°, a Tomo5 tilt computed before its mdoc carries the
angle in its name; doses only count with dose weighting); otherwise it is computed again.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiltflow.workflow.paths import map_attrs
from tiltflow.workflow.steps.motion_tasks import MovieResult, MovieSetup, MovieTask, motion_movie_task, movie_task

if TYPE_CHECKING:
    from tiltflow.workflow.executor import Executor
    from tiltflow.workflow.sets import TiltImage, TiltSeries
    from tiltflow.workflow.steps.motion_ctf import MotionCtfParams
    from tiltflow.workflow.store import ProjectStore

ANGLE_TOLERANCE_DEG = 0.1
# what decides a task's result, by the names records carry: its fields less the output place,
# device and session (``params``: the step's parameters as a dict)
_KEYS = (
    "movie",
    "gain",
    "dark",
    "params",
    "pixel_size_a",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "tilt_angle_deg",
    "tilt_axis_deg",
    "prior_dose",
    "dose",
)


def _real(path: str | None) -> str | None:
    return os.path.realpath(path) if path else None


def signature(task: MovieTask) -> dict:
    """What decides a task's result (see ``_KEYS``), JSON-able, the files by their real paths."""
    sig = {
        "movie": _real(task.movie),
        "gain": _real(task.setup.gain),
        "dark": _real(task.setup.dark),
        "params": task.setup.params.model_dump(),
        **{k: getattr(task, k) for k in _KEYS[4:]},
    }
    return json.loads(json.dumps(sig))


def same_result(a: dict, b: dict) -> bool:
    """Would tasks with signatures ``a`` and ``b`` give the same result (see module docstring)?"""
    skip = {"tilt_angle_deg", "tilt_axis_deg"} | (
        set() if a["params"].get("dose_weighting") else {"prior_dose", "dose"}
    )
    if any(a.get(k) != b.get(k) for k in _KEYS if k not in skip):
        return False
    return all(abs(float(a[k]) - float(b[k])) <= ANGLE_TOLERANCE_DEG for k in ("tilt_angle_deg", "tilt_axis_deg"))


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


class TiltCache:
    """``records`` by real movie path; thread-safe (the watch loop and a series batch share it)."""

    def __init__(self, store: ProjectStore):
        self.store, self.root = store, store.root / "watch" / "tilts"
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        for path in self.root.glob("*/records/*.json"):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # unreadable: that tilt is done again
            rec["result"] = map_attrs(rec.get("result"), store.paths.abs_attr)
            self.records[rec["sig"]["movie"]] = rec

    def folder(self, ts_id: str) -> Path:
        return self.root / ts_id

    def lookup(self, sig: dict) -> dict | None:
        rec = self.records.get(sig["movie"])
        return rec if rec is not None and same_result(rec["sig"], sig) else None

    def put(self, ts_id: str, sig: dict, result: MovieResult | BaseException, seconds: float) -> dict:
        """Record a finished task (its result, or an exception: a movie that cannot be used)."""
        failed = isinstance(result, BaseException)
        rec = {
            "ts": ts_id,
            "sig": sig,
            "when": time.time(),
            "seconds": round(seconds, 3),
            "result": None if isinstance(result, BaseException) else result.to_record(),
            "error": (str(result) if str(result).startswith(sig["movie"]) else f"{type(result).__name__}: {result}")
            if failed
            else None,
        }
        stored = dict(rec, result=map_attrs(rec["result"], self.store.paths.rel_attr))
        path = self.root / ts_id / "records" / (Path(sig["movie"]).name + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with self._lock:
            tmp.write_text(json.dumps(stored))
            os.replace(tmp, path)
            self.records[sig["movie"]] = rec
            with open(self.root / "computed.log", "a") as log:  # one line per task done (tests, audits)
                log.write(f"{rec['when']:.3f} {sig['movie']} {'failed' if failed else 'ok'} {seconds:.2f}\n")
        return rec

    def linked(self, rec: dict, out_dir: str, name: str) -> MovieResult:
        """``rec``'s result with its files linked into a run's folder as ``name`` (what the task
        itself would have written there)."""
        result = copy.deepcopy(rec["result"])
        out = Path(out_dir)
        for key, src in result["files"].items():
            dest = out / "sums" / (f"{name}.npy" if key == "sum" else f"{name}_{key}.npy")
            _link(Path(src), dest)
            result["files"][key] = str(dest)
        cached = Path(rec["result"]["files"]["sum"])
        star = cached.parent.parent / "motion" / f"{cached.stem}.star"
        if star.is_file():
            _link(star, out / "motion" / f"{name}.star")
        if result.get("ctf", {}).get("spectrum_file"):
            dest = out / "ctf" / f"{name}.png"
            _link(Path(result["ctf"]["spectrum_file"]), dest)
            result["ctf"]["spectrum_file"] = str(dest)
        return MovieResult.from_record(result)


def tilt_task(task: MovieTask) -> MovieResult:
    """The per-movie task, then a binned copy of its sum for previews and the dashboard."""
    from tiltflow.workflow.watch.preview import write_thumb

    result = motion_movie_task(task)
    write_thumb(result.files["sum"])
    return result


def tilt_movie_task(
    series: TiltSeries, image: TiltImage, gain: str | None, dark: str | None, params: MotionCtfParams, device: str
) -> MovieTask:
    """The motion-ctf step's per-movie task for one tilt (``movie_task``, as the step's runs build
    it; the output place and name are the caller's)."""
    return movie_task(series, image, MovieSetup(params, gain, dark, device))


def cache_task(task: MovieTask, folder: Path) -> MovieTask:
    """``task`` writing into the cache ``folder`` under the movie's name."""
    movie = os.path.realpath(task.movie)
    return replace(task, movie=movie, out_dir=str(folder), name=Path(movie).stem)


class CachingExecutor:
    """An executor for a series' runs: the motion-ctf task is answered from the cache where it can,
    computed into the cache (then linked) where not; other tasks go to ``inner``."""

    def __init__(self, inner: Executor, cache: TiltCache, ts_id: str):
        self.inner, self.cache, self.ts_id = inner, cache, ts_id
        self.hits = self.misses = 0

    # typed loosely: which tasks are answered from the cache depends on ``fn`` at run time
    def map_unordered(self, fn: Any, tasks: Iterable[Any]) -> Iterator[tuple[str, Any]]:
        if fn is not motion_movie_task:
            yield from self.inner.map_unordered(fn, tasks)
            return
        yield from self._movies(tasks)

    def _movies(self, tasks: Iterable[MovieTask]) -> Iterator[tuple[str, MovieResult | BaseException]]:
        misses, wanted = [], {}
        for task in tasks:
            rec = self.cache.lookup(signature(task))
            if rec is not None and rec["result"] is not None:
                self.hits += 1
                yield task.key, self.cache.linked(rec, task.out_dir, task.name)
            else:
                misses.append(cache_task(task, self.cache.folder(self.ts_id)))
                wanted[task.key] = task
        started = time.time()
        for key, value in self.inner.map_unordered(motion_movie_task, misses):
            self.misses += 1
            task = wanted[key]
            rec = self.cache.put(self.ts_id, signature(task), value, time.time() - started)
            yield key, value if isinstance(value, BaseException) else self.cache.linked(rec, task.out_dir, task.name)

    def close(self) -> None:
        pass
