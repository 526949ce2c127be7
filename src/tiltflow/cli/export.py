"""``tiltflow export ID --format imod|relion|warp|aretomo|ctffind --out DIR``: files other tools read."""

from __future__ import annotations

from pathlib import Path

import click

from tiltflow.cli.output import console, fail


def prepare_out(out: Path) -> None:
    """Create ``--out`` (and missing parents) or raise InputError naming it; nothing else is written."""
    import os

    from tiltflow.workflow.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder — choose a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--out {out}: {existing} is a file, so no folder can be made there — choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {existing} is not writable — choose a folder you can write to")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {out}: cannot create it ({err.strerror}) — choose a folder you can write to") from None


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
    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.export import export_set
    from tiltflow.workflow.store import ProjectStore

    notes: list[str] = []
    try:
        store = ProjectStore(project, create=False)
        store.resolve(pointer)  # a bad pointer is refused before --out is made
        prepare_out(Path(out_dir))
        written = export_set(store, pointer, fmt, Path(out_dir), ctf_pointer=ctf_pointer, notes=notes)
    except (InputError, ProjectError) as err:
        fail(getattr(err, "problems", [str(err)]))
    except OSError as err:
        fail(
            [
                f"export to --out {out_dir} failed: {err.strerror or err}"
                + (f": {err.filename}" if err.filename else "")
            ],
            code=1,
        )
    for note in notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"wrote {len(written)} files to {out_dir}", markup=False)
