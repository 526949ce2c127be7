"""Saving at the same moment: two viewers and the CLI (`tiltflow subset` calls ``save_subset``) save
subsets of one set at once; each gets its own output name and its own folder, none fails."""

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.web.app import TOKEN_HEADER, create_app
from tiltflow.workflow.curation import save_subset
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

TOKEN = "concurrency-token-0123456789"
TILTS = [-20.0, -10.0, 0.0, 10.0, 20.0]


def build(root: Path) -> ProjectStore:
    store = ProjectStore(root)
    run = store.create_run("motion-ctf", {}, {})
    rd = store.run_dir(run.id)
    acq = Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=2.0, tilt_axis_deg=0.0)
    series, ctfs = [], []
    for k, ts_id in enumerate(("TS_01", "TS_02")):
        write_mrc(
            rd / f"{ts_id}.mrc",
            np.stack([np.full((32, 48), 10 * k + i, np.float32) for i in range(5)]),
            voxel_size_a=2.0,
        )
        images = [
            TiltImage(t, i + 1, 3.0 * i, 3.0, 3.0 * (i + 1), str(rd / f"{ts_id}.mrc"), i) for i, t in enumerate(TILTS)
        ]
        series.append(TiltSeries(ts_id, acq, images, (48, 32)))
        ctfs.append(CtfTomoSeries(ts_id, [CtfTomo(i + 1, t, 3e4, 2.9e4, 10.0) for i, t in enumerate(TILTS)]))
    store.finish_run(run.id, {"TiltSeries": TiltSeriesSet("TiltSeries", series), "CTFTomoSeries": CtfSeriesSet(ctfs)})
    return store


def _at_once(jobs):
    """Run the callables in threads released together; their results and errors."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(i, job):
        barrier.wait()
        try:
            results[i] = job()
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=work, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def test_two_viewers_and_the_cli_save_at_once(tmp_path):
    store = build(tmp_path / "proj")
    viewers = [
        TestClient(
            create_app(ProjectStore(store.root), TOKEN), headers={TOKEN_HEADER: TOKEN}, raise_server_exceptions=False
        )
        for _ in range(2)
    ]
    viewers[0].post("/api/outputs/1.TiltSeries/exclude", json={"ts_id": "TS_01", "views": [1]})

    def viewer_save(client, restack):
        r = client.post("/api/outputs/1.TiltSeries/save", json={"restack": restack})
        assert r.status_code == 200, r.text
        return r.json()["name"]

    def cli_save():  # what `tiltflow subset --exclude-views TS_01:5 --restack` does, in its own store
        cli_store = ProjectStore(store.root, create=False)
        return save_subset(cli_store, cli_store.resolve("1.TiltSeries"), restack=True, flags={("TS_01", 5): True}).name

    names = []
    for _ in range(3):  # three rounds of three saves at the same moment
        results, errors = _at_once(
            [lambda: viewer_save(viewers[0], True), lambda: viewer_save(viewers[1], True), cli_save]
        )
        assert not errors, errors
        names += results
    assert sorted(names, key=lambda n: int(n.rsplit("_", 1)[1])) == [f"TiltSeries_{n}" for n in range(2, 11)]
    run_dir = store.run_dir(1)
    for name in names:
        value = store.load(store.output(1, name))
        ts = value.items[0]
        # each output's stack is in its own folder and holds exactly its views
        assert {Path(im.file).parent for im in ts.images} == {run_dir / name}
        stack = read_stack(ts.images[0].file)
        assert stack.shape[0] == len(ts.images) == 4
        assert [float(stack[im.index, 0, 0]) for im in ts.images] == [im.acquisition_order - 1.0 for im in ts.images]
    assert not list(run_dir.glob(".saving-*"))


def test_ctf_saves_at_once_while_a_viewer_reads(tmp_path):
    store = build(tmp_path / "proj")
    clients = [
        TestClient(
            create_app(ProjectStore(store.root), TOKEN), headers={TOKEN_HEADER: TOKEN}, raise_server_exceptions=False
        )
        for _ in range(3)
    ]
    stop = threading.Event()
    read_errors = []

    def reader():
        while not stop.is_set():
            for path in ("/api/project", "/api/outputs/1.TiltSeries/series", "/api/outputs/1.CTFTomoSeries/ctf/TS_01"):
                r = clients[2].get(path)
                if r.status_code != 200:
                    read_errors.append(f"{path}: {r.status_code} {r.text}")

    def save(client, pointer):
        r = client.post(f"/api/outputs/{pointer}/save", json={"restack": False})
        assert r.status_code == 200, r.text
        return r.json()["name"]

    t = threading.Thread(target=reader)
    t.start()
    try:
        names = []
        for _ in range(3):
            results, errors = _at_once(
                [lambda c=c, s=s: save(c, s) for s in ("1.CTFTomoSeries", "1.TiltSeries") for c in clients[:2]]
            )
            assert not errors, errors
            names += results
    finally:
        stop.set()
        t.join(timeout=60)
    assert not read_errors, read_errors[:3]
    assert sorted(n for n in names if n.startswith("good")) == sorted(f"goodSetOfCTFTomoSeries{n}" for n in range(2, 8))
    assert sorted(n for n in names if n.startswith("Tilt")) == sorted(f"TiltSeries_{n}" for n in range(2, 8))
