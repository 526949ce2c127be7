"""``tiltflow export ID --format imod|relion|warp|aretomo|ctffind --out DIR``: files other tools read."""

from __future__ import annotations

import click

from tiltflow.cli.output import console, fail


@click.command("export")
@click.argument("pointer")
@click.option("-p", "--project", default=".", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["imod", "relion", "warp", "aretomo", "ctffind"]), required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--ctf", "ctf_pointer", default=None, help="CTF set to include (default: the one upstream).")
def export_command(pointer, project, fmt, out_dir, ctf_pointer) -> None:
    """Write a set for other tools.

    \b
    imod     DIR/<tsId>/<tsId>.st, .rawtlt, .tlt, .xf, .fid, newst.com, tilt.com, _ctffind.txt,
             .defocus; tomograms as _rec.mrc
    relion   DIR/tomograms.star + DIR/tilt_series/<tsId>.star (RELION 5; run RELION in DIR)
    warp     DIR/warp_tiltseries/<tsId>.xml, DIR/tomostar/<tsId>.tomostar, tiltstack/ with .st/.xf/.tlt
    aretomo  DIR/<tsId>/<tsId>.mrc, .tlt, .aln
    ctffind  the CTFFIND4 text files

    Example: tiltflow export -p P 6 --format relion --out relion_dir
    """
    from pathlib import Path

    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.export import export_set
    from tiltflow.workflow.store import ProjectStore

    notes: list[str] = []
    try:
        store = ProjectStore(project, create=False)
        written = export_set(store, pointer, fmt, Path(out_dir), ctf_pointer=ctf_pointer, notes=notes)
    except (InputError, ProjectError) as err:
        fail(getattr(err, "problems", [str(err)]))
    for note in notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"wrote {len(written)} files to {out_dir}", markup=False)
