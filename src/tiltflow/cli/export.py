"""``tiltflow export ID --format imod|ctffind --out DIR``: files other tools read."""

from __future__ import annotations

import click

from tiltflow.cli.output import console, fail


@click.command("export")
@click.argument("pointer")
@click.option("-p", "--project", default=".", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["imod", "ctffind"]), required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--ctf", "ctf_pointer", default=None, help="CTF set to include (default: the one upstream).")
def export_command(pointer, project, fmt, out_dir, ctf_pointer) -> None:
    """Write a set for other tools: the IMOD layout (DIR/<tsId>/<tsId>.st, .rawtlt, .tlt, .xf,
    newst.com, tilt.com, _ctffind.txt, .defocus; tomograms as _rec.mrc) or CTFFIND4 text.

    Example: tiltflow export -p P 6 --format imod --out imod_dir
    """
    from pathlib import Path

    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.export import export_set
    from tiltflow.workflow.store import ProjectStore

    try:
        store = ProjectStore(project, create=False)
        written = export_set(store, pointer, fmt, Path(out_dir), ctf_pointer=ctf_pointer)
    except (InputError, ProjectError) as err:
        fail(getattr(err, "problems", [str(err)]))
    console.print(f"wrote {len(written)} files to {out_dir}", markup=False)
