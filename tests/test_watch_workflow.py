"""Issue 14 items 1 and 5: `workflow run SOURCE --watch DIR` is `tiltflow watch DIR --workflow SOURCE` (one
implementation, the same options); the viewer's project page links the session dashboard and the watch says
where it is; the watch builds its series and per-tilt tasks with the steps' own public helpers."""

import ast
import json
import pickle
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_watch import assert_same, computed, digest, small_workflow

from tiltflow.cli.main import build_cli
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.testing.live import LiveScenario, write_live_session
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import Workflow, WorkflowStep, run_workflow

FAST = ["--interval", "0.2", "--settle", "0.3", "--quiet", "2", "--movie-timeout", "10"]


def _cli(*args: str):
    return CliRunner().invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def test_workflow_run_watch_hands_the_same_call_to_the_watch(tmp_path, monkeypatch):
    """Both commands end in cli.watch.run_watch with the same folder, project, workflow, settings and options."""
    import tiltflow.cli.watch as watch_cli

    calls = []
    monkeypatch.setattr(watch_cli, "run_watch", lambda *a, **k: calls.append((a, k)))
    data = tmp_path / "d"
    data.mkdir()
    common = [
        "-p",
        tmp_path / "p",
        "--set",
        "import-movies.gain=/g.gain",
        "--quiet",
        "5",
        "--settle",
        "2",
        "--tilts",
        "41",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--json",
    ]
    assert _cli("watch", data, "--workflow", "tutorial", *common).exit_code == 0
    assert _cli("workflow", "run", "tutorial", "--watch", data, *common).exit_code == 0
    (a1, k1), (a2, k2) = calls
    assert (a1[0], a1[1], a1[3], a1[4]) == (a2[0], a2[1], a2[3], a2[4])  # folder, project, given, options
    assert a1[2].to_json() == a2[2].to_json()  # the workflow, overrides applied
    assert a1[3] == {
        "interval_s": None,
        "settle_s": 2.0,
        "movie_timeout_s": None,
        "quiet_s": 5.0,
        "min_fraction": None,
        "expected_tilts": 41,
        "stop_after_idle_s": None,
    }  # None: not given
    assert a1[4].workers == 2 and a1[4].device == "cpu"
    assert k1["as_json"] and k2["as_json"]


def test_workflow_run_watch_follows_a_live_session_as_the_batch_would(tmp_path, one_torch_thread):
    data = tmp_path / "d"
    config = DemoConfig(n_series=2, n_tilts=4, size=(96, 96), n_frames=3, seed=5)
    wf = tmp_path / "small.json"
    wf.write_text(json.dumps(small_workflow(data).to_json()))
    writer = threading.Thread(target=write_live_session, args=(data, config, LiveScenario(interval_s=0.4, pieces=2)))
    writer.start()
    while not (data / "gain_ref.gain").exists():
        time.sleep(0.05)
    result = _cli(
        "workflow",
        "run",
        wf,
        "-p",
        tmp_path / "p",
        "--watch",
        data,
        *FAST,
        "--stop-after-idle",
        "3",
        "--json",
        "--workers",
        "1",
    )
    writer.join()
    assert result.exit_code == 0, result.stderr
    state = json.loads(result.stdout)
    assert [s["state"] for s in state["series"]] == ["done", "done"], result.stderr
    assert result.stderr.splitlines()[0].startswith(f"watching {data}")
    assert "/dashboard" in result.stderr and f"tiltflow view -p {tmp_path / 'p'}" in result.stderr  # where it is
    movies = computed(tmp_path / "p")
    assert len(movies) == len(set(movies)) == 8  # every tilt once
    run_workflow(ProjectStore(tmp_path / "batch"), small_workflow(data), options={"workers": 1})
    assert_same(digest(tmp_path / "p"), digest(tmp_path / "batch"))
    # the same command again: nothing left to do, nothing recomputed, the same runs
    again = _cli(
        "workflow", "run", wf, "-p", tmp_path / "p", "--watch", data, *FAST, "--stop-after-idle", "1", "--json"
    )
    assert again.exit_code == 0 and len(computed(tmp_path / "p")) == 8
    assert [s["state"] for s in json.loads(again.stdout)["series"]] == ["done", "done"]


def test_watch_options_belong_to_the_watch_mode(tmp_path):
    r = _cli("workflow", "run", "tutorial", "-p", tmp_path / "p", "--quiet", "5", "--stop-after-idle", "3")
    assert r.exit_code == 2 and "--quiet, --stop-after-idle: options of the watch mode — add --watch DIR" in r.stderr
    r = _cli("workflow", "run", "tutorial", "-p", tmp_path / "p", "--watch", tmp_path, "--no-watch")
    assert r.exit_code == 2 and "--watch and --no-watch" in r.stderr
    r = _cli(
        "workflow",
        "run",
        "tutorial",
        "-p",
        tmp_path / "p",
        "--watch",
        tmp_path / "nowhere",
        "--set",
        f"import-movies.gain={tmp_path / 'g.gain'}",
    )
    assert r.exit_code == 2 and "nowhere: no such folder" in r.stderr
    assert not (tmp_path / "p").exists()


