"""The curation web viewer: token, listings, thumbnails cache, exclusion/undo, Save, CTF, safety."""

import errno
import itertools
import json
import logging
import struct
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from tiltflow.core import quality as core_quality
from tiltflow.core.ctf_model import ctf_1d
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.web import thumbnails
from tiltflow.web.app import TOKEN_HEADER, cookie_name, create_app
from tiltflow.web.spectra import ctf_zero_frequencies
from tiltflow.web.thumbnails import ImageRef, ThumbnailCache, downsample_to_max_2d, encode_png_gray8
from tiltflow.workflow.curation import exclusions
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
TILTS = [-54.0, -36.0, -18.0, 0.0, 18.0, 36.0, 54.0]
ORDERS = [7, 5, 3, 1, 2, 4, 6]  # dose-symmetric acquisition order, per tilt above
DARK, MOVING, DEFOCUS_BAD = 1, 5, 2  # positions (tilt order) with a planted problem
SHAPE = (240, 320)  # (ny, nx)


def acquisition() -> Acquisition:
    return Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=2.0, tilt_axis_deg=85.0)


def write_series(path, rng):
    """Views with Beer–Lambert dimming, one dark view; returns the stack (tilt order)."""
    base = rng.normal(0, 1, SHAPE)
    stack = np.stack(
        [100 * np.exp(-0.5 / np.cos(np.deg2rad(t))) * (1 + 0.2 * base) + rng.normal(0, 2, SHAPE) for t in TILTS]
    ).astype(np.float32)
    stack[DARK] *= 0.02
    write_mrc(path, stack, voxel_size_a=2.0)
    return stack


def build_project(root):
    store = ProjectStore(root)
    run = store.create_run("motion-ctf", {}, {"input": "0.TiltSeriesM"})
    rd = store.run_dir(run.id)
    rng = np.random.default_rng(0)
    series, ctfs, stacks = [], [], {}
    for ts_id in ("TS_01", "TS_02"):
        stacks[ts_id] = write_series(rd / f"{ts_id}.mrc", rng)
        images = [
            TiltImage(
                tilt_angle_deg=t,
                acquisition_order=o,
                dose_prior_e_a2=3.0 * (o - 1),
                dose_e_a2=3.0,
                dose_accumulated_e_a2=3.0 * o,
                file=str(rd / f"{ts_id}.mrc"),
                index=i,
                total_motion_px=30.0 if i == MOVING else 2.0 + 0.1 * i,
            )
            for i, (t, o) in enumerate(zip(TILTS, ORDERS, strict=False))
        ]
        series.append(TiltSeries(ts_id, acquisition(), images, (SHAPE[1], SHAPE[0])))
        items = []
        for i, (t, o) in enumerate(zip(TILTS, ORDERS, strict=False)):
            du = 30000.0 + 10.0 * t + (9000.0 if i == DEFOCUS_BAD else 50.0 * ((-1) ** i))
            items.append(CtfTomo(o, t, du, du - 600.0, 30.0, 0.0, 8.0 + 0.1 * i, 0.2))
        ctfs.append(CtfTomoSeries(ts_id, items))
    spectrum = rd / "spectra" / "TS_01_001.png"
    spectrum.parent.mkdir()
    spectrum.write_bytes(encode_png_gray8(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)))
    first = ctfs[0].items[3]  # acquisition order 1
    first.spectrum_file = store.relpath(spectrum)
    first.attrs = {"radial_profile": {"k": [0.01, 0.02, 0.03], "observed": [0.5, 0.2, 0.4], "fitted": [0.6, 0.1, 0.5]}}
    store.finish_run(run.id, {"TiltSeries": TiltSeriesSet("TiltSeries", series), "CTFTomoSeries": CtfSeriesSet(ctfs)})
    return store, stacks


