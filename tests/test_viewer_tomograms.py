"""Issue 12 item 16: tomograms in the viewer — orthogonal slices (XY with a z slider, XZ, YZ) served as
PNG from memory-mapped MRCs, contrast controls, the even/odd halves side by side — and PNG snapshots
of the central slices written beside each tomogram by the reconstruct step.

Volumes carry boxes at known places, so each slice's orientation can be read off its picture:
XY at z is ``(ny, nx)``, XZ at y is ``(nz, nx)``, YZ at x is ``(ny, nz)``; row 0 at the top.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from PIL import Image

from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.io.snapshots import snapshot_paths, to_gray8, write_slice_snapshots
from tiltflow.web.app import TOKEN_HEADER, create_app
from tiltflow.workflow.sets import Tomogram, TomogramSet
from tiltflow.workflow.store import ProjectStore

TOKEN = "test-token-0123456789abcdef"
SHAPE = (12, 20, 30)  # (nz, ny, nx)
BRIGHT = (slice(5, 8), slice(8, 12), slice(3, 9))  # z 5-7, y 8-11, x 3-8: +10
DARK = (slice(2, 4), slice(0, 5), slice(14, 17))  # z 2-3, y 0-4, x 14-16: -10 (crosses x = 15)


def boxes() -> np.ndarray:
    vol = np.zeros(SHAPE, np.float32)
    vol[BRIGHT] = 10.0
    vol[DARK] = -10.0
    return vol


def png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def test_snapshots_of_the_central_slices_in_their_orientation(tmp_path):
    rec = tmp_path / "TS_01_rec.mrc"
    written = write_slice_snapshots(boxes(), rec)
    paths = snapshot_paths(rec)
    assert written == [paths["xy"], paths["xz"], paths["yz"]]
    assert [p.name for p in written] == ["TS_01_rec_xy.png", "TS_01_rec_xz.png", "TS_01_rec_yz.png"]
    xy, xz, yz = (png(p.read_bytes()) for p in written)
    assert xy.shape == (20, 30) and xz.shape == (12, 30) and yz.shape == (20, 12)
    bright = np.zeros((20, 30), bool)
    bright[8:12, 3:9] = True  # z = 6 crosses the bright box
    assert np.all(xy[bright] == 255) and np.all(xy[~bright] == 0)
    bright = np.zeros((12, 30), bool)
    bright[5:8, 3:9] = True  # y = 10 crosses it too (rows: z)
    assert np.all(xz[bright] == 255) and np.all(xz[~bright] == 0)
    dark = np.zeros((20, 12), bool)
    dark[0:5, 2:4] = True  # x = 15 crosses the dark box (rows y, columns z)
    assert np.all(yz[dark] == 0) and np.all(yz[~dark] == 255)
    big = write_slice_snapshots(np.zeros((4, 3000, 2000), np.float32), tmp_path / "big.mrc")
    assert png(big[0].read_bytes()).shape == (1000, 667)  # longest side <= 1024, area-averaged by 3


def test_reconstruct_writes_snapshots_beside_each_tomogram(tmp_path):
    from tiltflow.workflow.runner import run_step

    folder = tmp_path / "stacks"
    folder.mkdir()
    rng = np.random.default_rng(4)
    angles = np.linspace(-40, 40, 9)
    write_mrc(folder / "TS_01.st", rng.normal(0, 1, (9, 64, 64)).astype(np.float32), voxel_size_a=4.0)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a:.2f}\n" for a in angles))
    store = ProjectStore(tmp_path / "p")
    imp = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": 0.0,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    rec = run_step(store, "reconstruct", {"binning": 2, "thickness_px": 10}, {"input": str(imp.id)})
    (tomo,) = store.load(store.resolve(str(rec.id))).items
    mrc = store.abspath(tomo.file)
    vol = read_stack(mrc)
    for axis, path in snapshot_paths(mrc).items():
        assert path.parent == mrc.parent and path.is_file(), axis
    plane = vol[vol.shape[0] // 2]
    lo, hi = np.percentile(plane, [1.0, 99.0])
    np.testing.assert_array_equal(png(snapshot_paths(mrc)["xy"].read_bytes()), to_gray8(plane, lo, hi))
    client = TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})
    (info,) = client.get(f"/api/outputs/{rec.id}.Tomograms/tomograms").json()
    assert info["snapshots"] == [store.relpath(p) for p in snapshot_paths(mrc).values()]


def tomogram_project(root: Path, *, volume: np.ndarray | None = None, halves: bool = True) -> ProjectStore:
    """A reconstruct run with one tomogram of ``volume`` (the boxes by default) and, with ``halves``,
    its even (the same) and odd (negated) halves."""
    store = ProjectStore(root)
    run = store.create_run("reconstruct", {}, {"input": "0.TiltSeries"})
    rd = store.run_dir(run.id)
    vol = boxes() if volume is None else volume
    fields = {"method": "wbp", "source": "0.TiltSeries"}
    write_mrc(rd / "TS_01_rec.mrc", vol, voxel_size_a=8.0, is_volume=True)
    if halves:
        write_mrc(rd / "TS_01_rec_even.mrc", vol, voxel_size_a=8.0, is_volume=True)
        write_mrc(rd / "TS_01_rec_odd.mrc", -vol, voxel_size_a=8.0, is_volume=True)
        fields.update(even_file=str(rd / "TS_01_rec_even.mrc"), odd_file=str(rd / "TS_01_rec_odd.mrc"))
    store.finish_run(
        run.id,
        {
            "Tomograms": TomogramSet(
                [Tomogram("TS_01", str(rd / "TS_01_rec.mrc"), 8.0, vol.shape, **fields)],
                {"method": "wbp", "even_odd": halves},
            )
        },
    )
    return store


@pytest.fixture
def client(tmp_path):
    store = tomogram_project(tmp_path / "proj")
    return store, TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})


def get_slice(c, query: str, status: int = 200):
    r = c.get(f"/api/outputs/1.Tomograms/tomograms/TS_01/slice.png?{query}")
    assert r.status_code == status, r.text
    return png(r.content) if status == 200 else r.json()["detail"]


def test_tomogram_set_is_listed_and_opens_in_the_viewer(client):
    store, c = client
    (run,) = c.get("/api/project").json()["runs"]
    assert run["outputs"][0]["viewer"] == "tomogram"
    (info,) = c.get("/api/outputs/1.Tomograms/tomograms").json()
    assert info["shape"] == list(SHAPE) and info["voxel_size_a"] == 8.0 and info["halves"]
    assert info["file"] == "runs/001_reconstruct/TS_01_rec.mrc" and info["snapshots"] == [] and not info["missing"]
    assert c.get("/api/outputs/1.Tomograms/series").status_code == 404  # not a tilt-series set


def test_slices_along_each_axis_in_their_orientation(client):
    _, c = client
    # contrast between the volume's 0.1st and 99.5th percentiles: -10 -> black, 0 -> grey, +10 -> white
    q = "lo=0.1&hi=99.5"
    xy = get_slice(c, f"axis=xy&index=6&{q}")
    assert xy.shape == (20, 30)
    assert np.all(xy[8:12, 3:9] == 255) and xy[0, 0] == xy[19, 29] and 0 < xy[0, 0] < 255
    assert np.all(get_slice(c, f"axis=xy&index=0&{q}") == xy[0, 0])  # z = 0: nothing there
    xz = get_slice(c, f"axis=xz&index=10&{q}")
    assert xz.shape == (12, 30) and np.all(xz[5:8, 3:9] == 255) and np.sum(xz == 255) == 18
    yz = get_slice(c, f"axis=yz&index=15&{q}")
    assert yz.shape == (20, 12) and np.all(yz[0:5, 2:4] == 0) and np.sum(yz == 0) == 10
    assert np.array_equal(get_slice(c, "axis=xz"), get_slice(c, "axis=xz&index=10"))  # default: the centre
    # slab: z 3-5 averaged at z = 4 (one of three planes in the bright box)
    slab = get_slice(c, f"axis=xy&index=4&slab=3&{q}")
    assert 0 < slab[9, 5] < 255 and slab[9, 5] > slab[0, 0]
    # contrast controls: gamma and the percentiles move the grey levels
    assert get_slice(c, f"axis=xy&index=6&{q}&gamma=2")[0, 0] > xy[0, 0]
    assert np.all(get_slice(c, "axis=xy&index=6&lo=0&hi=1")[8:12, 3:9] == 255)


def test_even_and_odd_halves_and_clear_refusals(client, tmp_path):
    store, c = client
    q = "axis=xy&index=6&lo=0.1&hi=99.5"
    even, odd = get_slice(c, f"{q}&half=even"), get_slice(c, f"{q}&half=odd")
    assert np.all(even[8:12, 3:9] == 255) and np.all(odd[8:12, 3:9] == 0)  # the odd half is negated here
    assert "outside the tomogram (0..11 along z)" in get_slice(c, "axis=xy&index=12", 400)
    assert "below the high one" in get_slice(c, "lo=60&hi=40", 400)
    get_slice(c, "axis=zz", 422)
    get_slice(c, "half=both", 422)
    assert c.get("/api/outputs/1.Tomograms/tomograms/TS_09/slice.png").status_code == 404
    other = tomogram_project(tmp_path / "nohalves", halves=False)
    c2 = TestClient(create_app(other, TOKEN), headers={TOKEN_HEADER: TOKEN})
    r = c2.get("/api/outputs/1.Tomograms/tomograms/TS_01/slice.png?half=odd")
    assert r.status_code == 404 and "--even-odd" in r.json()["detail"]
    os.remove(other.root / "runs/001_reconstruct/TS_01_rec.mrc")
    r = c2.get("/api/outputs/1.Tomograms/tomograms/TS_01/slice.png")
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert c2.get("/api/outputs/1.Tomograms/tomograms").json()[0]["missing"]


def test_a_slice_of_a_big_tomogram_is_read_without_loading_it(tmp_path):
    """96 MB volume: the first XY, XZ and YZ slices (and the volume's grey-level sample) allocate a small
    fraction of it — the file is memory-mapped, only the slices are read."""
    nz, ny, nx = 96, 512, 512
    store = tomogram_project(tmp_path / "big", volume=np.zeros((1, 1, 1), np.float32), halves=False)
    path = store.root / "runs/001_reconstruct/TS_01_rec.mrc"
    vol = np.lib.format.open_memmap(tmp_path / "scratch.npy", mode="w+", dtype=np.float32, shape=(nz, ny, nx))
    for z in range(nz):
        vol[z] = z
    write_mrc(path, vol, voxel_size_a=8.0, is_volume=True)
    del vol
    c = TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})
    tracemalloc.start()
    try:
        shapes = [get_slice(c, f"axis={a}&max_px=512").shape for a in ("xy", "xz", "yz")]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shapes == [(512, 512), (96, 512), (512, 96)]
    assert peak < 24e6, f"peak {peak / 1e6:.0f} MB for slices of a {nz * ny * nx * 4 / 1e6:.0f} MB tomogram"


# -- in the browser ---------------------------------------------------------------------------------
@pytest.fixture
def page(tmp_path, viewer_page):
    store = tomogram_project(tmp_path / "proj")
    with viewer_page(store) as p:
        yield p


LOADED = """sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0
              && !i.closest('figure').classList.contains('loading'))"""
PIXEL = """([sel, fx, fy]) => { const i = document.querySelector(sel), c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0);
  return g.getImageData(Math.floor(fx * c.width), Math.floor(fy * c.height), 1, 1).data[0]; }"""


def wait_loaded(p, sel="#ortho img"):
    p.wait_for_function(f"({LOADED})({sel!r})")


def test_orthogonal_slices_z_slider_contrast_and_halves_in_the_browser(page):
    p = page
    p.click("#runs button[data-pointer='1.Tomograms']")
    p.wait_for_selector("#ortho figure.slice")
    wait_loaded(p)
    axes = p.eval_on_selector_all("#ortho figure.slice", "fs => fs.map(f => f.dataset.axis + ':' + f.dataset.half)")
    assert axes == ["xy:full", "yz:full", "xz:full"]
    xy = "#ortho figure[data-axis='xy'] img"
    assert "index=6" in p.get_attribute(xy, "src")  # the centre, z = 6: the bright box
    assert p.evaluate(PIXEL, [xy, 5.5 / 30, 9.5 / 20]) == 255
    # the z slider: z = 0 has nothing at the box's place
    p.eval_on_selector("#t-z", "s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    p.wait_for_function(f"document.querySelector({xy!r}).getAttribute('src').includes('index=0&')")
    wait_loaded(p)
    assert p.evaluate(PIXEL, [xy, 5.5 / 30, 9.5 / 20]) < 255
    assert p.locator("#t-z-v").inner_text() == "0 / 11"
    # clicking XY moves the XZ and YZ slices there (y and x)
    box = p.locator("#ortho figure[data-axis='xy'] .wrap").bounding_box()
    p.mouse.click(box["x"] + box["width"] * 5.5 / 30, box["y"] + box["height"] * 9.5 / 20)
    p.wait_for_function(
        "document.querySelector(\"#ortho figure[data-axis='xz'] img\").getAttribute('src').includes('index=9&')"
    )
    assert "index=5&" in p.get_attribute("#ortho figure[data-axis='yz'] img", "src")
    assert (p.input_value("#t-x"), p.input_value("#t-y")) == ("5", "9")
    # contrast: the low percentile slider goes into the request
    p.eval_on_selector("#t-lo", "s => { s.value = 250; s.dispatchEvent(new Event('input')); }")
    p.wait_for_function(f"document.querySelector({xy!r}).getAttribute('src').includes('lo=2.5&')")
    wait_loaded(p)
    # the even/odd halves side by side, at the same z
    p.check("#tomogram-show input[value='halves']")
    p.wait_for_selector("#ortho figure[data-half='odd']")
    wait_loaded(p)
    halves = p.eval_on_selector_all("#ortho figure.slice", "fs => fs.map(f => f.dataset.axis + ':' + f.dataset.half)")
    assert halves == ["xy:even", "xy:odd", "xz:even", "xz:odd"]
    even = p.locator("#ortho figure[data-axis='xy'][data-half='even'] .wrap").bounding_box()
    odd = p.locator("#ortho figure[data-axis='xy'][data-half='odd'] .wrap").bounding_box()
    assert odd["x"] >= even["x"] + even["width"] and abs(odd["y"] - even["y"]) < 1 and odd["width"] == even["width"]
    for half in ("even", "odd"):
        src = p.get_attribute(f"#ortho figure[data-axis='xy'][data-half='{half}'] img", "src")
        assert f"half={half}" in src and "index=0&" in src
    # back to z = 6 with the keyboard: the box, bright in the even half and dark in the negated odd one
    p.evaluate("document.activeElement.blur()")  # keys go to the page, not the radio
    for _ in range(6):
        p.keyboard.press("ArrowRight")
    p.wait_for_function(
        "document.querySelector(\"#ortho figure[data-half='odd'] img\").getAttribute('src').includes('index=6&')"
    )
    wait_loaded(p)
    assert p.evaluate(PIXEL, ["#ortho figure[data-axis='xy'][data-half='even'] img", 5.5 / 30, 9.5 / 20]) == 255
    assert p.evaluate(PIXEL, ["#ortho figure[data-axis='xy'][data-half='odd'] img", 5.5 / 30, 9.5 / 20]) == 0
    info = p.locator("#tomogram-info").inner_text()
    assert "30 × 20 × 12 voxels" in info and "runs/001_reconstruct/TS_01_rec.mrc" in info
