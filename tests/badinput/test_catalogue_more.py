"""More of the bad-input catalogue (issue 13 rows 15 and 20): subsets that would be empty, workflow
files that are not workflows, damaged mdocs and movies — exit code 2 and one line naming the
place and the fix, no traceback, and the project unchanged (database dump and file listing).

The project (``conftest.py``): run 1 a movie set (1 series, 3 tilts), run 2 a stack set TS_A of
5 views at -30..30 degrees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tiltflow.workflow.store import ProjectStore

from ._cli import assert_refused, invoke, project_state

# -- row 15: subsets that register nothing useful ----------------------------------------------------
SUBSET_CASES = [
    (["--input", "2", "--exclude-beyond", "-5"], ["--exclude-beyond -5", "0 to 90"]),
    (["--input", "2", "--exclude-beyond", "nan"], ["--exclude-beyond nan", "0 to 90"]),
    (["--input", "2", "--exclude-beyond", "inf"], ["--exclude-beyond inf"]),
    (["--input", "2", "--exclude-beyond", "91"], ["--exclude-beyond 91"]),
    (["--input", "2", "--exclude", "TS_A"], ["2.TiltSeries", "every tilt series", "nothing to save"]),
    (["--input", "2", "--exclude-views", "TS_A:1,2,3,4,5"], ["TS_A", "every view", "--exclude TS_A"]),
    (["--input", "2", "--exclude-beyond", "10", "--exclude-views", "TS_A:3"], ["TS_A", "every view"]),
    (["--input", "2", "--exclude-views", "TS_A:1,2,3,4,5", "--restack"], ["TS_A", "every view"]),
    (["--input", "2", "--exclude", "TS_A", "--restack"], ["every tilt series"]),
    (["--input", "1", "--exclude", "TS_01"], ["1.TiltSeriesM", "every tilt series"]),
    (["--input", "1", "--exclude-views", "TS_01:1,2,3", "--restack"], ["TS_01", "every view"]),
]


@pytest.mark.parametrize("args,needles", SUBSET_CASES, ids=[" ".join(c[0][2:]) for c in SUBSET_CASES])
def test_an_empty_or_meaningless_subset_is_refused(project, args, needles):
    before = project_state(project)
    assert_refused(invoke(["subset", "-p", project, *args]), needles, project, before)


def test_a_rejected_restack_leaves_no_stack(project):
    """row 20: a refused ``--restack`` wrote its first stacks and left them (an orphan ``.mrc``)."""
    before = project_state(project)
    assert_refused(
        invoke(["subset", "-p", project, "--input", "2", "--exclude-views", "TS_A:1,2,3,4,5", "--restack"]),
        ["TS_A"],
        project,
        before,
    )
    assert not list(project.rglob("*.mrc")) and not list(project.rglob(".saving-*"))


def test_a_subset_keeping_one_view_per_series_is_accepted(project):
    result = invoke(["subset", "-p", project, "--input", "2", "--exclude-beyond", "0"])
    assert result.exit_code == 0, result.output
    store = ProjectStore(project)
    kept = [im.tilt_angle_deg for im in store.load(store.output(2, "TiltSeries_2")).items[0].images if im.enabled]
    assert kept == [0.0]


# -- row 20: workflow files that are not workflows -----------------------------------------------------
def _steps(*steps) -> dict:
    return {"tiltflow_workflow": 1, "steps": list(steps)}


IMPORT = {"id": "import", "step": "import-movies", "params": {"files": "data"}}
WORKFLOW_CASES = [
    ("list of numbers", [1, 2, 3], ["not a Scipion workflow"]),
    ("list of lists", [[1]], ["not a Scipion workflow"]),
    ("version 99", {**_steps(IMPORT), "tiltflow_workflow": 99}, ["'tiltflow_workflow': 99", "version 1"]),
    ("version as text", {**_steps(IMPORT), "tiltflow_workflow": "1"}, ["'tiltflow_workflow': \"1\""]),
    (
        "duplicate step ids",
        _steps(IMPORT, {**IMPORT, "params": {"files": "other"}}),
        ["workflow step 'import'", "its own 'id'"],
    ),
    ("steps a number", {"steps": 5}, ["'steps' must be a list"]),
    ("steps null", {"steps": None}, ["'steps' must be a list"]),
    ("no steps", {"steps": []}, ["one or more steps"]),
    ("step an object name", {"steps": [{"step": {"a": 1}}]}, ["step 1 needs at least a 'step' name"]),
    ("step a number", {"steps": [7]}, ["step 1 needs at least a 'step' name"]),
    ("params a list", {"steps": [{"step": "ctf", "params": [1]}]}, ["step 1 (ctf)", "'params' must be an object"]),
    ("inputs a string", {"steps": [{"step": "ctf", "inputs": "abc"}]}, ["'inputs' must be an object"]),
    ("unknown step", {"steps": [{"step": "magic"}]}, ["workflow step 'magic'"]),
    ("a string", "abc", ["not a tiltflow workflow"]),
]


@pytest.mark.parametrize("name,content,needles", WORKFLOW_CASES, ids=[c[0] for c in WORKFLOW_CASES])
def test_a_workflow_file_that_is_not_a_workflow_is_one_line(project, tmp_path, name, content, needles):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(content))
    before = project_state(project)
    assert_refused(invoke(["workflow", "run", path, "-p", project]), needles, project, before)


def test_a_workflow_file_that_is_not_json_names_the_line(project, tmp_path):
    path = tmp_path / "wf.json"
    path.write_text('{"steps": [\n  {"step": "ctf",}\n]}')
    before = project_state(project)
    assert_refused(invoke(["workflow", "run", path, "-p", project]), ["wf.json:2", "not valid JSON"], project, before)


# -- row 20: damaged mdocs and movies -----------------------------------------------------------------
def _mdoc(data: Path) -> Path:
    return data / "TS_01.mdoc"


def test_duplicate_zvalue_labels_are_refused(project, data):
    text = _mdoc(data).read_text()
    _mdoc(data).write_text(text.replace("[ZValue = 1]", "[ZValue = 0]", 1))
    before = project_state(project)
    result = invoke(["import-movies", "-p", project, "--files", data])
    assert_refused(result, ["TS_01.mdoc:line", "[ZValue = 0] appears twice", "lines 12 and"], project, before)


@pytest.mark.parametrize("replacement", ["", "SubFramePath = \n"], ids=["missing", "empty"])
def test_a_missing_subframepath_is_named(project, data, replacement):
    text = _mdoc(data).read_text()
    line = next(x for x in text.splitlines(keepends=True) if x.startswith("SubFramePath"))
    _mdoc(data).write_text(text.replace(line, replacement, 1))
    before = project_state(project)
    result = invoke(["import-movies", "-p", project, "--files", data])
    line = assert_refused(result, ["TS_01.mdoc", "SubFramePath"], project, before)
    assert "'None'" not in line


@pytest.mark.parametrize("value", [0, 7])
def test_a_constant_valued_movie_is_one_line_naming_it(project, data, value):
    """Found when the movie is decoded (import reads headers only): the run fails, nothing registered."""
    movie = sorted((data / "frames").glob("TS_01_*"))[0]
    frames = tifffile.imread(movie)
    tifffile.imwrite(movie, np.full_like(frames, value), photometric="minisblack")
    imported = invoke(["import-movies", "-p", project, "--files", data, "--gain", data / "gain_ref.gain"])
    assert imported.exit_code == 0, imported.output
    result = invoke(
        [
            "motion-ctf",
            "-p",
            project,
            "--input",
            "3",
            "--window",
            "64",
            "--no-estimate-ctf",
            "--motion-grid",
            "1",
            "1",
            "1",
        ]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and movie.name in errors[0] and f"every frame is {value}" in errors[0], result.output
    store = ProjectStore(project)
    assert store.run(4).status == "failed" and store.outputs(4) == []