@pytest.fixture
def project(tmp_path):
    store, stacks = build_project(tmp_path / "proj")
    app = create_app(store, TOKEN)
    client = TestClient(app, headers={TOKEN_HEADER: TOKEN})
    return store, app, client, stacks


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # (width, height)


def test_token_refused_then_cookie(tmp_path):
    store, _ = build_project(tmp_path / "proj")
    client = TestClient(create_app(store, TOKEN))
    assert client.get("/api/project").status_code == 403
    assert client.get("/").status_code == 403
    assert client.get("/static/app.js").status_code == 403
    assert client.get("/api/project", headers={TOKEN_HEADER: "wrong-token-but-long-enough"}).status_code == 403
    assert client.get("/api/project?token=nope").status_code == 403
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # token dropped from the address bar
    assert client.cookies.get(cookie_name(TOKEN)) == TOKEN
    assert client.get("/api/project").status_code == 200  # the cookie alone now
    assert "TomoViewer" in client.get("/").text


def test_lists_runs_and_outputs(project):
    store, _, client, _ = project
    p = client.get("/api/project").json()
    assert p["root"] == str(store.root)
    (run,) = p["runs"]
    assert run["step"] == "motion-ctf" and run["status"] == "finished"
    outs = {o["name"]: o for o in run["outputs"]}
    assert outs["TiltSeries"]["viewer"] == "tomo" and outs["CTFTomoSeries"]["viewer"] == "ctf"
    assert outs["TiltSeries"]["summary"] == "TiltSeries (2 items, 7 x 320 x 240, 2 Å/px)"


def test_series_and_views_fields(project):
    _, _, client, _ = project
    series = client.get("/api/outputs/1.TiltSeries/series").json()
    assert [s["ts_id"] for s in series] == ["TS_01", "TS_02"]
    s = series[0]
    assert (s["n_views"], s["tilt_min_deg"], s["tilt_max_deg"], s["tilt_axis_deg"]) == (7, -54.0, 54.0, 85.0)
    assert s["size_px"] == [320, 240] and s["n_excluded"] == 0 and not s["excluded"] and not s["is_movie"]
    views = client.get("/api/outputs/1.TiltSeries/series/TS_01/views").json()
    assert [v["position"] for v in views] == list(range(1, 8))
    assert [v["tilt_angle_deg"] for v in views] == TILTS
    assert [v["acquisition_order"] for v in views] == ORDERS
    assert [v["dose_accumulated_e_a2"] for v in views] == [3.0 * o for o in ORDERS]
    assert views[MOVING]["total_motion_px"] == 30.0
    v0 = views[0]  # defocus comes from the CTF set of the same run
    assert v0["defocus_source"] == "ctf"
    assert v0["defocus_u_a"] == pytest.approx(30000 - 540 + 50) and v0["defocus_v_a"] == pytest.approx(
        v0["defocus_u_a"] - 600
    )
    ctf_series = client.get("/api/outputs/1.CTFTomoSeries/series").json()
    assert ctf_series[0]["n_views"] == 7 and ctf_series[0]["tilt_axis_deg"] is None


def test_thumbnails_generated_and_cached(project):
    store, app, client, stacks = project
    url = "/api/outputs/1.TiltSeries/series/TS_01/views/3/thumbnail.png"  # acquisition order 3 = -18°
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert png_size(r.content) == (256, 192)  # longest side 256, aspect kept
    cache = app.state.cache
    assert cache.computed == 1
    (png,) = (store.root / ".cache" / "thumbs").glob("*.png")
    mtime = png.stat().st_mtime_ns
    assert client.get(url).content == r.content
    assert cache.computed == 1 and png.stat().st_mtime_ns == mtime  # second call: a file read
    p = client.get("/api/outputs/1.TiltSeries/series/TS_01/views/3/preview")
    assert p.headers["x-shape"] == "240,320"  # below 1024 px: full size
    data = np.frombuffer(p.content, "<f4").reshape(240, 320)
    np.testing.assert_allclose(data, stacks["TS_01"][2], rtol=1e-6)
    assert cache.computed == 1  # preview came from the same render
    write_mrc(store.run_dir(1) / "TS_01.mrc", stacks["TS_01"] + 1, voxel_size_a=2.0)  # rewritten file
    client.get(url)
    assert cache.computed == 2


