"""Whole workflows: identical results on a Dask LocalCluster, and resume after SIGKILL without
recomputing finished movies."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tiltflow.io.mrc import read_stack
from tiltflow.io.star import read_motion_star
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import apply_overrides, load_workflow, run_workflow

FAST = [
    "motion-ctf.window_px=128",
    "motion-ctf.ctf_range_a=[30, 8]",
    "motion-ctf.motion_grid=[1, 1, 1]",
    "motion-ctf.defocus_grid=null",
    "align.binning=2",
    "align.bead_diameter_nm=5",
    "reconstruct.binning=2",
    "reconstruct.thickness_nm=100",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(
        out,
        DemoConfig(n_series=2, n_tilts=7, size=(256, 224), n_frames=4, seed=9, bead_diameter_nm=5.0, n_beads=12),
        force=True,
    )
    return out


def overrides(demo):
    return [f"import-movies.files={demo}", f"import-movies.gain={demo / 'gain_ref.gain'}", *FAST]


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> ProjectStore:
    """An uninterrupted local run."""
    wf = load_workflow("tutorial")
    apply_overrides(wf, overrides(demo))
    store = ProjectStore(tmp_path_factory.mktemp("ref") / "p")
    run_workflow(store, wf, options={"workers": 2})
    return store


def outputs(store: ProjectStore) -> dict:
    """Comparable values of a tutorial project: motion shifts, CTF, stacks, tomograms."""
    runs = {r.label: r for r in store.runs()}
    ts_set = store.load(store.output(runs["motion-ctf"].id, "TiltSeries"))
    ctf = store.load(store.output(runs["motion-ctf"].id, "CTFTomoSeries"))
    motion_dir = store.root / runs["motion-ctf"].run_dir / "motion"
    tomos = store.load(store.output(runs["reconstruct"].id, "Tomograms"))
    aligned = store.load(store.output(runs["align"].id, "TiltSeries"))
    return {
        "xf": [list(im.transform) for ts in aligned.items for im in ts.images],
        "items": [(ts.ts_id, [(im.tilt_angle_deg, im.acquisition_order) for im in ts.images]) for ts in ts_set.items],
        "shifts": {p.name: read_motion_star(p) for p in sorted(motion_dir.glob("*.star"))},
        "defocus": [c.defocus_mean_a for s in ctf.items for c in s.items],
        "stacks": [read_stack(ts.images[0].file) for ts in ts_set.items],
        "tomograms": [read_stack(t.file) for t in tomos.items],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["items"] == b["items"]
    assert a["shifts"].keys() == b["shifts"].keys()
    for k in a["shifts"]:
        np.testing.assert_allclose(a["shifts"][k], b["shifts"][k], atol=1e-3)
    np.testing.assert_allclose(a["defocus"], b["defocus"], atol=5.0)
    np.testing.assert_allclose(a["xf"], b["xf"], atol=1e-3)
    for x, y in zip(a["stacks"] + a["tomograms"], b["stacks"] + b["tomograms"], strict=False):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3 * float(np.abs(x).max()))


def test_dask_local_cluster_gives_the_same_results(demo, reference, tmp_path):
    pytest.importorskip("dask.distributed")
    wf = load_workflow("tutorial")
    apply_overrides(wf, overrides(demo))
    store = ProjectStore(tmp_path / "p")
    runs = run_workflow(store, wf, options={"executor": "dask", "workers": 2, "threads_per_worker": 1})
    assert all(r.status == "finished" for r in runs.values())
    assert_same(outputs(reference), outputs(store))


def _finished_items(db: Path, run_id: int) -> dict[str, float]:
    try:
        con = sqlite3.connect(db, timeout=5)
        rows = con.execute("SELECT item, finished FROM item_progress WHERE run_id=?", (run_id,)).fetchall()
        con.close()
        return dict(rows)
    except sqlite3.OperationalError:
        return {}


def test_sigkill_during_motion_then_continue(demo, reference, tmp_path):
    project = tmp_path / "p"
    cmd = [
        sys.executable,
        "-m",
        "tiltflow.cli.main",
        "workflow",
        "run",
        "tutorial",
        "-p",
        str(project),
        "--workers",
        "1",
    ] + [a for o in overrides(demo) for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db, before, deadline = project / "project.sqlite", {}, time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        before = _finished_items(db, 2)
        if len(before) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None and 3 <= len(before) < 14, "could not catch the run mid-way"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ProjectStore(project, create=False)
    assert store.run(2).status == "interrupted" and store.outputs(2) == []
    before = _finished_items(db, 2)
    done = subprocess.run(cmd + ["--continue"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _finished_items(db, 2)
    assert len(after) == 14
    assert all(after[k] == before[k] for k in before), "finished movies were recomputed"
    assert [r.id for r in store.runs()] == [1, 2, 3, 4, 5]  # the interrupted run continued, no duplicate
    assert_same(outputs(reference), outputs(store))
