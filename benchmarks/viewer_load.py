"""The viewer under load (issue 13 item 7): concurrent clients browse a 5 x 41 project's pages and
thumbnails; p50 / p95 / max latency per endpoint. Target: p95 under 200 ms.

The project is what ``motion-ctf`` leaves: 5 tilt series of 41 views (motion-corrected stacks) and
their per-tilt CTF with a saved spectrum PNG per view. Scaling: the views are 720 x 512 px — the
course's 5760 x 4092 frames binned 8 — so the project is written in seconds (thumbnails are
256 px and previews 1024 px at most whatever the view size, so the viewer's work per request is
much the same; reading a section of a full-size sum takes longer on a cold cache).

The viewer runs as ``tiltflow view`` in its own process (uvicorn, the same code users run); the
clients are threads of this process with one HTTP connection each. Each client opens the project,
then visits ``--visits`` random tilt series the way the page does: series list, views, every
thumbnail, suggestions, CTF table, spectra, one full preview. A thumbnail's first request renders
it (``thumbnail, first``), later ones are served from the cache (``thumbnail, cached``).

Run: .venv/bin/python benchmarks/viewer_load.py [--clients 20 --series 5 --tilts 41 --size 720 512]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from tiltflow.io.mrc import write_mrc
from tiltflow.web.app import TOKEN_HEADER
from tiltflow.web.thumbnails import encode_png_gray8
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


def build_project(root: Path, n_series: int, n_tilts: int, size: tuple[int, int], seed: int = 0) -> None:
    """A motion-ctf run: stacks (views with Beer-Lambert dimming and texture) and CTF with spectra."""
    nx, ny = size
    store = ProjectStore(root)
    run = store.create_run("motion-ctf", {}, {"input": "1.TiltSeriesM"})
    rd = store.run_dir(run.id)
    rng = np.random.default_rng(seed)
    angles = np.linspace(-60.0, 60.0, n_tilts)
    orders = np.argsort(np.argsort(np.abs(angles), kind="stable"), kind="stable") + 1  # dose-symmetric-ish
    acq = Acquisition(voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, pixel_size_a=2.76 * 8, tilt_axis_deg=85.0)
    series, ctfs = [], []
    yy, xx = np.mgrid[0:256, 0:256] - 128.0
    ring = np.hypot(yy, xx)
    for s in range(n_series):
        ts_id = f"TS_{s + 1:02d}"
        texture = rng.normal(0.0, 1.0, (ny, nx)).astype(np.float32)
        stack = np.stack(
            [
                100 * np.exp(-0.5 / np.cos(np.deg2rad(a))) * (1 + 0.2 * texture)
                + rng.normal(0, 2, (ny, nx)).astype(np.float32)
                for a in angles
            ]
        ).astype(np.float32)
        write_mrc(rd / f"{ts_id}.mrc", stack, voxel_size_a=acq.pixel_size_a)
        (rd / "ctf").mkdir(exist_ok=True)
        images, items = [], []
        for i, (a, o) in enumerate(zip(angles, orders, strict=False)):
            images.append(
                TiltImage(
                    tilt_angle_deg=float(a),
                    acquisition_order=int(o),
                    dose_prior_e_a2=3.0 * (o - 1),
                    dose_e_a2=3.0,
                    dose_accumulated_e_a2=3.0 * o,
                    file=str(rd / f"{ts_id}.mrc"),
                    index=i,
                    total_motion_px=float(rng.uniform(1, 6)),
                )
            )
            du = 30000.0 + 20.0 * a + rng.normal(0, 200)
            spectrum = rd / "ctf" / f"{ts_id}_{int(o):03d}.png"
            picture = (127 + 100 * np.cos(ring * (0.15 + 0.002 * i))).clip(0, 255).astype(np.uint8)
            spectrum.write_bytes(encode_png_gray8(picture))
            item = CtfTomo(int(o), float(a), du, du - 500.0, 30.0, 0.0, 8.0, 0.2)
            item.spectrum_file = store.relpath(spectrum)
            items.append(item)
        series.append(TiltSeries(ts_id, acq, images, (nx, ny)))
        ctfs.append(CtfTomoSeries(ts_id, items))
    store.finish_run(run.id, {"TiltSeries": TiltSeriesSet("TiltSeries", series), "CTFTomoSeries": CtfSeriesSet(ctfs)})


def start_viewer(root: Path) -> tuple[subprocess.Popen, str, str]:
    """``tiltflow view`` in its own process; (process, base URL, token)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiltflow.cli.main", "view", "-p", str(root), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    assert proc.stdout is not None  # stdout=PIPE
    for line in proc.stdout:  # the token URL is printed once it listens
        m = re.search(r"(http://[^/\s]+)/\?token=(\S+)", line)
        if m:
            return proc, m.group(1), m.group(2)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the viewer did not print its URL")