def test_downsampling_known_answer_and_movie_average(tmp_path):
    small = torch.randn(30, 40, generator=torch.Generator().manual_seed(0))
    big = torch.kron(small, torch.ones(8, 8))  # 240 x 320, each pixel an 8 x 8 block
    torch.testing.assert_close(downsample_to_max_2d(big, 40), small, rtol=1e-5, atol=1e-5)
    assert downsample_to_max_2d(big, 500).shape == (240, 320)
    import tifffile

    frames = np.random.default_rng(1).poisson(3.0, (4, 48, 64)).astype(np.uint8)
    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, frames, photometric="minisblack")  # one page per frame, as cameras write
    cache = ThumbnailCache(tmp_path / "cache", preview_px=32)
    ref = ImageRef(movie, None)
    assert cache.preview(ref).shape == (24, 32)
    stats = cache.stats(ref)
    assert stats.mean == pytest.approx(frames.mean(), rel=1e-6)
    assert stats.std == pytest.approx(frames.astype(np.float64).mean(0).std(), rel=1e-3)


def test_exclude_and_undo_update_curation_rows(project):
    store, _, client, _ = project
    out = store.resolve("1.TiltSeries")
    url = "/api/outputs/1.TiltSeries"
    r = client.post(f"{url}/exclude", json={"ts_id": "TS_01", "views": [3]}).json()
    assert r == {"changed": 1, "undo_depth": 1}
    assert exclusions(store, out) == {("TS_01", 3): True}
    assert client.post(f"{url}/exclude", json={"ts_id": "TS_01", "views": [3]}).json()["changed"] == 0
    r = client.post(f"{url}/exclude", json={"beyond_deg": 40}).json()  # ±54° of both series
    assert r["changed"] == 4
    views = client.get(f"{url}/series/TS_02/views").json()
    assert [v["excluded"] for v in views] == [True, False, False, False, False, False, True]
    client.post(f"{url}/exclude", json={"ts_id": "TS_02"})
    assert [s["excluded"] for s in client.get(f"{url}/series").json()] == [False, True]
    assert client.post(f"{url}/undo").json() == {"changed": 1, "undo_depth": 2}
    assert [s["excluded"] for s in client.get(f"{url}/series").json()] == [False, False]
    client.post(f"{url}/undo")
    flags = exclusions(store, out)
    assert flags[("TS_01", 3)] and not any(v for k, v in flags.items() if k != ("TS_01", 3))
    client.post(f"{url}/undo")
    assert not any(exclusions(store, out).values())
    assert client.post(f"{url}/undo").json() == {"changed": 0, "undo_depth": 0}


def test_bad_requests_are_clear(project):
    _, _, client, _ = project
    url = "/api/outputs/1.TiltSeries/exclude"
    r = client.post(url, json={"ts_id": "TS_99", "views": [1]})
    assert r.status_code == 400 and "TS_99" in r.json()["detail"]
    r = client.post(url, json={"ts_id": "TS_01", "views": [42]})
    assert r.status_code == 400 and "42" in r.json()["detail"]
    assert client.post(url, json={"ts_id": "TS_01", "views": [1], "beyond_deg": 50}).status_code == 400
    assert client.post(url, json={"ts_id": "TS_01", "path": "/etc/passwd"}).status_code == 422
    assert client.get("/api/outputs/1.Nope/series").status_code == 404
    assert client.get("/api/outputs/1.TiltSeries/series/TS_01/views/99/thumbnail.png").status_code == 404


