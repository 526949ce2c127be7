"""``tiltflow watch`` (issue 14): a session processed while it is written gives what the batch workflow
gives on the finished folder; a kill anywhere loses and repeats nothing; late tilts reopen their
series; bad acquisitions are one line each."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.testing.live import LiveScenario, write_live_session
from tiltflow.workflow.sets import alignment_verdict
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.watch.completeness import SeriesTracker
from tiltflow.workflow.watch.loop import WatchLoop
from tiltflow.workflow.watch.scanner import FolderScanner
from tiltflow.workflow.watch.settings import WatchSettings
from tiltflow.workflow.workflow_file import (
    Workflow,
    WorkflowStep,
    apply_overrides,
    load_workflow,
    run_workflow,
)

MIXED = ["serialem", "tomo5", "serialem"]
FAST = {"interval_s": 0.2, "settle_s": 0.4, "movie_timeout_s": 6.0, "quiet_s": 3.0, "stop_after_idle_s": 4.0}


def small_workflow(data: Path) -> Workflow:
    """import -> motion (no CTF, global) -> reconstruct (unaligned): seconds per series."""
    return Workflow(
        [
            WorkflowStep("import-movies", "import-movies", {"files": str(data), "gain": str(data / "gain_ref.gain")}),
            WorkflowStep(
                "motion-ctf",
                "motion-ctf",
                {"estimate_ctf": False, "even_odd": False, "motion_grid": [1, 1, 1], "window_px": 64},
                {"input": "import-movies.TiltSeriesM"},
            ),
            WorkflowStep(
                "reconstruct", "reconstruct", {"binning": 2, "thickness_nm": 60}, {"input": "motion-ctf.TiltSeries"}
            ),
        ],
        name="small",
    )


def watch(folder: Path, project: Path, wf: Workflow, **settings) -> tuple[dict, list[str]]:
    lines: list[str] = []
    loop = WatchLoop(
        folder, ProjectStore(project), wf, WatchSettings(**{**FAST, **settings}), {"workers": 1}, on_line=lines.append
    )
    return loop.run(), lines


def digest(project: Path) -> dict[str, dict]:
    """Per series, the last finished output of each step: stacks, CTF, transforms, tomograms."""
    store = ProjectStore(project, create=False)
    out: dict[str, dict] = {}
    for run in store.runs():
        if run.status != "finished":
            continue
        for o in store.outputs(run.id):
            for item in store.load(o).items:
                d = out.setdefault(item.ts_id, {})
                if o.type == "TiltSeries" and alignment_verdict(item)["status"] == "failed":
                    continue  # the batch keeps a series its alignment failed; a series batch stops
                if o.type == "TiltSeries":
                    with mrcfile.open(item.images[0].file, permissive=True) as m:
                        d[f"{run.step}.stack"] = np.array(m.data)
                    d[f"{run.step}.angles"] = [im.tilt_angle_deg for im in item.images]
                    d[f"{run.step}.xf"] = [im.transform for im in item.images]
                elif o.type == "CTFTomoSeries":
                    d["ctf"] = sorted((c.tilt_angle_deg, c.defocus_u_a, c.defocus_v_a) for c in item.items)
                elif o.type == "Tomograms":
                    with mrcfile.open(item.file, permissive=True) as m:
                        d["tomogram"] = np.array(m.data)
    return out


def assert_same(watched: dict, batch: dict, *, ctf_tol_a: dict | None = None) -> None:
    assert sorted(watched) == sorted(batch)
    for ts, steps in batch.items():
        assert sorted(watched[ts]) == sorted(steps), ts
        for key, value in steps.items():
            got = watched[ts][key]
            if key == "ctf":
                tol = (ctf_tol_a or {}).get(ts, 0.0)
                assert np.allclose(np.array(got), np.array(value), atol=max(tol, 1e-6)), (ts, got, value)
            elif isinstance(value, np.ndarray):
                assert got.shape == value.shape and np.allclose(got, value, rtol=1e-5, atol=1e-5), (ts, key)
            else:
                assert got == value, (ts, key)


def computed(project: Path) -> list[str]:
    log = project / "watch" / "tilts" / "computed.log"
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


# -- completeness, without processing -------------------------------------------------------
def test_when_is_a_series_complete(tmp_path, one_torch_thread):
    """SerialEM (mdoc grows) closes on the next series or quiet time; Tomo5 (mdoc at the end) when its
    movies are in; duplicate mdocs and half-written sections are one line each."""
    data = tmp_path / "d"
    write_demo_dataset(data, DemoConfig(n_series=1, n_tilts=4, size=(64, 64), n_frames=2, seed=1))
    now = [1000.0]
    settings = WatchSettings(interval_s=1, settle_s=2, movie_timeout_s=50, quiet_s=30)
    scanner = FolderScanner(data, settle_s=2, clock=lambda: now[0])
    tracker = SeriesTracker(settings)
    for p in data.rglob("*"):
        os.utime(p, (now[0], now[0]))
    assert tracker.update(scanner.poll(), now[0]) == [] and tracker.series["TS_01"].state == "collecting"
    now[0] += 3  # settled: movies complete, but SerialEM may go on
    tracker.update(scanner.poll(), now[0])
    v = tracker.series["TS_01"]
    assert len(v.accepted()) == 4 and v.state == "collecting"
    now[0] += 30
    tracker.update(scanner.poll(), now[0])
    assert tracker.series["TS_01"].state == "closed"
    assert tracker.series["TS_01"].reason == "no new tilt for 33 s"
    # a duplicate mdoc with fewer sections and a half-written last section
    text = (data / "TS_01.mdoc").read_text()
    cut = text[: text.index("[ZValue = 2]")] + "[ZValue = 2]\nTiltAngle = 3\n"
    (data / "TS_01.mrc.mdoc").write_text(cut)
    lines = tracker.update(scanner.poll(), now[0])
    assert lines == ["TS_01: 2 mdocs (TS_01.mdoc, TS_01.mrc.mdoc) — using TS_01.mdoc (most tilts, newest)"]


def test_aborted_series_and_truncated_movie_are_reported_and_the_rest_completes(tmp_path, one_torch_thread):
    data = tmp_path / "d"
    sc = LiveScenario(interval_s=0, pieces=2, flavours=MIXED, truncated={(0, 1)}, aborted={2: 2})
    write_live_session(data, DemoConfig(n_series=3, n_tilts=5, size=(96, 96), n_frames=3, seed=4), sc)
    state, lines = watch(data, tmp_path / "p", small_workflow(data), movie_timeout_s=2.0)
    by_ts = {s["ts"]: s for s in state["series"]}
    assert {ts: s["state"] for ts, s in by_ts.items()} == {"TS_01": "done", "Position_2": "done", "TS_03": "aborted"}
    text = "\n".join(lines)
    assert "TS_01: TS_01_001_3.0.tif does not decode" in text and "the series goes on without it" in text
    assert "TS_03: " in text and "only 2 of 5 tilts (40%, < 80%) — looks aborted" in text
    assert by_ts["TS_01"]["tilts_done"] == 4 and "4 of 5 tilts (80%)" in by_ts["TS_01"]["reason"]
    store = ProjectStore(tmp_path / "p", create=False)
    labels = sorted(r.label for r in store.runs() if r.status == "finished")
    assert labels == sorted(
        f"{s}:{ts}" for s in ("import-movies", "motion-ctf", "reconstruct") for ts in ("TS_01", "Position_2")
    )
    assert not any("Traceback" in line for line in lines)


def test_late_tilt_reopens_its_series_and_keeps_the_per_tilt_work(tmp_path, one_torch_thread):
    data, full = tmp_path / "d", tmp_path / "full"
    config = DemoConfig(n_series=1, n_tilts=5, size=(96, 96), n_frames=3, seed=5)
    truth = write_live_session(data, config, LiveScenario(interval_s=0, pieces=2, late={(0, 3)}, late_delay_s=None))
    write_demo_dataset(full, config)
    project = tmp_path / "p"
    state, lines = watch(data, project, small_workflow(data), movie_timeout_s=1.0, quiet_s=1.5)
    assert state["series"][0]["state"] == "done" and state["series"][0]["tilts_done"] == 4
    late = truth["series"][0]["tilts"][3]["movie"]
    (data / late).write_bytes((full / late).read_bytes())  # the late movie arrives
    state, lines = watch(data, project, small_workflow(data), movie_timeout_s=1.0, quiet_s=1.5)
    assert any(
        "TS_01: reopened (1 new tilt(s)) — series steps re-run as batch 2, per-tilt work kept" in x for x in lines
    ), lines
    assert any("per-tilt results reused 5/5" in x for x in lines), lines
    assert sorted(computed(project)) == sorted(str((data / t["movie"]).resolve()) for t in truth["series"][0]["tilts"])
    runs = ProjectStore(project, create=False).runs()
    assert [r.label for r in runs if r.step == "reconstruct"] == ["reconstruct:TS_01", "reconstruct:TS_01:r2"]
    assert digest(project)["TS_01"]["motion-ctf.stack"].shape[0] == 5
    batch = tmp_path / "batch"
    run_workflow(ProjectStore(batch), small_workflow(full), options={"workers": 1})
    assert_same(digest(project), digest(batch))


def test_live_session_watched_equals_the_batch_workflow(tmp_path, one_torch_thread):
    """3 series (SerialEM, Tomo5, SerialEM) watched while written; small workflow."""
    data = tmp_path / "d"
    config = DemoConfig(n_series=3, n_tilts=5, size=(96, 96), n_frames=3, seed=6)
    writer = threading.Thread(
        target=write_live_session, args=(data, config, LiveScenario(interval_s=0.4, pieces=3, flavours=MIXED))
    )
    writer.start()
    while not (data / "gain_ref.gain").exists():
        time.sleep(0.05)
    state, lines = watch(data, tmp_path / "p", small_workflow(data), quiet_s=4.0, stop_after_idle_s=5.0)
    writer.join()
    assert [s["state"] for s in state["series"]] == ["done"] * 3, lines
    assert len(computed(tmp_path / "p")) == 15
    run_workflow(ProjectStore(tmp_path / "batch"), small_workflow(data), options={"workers": 1})
    assert_same(digest(tmp_path / "p"), digest(tmp_path / "batch"))


def _cli(data: Path, project: Path, wf: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tiltflow.cli.main",
        "watch",
        str(data),
        "-p",
        str(project),
        "--workflow",
        str(wf),
        "--interval",
        "0.2",
        "--settle",
        "0.3",
        "--quiet",
        "1",
        "--movie-timeout",
        "5",
        *extra,
    ]


def test_sigkill_anywhere_then_the_same_command_recomputes_nothing(tmp_path):
    data = tmp_path / "d"
    write_demo_dataset(data, DemoConfig(n_series=2, n_tilts=5, size=(96, 96), n_frames=3, seed=7, flavour="tomo5"))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(small_workflow(data).to_json()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    project = tmp_path / "p"
    rng = random.Random(14)
    for _ in range(5):  # killed at a random moment once its loop runs
        proc = subprocess.Popen(
            _cli(data, project, wf), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        while not proc.stdout.readline().startswith("watching"):
            pass
        time.sleep(rng.uniform(0.1, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(
        _cli(data, project, wf, "--stop-after-idle", "2", "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert [s["state"] for s in state["series"]] == ["done", "done"], done.stderr
    movies = computed(project)
    assert len(movies) == len(set(movies)) == 10  # every tilt computed once
    runs = ProjectStore(project, create=False).runs()
    labels = [r.label for r in runs]
    assert len(labels) == len(set(labels)) == 6 and all(r.status == "finished" for r in runs)
    run_workflow(ProjectStore(tmp_path / "batch"), small_workflow(data), options={"workers": 1})
    assert_same(digest(project), digest(tmp_path / "batch"))


@pytest.mark.slow
def test_tutorial_watched_live_equals_the_batch_tutorial(tmp_path, one_torch_thread):
    """The tutorial chain (motion + CTF per tilt; CTF series pass, X-ray eraser, alignment, reconstruction
    per series) on a live mixed session equals the batch tutorial on the finished folder; the Tomo5
    series' tilts, computed before its mdoc from the angle in their names, differ in CTF only slightly."""
    data = tmp_path / "d"
    config = DemoConfig(n_series=3, n_tilts=5, size=(160, 160), n_frames=3, seed=8, bead_diameter_nm=5.0, n_beads=20)
    sets = [
        f"import-movies.gain={data / 'gain_ref.gain'}",
        "motion-ctf.window_px=64",
        "motion-ctf.defocus_grid=null",
        "align.binning=1",
        "align.bead_diameter_nm=5",
        "reconstruct.binning=2",
        "reconstruct.thickness_nm=100",
    ]
    wf = load_workflow("tutorial")
    apply_overrides(wf, sets + [f"import-movies.files={data}"])
    writer = threading.Thread(
        target=write_live_session, args=(data, config, LiveScenario(interval_s=1.0, pieces=3, flavours=MIXED))
    )
    writer.start()
    while not (data / "gain_ref.gain").exists():
        time.sleep(0.05)
    state, lines = watch(data, tmp_path / "p", wf, quiet_s=6.0, stop_after_idle_s=8.0)
    writer.join()
    states = [s["state"] for s in state["series"]]
    assert states.count("done") >= 2 and set(states) <= {"done", "failed"}, lines
    assert all("per-tilt results reused 5/5" in x for x in lines if ": done (" in x), lines
    run_workflow(ProjectStore(tmp_path / "batch"), wf, options={"workers": 1})
    assert_same(digest(tmp_path / "p"), digest(tmp_path / "batch"), ctf_tol_a={"Position_2": 300.0})


