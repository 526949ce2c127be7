"""The viewer's real page in headless Chromium (Debian's ``chromium``, driven by Playwright).

A small simulated project (demo-data -> import-movies -> motion-ctf) is curated in the browser as a
user would: one tilt series excluded with the space bar, two views by clicking their ✕, Save with
re-stack. The new output must hold exactly the views the simulator's truth says remain, with their
acquisition orders and doses; ``tiltflow subset`` must give the same. The CTF plot must draw one
point per fitted tilt, where the data put it; requests without the token get 403.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path(os.environ.get("TILTFLOW_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(
        f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)",
        allow_module_level=True,
    )
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip(
        "browser tests need Playwright (pip install playwright; it is in the dev extra)", allow_module_level=True
    )
pytest.importorskip("fastapi", reason="the viewer needs the web extra")
pytest.importorskip("uvicorn", reason="the viewer needs the web extra")

from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import read_section, read_stack
from tiltflow.web.app import create_app
from tiltflow.web.server import serve_in_thread
from tiltflow.workflow.store import ProjectStore

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SET = "2.TiltSeries"  # motion-ctf's tilt series
CTF_SET = "2.CTFTomoSeries"
DROP_SERIES = "TS_02"  # excluded with the space bar
KEEP_SERIES = "TS_01"
DROP_VIEWS = (2, 8)  # 1-based positions in tilt-angle order, excluded by clicking
TIMEOUT_MS = 30_000  # a loaded 2-core machine


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished project: 2 simulated series of 9 tilts, 256 x 256 px, motion-corrected + CTF."""
    import torch

    from tiltflow.testing.demo import DemoConfig, write_demo_dataset
    from tiltflow.workflow.runner import run_step

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("browser")
    write_demo_dataset(
        root / "data",
        DemoConfig(n_series=2, n_tilts=9, size=(256, 256), n_frames=4, seed=3, local_motion=False),
        force=True,
    )
    store = ProjectStore(root / "project")
    imp = run_step(store, "import-movies", {"files": str(root / "data"), "gain": str(root / "data" / "gain_ref.gain")})
    run_step(
        store,
        "motion-ctf",
        {"window_px": 128, "ctf_range_a": [30.0, 7.0], "motion_grid": [1, 1, 1]},
        {"input": str(imp.id)},
    )
    return root


@pytest.fixture
def store(template, tmp_path) -> ProjectStore:
    """A private copy of the template project (its items still read the template's stacks)."""
    shutil.copytree(template / "project", tmp_path / "project")
    return ProjectStore(tmp_path / "project", create=False)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def viewer(store):
    """(base URL, token) of the viewer on ``store``, served on a free 127.0.0.1 port."""
    token = secrets.token_urlsafe(24)
    with serve_in_thread(create_app(store, token)) as base:
        yield base, token


@pytest.fixture
def page(browser, viewer):
    """A page logged in with the token URL, showing the project's runs."""
    base, token = viewer
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda err: errors.append(str(err)))
    p.goto(f"{base}/?token={token}")
    p.wait_for_selector("#runs .run")
    yield p
    context.close()
    assert not errors, errors


def expected_after_exclusion(template: Path) -> list[tuple[float, int, float, float, float]]:
    """From the simulator's truth: (tilt°, acquisition order, prior dose, dose, accumulated dose) of
    the views of KEEP_SERIES left after DROP_VIEWS, in tilt-angle order."""
    truth = json.loads((template / "data" / "truth.json").read_text())
    (series,) = [s for s in truth["series"] if s["tsId"] == KEEP_SERIES]
    tilts = sorted(series["tilts"], key=lambda t: t["mdoc_tilt_angle_deg"])
    return [
        (
            t["mdoc_tilt_angle_deg"],
            t["acquisition_order"] + 1,
            t["prior_dose_e_a2"],
            t["dose_e_a2"],
            t["accumulated_dose_e_a2"],
        )
        for pos, t in enumerate(tilts, start=1)
        if pos not in DROP_VIEWS
    ]


def check_restacked(store: ProjectStore, pointer: str, template: Path) -> None:
    """``pointer`` holds KEEP_SERIES only, re-stacked without DROP_VIEWS, orders and doses kept."""
    new = ProjectStore(store.root, create=False)  # a fresh reader of what was committed
    subset = new.load(new.resolve(pointer))
    assert [s.ts_id for s in subset.items] == [KEEP_SERIES]
    images = subset.items[0].images
    got = [
        (im.tilt_angle_deg, im.acquisition_order, im.dose_prior_e_a2, im.dose_e_a2, im.dose_accumulated_e_a2)
        for im in images
    ]
    want = expected_after_exclusion(template)
    assert [g[1] for g in got] == [w[1] for w in want]  # acquisition orders, tilt-angle order
    np.testing.assert_allclose([g[:1] + g[2:] for g in got], [w[:1] + w[2:] for w in want], rtol=1e-6)
    assert all(im.enabled for im in images) and [im.index for im in images] == list(range(len(want)))
    stack = read_stack(images[0].file)  # the new stack: the kept sections, in order
    assert Path(images[0].file).is_relative_to(store.root) and stack.shape == (len(want), 256, 256)
    source = {
        im.acquisition_order: im for s in new.load(new.resolve(SET)).items if s.ts_id == KEEP_SERIES for im in s.images
    }
    for i, im in enumerate(images):
        src = source[im.acquisition_order]
        np.testing.assert_array_equal(stack[i], read_section(src.file, src.index))
        np.testing.assert_array_equal(read_section(im.even_file, i), read_section(src.even_file, src.index))