class Recorder:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def get(self, client, what: str, url: str, first_kind: str | None = None) -> bytes:
        with self.lock:
            if first_kind is not None and url not in self.seen:
                self.seen.add(url)
                what = first_kind
        t0 = time.perf_counter()
        r = client.get(url)
        dt = time.perf_counter() - t0
        with self.lock:
            self.times[what].append(dt)
            if r.status_code != 200:
                self.errors[what] += 1
        return r.content if r.status_code == 200 else b""


def browse(base: str, token: str, rec: Recorder, n_series: int, visits: int, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=base, headers={TOKEN_HEADER: token}, timeout=120) as client:
        rec.get(client, "index page", "/")
        rec.get(client, "project", "/api/project")
        for _ in range(visits):
            ts = f"TS_{rng.randint(1, n_series):02d}"
            rec.get(client, "series list", "/api/outputs/1.TiltSeries/series")
            views = rec.get(client, "views", f"/api/outputs/1.TiltSeries/series/{ts}/views")
            import json

            orders = [v["acquisition_order"] for v in json.loads(views or b"[]")]
            for order in orders:
                rec.get(
                    client,
                    "thumbnail, cached",
                    f"/api/outputs/1.TiltSeries/series/{ts}/views/{order}/thumbnail.png",
                    first_kind="thumbnail, first",
                )
            rec.get(client, "suggestions", f"/api/outputs/1.TiltSeries/series/{ts}/suggestions")
            rec.get(client, "CTF table", f"/api/outputs/1.CTFTomoSeries/ctf/{ts}")
            for order in rng.sample(orders, min(5, len(orders))):
                rec.get(client, "spectrum", f"/api/outputs/1.CTFTomoSeries/ctf/{ts}/{order}/spectrum.png")
            if orders:
                rec.get(client, "preview", f"/api/outputs/1.TiltSeries/series/{ts}/views/{rng.choice(orders)}/preview")


def table(rec: Recorder, wall: float) -> str:
    rows = ["| endpoint | requests | p50 ms | p95 ms | max ms | errors |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    everything: list[float] = []
    for what in sorted(rec.times, key=lambda k: -len(rec.times[k])):
        t = np.array(rec.times[what]) * 1000
        everything.extend(t)
        rows.append(
            f"| {what} | {len(t)} | {np.percentile(t, 50):.0f} | {np.percentile(t, 95):.0f} | {t.max():.0f} |"
            f" {rec.errors.get(what, 0)} |"
        )
    t = np.array(everything)
    rows.append(
        f"| **all** | {len(t)} | {np.percentile(t, 50):.0f} | {np.percentile(t, 95):.0f} | {t.max():.0f} |"
        f" {sum(rec.errors.values())} |"
    )
    return "\n".join(rows) + f"\n\n{len(t)} requests in {wall:.1f} s ({len(t) / wall:.0f} per second)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--series", type=int, default=5)
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--size", type=int, nargs=2, default=(720, 512), metavar=("NX", "NY"))
    ap.add_argument("--visits", type=int, default=2, help="tilt series each client opens")
    ap.add_argument("--keep", type=Path, default=None, help="build the project here (and keep it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="viewer-load-") as tmp:
        root = args.keep or Path(tmp) / "p"
        t0 = time.perf_counter()
        if not (root / "project.sqlite").exists():
            build_project(root, args.series, args.tilts, tuple(args.size))
        built = time.perf_counter() - t0
        proc, base, token = start_viewer(root)
        try:
            rec = Recorder()
            threads = [
                threading.Thread(target=browse, args=(base, token, rec, args.series, args.visits, i))
                for i in range(args.clients)
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"project: {args.series} x {args.tilts} views of {args.size[0]} x {args.size[1]} px (built in {built:.1f} s); "
        f"{args.clients} clients x {args.visits} tilt series each; viewer pid apart, {os.cpu_count()} CPUs"
    )
    print(table(rec, wall))


if __name__ == "__main__":
    main()