def test_dashboard_shows_series_appearing_and_completing(tmp_path, one_torch_thread):
    """The viewer's /dashboard (headless Chromium) during a live session: a series appears while it is
    collected, every series ends 'done', a series' tilts and its reconstruction show on click."""
    chromium = Path(os.environ.get("TILTFLOW_CHROMIUM", "/usr/bin/chromium"))
    playwright = pytest.importorskip("playwright.sync_api", reason="the dashboard test needs Playwright")
    pytest.importorskip("uvicorn", reason="the viewer needs the web extra")
    if not chromium.is_file():
        pytest.skip(f"the dashboard test needs Debian's chromium at {chromium}")
    import secrets

    from tiltflow.web.app import create_app
    from tiltflow.web.server import serve_in_thread

    data, project = tmp_path / "d", tmp_path / "p"
    writer = threading.Thread(
        target=write_live_session,
        args=(
            data,
            DemoConfig(n_series=2, n_tilts=5, size=(96, 96), n_frames=3, seed=9),
            LiveScenario(interval_s=1.0, pieces=2, flavours=["serialem", "tomo5"]),
        ),
    )
    writer.start()
    while not (data / "gain_ref.gain").exists():
        time.sleep(0.05)
    loop = WatchLoop(
        data,
        ProjectStore(project),
        small_workflow(data),
        WatchSettings(**{**FAST, "quiet_s": 4.0, "stop_after_idle_s": 6.0, "preview_every_s": 0.0}),
        {"workers": 1},
        on_line=lambda line: None,
    )
    watcher = threading.Thread(target=loop.run)
    watcher.start()
    token = secrets.token_urlsafe(24)
    seen = []
    with (
        serve_in_thread(create_app(ProjectStore(project, create=False), token)) as base,
        playwright.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        page.set_default_timeout(120_000)
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{base}/dashboard?token={token}")
        page.wait_for_selector('tr.series[data-ts="TS_01"]')
        seen.append(page.get_attribute('tr.series[data-ts="TS_01"]', "data-state"))
        page.wait_for_function("document.querySelectorAll('tr.series[data-state=\"done\"]').length == 2")
        page.click('tr.series[data-ts="TS_01"]')
        page.wait_for_function("document.querySelectorAll('#tilts .tilt img').length == 5")
        page.wait_for_selector("#preview:not([hidden])")
        assert "done" in page.inner_text("#summary") and not errors, errors
        browser.close()
    watcher.join()
    writer.join()
    assert seen[0] in ("collecting", "finishing tilts", "queued", "processing"), seen
