"""Screenshots of the curation viewer for the README (TomoViewer and CTF viewer).

    python docs/make_screenshots.py                # builds a simulated project (about a minute)
    python docs/make_screenshots.py --project P    # or a copy of yours (its first tilt-series and CTF sets)

Needs the web extra, Playwright (``pip install playwright``) and a Chromium: Debian's
``/usr/bin/chromium`` by default (``--chromium PATH``); ``playwright install`` is not needed.
The simulated project: ``tiltflow demo-data`` (2 series, 15 tilts of 1024 x 1024 px, ±56°) ->
``import-movies`` -> ``motion-ctf``. In the TomoViewer the views beyond ±54° and one more are
excluded (red); in the CTF viewer the suggested defocus outliers are accepted (red crosses).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

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
SIZE = {"width": 1400, "height": 900}


def build_demo_project(root: Path):
    """Simulated movies -> import-movies -> motion-ctf; returns the project store."""
    import torch

    from tiltflow.testing.demo import DemoConfig, write_demo_dataset
    from tiltflow.workflow.runner import run_step
    from tiltflow.workflow.store import ProjectStore

    torch.set_num_threads(1)
    data = root / "data"
    write_demo_dataset(
        data,
        DemoConfig(
            n_series=2, n_tilts=15, tilt_step_deg=8.0, size=(1024, 1024), n_frames=4, seed=1, local_motion=False
        ),
        force=True,
    )
    store = ProjectStore(root / "project")
    imp = run_step(store, "import-movies", {"files": str(data), "gain": str(data / "gain_ref.gain")})
    run_step(
        store,
        "motion-ctf",
        {"window_px": 256, "ctf_range_a": [30.0, 7.0], "motion_grid": [1, 1, 1]},
        {"input": str(imp.id)},
    )
    return store


def save_png(page, path: Path) -> None:
    """The page as a 256-colour PNG, about a third of the bytes: 128 greys (every second level, for
    the images) and 128 colours chosen for the page, each pixel mapped to the nearest of them."""
    import io

    import numpy as np
    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    rgb = np.asarray(shot)
    colours = np.array(shot.quantize(colors=128, method=Image.Quantize.MAXCOVERAGE).getpalette()[: 128 * 3])
    palette = np.concatenate([np.repeat(np.arange(0, 256, 2), 3), colours]).reshape(-1, 3)
    unique, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    nearest = ((unique[:, None, :].astype(np.int32) - palette[None].astype(np.int32)) ** 2).sum(-1).argmin(1)
    out = Image.fromarray(nearest[inverse.ravel()].reshape(rgb.shape[:2]).astype(np.uint8), mode="P")
    out.putpalette(palette.astype(np.uint8).ravel().tolist())
    out.save(path, optimize=True)


def first_output(store, types: tuple[str, ...]) -> str:
    for o in store.outputs():
        if o.type in types:
            return o.pointer
    raise SystemExit(f"{store.root}: no {' or '.join(types)} output to show")


def open_output(page, pointer: str) -> None:
    """From the project page, as a user: the output's "open in ..." button."""
    page.click("nav button[data-tab='project']")
    page.click(f"#runs button[data-pointer='{pointer}']")


def tomo_viewer(page, pointer: str, path: Path) -> None:
    open_output(page, pointer)
    page.wait_for_selector("#gallery .thumb img")
    page.fill("#beyond", "54")
    page.click("#beyond-this")
    page.wait_for_selector("#gallery .thumb.excluded")
    page.click("#gallery .thumb[data-i='4'] button.x")  # one more view, by its ✕
    page.wait_for_selector("#gallery .thumb[data-i='4'].excluded")
    page.click("#gallery .thumb[data-i='4'] img")  # show it in the preview
    page.wait_for_function("document.querySelector('#preview').width > 16")
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)")
    save_png(page, path)


def ctf_viewer(page, pointer: str, path: Path) -> None:
    open_output(page, pointer)
    page.wait_for_selector("#ctf-plot svg .pt")
    if page.locator("#ctf-accept-all").count():
        page.click("#ctf-accept-all")
        page.wait_for_selector("#ctf-plot svg .pt.bad")
    rows = page.locator("#ctf-table tr[data-i]")
    rows.nth(rows.count() // 2 + 1).click()  # a tilt near 0°
    page.wait_for_function(
        "document.querySelector('#spectrum').complete && document.querySelector('#spectrum').naturalWidth > 0"
    )
    save_png(page, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, help="an existing project (default: build a simulated one)")
    ap.add_argument(
        "--keep-demo",
        type=Path,
        help="build the simulated project in this folder and keep it (reused when it is there)",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for the PNGs (default: docs/)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from tiltflow.web.app import create_app
    from tiltflow.web.server import serve_in_thread
    from tiltflow.workflow.curation import clear
    from tiltflow.workflow.store import ProjectStore

    with tempfile.TemporaryDirectory() as tmp:
        source = args.project
        if source is None:
            demo = args.keep_demo or Path(tmp) / "demo"
            source = (
                demo / "project" if (demo / "project" / "project.sqlite").is_file() else build_demo_project(demo).root
            )
        # curate a copy, from no exclusions: the shots are reproducible and the source stays as it was
        ProjectStore(source, create=False)
        shutil.copytree(source, Path(tmp) / "shown", ignore=shutil.ignore_patterns(".cache"))
        store = ProjectStore(Path(tmp) / "shown", create=False)
        for output in store.outputs():
            clear(store, output)
        token = secrets.token_urlsafe(24)
        args.out.mkdir(parents=True, exist_ok=True)
        with serve_in_thread(create_app(store, token)) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=SIZE)
            page.on("pageerror", lambda err: print(f"page error: {err}", file=sys.stderr))
            page.goto(f"{base}/?token={token}")  # sets the session cookie
            page.wait_for_selector("#runs .run")
            tomo_viewer(page, first_output(store, ("TiltSeries",)), args.out / "viewer_tomo.png")
            ctf_viewer(page, first_output(store, ("CTFTomoSeries",)), args.out / "viewer_ctf.png")
            browser.close()
    print(f"wrote {args.out / 'viewer_tomo.png'} and {args.out / 'viewer_ctf.png'}")


if __name__ == "__main__":
    main()
