"""The project store: round trips of sets, pointers, atomic registration, concurrent readers."""

import sqlite3
import threading

import pytest

from tiltflow.workflow.errors import ProjectError
from tiltflow.workflow.sets import (
    Acquisition,
    CtfSeriesSet,
    CtfTomo,
    CtfTomoSeries,
    TiltImage,
    TiltSeries,
    TiltSeriesSet,
)
from tiltflow.workflow.store import ProjectStore


def make_set(n_series=2, n_tilts=5, frames=8) -> TiltSeriesSet:
    items = []
    for s in range(n_series):
        acq = Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1, pixel_size_a=1.38, tilt_axis_deg=85.0)
        images = [
            TiltImage(
                tilt_angle_deg=-6 + 3 * i,
                acquisition_order=i + 1,
                dose_prior_e_a2=3.0 * i,
                dose_e_a2=3.0,
                dose_accumulated_e_a2=3.0 * (i + 1),
                file=f"/data/TS_{s}_{i}.tif",
                frames=frames,
                attrs={"k": i},
            )
            for i in range(n_tilts)
        ]
        items.append(TiltSeries(ts_id=f"TS_{s:02d}", acquisition=acq, images=images, size=(5760, 4092)))
    return TiltSeriesSet(kind="TiltSeriesM", items=items)


def test_summary_matches_scipion_style():
    s = make_set(5, 41, 8)
    assert s.summary() == "TiltSeriesM (5 items, 41 x 5760 x 4092 x 8, 1.38 Å/px)"
    s2 = TiltSeriesSet(kind="TiltSeries", items=s.items, odd_even=True)
    assert s2.summary() == "TiltSeries (5 items, 41 x 5760 x 4092, +oe, 1.38 Å/px)"


def test_set_round_trip(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("import-movies", {"a": 1}, {})
    original = make_set()
    store.finish_run(run.id, {"TiltSeriesM": original})
    out = store.resolve(str(run.id), ("TiltSeriesM",))
    assert out.name == "TiltSeriesM" and out.summary == original.summary()
    loaded = store.load(out)
    assert loaded == original
    assert store.run(run.id).status == "finished"


def test_ctf_round_trip(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("ctf", {}, {})
    ctf = CtfSeriesSet(
        [
            CtfTomoSeries(
                "TS_01",
                [
                    CtfTomo(2, -3.0, 30000, 29000, 45.0, 0.0, 6.5, 0.2),
                    CtfTomo(1, 0.0, 31000, 30500, 40.0, 0.0, 7.0, 0.3),
                ],
            )
        ]
    )
    store.finish_run(run.id, {"CTFTomoSeries": ctf})
    loaded = store.load(store.output(run.id, "CTFTomoSeries"))
    assert [c.acquisition_order for c in loaded.items[0].items] == [2, 1]  # tilt-angle order
    assert loaded.items[0].items[0].defocus_u_a == 30000


def test_pointers(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("import-movies", {}, {})
    store.finish_run(run.id, {"TiltSeriesM": make_set()})
    assert store.next_output_name(run.id, "TiltSeriesM") == "TiltSeriesM_2"
    with pytest.raises(ProjectError, match="no output 'TiltSeries_9'"):
        store.resolve(f"{run.id}.TiltSeries_9")
    with pytest.raises(ProjectError, match="no run 7"):
        store.resolve("7")
    with pytest.raises(ProjectError, match="RUN_ID"):
        store.resolve("abc")
    with pytest.raises(ProjectError, match="needs TiltSeries"):
        store.resolve(f"{run.id}.TiltSeriesM", ("TiltSeries",))


def test_registration_is_atomic(tmp_path):
    """A failure while registering leaves no half output."""
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("x", {}, {})
    bad = make_set()
    bad.items[1].ts_id = bad.items[0].ts_id  # violates UNIQUE(output_id, ts_id) mid-insert
    with pytest.raises(sqlite3.IntegrityError):
        store.finish_run(run.id, {"TiltSeriesM": bad})
    assert store.outputs(run.id) == []
    with store.reading() as con:
        assert con.execute("SELECT COUNT(*) FROM tilt_images").fetchone()[0] == 0
    assert store.run(run.id).status == "running"


def test_reader_sees_consistent_snapshot(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("x", {}, {})
    started, go = threading.Event(), threading.Event()
    seen = {}

    def reader():
        with store.reading() as con:
            seen["before"] = con.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]
            started.set()
            go.wait(5)
            seen["during"] = con.execute("SELECT COUNT(*) FROM tilt_images").fetchone()[0]

    t = threading.Thread(target=reader)
    t.start()
    started.wait(5)
    store.finish_run(run.id, {"TiltSeriesM": make_set()})  # WAL: the writer is not blocked by the reader
    go.set()
    t.join(5)
    assert seen == {"before": 0, "during": 0}
    assert len(store.load(store.outputs(run.id)[0]).items) == 2


def test_delete_run_restores_project(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("x", {}, {})
    assert (store.root / run.run_dir).is_dir()
    store.delete_run(run.id)
    assert store.runs() == [] and not (store.root / run.run_dir).exists()


def test_open_missing_project(tmp_path):
    with pytest.raises(ProjectError, match="no tiltflow project"):
        ProjectStore(tmp_path / "none", create=False)


def test_relative_paths_inside_project(tmp_path):
    store = ProjectStore(tmp_path / "p")
    inside = store.root / "runs" / "001_x" / "a.mrc"
    assert store.relpath(inside) == "runs/001_x/a.mrc"
    assert store.abspath("runs/001_x/a.mrc") == inside
    assert store.relpath("/elsewhere/b.tif") == "/elsewhere/b.tif"
