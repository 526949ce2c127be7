"""Fixtures of the bad-input catalogue (issue 13): a small project with a movie set (run 1) and a
stack set (run 2), copied for each test, and a movie folder to spoil."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tiltflow.testing.demo import DemoConfig, write_demo_dataset

from ._cli import invoke, write_stack


@pytest.fixture(scope="session")
def movie_data(tmp_path_factory) -> Path:
    """1 series, 3 tilts of 128 x 96 px, 3 frames, 2.76 Å/px, 300 kV; a gain reference."""
    out = tmp_path_factory.mktemp("movies")
    write_demo_dataset(out, DemoConfig(n_series=1, n_tilts=3, size=(128, 96), n_frames=3, seed=1))
    return out


@pytest.fixture(scope="session")
def pristine_project(movie_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project") / "p"
    assert (
        invoke(["import-movies", "-p", root, "--files", movie_data, "--gain", movie_data / "gain_ref.gain"]).exit_code
        == 0
    )
    stacks = write_stack(tmp_path_factory.mktemp("stacks")).parent
    result = invoke(["import-tilt-series", "-p", root, "--files", stacks, "--pattern", "*.st", "--voltage", "300"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def project(pristine_project, tmp_path) -> Path:
    """A copy of the project: run 1 = movies (TiltSeriesM), run 2 = stacks (TiltSeries)."""
    return Path(shutil.copytree(pristine_project, tmp_path / "p"))


@pytest.fixture
def data(movie_data, tmp_path) -> Path:
    """A copy of the movie folder to spoil."""
    return Path(shutil.copytree(movie_data, tmp_path / "data"))


# -- the reliability record (docs/reliability.md) -------------------------------------------------------
# Every test of the issue-13 catalogue leaves its outcome in a JSON file after the run (merged with
# earlier runs by test id); ``docs/make_reliability.py`` turns it into docs/reliability.md.
RELIABILITY_TESTS = (
    "tests/badinput/",
    "tests/badinput_cli/",
    "tests/test_mrc_corrupt.py",
    "tests/test_import_bad_input.py",
    "tests/test_concurrency_save.py",
    "tests/test_relocatable.py",
    "tests/test_viewer_limits.py",
    "tests/test_motion_ctf_resume.py",
    "tests/test_workflow_scale.py",
    "tests/test_workflow_continue.py",
    "tests/test_subset_cli.py",
)


def reliability_json() -> Path:
    import os
    import tempfile

    return Path(
        os.environ.get(
            "TILTFLOW_RELIABILITY_JSON", Path(tempfile.gettempdir()) / "tiltflow-reliability" / "last-run.json"
        )
    )


def _outcome(reports: dict) -> tuple[str, str]:
    """(outcome, first line of the failure) of one test from its setup/call/teardown reports."""
    setup, call = reports.get("setup"), reports.get("call")
    for phase in ("setup", "call", "teardown"):
        r = reports.get(phase)
        if r is not None and r.failed:
            return ("error" if phase != "call" else "failed"), r.longreprtext
    for r in (call, setup):
        if r is None:
            continue
        if hasattr(r, "wasxfail"):
            return ("xfailed" if r.skipped else "xpassed"), str(r.wasxfail)
        if r.skipped:
            reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
            return "skipped", reason
    return "passed", ""


def pytest_sessionfinish(session, exitstatus):
    import datetime as dt
    import json

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    by_test: dict[str, dict] = {}
    for reports in reporter.stats.values():
        for r in reports:
            nodeid, when = getattr(r, "nodeid", None), getattr(r, "when", None)
            if not nodeid or not nodeid.startswith(RELIABILITY_TESTS):
                continue
            if when in ("setup", "call", "teardown"):
                by_test.setdefault(nodeid, {})[when] = r
            elif when == "collect" and r.failed:  # a file that cannot even be collected
                by_test.setdefault(nodeid, {})["setup"] = r
    if not by_test:
        return
    now = dt.datetime.now().isoformat(timespec="seconds")
    path = reliability_json()
    try:
        old = json.loads(path.read_text())["tests"] if path.is_file() else {}
    except (OSError, ValueError, KeyError):
        old = {}
    for nodeid, reports in by_test.items():
        outcome, message = _outcome(reports)
        props = {k: v for r in reports.values() for k, v in getattr(r, "user_properties", [])}
        old[nodeid] = {
            "outcome": outcome,
            "message": message[-4000:],
            "when": now,
            "properties": props,
            "duration_s": round(sum(getattr(r, "duration", 0.0) for r in reports.values()), 3),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"written": now, "tests": old}, indent=1, sort_keys=True))
    tmp.replace(path)
