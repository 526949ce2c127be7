"""Accuracy of the tutorial chain over a matrix of simulated sessions (issue 11, item 1).

Each scenario (``tiltflow.testing.scenarios``: pixel size, dose, frames, ice, field width, beads,
motion, defocus drift, astigmatism, tilt offset, axis error, X-rays, gain stripes, dark views) is
simulated twice, each where its quantities mean what they mean in a real session: movies (a 512²
crop at the unbinned pixel size, 7 tilts 0, ±20, ±40, ±60° with the full series' prior dose, the
motion-ctf default CTF window of 512) run through motion-ctf and xray-erase, and an alignment
series (41 views at 3°, at the binning the align step works at: views of 256-320 px over a field
1-6x the ice thickness) aligned by fiducial and patch, as the steps run them (``_matrix_run``).
One row per scenario and quantity: value, target, whether it holds, the motion oracle (each frame
registered to its noise-free image) and the alignment verdict where the step gives one. A method
that fails is reported in its rows; the rest go on.

Run (one torch thread; a 2-core machine)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_matrix.py --quick        # 3 small scenarios
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_matrix.py --scenarios 12 --json out.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_matrix.py --parts ctf    # only the CTF rows

``--quick`` shrinks the simulations, not the draws (256² movies with 5 tilts to ±60° and at most 6
frames, CTF window 256; 17 alignment views at 7.5° of 160-224 px): a test of the harness. The CTF rows
say how finely the window samples the Thon rings at the fit's limit (``spectrum px per Thon ring``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _matrix_run import PARTS, run_scenario  # noqa: E402

from tiltflow.testing.scenarios import Scenario, SimulationSizes, draw_scenarios  # noqa: E402

QUICK = {
    "movie_size_px": 256,
    "movie_n_tilts": 5,
    "movie_tilt_step_deg": 30.0,
    "window_px": 256,
    "max_frames": 6,
    "align_n_tilts": 17,
    "align_tilt_step_deg": 7.5,
    "align_min_px": 160,
    "align_max_px": 224,
    "ctf_size_px": 512,
    "ctf_n_tilts": 5,
    "ctf_tilt_step_deg": 30.0,
}
FULL = {
    "movie_size_px": 512,
    "movie_n_tilts": 7,
    "movie_tilt_step_deg": 20.0,
    "window_px": 512,
    "align_n_tilts": 41,
    "align_tilt_step_deg": 3.0,
    "align_min_px": 256,
    "align_max_px": 320,
    "ctf_size_px": 1536,
    "ctf_n_tilts": 13,
    "ctf_tilt_step_deg": 10.0,
}


def matrix_scenarios(n: int, seed: int, quick: bool, **override) -> list[Scenario]:
    """The scenarios a run measures: ``n`` drawn from ``seed`` (simulated small with ``quick``);
    ``override`` replaces any of ``FULL``'s keywords (None: kept)."""
    kw = dict(QUICK if quick else FULL)
    kw.update({k: v for k, v in override.items() if v is not None})
    return draw_scenarios(n, seed, SimulationSizes(**kw))


def run_matrix(
    scenarios: list[Scenario], workdir: Path | None = None, log=print, parts: tuple[str, ...] = PARTS
) -> list[dict]:
    """One result per scenario: its description, rows (of ``parts``) and seconds per step."""
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for sc in scenarios:
            log(sc.describe())
            t0, c0 = time.perf_counter(), time.process_time()
            rows, seconds = run_scenario(sc, Path(tmp) / sc.name, log=log, parts=parts)
            seconds["total"] = time.perf_counter() - t0
            seconds["cpu"] = time.process_time() - c0  # this process's CPU time: less load-dependent
            results.append({"scenario": sc.as_dict(), "description": sc.describe(), "rows": rows, "seconds": seconds})
            for row in rows:
                log(format_row(sc.name, row))
    return results


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def format_row(name: str, row: dict) -> str:
    holds = {True: "yes", False: "NO", None: "n/a"}[row["holds"]]
    return (
        f"{name:4s} {row['quantity']:44s} {_num(row['value']):>8s} {_num(row['oracle']):>7s} "
        f"{row['target']:28s} {holds:4s} {row['verdict'] or '-':8s} {row['note']}"
    )


def print_table(results: list[dict]) -> None:
    print(f"\n{'':4s} {'quantity':44s} {'value':>8s} {'oracle':>7s} {'target':28s} {'holds':4s} {'verdict':8s} note")
    for r in results:
        print(r["description"])
        for row in r["rows"]:
            print(format_row(r["scenario"]["name"], row))
    n = sum(1 for r in results for row in r["rows"] if row["holds"] is not None)
    ok = sum(1 for r in results for row in r["rows"] if row["holds"])
    print(f"\n{ok} of {n} judged rows hold")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 small scenarios (the test of the harness)")
    ap.add_argument("--scenarios", type=int, default=12, help="how many scenarios (default 12)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--workdir", type=Path, help="folder for the temporary sessions (default: system tmp)")
    ap.add_argument("--movie-size", type=int, help=f"movie crop side, px (default {FULL['movie_size_px']})")
    ap.add_argument("--window", type=int, help=f"motion-ctf's CTF window, px (default {FULL['window_px']})")
    ap.add_argument(
        "--align-max",
        type=int,
        help=f"largest alignment view side, px (default {FULL['align_max_px']}; wider fields at finer binning, slower)",
    )
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"what to measure, comma-separated among {', '.join(PARTS)} (default: all)",
    )
    args = ap.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        ap.error(f"--parts: {', '.join(unknown) or 'none given'}; choose among {', '.join(PARTS)}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    n = 3 if args.quick else args.scenarios
    t0, c0 = time.perf_counter(), time.process_time()
    scenarios = matrix_scenarios(
        n, args.seed, args.quick, movie_size_px=args.movie_size, window_px=args.window, align_max_px=args.align_max
    )
    results = run_matrix(scenarios, args.workdir, parts=parts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print_table(results)
    print(
        f"wall time {wall:.0f} s ({wall / 60:.1f} min), CPU time {cpu:.0f} s for {n} scenarios "
        f"({torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "quick": args.quick,
                    "parts": parts,
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
    return results


if __name__ == "__main__":
    main()
