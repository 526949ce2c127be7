"""Issue 12 item 17: the Save dialog names the output Save will really make, and after Save the page
shows where it went (the output Save returned, its run, and the folder of re-stacked stacks).

The project already holds a ``TiltSeries_2`` (an earlier Save), so a dialog that guesses "…_2" is
wrong: the next Save makes ``TiltSeries_3``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
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

TOKEN = "test-token-0123456789abcdef"
TILTS = [-30.0, -15.0, 0.0, 15.0, 30.0]
ORDERS = [5, 3, 1, 2, 4]


def build(root: Path, *, saved_before: bool) -> ProjectStore:
    """Run 1 (motion-ctf): 2 series of 5 views + their CTF; with ``saved_before`` also 1.TiltSeries_2."""
    store = ProjectStore(root)
    run = store.create_run("motion-ctf", {}, {"input": "0.TiltSeriesM"})
    acq = Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=2.0, tilt_axis_deg=85.0)
    rng = np.random.default_rng(0)
    series, ctfs = [], []
    for ts_id in ("TS_01", "TS_02"):
        stack = write_mrc(
            store.run_dir(run.id) / f"{ts_id}.mrc", rng.normal(0, 1, (5, 32, 40)).astype(np.float32), voxel_size_a=2.0
        )
        series.append(
            TiltSeries(
                ts_id,
                acq,
                [
                    TiltImage(
                        tilt_angle_deg=t,
                        acquisition_order=o,
                        dose_prior_e_a2=3.0 * (o - 1),
                        dose_e_a2=3.0,
                        dose_accumulated_e_a2=3.0 * o,
                        file=str(stack),
                        index=i,
                    )
                    for i, (t, o) in enumerate(zip(TILTS, ORDERS, strict=False))
                ],
                (40, 32),
            )
        )
        ctfs.append(
            CtfTomoSeries(
                ts_id,
                [CtfTomo(o, t, 40000.0, 39000.0, 10.0, 0.0, 9.0, 0.2) for t, o in zip(TILTS, ORDERS, strict=False)],
            )
        )
    store.finish_run(run.id, {"TiltSeries": TiltSeriesSet("TiltSeries", series), "CTFTomoSeries": CtfSeriesSet(ctfs)})
    if saved_before:
        save_subset(store, store.resolve("1.TiltSeries"), flags={})
    return store


@pytest.fixture
def client(tmp_path):
    store = build(tmp_path / "proj", saved_before=True)
    return store, TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})


def test_preview_names_the_output_save_then_makes(client):
    store, c = client
    c.post("/api/outputs/1.TiltSeries/exclude", json={"ts_id": "TS_01", "views": [3]}).raise_for_status()
    c.post("/api/outputs/1.TiltSeries/exclude", json={"ts_id": "TS_02"}).raise_for_status()
    pv = c.get("/api/outputs/1.TiltSeries/save-preview").json()
    assert pv["pointer"] == "1.TiltSeries_3" and pv["name"] == "TiltSeries_3"
    assert (pv["run_id"], pv["step"]) == (1, "motion-ctf")
    assert (pv["n_series"], pv["n_excluded_series"], pv["n_excluded_items"]) == (1, 1, 1)
    assert pv["restack_folder"] == "runs/001_motion-ctf/TiltSeries_3"
    assert [o.name for o in store.outputs(1)] == ["TiltSeries", "CTFTomoSeries", "TiltSeries_2"]  # read-only
    r = c.post("/api/outputs/1.TiltSeries/save", json={"restack": True}).json()
    assert r["pointer"] == pv["pointer"] and r["name"] == pv["name"] and (r["run_id"], r["step"]) == (1, "motion-ctf")
    assert r["folder"] == pv["restack_folder"]
    assert read_stack(store.root / r["folder"] / "TS_01.mrc").shape == (4, 32, 40)  # where it went
    # the next one, from the original or from a subset of it
    assert c.get("/api/outputs/1.TiltSeries/save-preview").json()["pointer"] == "1.TiltSeries_4"
    assert c.get("/api/outputs/1.TiltSeries_2/save-preview").json()["pointer"] == "1.TiltSeries_4"
    r = c.post("/api/outputs/1.TiltSeries_2/save", json={"restack": False}).json()
    assert r["pointer"] == "1.TiltSeries_4" and r["folder"] is None


def test_ctf_preview_and_save(client):
    _, c = client
    c.post("/api/outputs/1.CTFTomoSeries/exclude", json={"ts_id": "TS_02", "views": [5, 4]}).raise_for_status()
    pv = c.get("/api/outputs/1.CTFTomoSeries/save-preview").json()
    assert pv["pointer"] == "1.goodSetOfCTFTomoSeries2" and pv["restack_folder"] is None
    assert (pv["n_series"], pv["n_excluded_items"]) == (2, 2)
    r = c.post("/api/outputs/1.CTFTomoSeries/save", json={}).json()
    assert r["pointer"] == pv["pointer"] and r["folder"] is None
    assert c.get("/api/outputs/1.CTFTomoSeries/save-preview").json()["pointer"] == "1.goodSetOfCTFTomoSeries3"
    assert c.get("/api/outputs/1.Tomograms/save-preview").status_code == 404


# -- in the browser ---------------------------------------------------------------------------------
@pytest.fixture
def page(tmp_path, viewer_page):
    store = build(tmp_path / "proj", saved_before=True)
    with viewer_page(store) as p:
        yield p, store


def test_save_dialog_names_the_real_output_and_the_page_shows_where_it_went(page):
    p, store = page
    p.click("#runs button[data-pointer='1.TiltSeries']")
    p.wait_for_selector("#gallery .thumb img")
    p.click("#gallery .thumb[data-i='1'] button.x")
    p.wait_for_selector("#gallery .thumb.excluded[data-i='1']")
    p.click("#tomo-save")
    p.wait_for_selector("#save-dialog[open]")
    assert p.locator("#save-name").inner_text() == "1.TiltSeries_3"
    text = p.locator("#save-dialog").inner_text()
    assert "run 1 (motion-ctf)" in text and "runs/001_motion-ctf/TiltSeries_3/" in text and "1 excluded view" in text
    p.click("#save-restack")
    p.wait_for_selector("#tomo-saved:not([hidden])")
    saved = p.locator("#tomo-saved")
    assert saved.locator(".saved-pointer").inner_text() == "1.TiltSeries_3"
    assert saved.locator(".saved-folder").inner_text() == "runs/001_motion-ctf/TiltSeries_3/"
    assert p.locator("#status").inner_text().startswith("saved 1.TiltSeries_3:")
    assert (store.root / "runs/001_motion-ctf/TiltSeries_3/TS_01.mrc").is_file()
    # the saved output opens from there
    saved.locator("button.open").click()
    p.wait_for_function("document.querySelector('#current-set').textContent === '1.TiltSeries_3'")
    p.wait_for_function("document.querySelectorAll('#gallery .thumb').length === 4")


def test_ctf_save_dialog_names_the_real_output(page):
    p, _ = page
    p.click("#runs button[data-pointer='1.CTFTomoSeries']")
    p.wait_for_selector("#ctf-table tr[data-i]")
    p.click("#ctf-save")
    p.wait_for_selector("#save-dialog[open]")
    assert p.locator("#save-name").inner_text() == "1.goodSetOfCTFTomoSeries2"
    assert p.locator("#save-restack").is_hidden()
    p.click("#save-disabled")
    p.wait_for_selector("#ctf-saved:not([hidden])")
    assert p.locator("#ctf-saved .saved-pointer").inner_text() == "1.goodSetOfCTFTomoSeries2"
    assert p.locator("#ctf-saved .saved-folder").count() == 0