def test_curate_in_browser_space_bar_clicks_and_save_restack(page, store, template):
    page.click(f"#runs button[data-pointer='{SET}']")
    page.wait_for_selector("#gallery .thumb img")
    # a whole series with the space bar: its row takes the focus, Space excludes it
    page.click(f"#tomo-series tr.row[data-ts='{DROP_SERIES}'] td")
    page.keyboard.press("Space")
    page.wait_for_selector(f"#tomo-series tr.row.excluded[data-ts='{DROP_SERIES}']")
    # two views by clicking their ✕ in the gallery of the other series
    page.click(f"#tomo-series tr.row[data-ts='{KEEP_SERIES}'] td")
    page.wait_for_function(f"document.querySelector('#gallery .thumb img').src.includes('/series/{KEEP_SERIES}/')")
    for pos in DROP_VIEWS:
        page.click(f"#gallery .thumb[data-i='{pos - 1}'] button.x")
        page.wait_for_selector(f"#gallery .thumb.excluded[data-i='{pos - 1}']")
    assert page.locator("#gallery .thumb.excluded").count() == len(DROP_VIEWS)
    assert page.locator(f"#tomo-series tr.row[data-ts='{KEEP_SERIES}'] td.bad").inner_text() == str(len(DROP_VIEWS))
    assert page.locator("#tomo-series tr.row.excluded").count() == 1
    # Save -> "re-stack without them"
    page.click("#tomo-save")
    page.wait_for_selector("#save-dialog[open]")
    page.click("#save-restack")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('saved ')")
    assert page.locator("#status").inner_text().startswith(f"saved {SET}_2:")
    check_restacked(store, f"{SET}_2", template)
    source = store.load(store.resolve(SET))  # the viewed set itself is untouched
    assert all(s.enabled and all(im.enabled for im in s.images) for s in source.items)


def test_subset_cli_gives_the_same_output(store, template):
    views = ",".join(str(v) for v in DROP_VIEWS)
    result = CliRunner().invoke(
        build_cli(),
        [
            "subset",
            "-p",
            str(store.root),
            "--input",
            SET,
            "--exclude",
            DROP_SERIES,
            "--exclude-views",
            f"{KEEP_SERIES}:{views}",
            "--restack",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"{SET}_2" in result.output
    check_restacked(store, f"{SET}_2", template)


def test_ctf_plot_draws_one_point_per_tilt(page, store):
    ctf = {s.ts_id: s for s in store.load(store.resolve(CTF_SET)).items}[KEEP_SERIES]
    items = sorted(ctf.items, key=lambda c: c.tilt_angle_deg)
    page.click(f"#runs button[data-pointer='{CTF_SET}']")
    page.wait_for_selector("#ctf-plot svg g.series .pt")
    plotted = "#ctf-plot g.series[data-series='{}'] .pt"
    n_res = sum(c.fit_resolution_a is not None for c in items)
    assert page.locator(plotted.format("defocus U")).count() == len(items) == 9
    assert page.locator(plotted.format("defocus V")).count() == len(items)
    assert page.locator(plotted.format("fit resolution")).count() == n_res
    # where they are drawn: left to right by tilt, higher defocus higher up (smaller SVG y)
    xy = page.eval_on_selector_all(
        plotted.format("defocus U") + " circle", "cs => cs.map(c => [+c.getAttribute('cx'), +c.getAttribute('cy')])"
    )
    x, y = np.array(xy).T
    assert np.all(np.diff(x) > 0)
    np.testing.assert_array_equal(
        np.argsort(-y, kind="stable"), np.argsort([c.defocus_u_a for c in items], kind="stable")
    )
    # the spectrum of the selected tilt, with the fitted zeros drawn over it
    page.wait_for_function(
        "document.querySelector('#spectrum').complete && document.querySelector('#spectrum').naturalWidth > 0"
    )
    assert page.locator("#spectrum-rings ellipse").count() >= 1
    # exclude one tilt from the table: its three points turn into "excluded" markers
    page.click("#ctf-table tr[data-i='4'] button.x-btn")
    page.wait_for_selector("#ctf-plot .pt.bad")
    assert page.locator(plotted.format("defocus U") + ".bad").count() == 1
    assert page.locator("#ctf-plot .pt.bad").count() == 2 + (items[4].fit_resolution_a is not None)
    assert page.locator(plotted.format("defocus U")).count() == len(items)


def test_requests_without_the_token_get_403(browser, viewer, page):
    base, token = viewer
    stranger = browser.new_context()  # no cookie, no token
    try:
        r = stranger.request.get(f"{base}/")
        assert r.status == 403 and "token required" in r.json()["detail"]
        for path in ("/api/project", f"/api/outputs/{SET}/series", "/static/app.js"):
            assert stranger.request.get(base + path).status == 403, path
        assert stranger.request.get(f"{base}/api/project?token=wrong-{token}").status == 403
        shown = stranger.new_page()
        assert shown.goto(f"{base}/api/project").status == 403
    finally:
        stranger.close()
    # the logged-in page (cookie from the token URL) is served
    assert page.evaluate("fetch('/api/project').then(r => r.status)") == 200