def test_save_without_and_with_restack(project):
    store, _, client, stacks = project
    url = "/api/outputs/1.TiltSeries"
    client.post(f"{url}/exclude", json={"ts_id": "TS_01", "views": [7, 3]})  # -54° and -18°
    client.post(f"{url}/exclude", json={"ts_id": "TS_02"})
    r = client.post(f"{url}/save", json={"restack": False}).json()
    assert r["pointer"] == "1.TiltSeries_2" and r["type"] == "TiltSeries"
    kept = store.load(store.resolve("1.TiltSeries_2"))
    assert [im.enabled for im in kept.items[0].images] == [False, True, False, True, True, True, True]
    assert [s.enabled for s in kept.items] == [True, False]
    r = client.post(f"{url}/save", json={"restack": True}).json()
    assert r["pointer"] == "1.TiltSeries_3"
    restacked = store.load(store.resolve("1.TiltSeries_3"))
    assert [s.ts_id for s in restacked.items] == ["TS_01"]
    images = restacked.items[0].images
    assert [im.acquisition_order for im in images] == [5, 1, 2, 4, 6]
    assert [im.dose_accumulated_e_a2 for im in images] == [15.0, 3.0, 6.0, 12.0, 18.0]
    new_stack = read_stack(images[0].file)
    assert new_stack.shape == (5, 240, 320) and [im.index for im in images] == list(range(5))
    np.testing.assert_array_equal(new_stack, stacks["TS_01"][[1, 3, 4, 5, 6]])
    names = [o["name"] for o in client.get("/api/project").json()["runs"][0]["outputs"]]
    assert names == ["TiltSeries", "CTFTomoSeries", "TiltSeries_2", "TiltSeries_3"]


def test_ctf_viewer_exclusion_and_save(project):
    store, _, client, _ = project
    url = "/api/outputs/1.CTFTomoSeries"
    d = client.get(f"{url}/ctf/TS_01").json()
    assert d["nyquist_per_a"] == pytest.approx(0.25)  # acquisition found through the run's tilt series
    assert [c["tilt_angle_deg"] for c in d["items"]] == TILTS
    first = d["items"][3]
    assert first["has_spectrum_file"] and first["radial_profile"]["fitted"] == [0.6, 0.1, 0.5]
    assert first["zeros_u_per_a"][0] < first["zeros_v_per_a"][0]  # larger defocus, closer first zero
    sug = client.get(f"{url}/ctf/TS_01/suggestions").json()
    assert [(s["kind"], s["view"]) for s in sug] == [("defocus", ORDERS[DEFOCUS_BAD])]
    client.post(f"{url}/exclude", json={"ts_id": "TS_01", "views": [ORDERS[DEFOCUS_BAD]], "reason": "auto:defocus"})
    assert client.get(f"{url}/ctf/TS_01/suggestions").json() == []  # accepted: no longer suggested
    r = client.post(f"{url}/save", json={}).json()
    assert r["pointer"] == "1.goodSetOfCTFTomoSeries2" and r["type"] == "CTFTomoSeries"
    good = store.load(store.resolve(r["pointer"]))
    assert good.attrs["bad"] == ["TS_01:3"]
    assert [c.enabled for c in good.items[0].items] == [True, True, False, True, True, True, True]


def test_spectrum_file_model_and_refusals(project):
    store, _, client, _ = project
    url = "/api/outputs/1.CTFTomoSeries/ctf/TS_01"
    r = client.get(f"{url}/1/spectrum.png")
    spectrum = store.run_dir(1) / "spectra" / "TS_01_001.png"
    assert r.headers["x-spectrum-source"] == "file" and r.content == spectrum.read_bytes()
    r = client.get(f"{url}/2/spectrum.png")
    assert r.headers["x-spectrum-source"] == "model" and png_size(r.content) == (256, 256)


