"""``tiltflow demo-data DIR``: a tutorial-like simulated session with its truth.json."""

from __future__ import annotations

import click

from tiltflow.cli.output import console, fail


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--series", "n_series", type=int, default=None, help="Number of tilt series.")
@click.option("--tilts", "n_tilts", type=int, default=None, help="Tilts per series.")
@click.option("--size", nargs=2, type=int, default=None, help="Image size NX NY in pixels.")
@click.option("--frames", "n_frames", type=int, default=None, help="Frames per movie.")
@click.option("--pixel-size", "pixel_size_a", type=float, default=None, help="Pixel size, Å/px.")
@click.option("--tomo5", is_flag=True, help="Write Tomo5-flavoured mdocs (default: SerialEM).")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--force", is_flag=True, help="Overwrite an existing demo folder.")
def demo_command(out_dir, n_series, n_tilts, size, n_frames, pixel_size_a, tomo5, seed, force) -> None:
    """Write simulated tilt-series movies + mdocs + gain and their truth.json into OUT_DIR.

    Example: tiltflow demo-data demo/data --series 2 --tilts 21 --size 512 512 --frames 6
    """
    from pathlib import Path

    import torch

    from tiltflow.testing.demo import DemoConfig, write_demo_dataset

    torch.set_num_threads(1)   # many small FFTs: one thread is faster, and never stalls on a busy machine

    values = {"n_series": n_series, "n_tilts": n_tilts, "size": tuple(size) if size else None,
              "n_frames": n_frames, "pixel_size_a": pixel_size_a, "seed": seed}
    try:
        config = DemoConfig(**{k: v for k, v in values.items() if v is not None},
                            flavour="tomo5" if tomo5 else "serialem")
        truth = write_demo_dataset(Path(out_dir), config, force=force)
    except (FileExistsError, ValueError) as err:
        fail([str(err)])
    n = len(truth.get("series", []))
    console.print(f"wrote {n} simulated tilt series to {out_dir} (truth: {Path(out_dir) / 'truth.json'})", markup=False)
