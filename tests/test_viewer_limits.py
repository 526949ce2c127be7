"""The viewer's limits: no symlinks out of the project, 413 for large bodies, a Host check against
DNS rebinding — with the token model unchanged."""

import os
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from tiltflow.io.mrc import write_mrc
from tiltflow.io.png import encode_png_gray8
from tiltflow.web.app import TOKEN_HEADER, create_app
from tiltflow.web.limits import host_name
from tiltflow.web.server import serve_in_thread
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

TOKEN = "limits-token-0123456789abcdef"
TILTS = [-10.0, 0.0, 10.0]


def png(value: int) -> bytes:
    return encode_png_gray8(np.full((16, 16), value, np.uint8))


@pytest.fixture
def project(tmp_path):
    """TS_01 a stack of the project; TS_02 a symlink in the project to a stack outside it; spectra:
    order 1 a file, order 2 a symlink to a PNG outside, order 3 a symlink to a file inside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write_mrc(outside / "private.mrc", np.full((3, 32, 32), 7, np.float32), voxel_size_a=2.0)
    (outside / "private.png").write_bytes(png(200))
    store = ProjectStore(tmp_path / "proj")
    run = store.create_run("motion-ctf", {}, {})
    rd = store.run_dir(run.id)
    write_mrc(rd / "TS_01.mrc", np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32), voxel_size_a=2.0)
    os.symlink(outside / "private.mrc", rd / "TS_02.mrc")
    (rd / "spectra").mkdir()
    (rd / "spectra" / "1.png").write_bytes(png(50))
    os.symlink(outside / "private.png", rd / "spectra" / "2.png")
    os.symlink(rd / "spectra" / "1.png", rd / "spectra" / "3.png")
    acq = Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=2.0, tilt_axis_deg=0.0)
    series = [
        TiltSeries(
            ts,
            acq,
            [TiltImage(t, i + 1, 0.0, 3.0, 3.0, str(rd / f"{ts}.mrc"), i) for i, t in enumerate(TILTS)],
            (32, 32),
        )
        for ts in ("TS_01", "TS_02")
    ]
    ctf = CtfTomoSeries(
        "TS_01",
        [
            CtfTomo(i + 1, t, 3e4, 2.9e4, 10.0, spectrum_file=str(rd / "spectra" / f"{i + 1}.png"))
            for i, t in enumerate(TILTS)
        ],
    )
    store.finish_run(run.id, {"TiltSeries": TiltSeriesSet("TiltSeries", series), "CTFTomoSeries": CtfSeriesSet([ctf])})
    client = TestClient(create_app(store, TOKEN), headers={TOKEN_HEADER: TOKEN})
    return store, client


def test_symlinks_out_of_the_project_are_not_followed(project):
    store, client = project
    url = "/api/outputs/1.CTFTomoSeries/ctf/TS_01"
    r = client.get(f"{url}/1/spectrum.png")
    assert r.status_code == 200 and r.content == png(50)
    r = client.get(f"{url}/2/spectrum.png")
    assert r.status_code == 404 and r.content != png(200) and "not served" in r.json()["detail"]
    r = client.get(f"{url}/3/spectrum.png")  # a symlink within the project is fine
    assert r.status_code == 200 and r.content == png(50)
    views = "/api/outputs/1.TiltSeries/series"
    assert client.get(f"{views}/TS_01/views/1/thumbnail.png").status_code == 200
    for what in ("thumbnail.png", "preview"):
        r = client.get(f"{views}/TS_02/views/1/{what}")
        assert r.status_code == 404 and "not served" in r.json()["detail"], what
    assert client.get(f"{views}/TS_02/views").status_code == 200  # listing still works
    assert client.get(f"{views}/TS_02/suggestions").status_code == 200  # without the pixels
    assert len(list((store.root / ".cache" / "thumbs").glob("*.npy"))) == 1  # only TS_01 view 1 rendered


def test_large_bodies_get_413(project):
    store, client = project
    url = "/api/outputs/1.TiltSeries/exclude"
    big = b'{"ts_id": "TS_01", "views": [' + b"1, " * 700_000 + b"1]}"  # 2.1 MB of valid JSON
    start = time.monotonic()
    r = client.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and time.monotonic() - start < 2.0
    assert not exclusions(store, store.resolve("1.TiltSeries"))  # nothing was applied

    def chunks():  # no Content-Length: counted
        yield b'{"ts_id": "TS_01", "views": ['
        for _ in range(40):
            yield b"1, " * 20_000
        yield b"1]}"

    r = client.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert not exclusions(store, store.resolve("1.TiltSeries"))
    r = client.post(url, json={"ts_id": "TS_01", "views": [1]})  # a normal request still works
    assert r.status_code == 200 and r.json()["changed"] == 1


@pytest.mark.parametrize(
    "header, name",
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8000", "::1"),
        ("::1", "::1"),
        ("evil.example:80", "evil.example"),
    ],
)
def test_host_name(header, name):
    assert host_name(header) == name


def test_host_check_refuses_other_names(project):
    store, client = project
    for host in ("127.0.0.1:8123", "localhost:8123", "localhost", "[::1]:8123"):
        assert client.get("/api/project", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8123", "127.0.0.1.evil.example:8123"):
        r = client.get("/api/project", headers={"host": host})
        assert r.status_code == 400 and "Host" in r.json()["detail"], host
    r = client.get("/api/project", headers={"host": "evil.example", TOKEN_HEADER: "wrong-token-but-long-enough"})
    assert r.status_code == 400
    named = TestClient(create_app(store, TOKEN, hosts=["microscope-pc.lab"]), headers={TOKEN_HEADER: TOKEN})
    assert named.get("/api/project", headers={"host": "microscope-pc.lab:8000"}).status_code == 200
    assert named.get("/api/project", headers={"host": "evil.example:8000"}).status_code == 400


def test_real_server_checks_host_size_and_token(project):
    store, _ = project
    with serve_in_thread(create_app(store, TOKEN)) as base:
        port = base.rsplit(":", 1)[1]
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/api/project").status_code == 403  # token model unchanged
            assert http.get("/api/project", headers={TOKEN_HEADER: TOKEN}).status_code == 200
            r = http.get("/api/project", headers={TOKEN_HEADER: TOKEN, "host": f"rebound.example:{port}"})
            assert r.status_code == 400
            r = http.get("/api/project", headers={TOKEN_HEADER: TOKEN, "host": f"localhost:{port}"})
            assert r.status_code == 200
        with httpx.Client(base_url=base, timeout=30) as http:
            start = time.monotonic()
            r = http.post(
                "/api/outputs/1.TiltSeries/exclude",
                content=b" " * (16 << 20),
                headers={TOKEN_HEADER: TOKEN, "content-type": "application/json"},
            )
            assert r.status_code == 413 and time.monotonic() - start < 5.0