def test_path_traversal_refused(project, tmp_path):
    store, _, client, _ = project
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    for path in [
        "/static/../project.sqlite",
        "/static/%2e%2e/project.sqlite",
        "/static/..%2fproject.sqlite",
        "/api/outputs/..%2Fproject.sqlite/series",
        "/api/outputs/1.TiltSeries/series/..%2F..%2Fproject.sqlite/views",
        f"/api/outputs/1.TiltSeries/series/TS_01/views/1/thumbnail.png?file={secret}",
    ]:
        r = client.get(path)
        assert b"SQLite format" not in r.content and b"top secret" not in r.content
        assert r.status_code in (200, 404) if "thumbnail" in path else r.status_code == 404, path
    # an item whose spectrum_file names a file outside the project that is not an image: refused
    run = store.create_run("ctf", {}, {})
    bad = CtfSeriesSet([CtfTomoSeries("TS_01", [CtfTomo(1, 0.0, 3e4, 3e4, 0.0, spectrum_file=str(secret))])])
    store.finish_run(run.id, {"CTFTomoSeries": bad})
    r = client.get(f"/api/outputs/{run.id}.CTFTomoSeries/ctf/TS_01/1/spectrum.png")
    assert r.status_code == 404 and b"top secret" not in r.content


def test_tilt_series_suggestions(project):
    _, _, client, _ = project
    sug = client.get("/api/outputs/1.TiltSeries/series/TS_01/suggestions").json()
    found = {(s["kind"], s["view"]) for s in sug}
    assert found == {("dark", ORDERS[DARK]), ("motion", ORDERS[MOVING]), ("defocus", ORDERS[DEFOCUS_BAD])}


def test_repeated_suggestions_reuse_the_detectors_findings(project, monkeypatch):
    """Issue 13: the suggestions endpoint ran every detector again on every request (most of its time
    under load). An unchanged series' findings are reused; an exclusion, or a rewritten view, still
    shows at the next request."""
    store, _, client, stacks = project
    runs = {"flag_dark_views": 0, "flag_intensity_drops": 0, "flag_defocus_outliers": 0}

    def counted(name):
        real = getattr(core_quality, name)

        def detector(*args, **kwargs):
            runs[name] += 1
            return real(*args, **kwargs)

        return detector

    for name in runs:
        monkeypatch.setattr(core_quality, name, counted(name))
    url = "/api/outputs/1.TiltSeries/series/TS_01/suggestions"
    first = client.get(url).json()
    assert [client.get(url).json() for _ in range(3)] == [first] * 3
    assert all(n <= 1 for n in runs.values()), runs  # today: once per request
    assert ("dark", ORDERS[DARK]) in {(s["kind"], s["view"]) for s in first}
    client.post("/api/outputs/1.TiltSeries/exclude", json={"ts_id": "TS_01", "views": [ORDERS[DARK]]})
    assert ("dark", ORDERS[DARK]) not in {(s["kind"], s["view"]) for s in client.get(url).json()}  # excluded
    stack = stacks["TS_01"].copy()
    stack[DARK] = stack[DARK + 1]  # the dark view retaken: no longer dark
    write_mrc(store.run_dir(1) / "TS_01.mrc", stack, voxel_size_a=2.0)
    client.post("/api/outputs/1.TiltSeries/undo")
    assert "dark" not in {s["kind"] for s in client.get(url).json()}


