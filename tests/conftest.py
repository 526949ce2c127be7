import contextlib
import os
import secrets
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI cannot turn red by chance; run with
# HYPOTHESIS_PROFILE=explore to draw new ones (a failure found that way becomes a plain test).
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]


def corpus_dir() -> Path:
    return Path(os.environ.get("TILTFLOW_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture
def corpus() -> Path:
    path = corpus_dir()
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """The machine is shared; one torch thread is faster than oversubscribed ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHROMIUM = Path(os.environ.get("TILTFLOW_CHROMIUM", "/usr/bin/chromium"))
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


@contextlib.contextmanager
def _viewer_page(store):
    """Serve ``store``'s viewer and yield a headless Chromium page on its project page; the page
    must raise no JavaScript error. Skips without Debian's chromium, playwright or uvicorn."""
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    from tiltflow.web.app import create_app
    from tiltflow.web.server import serve_in_thread

    token = secrets.token_urlsafe(24)
    errors: list[str] = []
    with serve_in_thread(create_app(store, token)) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        p = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        p.set_default_timeout(30_000)
        p.on("pageerror", lambda err: errors.append(str(err)))
        p.goto(f"{base}/?token={token}")
        p.wait_for_selector("#runs .run")
        yield p
        browser.close()
    assert not errors, errors


@pytest.fixture
def viewer_page():
    """``viewer_page(store)``: a context manager giving a browser page on the store's viewer."""
    return _viewer_page
