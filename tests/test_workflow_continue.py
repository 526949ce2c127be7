"""``workflow run --continue`` (issue 12 item 1): steps whose parameters and inputs are unchanged reuse
their finished run; a changed parameter re-runs its step and everything downstream, keeping the old
runs, with one line per step saying why."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.store import ProjectStore, RunRecord
from tiltflow.workflow.workflow_file import continue_choice, param_changes


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """The smallest chain with something downstream of align: one 7-tilt series, no CTF."""
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(
        out,
        DemoConfig(n_series=1, n_tilts=7, size=(256, 224), n_frames=4, seed=8, bead_diameter_nm=5.0, n_beads=12),
        force=True,
    )
    steps = [
        {
            "id": "import-movies",
            "step": "import-movies",
            "params": {"files": str(out), "gain": str(out / "gain_ref.gain")},
        },
        {
            "id": "motion-ctf",
            "step": "motion-ctf",
            "inputs": {"input": "import-movies"},
            "params": {"estimate_ctf": False, "even_odd": False, "window_px": 128, "motion_grid": [1, 1, 1]},
        },
        {
            "id": "align",
            "step": "align",
            "inputs": {"input": "motion-ctf.TiltSeries"},
            "params": {"binning": 2, "bead_diameter_nm": 5},
        },
        {
            "id": "reconstruct",
            "step": "reconstruct",
            "inputs": {"input": "align.TiltSeries"},
            "params": {"binning": 2, "thickness_nm": 100},
        },
    ]
    path = out / "wf.json"
    path.write_text(json.dumps({"tiltflow_workflow": 1, "name": "small", "steps": steps}))
    return path


def run(workflow: Path, project: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(
        build_cli(), ["workflow", "run", str(workflow), "-p", str(project), "--workers", "1", *args]
    )
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.startswith("step ")]


def test_continue_reruns_a_changed_step_and_what_follows(workflow, tmp_path, one_torch_thread):
    project = tmp_path / "p"
    assert run(workflow, project) == []
    store = ProjectStore(project, create=False)
    assert [(r.id, r.label, r.status) for r in store.runs()] == [
        (1, "import-movies", "finished"),
        (2, "motion-ctf", "finished"),
        (3, "align", "finished"),
        (4, "reconstruct", "finished"),
    ]

    lines = run(workflow, project, "--continue", "--set", "align.refine_tilt_offset=false")
    runs = {r.id: r for r in store.runs()}
    assert [(i, r.label, r.status) for i, r in runs.items()][2:] == [
        (3, "align", "finished"),
        (4, "reconstruct", "finished"),  # the old ones are kept
        (5, "align", "finished"),
        (6, "reconstruct", "finished"),
    ]
    assert runs[3].params["refine_tilt_offset"] is True and runs[5].params["refine_tilt_offset"] is False
    assert runs[5].inputs == runs[3].inputs == {"input": "2.TiltSeries"}
    assert runs[6].inputs == {"input": "5.TiltSeries"}
    assert lines == [
        "step import-movies: reused run 1",
        "step motion-ctf: reused run 2",
        "step align: re-run because align.refine_tilt_offset changed (true -> false)",
        "step reconstruct: re-run because its input changed (input 3.TiltSeries -> 5.TiltSeries)",
    ]

    # nothing changed since: everything reused, no new run
    again = CliRunner().invoke(
        build_cli(),
        [
            "workflow",
            "run",
            str(workflow),
            "-p",
            str(project),
            "--continue",
            "--set",
            "align.refine-tilt-offset=false",
            "--json",
        ],
    )
    assert again.exit_code == 0, again.output
    assert {k: (v["id"], v["continue"]) for k, v in json.loads(again.output).items()} == {
        "import-movies": (1, "reused run 1"),
        "motion-ctf": (2, "reused run 2"),
        "align": (5, "reused run 5"),
        "reconstruct": (6, "reused run 6"),
    }
    # back to the workflow's value: the first align and reconstruct runs match again
    assert run(workflow, project, "--continue")[2:] == ["step align: reused run 3", "step reconstruct: reused run 4"]
    assert len(store.runs()) == 6


def _run(id: int, step: str, status: str = "finished", params: dict | None = None, inputs: dict | None = None):
    return RunRecord(
        id=id,
        step=step,
        label="a",
        params=params or {},
        inputs=inputs or {},
        status=status,
        created=None,
        started=None,
        ended=None,
        code_version=None,
        error=None,
        run_dir=None,
    )


def test_continue_choice_cases():
    base = {"method": "fiducial", "binning": 4, "iterations": 5, "refine_tilt_axis": True}
    inputs = {"input": "2.TiltSeries"}
    finished = _run(3, "align", params=base, inputs=inputs)
    assert continue_choice("a", "align", base, inputs, [finished])[:2] == ("reuse", finished)
    # an interrupted run with the same parameters and inputs continues; a changed one starts anew
    killed = _run(4, "align", "running", base, inputs)
    assert continue_choice("a", "align", base, inputs, [killed])[:2] == ("resume", killed)
    changed = dict(base, binning=2, iterations=3, refine_tilt_axis=False, method="patch")
    action, old, line = continue_choice("a", "align", changed, inputs, [finished, killed])
    assert (action, old) == ("new", None)
    assert line == (
        "step a: re-run because a.method changed (fiducial -> patch), a.binning changed (4 -> 2), "
        "a.iterations changed (5 -> 3) and 1 more parameter"
    )
    assert (
        continue_choice("a", "align", base, {"input": "7.TiltSeries"}, [finished])[2]
        == "step a: re-run because its input changed (input 2.TiltSeries -> 7.TiltSeries)"
    )
    assert continue_choice("a", "align", base, inputs, [])[2] == "step a: new run (no earlier run)"
    # a parameter added after the run was made counts as its default
    assert param_changes("align", {"binning": 4, "exclude_dark": True}, {"binning": 4}) == []
    assert param_changes("align", {"binning": 4, "exclude_dark": False}, {"binning": 4}) == [
        ("exclude_dark", True, False)
    ]
