"""motion-ctf killed after every movie is recorded, while the series are assembled (issue 13 row 1):
``--continue`` finishes the run, recomputes no movie, and gives the stacks of an uninterrupted run."""

from pathlib import Path

import numpy as np
import pytest

import tiltflow.io.mrc as mrc
from tiltflow.io.mrc import read_stack
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

PARAMS = {"window_px": 128, "ctf_range_a": [30.0, 8.0], "motion_grid": [1, 1, 1], "defocus_grid": None}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, DemoConfig(n_series=2, n_tilts=4, size=(192, 160), n_frames=4, seed=5), force=True)
    return out


def _motion(store: ProjectStore, demo: Path, **kw):
    imp = run_step(store, "import-movies", {"files": str(demo), "gain": str(demo / "gain_ref.gain")})
    return run_step(store, "motion-ctf", PARAMS, {"input": str(imp.id)}, options={"workers": 1}, **kw)


def _stacks(store: ProjectStore, run_id: int) -> dict[str, np.ndarray]:
    ts_set = store.load(store.output(run_id, "TiltSeries"))
    out = {}
    for ts in ts_set.items:
        im = ts.images[0]
        for key, path in (("", im.file), ("_even", im.even_file), ("_odd", im.odd_file)):
            out[ts.ts_id + key] = read_stack(path)
    ctf = store.load(store.output(run_id, "CTFTomoSeries"))
    out["defocus"] = np.array([c.defocus_mean_a for s in ctf.items for c in s.items])
    return out


def _recorded(store: ProjectStore, run_id: int) -> dict[str, float]:
    """When each movie of the run was recorded finished."""
    with store.reading() as con:
        return dict(con.execute("SELECT item, finished FROM item_progress WHERE run_id=?", (run_id,)).fetchall())


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> dict[str, np.ndarray]:
    store = ProjectStore(tmp_path_factory.mktemp("ref") / "p")
    run = _motion(store, demo)
    assert not list(store.run_dir(run.id).glob("sums/*.npy"))  # per-movie sums go once the run is finished
    return _stacks(store, run.id)


def _killed_at(monkeypatch, target, name: str, when) -> None:
    """Make ``target.name`` raise KeyboardInterrupt (a kill, for the runner) when ``when(*args)``."""
    original = getattr(target, name)

    def dying(*args, **kwargs):
        if when(*args):
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, dying)


@pytest.mark.parametrize("where", ["second series stack", "registration"])
def test_continue_after_kill_while_assembling(demo, reference, tmp_path, monkeypatch, one_torch_thread, where):
    store = ProjectStore(tmp_path / "p")
    with monkeypatch.context() as m:
        if where == "second series stack":  # the first series is stacked, the second not yet
            _killed_at(m, mrc, "write_mrc", lambda path, *a: Path(path).name.startswith("TS_02"))
        else:  # every stack written, the run not yet registered
            _killed_at(m, ProjectStore, "finish_run", lambda store, run_id, outputs: "CTFTomoSeries" in outputs)
        with pytest.raises(KeyboardInterrupt):
            _motion(store, demo)
    run = next(r for r in store.runs() if r.step == "motion-ctf")
    assert run.status == "interrupted" and store.outputs(run.id) == []
    store.set_status(run.id, "running")  # what SIGKILL leaves behind
    before = _recorded(store, run.id)
    assert len(before) == 8
    done = run_step(store, "motion-ctf", {}, resume=run.id)
    assert done.id == run.id and done.status == "finished"
    assert _recorded(store, run.id) == before  # no movie recomputed
    assert not list(store.run_dir(run.id).glob("sums/*.npy"))
    got = _stacks(store, run.id)
    assert got.keys() == reference.keys()
    for key in reference:
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-5, atol=1e-5, err_msg=key)
