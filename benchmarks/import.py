"""Time to import 5 x 41 movies of 5760 x 4092 x 8 (headers only), and the memory used.

Writes a session of mdocs (the simulator's SerialEM writer) and movie TIFFs whose pixel data is
left sparse on disk (the header and page offsets are real; nothing is decoded by the import),
then runs the import-movies step in a fresh project. Run: .venv/bin/python benchmarks/import.py
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from tiltflow.testing.acquisition import plan_series
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.mdoc_writer import format_mdoc
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore


def write_session(root: Path, n_series: int, n_tilts: int, size: tuple[int, int], frames: int) -> None:
    config = DemoConfig(n_series=n_series, n_tilts=n_tilts, size=size, n_frames=frames)
    (root / "frames").mkdir(parents=True)
    for i in range(n_series):
        series = plan_series(config, i, np.random.default_rng(i))
        (root / f"{series['tsId']}.mdoc").write_text(format_mdoc(series))
        for tilt in series["tilts"]:
            path = root / tilt["movie"]
            # shape only: tifffile writes the IFDs and leaves the (uncompressed) data unwritten/sparse
            tifffile.imwrite(path, shape=(frames, size[1], size[0]), dtype=np.uint8, photometric="minisblack")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=5)
    ap.add_argument("--tilts", type=int, default=41)
    ap.add_argument("--size", type=int, nargs=2, default=(5760, 4092))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_session(root / "data", args.series, args.tilts, tuple(args.size), args.frames)
        setup = time.perf_counter() - t0
        times = []
        for r in range(args.repeats):
            store = ProjectStore(root / f"project{r}")
            t0 = time.perf_counter()
            run = run_step(store, "import-movies", {"files": str(root / "data")})
            times.append(time.perf_counter() - t0)
        summary = store.outputs(run.id)[0].summary
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"session: {args.series} x {args.tilts} movies of {args.size[0]} x {args.size[1]} x {args.frames}"
        f" (written in {setup:.1f} s)"
    )
    print(f"output:  {summary}")
    print("| what | value |\n| --- | --- |")
    print(f"| import, best of {args.repeats} | {min(times):.3f} s |")
    print(f"| import, median | {sorted(times)[len(times) // 2]:.3f} s |")
    print(f"| per movie | {1000 * min(times) / (args.series * args.tilts):.2f} ms |")
    print(f"| peak RSS of the whole process | {peak_mb:.0f} MB |")
    print("target: well under 2 s")


if __name__ == "__main__":
    main()
