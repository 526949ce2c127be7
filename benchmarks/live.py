"""On the fly (issue 14): does ``tiltflow watch`` keep up with a microscope?

A real session: 41 tilts of 5760 x 4092 x 8 frames, one every 12 s. This machine cannot hold that at
full size, so the session is scaled: images of ``--size`` (default 1024 x 1024, 8 frames) and the tilt
interval scaled by the pixel ratio (12 s x 1024² / (5760 x 4092) = 0.53 s), which is exact when the
per-tilt work grows with the pixel count (it is FFT-bound, N log N: slightly faster than that, so the
scaled run is a little pessimistic). The session is simulated first (``demo-data``), then replayed into
the watched folder at that pace (``testing.live.replay_session``), so only the watch uses the CPU.

Printed per configuration (local threads, or a Dask LocalCluster, with N workers): per-tilt processing
time (median, 90th percentile) against the interval, the tilts' throughput, whether the watch keeps up
(the per-tilt work of N workers fits in the interval), and per series the lag from its last tilt to its
tomogram.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/live.py --tilts 11 --series 2 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

FULL_PX = 5760 * 4092
FULL_INTERVAL_S = 12.0


def run_one(
    source: Path,
    work: Path,
    interval_s: float,
    executor: str,
    workers: int,
    sets: list[str],
    n_tilts: int,
    device: str = "auto",
) -> dict:
    from tiltflow.testing.live import LiveScenario, replay_session
    from tiltflow.workflow.store import ProjectStore
    from tiltflow.workflow.watch.loop import WatchLoop
    from tiltflow.workflow.watch.settings import WatchSettings
    from tiltflow.workflow.workflow_file import apply_overrides, load_workflow

    data, project = work / "data", work / "project"
    shutil.rmtree(work, ignore_errors=True)
    writer = threading.Thread(target=replay_session, args=(source, data, LiveScenario(interval_s=interval_s)))
    writer.start()
    while not (data / "gain_ref.gain").exists():
        time.sleep(0.05)
    wf = load_workflow("tutorial")
    apply_overrides(wf, [f"import-movies.files={data}", f"import-movies.gain={data / 'gain_ref.gain'}", *sets])
    quiet = max(10.0, 4 * interval_s)
    settings = WatchSettings(
        interval_s=min(1.0, interval_s / 2),
        settle_s=min(2.0, interval_s),
        quiet_s=quiet,
        movie_timeout_s=10 * quiet,
        expected_tilts=n_tilts,
        stop_after_idle_s=quiet + 5,
        tilt_workers=workers,
    )
    options = {"workers": workers, "executor": executor, "threads_per_worker": 1, "device": device}
    t0 = time.time()
    loop = WatchLoop(data, ProjectStore(project), wf, settings, options, on_line=lambda line: print("   ", line))
    state = loop.run()
    writer.join()
    loop.close()
    records = [json.loads(p.read_text()) for p in (project / "watch" / "tilts").glob("*/records/*.json")]
    seconds = sorted(r["seconds"] for r in records)
    return {
        "executor": executor,
        "workers": workers,
        "tilts": len(seconds),
        "wall_s": time.time() - t0,
        "tilt_median_s": statistics.median(seconds),
        "tilt_p90_s": seconds[int(0.9 * (len(seconds) - 1))],
        "lags_s": [s.get("lag_s") for s in state["series"]],
        "states": [s["state"] for s in state["series"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 1024))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--series", type=int, default=2)
    ap.add_argument(
        "--interval", type=float, default=None, help="tilt interval (s); default 12 s scaled by the pixel ratio"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--executor", choices=["local", "dask"], nargs="+", default=["local"])
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="workflow overrides (STEP.PARAM=VALUE), e.g. align.binning=4",
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--keep", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from tiltflow.testing.demo import DemoConfig, write_demo_dataset

    torch.set_num_threads(1)
    nx, ny = args.size
    scale = nx * ny / FULL_PX
    interval = args.interval if args.interval is not None else FULL_INTERVAL_S * scale
    root = args.keep or Path(tempfile.mkdtemp(prefix="tiltflow_live_"))
    source = root / "source"
    if not (source / "truth.json").exists():
        t = time.time()
        write_demo_dataset(
            source,
            DemoConfig(n_series=args.series, n_tilts=args.tilts, size=(nx, ny), n_frames=args.frames),
            force=True,
        )
        print(f"simulated {args.series} x {args.tilts} tilts of {nx} x {ny} x {args.frames} in {time.time() - t:.0f} s")
    print(
        f"scaling: {nx} x {ny} px = {scale:.4f} of 5760 x 4092; tilt interval {interval:.2f} s "
        f"(12 s at full size)" + (" [given]" if args.interval is not None else "")
    )
    rows = []
    for executor in args.executor:
        for workers in args.workers:
            print(f"-- {executor}, {workers} worker(s)")
            rows.append(
                run_one(
                    source,
                    root / f"{executor}_{workers}",
                    interval,
                    executor,
                    workers,
                    args.sets,
                    args.tilts,
                    args.device,
                )
            )
    print()
    print("| executor | workers | tilts | per tilt median / p90 (s) | interval (s) | keeps up | lag per series (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        keeps = r["tilt_median_s"] / r["workers"] <= interval
        lags = ", ".join("-" if x is None else f"{x:.0f}" for x in r["lags_s"])
        print(
            f"| {r['executor']} | {r['workers']} | {r['tilts']} | {r['tilt_median_s']:.2f} / {r['tilt_p90_s']:.2f} "
            f"| {interval:.2f} | {'yes' if keeps else 'no'} ({r['tilt_median_s'] / r['workers'] / interval:.2f}x) "
            f"| {lags} ({', '.join(r['states'])}) |"
        )
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