def test_thumbnail_served_from_memory_when_the_cache_disk_is_full(project, monkeypatch, caplog):
    """Issue 13: an uncached thumbnail answered 500 when the cache could not be written. The view
    rendered in memory is served, the write skipped with one log line, and nothing half-written stays."""
    store, _, client, stacks = project
    real_write = thumbnails._atomic_write

    def disk_full(path, data):  # room for the small PNG, not for the preview after it
        if path.suffix != ".png":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(thumbnails, "_atomic_write", disk_full)
    url = "/api/outputs/1.TiltSeries/series/TS_01/views/3/thumbnail.png"
    with caplog.at_level(logging.WARNING, logger="tiltflow.web.thumbnails"):
        r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert png_size(r.content) == (256, 192)
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "tiltflow.web.thumbnails"]
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
    cached = store.root / ".cache" / "thumbs"
    assert not cached.exists() or not any(cached.iterdir())
    p = client.get("/api/outputs/1.TiltSeries/series/TS_01/views/3/preview")
    assert p.status_code == 200 and p.headers["x-shape"] == "240,320"
    np.testing.assert_allclose(np.frombuffer(p.content, "<f4").reshape(240, 320), stacks["TS_01"][2], rtol=1e-6)
    sug = client.get("/api/outputs/1.TiltSeries/series/TS_01/suggestions")
    assert sug.status_code == 200 and ("dark", ORDERS[DARK]) in {(s["kind"], s["view"]) for s in sug.json()}
    monkeypatch.undo()  # space again: the next request fills the cache
    assert client.get(url).content == r.content and len(list(cached.glob("*.png"))) == 1


def test_missing_image_file_is_a_clear_404(project):
    store, _, client, _ = project
    (store.run_dir(1) / "TS_02.mrc").unlink()
    r = client.get("/api/outputs/1.TiltSeries/series/TS_02/views/1/thumbnail.png")
    assert r.status_code == 404 and "TS_02.mrc: image file not found" in r.json()["detail"]
    sug = client.get("/api/outputs/1.TiltSeries/series/TS_02/suggestions")
    assert sug.status_code == 200  # image flags need the pixels; motion and CTF flags still come
    assert {s["kind"] for s in sug.json()} == {"motion", "defocus"}


def test_reading_while_runs_register(project):
    store, _, client, _ = project
    template = store.load(store.resolve("1.TiltSeries"))
    errors = []

    def writer():
        try:
            for i in range(15):
                run = store.create_run("import-tilt-series", {"i": i}, {})
                store.finish_run(run.id, {"TiltSeries": template})
        except Exception as err:  # noqa: BLE001 - any error in the writer fails the test below
            errors.append(err)

    t = threading.Thread(target=writer)
    t.start()
    n = 0
    while t.is_alive() or n < 5:
        for path in [
            "/api/project",
            "/api/outputs/1.TiltSeries/series",
            "/api/outputs/1.TiltSeries/series/TS_01/views",
        ]:
            r = client.get(path)
            assert r.status_code == 200, r.text
        n += 1
    t.join()
    assert not errors
    assert len(client.get("/api/project").json()["runs"]) == 16


