"""The typed task/result boundary between steps and executors (issue 16 item 1): every result
survives the project store's record (JSON, paths relative to the project) and comes back equal;
tasks pickle (the Dask executor ships them) without the coordinator's per-run session."""

import json
import pickle
from dataclasses import dataclass

import pytest

from tiltflow.core.verdict import Verdict
from tiltflow.workflow.executor import LocalExecutor, run_items
from tiltflow.workflow.run_options import RunOptions
from tiltflow.workflow.steps.align import AlignParams
from tiltflow.workflow.steps.align_tasks import AlignResult, AlignTask, FiducialStats, PatchStats
from tiltflow.workflow.steps.ctf import CtfSeriesResult
from tiltflow.workflow.steps.ctf_common import TiltCtf
from tiltflow.workflow.steps.motion_ctf import MotionCtfParams
from tiltflow.workflow.steps.motion_tasks import MovieResult, MovieSetup, MovieTask
from tiltflow.workflow.steps.normalize import NormalizeResult, StackStats
from tiltflow.workflow.steps.reconstruct import ReconstructResult
from tiltflow.workflow.steps.xray_erase import XrayResult
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.tasks import ItemResult, ItemTask, StacksResult


def _ctf(root: str) -> TiltCtf:
    return TiltCtf(
        defocus_u_a=21000.0,
        defocus_v_a=20000.0,
        astigmatism_angle_deg=30.0,
        phase_shift_rad=0.0,
        fit_resolution_a=8.5,
        score=0.3,
        spectrum_file=f"{root}/runs/002_motion-ctf/ctf/TS_01_001.png",
        radial_profile={"k": [0.01, 0.02], "observed": [1.0, 0.5], "fitted": [0.9, 0.6]},
        series_refit={"defocus_mean_a": 20400.0, "astigmatism_a": 900.0, "trend_defocus_a": 20500.0},
        ring_strength=2.5,
    )


def _results(root: str) -> list[ItemResult]:
    run = f"{root}/runs/003_x"
    fid = FiducialStats(0.4, [0.3, 0.5], [0.2, float("nan")], [1], [0], 2, [2, 2], [5, 4], [[1.0, 2.0, 3.0]])
    return [
        StacksResult({"file": f"{run}/TS_01.mrc"}),
        NormalizeResult({"file": f"{run}/TS_01.mrc"}, {"file": 3}, StackStats(0.0, 1.0, -3.0, 4.0, [5, 64, 48])),
        XrayResult({"file": f"{run}/TS_01.mrc", "odd_file": f"{run}/TS_01_odd.mrc"}, [1, 0], [1, 0], f"{run}/p.txt"),
        ReconstructResult({"file": f"{run}/TS_01_rec.mrc"}, [25, 64, 48]),
        MovieResult({"sum": f"{run}/sums/a.npy"}, [[0.0, 0.0], [1.0, -1.0]], 1.4, 3, None, _ctf(root)),
        MovieResult({"sum": f"{run}/sums/b.npy"}, [[0.0, 0.0], [0.5, 0.5]], 0.7, 0, "held", None),
        CtfSeriesResult({1: _ctf(root), 2: _ctf(root)}),
        AlignResult(Verdict("failed", ("too few beads",))),
        AlignResult(
            Verdict("check", ("axis moved",)),
            {"tilt_axis": "held"},
            {"fid": f"{run}/TS_01.fid", "xf": f"{run}/TS_01.xf"},
            {"residual_vs_tilt": f"{run}/TS_01_residuals.png"},
            [[1.0, 0.0, 0.0, 1.0, 2.0, -3.0]],
            [0.5],
            85.2,
            0.3,
            fiducial=fid,
        ),
        AlignResult(
            Verdict("good"),
            xf=[[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]],
            refined_tilt_angles_deg=[0.0],
            tilt_axis_deg=85.0,
            tilt_offset_deg=0.0,
            patch=PatchStats([0.1], [False], 150.0, 150.0),
        ),
    ]


def _same(a, b) -> bool:  # NaN == NaN for the comparison of records
    return json.dumps(a.to_record(), sort_keys=True) == json.dumps(b.to_record(), sort_keys=True)


@pytest.mark.parametrize("index", range(10))
def test_results_round_trip_through_the_store(tmp_path, index):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("x", {}, {})
    result = _results(str(store.root))[index]
    store.record_item(run.id, "TS_01", result)
    with store.reading() as con:
        stored = con.execute("SELECT result FROM item_progress").fetchone()[0]
    assert str(store.root) not in stored  # paths inside the project are stored relative to it
    back = store.finished_items(run.id, type(result))["TS_01"]
    assert type(back) is type(result) and _same(back, result)
    if not isinstance(result, AlignResult) or result.fiducial is None:
        assert back == result


def test_a_movie_task_pickles_without_its_session():
    setup = MovieSetup(MotionCtfParams(), "/data/gain.gain", None, "cpu")
    task = MovieTask(
        key="/data/a.tif",
        movie="/data/a.tif",
        setup=setup,
        pixel_size_a=1.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
        tilt_angle_deg=0.0,
        tilt_axis_deg=85.0,
        prior_dose=None,
        dose=3.0,
        out_dir="/tmp/run",
        name="TS_01_001",
        session=object(),  # stands for the run's decoder: not shipped to a worker
    )
    back = pickle.loads(pickle.dumps(task))
    assert back.session is None and back == task and back.setup.params == setup.params
    assert task.session is not None  # the original keeps it


def test_step_tasks_carry_the_parameter_model():
    task = AlignTask(
        key="TS_01",
        refs=[("a.mrc", 0)],
        angles=[0.0],
        params=AlignParams(method="patch"),
        tilt_axis_deg=85.0,
        pixel_size_a=2.0,
        out_dir="/tmp",
        device="cpu",
    )
    back = pickle.loads(pickle.dumps(task))
    assert back == task and isinstance(back.params, AlignParams) and back.params.method == "patch"


class _Ctx:
    """What ``run_items`` uses of a step's context."""

    def __init__(self, store, run_id):
        self.store, self.run_id, self.options = store, run_id, RunOptions(workers=1)
        self.seen: list[tuple[str, int, int]] = []

    def progress(self, what, done, total):
        self.seen.append((what, done, total))


@dataclass(frozen=True, kw_only=True)
class _Task(ItemTask):
    fail: bool = False


def _double(task: _Task) -> StacksResult:
    if task.fail:
        raise ValueError(f"{task.key}: bad")
    return StacksResult({"file": f"{task.key}.mrc"})


def test_run_items_skips_recorded_items_and_returns_failures_as_values(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("x", {}, {})
    recorded = StacksResult({"file": str(store.root / "recorded.mrc")})
    store.record_item(run.id, "A", recorded)
    ctx = _Ctx(store, run.id)
    tasks = [_Task(key="A"), _Task(key="B"), _Task(key="C", fail=True)]
    results = run_items(ctx, _double, tasks, StacksResult)
    assert results["A"] == recorded  # not run again
    assert results["B"] == StacksResult({"file": "B.mrc"})
    assert isinstance(results["C"], ValueError)
    assert set(store.finished_items(run.id, StacksResult)) == {"A", "B"}
    assert [s[1:] for s in ctx.seen] == [(2, 3), (3, 3)]


def test_the_local_executor_reports_each_task_under_its_key():
    out = dict(LocalExecutor(2).map_unordered(_double, [_Task(key=k) for k in "abcde"]))
    assert out == {k: StacksResult({"file": f"{k}.mrc"}) for k in "abcde"}
