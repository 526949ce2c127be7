"""``tiltflow demo-data DIR``: a tutorial-like simulated session with its truth.json."""

from __future__ import annotations

import click

from tiltflow.cli.output import console, fail
from tiltflow.testing.config import DemoConfig

_D = DemoConfig.__dataclass_fields__


def _default(name: str):
    return _D[name].default


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--series", "n_series", type=int, default=_default("n_series"), show_default=True, help="Number of tilt series."
)
@click.option("--tilts", "n_tilts", type=int, default=_default("n_tilts"), show_default=True, help="Tilts per series.")
@click.option(
    "--size", nargs=2, type=int, default=_default("size"), show_default=True, help="Image size NX NY in pixels."
)
@click.option(
    "--frames", "n_frames", type=int, default=_default("n_frames"), show_default=True, help="Frames per movie."
)
@click.option(
    "--pixel-size",
    "pixel_size_a",
    type=float,
    default=_default("pixel_size_a"),
    show_default=True,
    help="Pixel size, Å/px.",
)
@click.option("--tomo5", is_flag=True, help="Write Tomo5-flavoured mdocs (default: SerialEM).")
@click.option("--seed", type=int, default=_default("seed"), show_default=True, help="Random seed.")
@click.option("--force", is_flag=True, help="Overwrite an existing demo folder.")
@click.option(
    "--live",
    is_flag=True,
    help="Write the session in acquisition order at a pace, as a microscope does: movies in pieces, "
    "SerialEM mdocs growing per tilt, Tomo5 mdocs at the end of each series (for `tiltflow watch`).",
)
@click.option(
    "--interval",
    "interval_s",
    type=float,
    default=5.0,
    show_default=True,
    help="--live: seconds from one tilt to the next (and between series).",
)
@click.option("--pieces", type=int, default=4, show_default=True, help="--live: chunks each movie is written in.")
def demo_command(
    out_dir, n_series, n_tilts, size, n_frames, pixel_size_a, tomo5, seed, force, live, interval_s, pieces
) -> None:
    """Write simulated tilt-series movies + mdocs + gain and their truth.json into OUT_DIR.

    Example: tiltflow demo-data demo/data --series 2 --tilts 21 --size 512 512 --frames 6

    Live, for the watch mode: tiltflow demo-data demo/live --live --interval 3 &
    tiltflow watch demo/live -p demo/project
    """
    from pathlib import Path

    import torch

    from tiltflow.testing.demo import write_demo_dataset

    torch.set_num_threads(1)  # many small FFTs: one thread is faster, and never stalls on a busy machine

    if live and (interval_s < 0 or pieces < 1):
        fail([f"--interval {interval_s} / --pieces {pieces}: give an interval >= 0 s and 1 or more pieces"])
    values = {
        "n_series": n_series,
        "n_tilts": n_tilts,
        "size": tuple(size) if size else None,
        "n_frames": n_frames,
        "pixel_size_a": pixel_size_a,
        "seed": seed,
    }
    try:
        config = DemoConfig(
            **{k: v for k, v in values.items() if v is not None}, flavour="tomo5" if tomo5 else "serialem"
        )
        if live:
            from tiltflow.testing.live import LiveScenario, write_live_session

            console.print(
                f"writing {config.n_series} series x {config.n_tilts} tilts into {out_dir}, "
                f"one tilt every {interval_s:g} s (Ctrl+C stops)",
                markup=False,
            )

            def on_event(kind, info):
                if kind == "series-done":
                    console.print(f"  {info['series']}: {info['tilts']} tilts written", markup=False)

            truth = write_live_session(
                Path(out_dir),
                config,
                LiveScenario(interval_s=interval_s, pieces=pieces),
                force=force,
                on_event=on_event,
            )
        else:
            truth = write_demo_dataset(Path(out_dir), config, force=force)
    except (FileExistsError, ValueError) as err:
        fail([str(err)])
    except KeyboardInterrupt:
        fail(["stopped: the folder holds the session so far (no truth.json)"], code=130)
    n = len(truth.get("series", []))
    console.print(f"wrote {n} simulated tilt series to {out_dir} (truth: {Path(out_dir) / 'truth.json'})", markup=False)