def test_ctf_zero_frequencies_are_zeros():
    kw = {"voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}
    zeros = ctf_zero_frequencies(25000.0, k_max_per_a=0.25, **kw)
    assert len(zeros) > 10 and zeros == sorted(zeros) and zeros[-1] <= 0.25
    values = ctf_1d(torch.tensor(zeros, dtype=torch.float64), defocus_a=25000.0, **kw)
    assert values.abs().max().item() < 1e-9
    mids = torch.tensor([(a + b) / 2 for a, b in itertools.pairwise(zeros)], dtype=torch.float64)
    assert ctf_1d(mids, defocus_a=25000.0, **kw).abs().min().item() > 0.3  # real zeros, none skipped
    # first zero of a weak-phase CTF: k ≈ sqrt((1 - arcsin(A)/pi) / (lam df)) when Cs is negligible
    lam = 0.019687
    assert zeros[0] == pytest.approx(np.sqrt((1 - np.arcsin(0.07) / np.pi) / (lam * 25000.0)), rel=0.01)


def test_view_command_prints_token_url(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tiltflow.cli import view

    build_project(tmp_path / "proj")
    served = {}
    monkeypatch.setattr(view, "serve", lambda app, host, port: served.update(app=app, host=host, port=port))
    r = CliRunner().invoke(view.view_command, ["-p", str(tmp_path / "proj"), "--port", "0", "--no-browser"])
    assert r.exit_code == 0, r.output
    assert served["host"] == "127.0.0.1" and served["port"] > 0
    url = next(line.strip() for line in r.output.splitlines() if "token=" in line)
    assert url.startswith(f"http://127.0.0.1:{served['port']}/?token=")
    token = url.split("token=")[1]
    client = TestClient(served["app"])
    assert client.get("/api/project").status_code == 403
    assert client.get("/api/project", headers={TOKEN_HEADER: token}).status_code == 200
    r = CliRunner().invoke(view.view_command, ["-p", str(tmp_path / "proj"), "--port", "0", "--no-browser", "--json"])
    info = json.loads(r.output)
    assert info["port"] == served["port"] and info["url"].split("token=")[1] != token  # a fresh token per start
    r = CliRunner().invoke(view.view_command, ["-p", str(tmp_path / "missing"), "--no-browser"])
    assert r.exit_code == 2 and "no tiltflow project" in r.output


def test_movie_set_shows_motion_corrected_sums_when_a_run_made_them(tmp_path):
    import tifffile

    store = ProjectStore(tmp_path / "proj")
    rng = np.random.default_rng(2)
    movies = []
    for i in range(3):
        frames = rng.poisson(5.0, (3, 48, 64)).astype(np.uint8)
        path = tmp_path / f"TS_01_{i:03d}.tif"
        tifffile.imwrite(path, frames, photometric="minisblack")
        movies.append((path, frames))
    imp = store.create_run("import-movies", {}, {})
    images = [
        TiltImage(
            tilt_angle_deg=t,
            acquisition_order=o,
            dose_prior_e_a2=0.0,
            dose_e_a2=3.0,
            dose_accumulated_e_a2=3.0 * o,
            file=str(path),
            index=None,
            frames=3,
        )
        for (path, _), t, o in zip(movies, TILTS[:3], [3, 1, 2], strict=False)
    ]
    store.finish_run(
        imp.id, {"TiltSeriesM": TiltSeriesSet("TiltSeriesM", [TiltSeries("TS_01", acquisition(), images, (64, 48))])}
    )
    client = TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})
    url = f"/api/outputs/{imp.id}.TiltSeriesM/series/TS_01/views"
    views = client.get(url).json()
    assert views[0]["picture"] == "average of 3 frames, no gain correction" and views[0]["total_motion_px"] is None
    avg = np.frombuffer(client.get(f"{url}/3/preview").content, "<f4").reshape(48, 64)
    np.testing.assert_allclose(avg, movies[0][1].mean(0), rtol=1e-6)
    # a motion-correction run on the movies: its sums are shown instead, with its per-tilt motion
    mc = store.create_run("motion-ctf", {}, {"input": f"{imp.id}.TiltSeriesM"})
    sums = rng.normal(0, 1, (3, 48, 64)).astype(np.float32)
    write_mrc(store.run_dir(mc.id) / "TS_01.mrc", sums, voxel_size_a=2.0)
    corrected = [
        TiltImage(
            tilt_angle_deg=im.tilt_angle_deg,
            acquisition_order=im.acquisition_order,
            dose_prior_e_a2=0.0,
            dose_e_a2=3.0,
            dose_accumulated_e_a2=im.dose_accumulated_e_a2,
            file=str(store.run_dir(mc.id) / "TS_01.mrc"),
            index=i,
            total_motion_px=1.5 + i,
        )
        for i, im in enumerate(images)
    ]
    store.finish_run(
        mc.id, {"TiltSeries": TiltSeriesSet("TiltSeries", [TiltSeries("TS_01", acquisition(), corrected, (64, 48))])}
    )
    views = client.get(url).json()
    assert [v["picture"] for v in views] == [f"motion-corrected sum TS_01.mrc[{i}]" for i in range(3)]
    assert [v["total_motion_px"] for v in views] == [1.5, 2.5, 3.5]
    for i, order in enumerate([3, 1, 2]):
        shown = np.frombuffer(client.get(f"{url}/{order}/preview").content, "<f4").reshape(48, 64)
        np.testing.assert_array_equal(shown, sums[i])
