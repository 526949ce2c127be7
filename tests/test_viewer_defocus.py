"""Issue 12 item 3: the TomoViewer shows the defocus of the CTF set the run registered (after its
series pass), says which run it comes from, and shows the CTF verdict beside it.

The project mimics the report: a motion-ctf run whose images keep the per-tilt fits from before the
series pass in their attributes (1.65-6.01 µm) while its CTF set says ~4.5 µm, and an align run on
its tilt series that copies those attributes on. Opened on the aligned set, the viewer used to show
the attributes ('1.71 / 1.59 µm (attrs)').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from tiltflow.io.mrc import write_mrc
from tiltflow.web.app import TOKEN_HEADER, create_app
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
TILTS = [-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0]
ORDERS = [7, 5, 3, 1, 2, 4, 6]
STALE_U = [16500.0, 42100.0, 60100.0, 17100.0, 25000.0, 51000.0, 33000.0]  # before the series pass
TRUE_U = [45200.0 + 10.0 * t for t in TILTS]  # the CTF set's values
RINGS = [2.0, 3.5, 7.5, 9.0, 8.0, 4.0, 1.5]
VERDICT = {
    "status": "check",
    "reasons": ["only 3 of 7 tilts show Thon rings (z ≥ 6): the others follow the series' defocus trend through them"],
}


def acquisition() -> Acquisition:
    return Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=2.0, tilt_axis_deg=85.0)


def tilt_series(stack: Path, *, transform: bool) -> TiltSeries:
    images = [
        TiltImage(
            tilt_angle_deg=t,
            acquisition_order=o,
            dose_prior_e_a2=3.0 * (o - 1),
            dose_e_a2=3.0,
            dose_accumulated_e_a2=3.0 * o,
            file=str(stack),
            index=i,
            transform=[1.0, 0.0, 0.0, 1.0, 0.0, 0.0] if transform else None,
            defocus_u_a=u,
            defocus_v_a=u - 1200.0,
            total_motion_px=2.0,
        )
        for i, (t, o, u) in enumerate(zip(TILTS, ORDERS, STALE_U, strict=False))
    ]
    return TiltSeries("TS_01", acquisition(), images, (48, 40))


def ctf_series(u_values: list[float], verdict: dict | None) -> CtfTomoSeries:
    items = [
        CtfTomo(o, t, u, u - 1000.0, 30.0, 0.0, 9.0, 0.2, ring_strength=z)
        for t, o, u, z in zip(TILTS, ORDERS, u_values, RINGS, strict=False)
    ]
    attrs = {"pixel_size_a": 2.0, "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}
    return CtfTomoSeries("TS_01", items, True, attrs, verdict=verdict or None)


def build(root: Path) -> ProjectStore:
    """Run 1 motion-ctf (TiltSeries with stale attrs + CTF set), run 2 align on 1.TiltSeries."""
    store = ProjectStore(root)
    mc = store.create_run("motion-ctf", {}, {"input": "0.TiltSeriesM"})
    stack = store.run_dir(mc.id) / "TS_01.mrc"
    rng = np.random.default_rng(1)
    write_mrc(stack, rng.normal(0, 1, (len(TILTS), 40, 48)).astype(np.float32), voxel_size_a=2.0)
    store.finish_run(
        mc.id,
        {
            "TiltSeries": TiltSeriesSet("TiltSeries", [tilt_series(stack, transform=False)]),
            "CTFTomoSeries": CtfSeriesSet([ctf_series(TRUE_U, VERDICT)]),
        },
    )
    al = store.create_run("align", {}, {"input": f"{mc.id}.TiltSeries"})
    store.finish_run(al.id, {"TiltSeries": TiltSeriesSet("TiltSeries", [tilt_series(stack, transform=True)])})
    return store


@pytest.fixture
def project(tmp_path):
    store = build(tmp_path / "proj")
    return store, TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})


def by_order(views: list[dict]) -> dict[int, dict]:
    return {v["acquisition_order"]: v for v in views}


def test_aligned_set_shows_the_ctf_sets_defocus_and_its_run(project):
    _, client = project
    views = by_order(client.get("/api/outputs/2.TiltSeries/series/TS_01/views").json())
    for o, u, z in zip(ORDERS, TRUE_U, RINGS, strict=False):
        v = views[o]
        assert v["defocus_source"] == "ctf", v
        assert v["defocus_u_a"] == pytest.approx(u) and v["defocus_v_a"] == pytest.approx(u - 1000.0)
        assert v["defocus_from"] == "1.CTFTomoSeries (motion-ctf, run 1)"
        assert v["ring_strength"] == pytest.approx(z)
    (s,) = client.get("/api/outputs/2.TiltSeries/series").json()
    assert s["ctf_verdict"] == "check" and s["ctf_verdict_reasons"] == VERDICT["reasons"]
    assert s["ctf_from"] == "1.CTFTomoSeries (motion-ctf, run 1)"
    # the motion-ctf set itself, and the CTF viewer's lists
    assert all(v["defocus_source"] == "ctf" for v in client.get("/api/outputs/1.TiltSeries/series/TS_01/views").json())
    (c,) = client.get("/api/outputs/1.CTFTomoSeries/series").json()
    assert c["ctf_verdict"] == "check" and c["ctf_verdict_reasons"] == VERDICT["reasons"]
    detail = client.get("/api/outputs/1.CTFTomoSeries/ctf/TS_01").json()
    assert detail["verdict"] == "check" and detail["verdict_reasons"] == VERDICT["reasons"]
    assert [i["ring_strength"] for i in detail["items"]] == RINGS  # tilt-angle order


def test_a_ctf_run_on_the_set_itself_comes_first_and_attrs_only_without_any(project):
    store, client = project
    ctf = store.create_run("ctf", {}, {"input": "2.TiltSeries"})
    later = [u + 700.0 for u in TRUE_U]
    store.finish_run(ctf.id, {"CTFTomoSeries": CtfSeriesSet([ctf_series(later, None)])})
    views = by_order(client.get("/api/outputs/2.TiltSeries/series/TS_01/views").json())
    assert [views[o]["defocus_u_a"] for o in ORDERS] == pytest.approx(later)
    assert {v["defocus_from"] for v in views.values()} == {"3.CTFTomoSeries (ctf, run 3)"}
    (s,) = client.get("/api/outputs/2.TiltSeries/series").json()
    assert s["ctf_verdict"] is None and s["ctf_from"] == "3.CTFTomoSeries (ctf, run 3)"  # not judged
    # the motion-ctf set keeps its own run's values
    views = by_order(client.get("/api/outputs/1.TiltSeries/series/TS_01/views").json())
    assert [views[o]["defocus_u_a"] for o in ORDERS] == pytest.approx(TRUE_U)
    # a set no CTF set applies to: the image's values, said to be such
    imp = store.create_run("import-tilt-series", {}, {})
    store.finish_run(
        imp.id,
        {"TiltSeries": TiltSeriesSet("TiltSeries", [tilt_series(store.run_dir(1) / "TS_01.mrc", transform=False)])},
    )
    views = by_order(client.get(f"/api/outputs/{imp.id}.TiltSeries/series/TS_01/views").json())
    assert {v["defocus_source"] for v in views.values()} == {"attrs"}
    assert all("no CTF set" in v["defocus_from"] for v in views.values())


# -- in the browser ---------------------------------------------------------------------------------
@pytest.fixture
def page(tmp_path, viewer_page):
    store = build(tmp_path / "proj")
    with viewer_page(store) as p:
        yield p


def um(a: float) -> str:
    return f"{a / 1e4:.2f} µm"


def test_tomoviewer_page_shows_ctf_defocus_run_and_verdict(page):
    page.click("#runs button[data-pointer='2.TiltSeries']")
    page.wait_for_selector("#gallery .thumb img")
    page.wait_for_selector("#view-info table")
    first = min(range(len(TILTS)), key=lambda i: TILTS[i])  # the view shown first: tilt order
    info = page.locator("#view-info").inner_text()
    assert f"{um(TRUE_U[first])} / {um(TRUE_U[first] - 1000.0)}" in info, info
    assert "1.CTFTomoSeries (motion-ctf, run 1)" in info
    assert um(STALE_U[first]) not in info and "attrs" not in info
    # the CTF verdict beside the values, and as a dot in the series list
    ctf_row = page.locator("#view-info tr", has_text="CTF").filter(has_text="check")
    assert ctf_row.count() == 1 and "Thon rings" in ctf_row.inner_text()
    dot = page.locator("#tomo-series tr.row td[data-verdict='check']")
    assert dot.count() == 1 and "CTF check" in dot.get_attribute("title")
    # thumbnails: the CTF set's mean defocus per view
    captions = page.locator("#gallery .thumb .cap").all_inner_texts()
    order = sorted(range(len(TILTS)), key=lambda i: TILTS[i])
    for cap, i in zip(captions, order, strict=False):
        assert um(TRUE_U[i] - 500.0) in cap, (cap, i)


def test_ctf_viewer_page_shows_the_series_verdict_and_ring_evidence(page):
    page.click("#runs button[data-pointer='1.CTFTomoSeries']")
    page.wait_for_selector("#ctf-table tr[data-i]")
    banner = page.locator("#ctf-verdict")
    assert "CTF check" in banner.inner_text() and "Thon rings" in banner.inner_text()
    assert "verdict-check" in banner.get_attribute("class")
    assert page.locator("#ctf-series tr.row td[data-verdict='check']").count() == 1
    headers = page.locator("#ctf-table th").all_inner_texts()
    col = headers.index("rings z")
    cells = [page.locator(f"#ctf-table tr[data-i='{i}'] td").nth(col).inner_text() for i in range(len(TILTS))]
    assert cells == [f"{z:.1f}" for z in RINGS]
