"""A step's scratch (motion-ctf's ``sums/``) outlives no finished run (issue 13): killed between
registering the run finished and removing its scratch, the next run in the project removes them;
a run killed before it finished keeps its scratch for ``--continue``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiltflow.workflow.run_options import RunReport
from tiltflow.workflow.runner import SCRATCH_LIST, run_step
from tiltflow.workflow.steps.base import REGISTRY, Step, StepContext, StepParams, get_step
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import Workflow, WorkflowStep, run_workflow

STEP = "test-scratch"

# the child process: a step that leaves scratch, and a SIGKILL at the point named by argv[2]
CHILD = """
import os, signal, sys
from tiltflow.workflow import runner
from tiltflow.workflow.steps.base import REGISTRY, Step, StepParams, get_step
from tiltflow.workflow.store import ProjectStore

get_step("import-movies")  # the built-in steps first


def scratch_step(ctx):
    (ctx.run_dir / "sums").mkdir()
    (ctx.run_dir / "sums" / "TS_01_001.npy").write_bytes(b"x")
    ctx.scratch.append(ctx.run_dir / "sums")
    return {}


REGISTRY["test-scratch"] = Step("test-scratch", "scratch", StepParams, (), {}, scratch_step)
kill = lambda *args, **kw: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "after-finish":
    runner._remove_scratch = kill
else:
    ProjectStore.finish_run = kill
runner.run_step(ProjectStore(sys.argv[1]), "test-scratch", {}, label="s")
"""


def _scratch_step(ctx: StepContext) -> dict:
    (ctx.run_dir / "sums").mkdir(exist_ok=True)
    ctx.scratch.append(ctx.run_dir / "sums")
    return {}


@pytest.fixture
def scratch_step(monkeypatch):
    get_step("import-movies")
    monkeypatch.setitem(REGISTRY, STEP, Step(STEP, "scratch", StepParams, (), {}, _scratch_step))


def _killed_run(root: Path, where: str) -> Path:
    """Run the scratch step in a child process killed at ``where``; its run folder."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), where], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    store = ProjectStore(root)
    run = store.runs()[-1]
    assert run.status == ("finished" if where == "after-finish" else "interrupted")
    assert (root / run.run_dir / "sums" / "TS_01_001.npy").exists()
    assert (root / run.run_dir / SCRATCH_LIST).exists()
    return root / run.run_dir


def test_a_kill_after_the_run_finished_leaves_no_scratch_for_good(tmp_path, scratch_step):
    finished = _killed_run(tmp_path / "P", "after-finish")
    store = ProjectStore(tmp_path / "P")
    run = run_step(store, STEP, {})  # the next run in the project (a new one) heals it
    assert not (finished / "sums").exists() and not (finished / SCRATCH_LIST).exists()
    assert not (store.run_dir(run.id) / "sums").exists() and not (store.run_dir(run.id) / SCRATCH_LIST).exists()
    assert os.listdir(finished) == ["run.log"]


def test_continuing_the_finished_run_itself_heals_it(tmp_path, scratch_step):
    """``STEP --continue RUN`` of the run killed after it finished: nothing to run, and the run's
    folder is as an uninterrupted run leaves it (found by the SIGKILL catalogue on motion-ctf)."""
    finished = _killed_run(tmp_path / "P", "after-finish")
    store = ProjectStore(tmp_path / "P")
    run = run_step(store, STEP, {}, resume=store.runs()[0].id)
    assert run.status == "finished" and len(store.runs()) == 1
    assert os.listdir(finished) == ["run.log"]


def test_a_workflow_continue_heals_the_project_too(tmp_path, scratch_step):
    finished = _killed_run(tmp_path / "P", "after-finish")
    store = ProjectStore(tmp_path / "P")
    wf = Workflow(name="w", steps=[WorkflowStep(id="s", step=STEP, params={}, inputs={})])
    runs = run_workflow(store, wf, report=RunReport(), resume=True)  # reuses the finished run, runs nothing
    assert [r.id for r in runs.values()] == [1] and len(store.runs()) == 1
    assert not (finished / "sums").exists()


def test_a_run_killed_before_it_finished_keeps_its_scratch(tmp_path, scratch_step):
    interrupted = _killed_run(tmp_path / "P", "before-finish")
    store = ProjectStore(tmp_path / "P")
    run_step(store, STEP, {})
    assert (interrupted / "sums" / "TS_01_001.npy").exists()  # --continue still needs them
    done = run_step(store, STEP, {}, resume=store.runs()[0].id)
    assert done.status == "finished" and not (interrupted / "sums").exists()
