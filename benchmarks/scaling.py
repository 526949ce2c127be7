"""Wall time of the demo workflow with 1 and 2 local workers and a 2-worker Dask LocalCluster.

Run: .venv/bin/python benchmarks/scaling.py [--series 2 --tilts 11 --size 512 512 --frames 6]
The chain is the tutorial's (import -> motion/CTF -> X-ray eraser -> fiducial alignment -> WBP), at the
demo's binning (its 2.76 Å/px is the course's 1.38 binned 2x, so align and reconstruct at bin 2).
Prints a table with the speed-up against 1 local worker and the per-task overhead estimate
(Dask wall - local-2 wall) / number of tasks.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import apply_overrides, load_workflow, run_workflow


def run(data: Path, root: Path, options: dict, extra: list[str]) -> float:
    wf = load_workflow("tutorial")
    apply_overrides(wf, [f"import-movies.files={data}", f"import-movies.gain={data / 'gain_ref.gain'}", *extra])
    t0 = time.perf_counter()
    run_workflow(ProjectStore(root), wf, options=options)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=2)
    ap.add_argument("--tilts", type=int, default=11)
    ap.add_argument("--size", type=int, nargs=2, default=(512, 512))
    ap.add_argument("--frames", type=int, default=6)
    args = ap.parse_args()
    extra = ["motion-ctf.window_px=256", "motion-ctf.defocus_grid=null", "align.binning=2", "reconstruct.binning=2"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_demo_dataset(
            tmp / "data",
            DemoConfig(n_series=args.series, n_tilts=args.tilts, size=tuple(args.size), n_frames=args.frames),
            force=True,
        )
        run(tmp / "data", tmp / "warm-up", {"workers": 2}, extra)  # imports, caches: not timed
        dask_opts: dict = {"executor": "dask", "workers": 2, "threads_per_worker": 1}
        rows = [
            ("local, 1 worker", {"workers": 1}),
            ("local, 2 workers", {"workers": 2}),
            ("dask LocalCluster, 2 workers (cold: cluster start + worker imports)", dict(dask_opts)),
        ]
        times = {name: run(tmp / "data", tmp / f"p{i}", opts, extra) for i, (name, opts) in enumerate(rows)}
        # the same cluster kept up between runs, as on a facility cluster: warm workers
        from tiltflow.workflow.executor import make_executor
        from tiltflow.workflow.run_options import RunOptions

        executor = make_executor(RunOptions.of(dask_opts))
        try:
            run(tmp / "data", tmp / "dask-warm-up", {**dask_opts, "shared_executor": executor}, extra)
            times["dask LocalCluster, 2 workers (warm)"] = run(
                tmp / "data", tmp / "dask-warm", {**dask_opts, "shared_executor": executor}, extra
            )
        finally:
            executor.close()
    n_tasks = args.series * args.tilts + 3 * args.series  # movies + per-series erase / align / reconstruct
    base = times["local, 1 worker"]
    print(f"demo workflow: {args.series} x {args.tilts} movies of {args.size[0]} x {args.size[1]} x {args.frames}")
    print("| executor | wall (s) | speed-up vs 1 local worker |\n| --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {t:.1f} | {base / t:.2f}x |")
    for label, key in (
        (
            "incl. cluster start-up and worker imports",
            "dask LocalCluster, 2 workers (cold: cluster start + worker imports)",
        ),
        ("warm workers", "dask LocalCluster, 2 workers (warm)"),
    ):
        overhead = (times[key] - times["local, 2 workers"]) / n_tasks
        print(f"Dask overhead per task ({label}, spread over {n_tasks} tasks): {overhead * 1000:.0f} ms")


if __name__ == "__main__":
    main()
