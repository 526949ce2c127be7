"""The watch loop: poll, process each tilt as it completes, each series when it completes.

One coordinating thread (this one) polls, decides and records; per-tilt tasks run on daemon worker
threads (locally, or each waiting on a Dask worker), series batches on one more. Everything the
loop decides is on disk (tilt records, batch records, runs), so the same command after Ctrl+C or
a kill goes on where it stopped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.run_options import RunOptions, RunReport
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.watch import status
from tiltflow.workflow.watch.completeness import SeriesTracker, SeriesView
from tiltflow.workflow.watch.scanner import FolderScanner
from tiltflow.workflow.watch.series_runs import Batch, SeriesBook, plan, series_workflow
from tiltflow.workflow.watch.settings import WatchSettings
from tiltflow.workflow.watch.snapshot import read_snapshot, snapshot_sections, write_snapshot
from tiltflow.workflow.watch.tilt_cache import (
    CachingExecutor,
    TiltCache,
    cache_task,
    signature,
    tilt_movie_task,
    tilt_task,
)
from tiltflow.workflow.watch.workers import Workers, run_one


class WatchLoop:
    def __init__(
        self,
        folder: Path | str,
        store: ProjectStore,
        workflow,
        settings: WatchSettings,
        options: RunOptions | Mapping[str, Any] | None = None,
        *,
        on_line: Callable[[str], None] = print,
        on_state: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        from tiltflow.workflow.device import resolve_device
        from tiltflow.workflow.executor import make_executor
        from tiltflow.workflow.steps.import_movies import ImportMoviesParams
        from tiltflow.workflow.steps.motion_ctf import MotionCtfParams

        self.folder, self.store, self.s, self.clock = Path(folder).absolute(), store, settings, clock
        self.plan = plan(workflow)
        self.options = RunOptions.of(options)
        ip = dict(self.plan.import_step.params)
        self.pattern = ip.pop("pattern", "*.mdoc")
        ip.pop("files", None)
        self.import_params = ip
        checked = ImportMoviesParams.model_validate({**ip, "files": str(self.folder)})
        self.gain, self.dark = checked.gain, checked.dark
        self.motion = MotionCtfParams.model_validate(self.plan.motion_step.params) if self.plan.motion_step else None
        self.device = resolve_device(self.options.device)
        self.root = store.root / "watch"
        store.connect().close()  # the project exists from the start: `view` works at once
        self.scanner = FolderScanner(
            self.folder,
            mdoc_pattern=self.pattern,
            settle_s=settings.settle_s,
            ignore=(*(Path(p) for p in (self.gain, self.dark) if p), store.root),
            exclude_words=tuple(checked.exclusion_words),
            clock=clock,
        )
        self.tracker = SeriesTracker(settings)
        self.cache, self.book = TiltCache(store), SeriesBook(self.root)
        self.executor = make_executor(self.options)
        self.dask = self.options.executor == "dask"
        self.tilt_workers = Workers(settings.tilt_workers, "watch-tilt")
        self.batch_worker = Workers(1, "watch-series")
        self.inflight: dict[str, str] = {}  # real movie path -> tsId
        self.live: dict[str, tuple] = {}  # tsId -> (tilt set, {real movie: (series, image)})
        self.blocked: dict[str, str] = {}  # tsId -> why its tilts cannot be processed
        self.said_blocked: set[tuple[str, str]] = set()
        self.previewed: dict[str, tuple[int, float]] = {}  # tsId -> (tilts, when) of its last preview
        self.queue: deque[tuple[str, Batch]] = deque(self.book.unfinished())
        self.running: tuple[str, Batch] | None = None
        self.lines: deque[str] = deque(maxlen=15)
        self.on_line, self.on_state = on_line, on_state
        self.started = self.last_work = clock()
        self.done_times: deque[float] = deque(maxlen=500)
        self.stopping = False
        self.log = self.root / "watch.log"
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reporting ------------------------------------------------------------------------
    def say(self, line: str, quiet: bool = False) -> None:
        with open(self.log, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
        if not quiet:
            self.lines.append(line)
            self.on_line(line)

    # -- per tilt -------------------------------------------------------------------------
    def _template(self, ts_id: str):
        views = [v for v in self.tracker.series.values() if v.ts_id != ts_id and v.mdoc is not None]
        views.sort(key=lambda v: v.last_activity)
        for v in reversed(views):
            f = self.scanner.scan.mdocs.get(v.mdoc) if v.mdoc is not None else None
            if f is not None and f.raw is not None:
                return f.raw
        return None

    def _live_images(self, v: SeriesView) -> dict:
        """Per real movie path: (TiltSeries, TiltImage) from a snapshot of the tilts in so far."""
        import os

        tilts = v.accepted()
        key = tuple(sorted((t.name, t.angle) for t in tilts))
        if self.live.get(v.ts_id, (None,))[0] == key and v.ts_id not in self.blocked:
            return self.live[v.ts_id][1]
        raw = self.scanner.scan.mdocs[v.mdoc].raw if v.mdoc else None
        made = snapshot_sections(v, raw, tilts, None if raw else self._template(v.ts_id))
        images: dict = {}
        if made is None:
            self.blocked[v.ts_id] = "waiting for its mdoc (no other mdoc of the session to read the optics from yet)"
        else:
            mdoc = write_snapshot(self.root / "live" / v.ts_id, v.ts_id, made[0], made[1], tilts, phantom=True)
            series, problems = read_snapshot(mdoc, self.import_params)
            if problems:
                self.blocked[v.ts_id] = problems[0]
            else:
                self.blocked.pop(v.ts_id, None)
                self._check_motion(series)
                images = {os.path.realpath(im.file): (series, im) for im in series.images}
        self.live[v.ts_id] = (key, images)
        return images

    def _check_motion(self, series) -> None:
        from tiltflow.workflow.sets import TiltSeriesSet
        from tiltflow.workflow.steps.checks_data import check_inputs

        try:
            check_inputs("motion-ctf", self.motion, {"input": TiltSeriesSet("TiltSeriesM", [series])})
        except InputError as err:
            self.blocked[series.ts_id] = "; ".join(err.problems)

    def _submit_tilts(self, v: SeriesView) -> None:
        if self.motion is None or not v.accepted():
            return
        images = self._live_images(v)
        if v.ts_id in self.blocked:
            said = (v.ts_id, self.blocked[v.ts_id])
            if said not in self.said_blocked:
                self.said_blocked.add(said)
                self.say(f"{v.ts_id}: tilts wait — {self.blocked[v.ts_id]}")
            return
        for movie, (series, im) in images.items():
            if movie in self.inflight:
                continue
            task = tilt_movie_task(series, im, self.gain, self.dark, self.motion, self.device)
            if self.cache.lookup(signature(task)) is not None:
                continue
            self.inflight[movie] = v.ts_id
            run = cache_task(task, self.cache.folder(v.ts_id))
            if self.dask:
                self.tilt_workers.submit((movie, task), run_one, self.executor, tilt_task, run)
            else:
                self.tilt_workers.submit((movie, task), tilt_task, run)

    def _collect_tilts(self) -> None:
        for (movie, task), value, seconds in self.tilt_workers.done():
            ts_id = self.inflight.pop(movie)
            self.cache.put(ts_id, signature(task), value, seconds)
            self.done_times.append(self.clock())
            self.last_work = self.clock()
            name = Path(movie).name
            if isinstance(value, BaseException):
                self.say(f"{ts_id}: {name} cannot be used ({value}) — the series goes on without it")
            else:
                ctf = value.ctf
                df = f", defocus {(ctf.defocus_u_a + ctf.defocus_v_a) / 2e4:.2f} µm" if ctf else ""
                self.say(
                    f"{ts_id}: {name} done in {seconds:.1f} s: motion {value.total_motion_px:.2f} px{df}", quiet=True
                )

    def _preview(self, v: SeriesView) -> None:
        from tiltflow.workflow.watch.preview import refresh_preview

        refresh_preview(self, v)

    # -- per series -----------------------------------------------------------------------
    def tilt_result(self, v: SeriesView, name: str):
        """The cached record of tilt ``name`` of ``v`` (None while not done)."""
        if self.motion is None:
            return {"result": True}
        images = self.live.get(v.ts_id, (None, {}))[1]
        for series, im in images.values():
            if Path(im.file).name == name:
                task = tilt_movie_task(series, im, self.gain, self.dark, self.motion, self.device)
                return self.cache.lookup(signature(task))
        return None

    def _queue_batch(self, v: SeriesView) -> None:
        if v.state != "closed" or v.mdoc is None:
            return
        recs = {t.name: self.tilt_result(v, t.name) for t in v.accepted()}
        if any(r is None for r in recs.values()):
            return  # per-tilt work still going on
        good = [t for t in v.accepted() if recs[t.name]["result"] is not None]
        tilts = sorted([t.name, t.angle] for t in good)
        last = self.book.last(v.ts_id)
        if last is not None and (last.tilts == tilts or last.status in ("queued", "running")):
            return
        if len(good) < 2:
            if (v.ts_id, "few") not in self.said_blocked:
                self.said_blocked.add((v.ts_id, "few"))
                self.say(f"{v.ts_id}: fewer than 2 usable tilts — not processed")
            return
        k = 1 if last is None else last.k + 1
        raw = self.scanner.scan.mdocs[v.mdoc].raw
        made = snapshot_sections(v, raw, good, None)
        if made is None:  # the mdoc is no longer readable: the next scan tries again
            return
        folder = self.root / "batches" / v.ts_id / f"b{k}"
        write_snapshot(folder, v.ts_id, made[0], made[1], good)
        b = Batch(
            k, tilts, str(folder.relative_to(self.store.root)), v.reason, queued=self.clock(), last_tilt=v.last_tilt
        )
        self.book.add(v.ts_id, b)
        self.queue.append((v.ts_id, b))
        if last is None:
            self.say(f"{v.ts_id}: complete ({v.reason}) — series steps queued")
        else:
            new = {n for n, _ in tilts} - {n for n, _ in last.tilts}
            gone = {n for n, _ in last.tilts} - {n for n, _ in tilts}
            what = (
                ", ".join([f"{len(new)} new tilt(s)"] * bool(new) + [f"{len(gone)} tilt(s) gone"] * bool(gone))
                or "mdoc rewritten"
            )
            self.say(f"{v.ts_id}: reopened ({what}) — series steps re-run as batch {k}, per-tilt work kept")

    def _run_batch(self, ts_id: str, b: Batch) -> str:
        from tiltflow.workflow.workflow_file import run_workflow

        self.book.update(ts_id, b, status="running", started=time.time())
        mdoc = self.store.root / b.folder / f"{ts_id}.mdoc"
        wf = series_workflow(self.plan.workflow, ts_id, b.k, mdoc)
        caching = CachingExecutor(self.executor, self.cache, ts_id)
        report = RunReport()
        try:
            runs = run_workflow(
                self.store, wf, options=replace(self.options, shared_executor=caching), report=report, resume=True
            )
        except InputError as err:
            self.book.update(ts_id, b, status="failed", ended=time.time(), error="; ".join(err.problems))
            return f"{ts_id}: series steps failed: {'; '.join(err.problems)}"
        except Exception as err:  # noqa: BLE001 — one line; the loop goes on with the other series
            self.book.update(ts_id, b, status="failed", ended=time.time(), error=f"{type(err).__name__}: {err}")
            return f"{ts_id}: series steps failed: {type(err).__name__}: {err}"
        ids = {sid.split(":")[0]: r.id for sid, r in runs.items()}
        verdicts, summary = status.batch_verdicts(self.store, [r.id for r in runs.values()])
        self.book.update(
            ts_id, b, status="done", ended=time.time(), runs=ids, summary=summary + report.warnings, verdicts=verdicts
        )
        lag = f", {time.time() - b.last_tilt:.0f} s after its last tilt" if b.last_tilt else ""
        reused = f", per-tilt results reused {caching.hits}/{caching.hits + caching.misses}" if self.motion else ""
        return f"{ts_id}: done (runs {min(ids.values())}-{max(ids.values())}{reused}{lag})"

    def _batches(self) -> None:
        for _, line, _ in self.batch_worker.done():
            self.running, self.last_work = None, self.clock()
            self.say(line if not isinstance(line, BaseException) else f"series steps failed: {line}")
        if self.running is None and self.queue:
            self.running = self.queue.popleft()
            self.batch_worker.submit(self.running[0], self._run_batch, *self.running)

    # -- the loop -------------------------------------------------------------------------
    def step(self) -> None:
        scan = self.scanner.poll()
        for line in self.tracker.update(scan, self.clock()):
            self.say(line)
        self._collect_tilts()
        for work in (self._submit_tilts, self._queue_batch, self._preview):
            for v in list(self.tracker.series.values()):
                try:
                    work(v)
                except Exception as err:  # noqa: BLE001 — one line; the loop goes on with the rest
                    line = f"{v.ts_id}: {type(err).__name__}: {err} (will try again)"
                    if line not in self.lines:
                        self.say(line)
        self._batches()
        state = status.state(self)
        status.write_state(self.root, state)
        if self.on_state:
            self.on_state(state)

    def close(self) -> None:
        """Close the executor (a Dask cluster this loop started)."""
        self.executor.close()

    def busy(self) -> bool:
        return bool(self.inflight or self.queue or self.running)

    def idle_s(self) -> float:
        return self.clock() - max(self.scanner.scan.newest_change, self.last_work, self.started)

    def run(self) -> dict:
        """Until Ctrl+C, or ``stop_after_idle_s`` without anything new and all work done."""
        for ts, b in self.queue:
            self.say(f"{ts}: series steps of batch {b.k} were not finished — continuing them")
        while True:
            self.step()
            limit = self.s.stop_after_idle_s
            if limit is not None and not self.busy() and self.idle_s() >= limit:
                if not self.tracker.force and any(
                    v.state == "collecting" and v.tilts for v in self.tracker.series.values()
                ):
                    self.tracker.force = True  # close what is open with what is there
                    continue
                break
            time.sleep(self.s.interval_s)
        state = status.state(self)
        status.write_state(self.root, state)
        return state