def test_dry_run_with_watch_says_what_it_would_follow(tmp_path):
    r = _cli("workflow", "run", "tutorial", "-p", tmp_path / "p", "--watch", tmp_path, "--dry-run", "--quiet", "7")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("import-movies: import-movies")
    assert (
        f"watch: would follow {tmp_path} with --interval 10 --settle 10 --movie-timeout 300 --quiet 7 "
        "--min-fraction 0.8"
    ) in r.stdout
    assert not (tmp_path / "p").exists()


def test_fresh_starts_the_watch_from_an_empty_project(tmp_path, one_torch_thread):
    data = tmp_path / "d"
    write_demo_dataset(data, DemoConfig(n_series=1, n_tilts=3, size=(64, 64), n_frames=2, seed=3))
    wf = tmp_path / "wf.json"
    wf.write_text(
        json.dumps(
            Workflow(
                [
                    WorkflowStep(
                        "import-movies", "import-movies", {"files": str(data), "gain": str(data / "gain_ref.gain")}
                    ),
                    WorkflowStep(
                        "motion-ctf",
                        "motion-ctf",
                        {"estimate_ctf": False, "even_odd": False, "motion_grid": [1, 1, 1]},
                        {"input": "import-movies.TiltSeriesM"},
                    ),
                ]
            ).to_json()
        )
    )
    args = ["workflow", "run", wf, "-p", tmp_path / "p", "--watch", data, *FAST, "--stop-after-idle", "1", "--json"]
    assert _cli(*args).exit_code == 0 and len(computed(tmp_path / "p")) == 3
    assert _cli(*args, "--fresh").exit_code == 0
    assert len(computed(tmp_path / "p")) == 3  # a new log: the old watch state was removed
    assert len(ProjectStore(tmp_path / "p", create=False).runs()) == 2


# -- the viewer ------------------------------------------------------------------------------------
def test_project_page_links_the_session_dashboard(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tiltflow.web.app import TOKEN_HEADER, create_app

    token = "test-token-0123456789abcdef"
    client = TestClient(create_app(ProjectStore(tmp_path / "p"), token))
    page = client.get("/", headers={TOKEN_HEADER: token})
    assert page.status_code == 200 and 'href="/dashboard"' in page.text and 'id="watch-state"' in page.text
    script = client.get("/static/app.js", headers={TOKEN_HEADER: token}).text
    assert "loadWatchState()" in script and '"/api/watch/state"' in script
    assert client.get("/dashboard", headers={TOKEN_HEADER: token}).status_code == 200
    assert client.get("/api/watch/state", headers={TOKEN_HEADER: token}).json()["watching"] is False


# -- item 3: the steps' own helpers ------------------------------------------------------------------
def test_the_watch_uses_the_steps_public_helpers(tmp_path, monkeypatch, one_torch_thread):
    """import-movies' check_series / build_series / header_or_error and motion-ctf's movie_task: the watch
    imports no private name of a step, and its per-tilt tasks are the step's own."""
    import dataclasses

    import tiltflow.workflow.steps.motion_ctf as mc
    from tiltflow.workflow.steps import import_movies, motion_tasks
    from tiltflow.workflow.watch.tilt_cache import signature, tilt_movie_task

    for name in ("check_series", "build_series", "header_or_error"):
        assert callable(getattr(import_movies, name)) and not hasattr(import_movies, "_" + name)
    for path in (Path(mc.__file__).parents[1] / "watch").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tiltflow.workflow.steps"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (path.name, node.module)

    data = tmp_path / "d"
    write_demo_dataset(data, DemoConfig(n_series=1, n_tilts=3, size=(64, 64), n_frames=2, seed=2))
    captured = []
    original = mc.run_items

    def spy(ctx, fn, tasks, result_type, **kw):
        captured.extend(tasks)
        return original(ctx, fn, tasks, result_type, **kw)

    monkeypatch.setattr(mc, "run_items", spy)
    store = ProjectStore(tmp_path / "p")
    wf = Workflow(
        [
            WorkflowStep("import-movies", "import-movies", {"files": str(data), "gain": str(data / "gain_ref.gain")}),
            WorkflowStep(
                "motion-ctf",
                "motion-ctf",
                {"estimate_ctf": False, "motion_grid": [1, 1, 1]},
                {"input": "import-movies.TiltSeriesM"},
            ),
        ]
    )
    runs = run_workflow(store, wf, options={"workers": 1, "device": "cpu"})
    movies = store.load(store.resolve(f"{runs['import-movies'].id}.TiltSeriesM"))
    params = mc.MotionCtfParams.model_validate(wf.steps[1].params)
    assert len(captured) == 3
    for task in captured:
        ts, im = next((ts, im) for ts in movies.items for im in ts.images if im.file == task.key)
        ours = tilt_movie_task(ts, im, movies.gain_file, movies.dark_file, params, "cpu")
        assert signature(ours) == signature(task)  # the watch's cache key is the step's
        assert task == dataclasses.replace(ours, out_dir=task.out_dir, name=task.name)
        assert task.session is not None and pickle.loads(pickle.dumps(task)).session is None
        setup = motion_tasks.MovieSetup(params, movies.gain_file, movies.dark_file, "cpu")
        assert task == motion_tasks.movie_task(ts, im, setup, out_dir=task.out_dir, name=task.name)
