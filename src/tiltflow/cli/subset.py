"""``tiltflow subset``: the viewer's Save, scriptable."""

from __future__ import annotations

from pathlib import Path

import click

from tiltflow.cli.output import console, echo_json, fail

CURATABLE = ("TiltSeries", "TiltSeriesM", "CTFTomoSeries")


@click.command("subset")
@click.option("-p", "--project", default=".", show_default=True)
@click.option("--input", "pointer", required=True, help="The set to curate: RUN_ID or RUN_ID.outputName.")
@click.option("--exclude", "exclude_ts", multiple=True, help="Exclude a whole tilt series (tsId); repeatable.")
@click.option(
    "--exclude-views",
    multiple=True,
    help="TS:1,5,41 — views by 1-based position in tilt-angle order (IMOD EXCLUDELIST); repeatable.",
)
@click.option("--exclude-beyond", type=float, default=None, help="Exclude every view with |tilt| above this, degrees.")
@click.option("--restack", is_flag=True, help="Write new stacks without the excluded views.")
@click.option("--json", "as_json", is_flag=True)
def subset_command(project, pointer, exclude_ts, exclude_views, exclude_beyond, restack, as_json) -> None:
    """Save a subset of a set, with excluded tilt series / views disabled or re-stacked.

    Example: tiltflow subset -p P --input 2.TiltSeries --exclude TS_03 --exclude-views TS_01:1,41 --restack
    """
    from tiltflow.workflow.curation import WHOLE_SERIES, exclusions, save_subset
    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.store import ProjectStore

    if exclude_beyond is not None and not 0 <= exclude_beyond <= 90:  # nan fails both
        fail(
            [
                f"--exclude-beyond {exclude_beyond:g}: give an angle from 0 to 90 degrees "
                "(views with |tilt| above it are excluded)"
            ]
        )
    try:
        store = ProjectStore(project, create=False)
        out = _curatable_output(store, pointer, project)
        value = store.load(out)
        ids = [s.ts_id for s in value.items]
        flags = exclusions(store, out)
        for ts in exclude_ts:
            if ts not in ids:
                raise InputError(f"--exclude {ts}: no such tilt series in {out.pointer} ({', '.join(ids)})")
            flags[(ts, WHOLE_SERIES)] = True
        _exclude_views(value, exclude_views, out, flags)
        if exclude_beyond is not None:
            _exclude_beyond(value, exclude_beyond, flags)
        new = save_subset(store, out, restack=restack, flags=flags)
    except (InputError, ProjectError) as err:
        fail(getattr(err, "problems", [str(err)]))
    except OSError as err:  # a full disk while re-stacking: nothing was saved
        from tiltflow.workflow.diskspace import as_disk_full

        full = as_disk_full(err, Path(project).absolute(), "nothing was saved; free space there and save again")
        if full is None:
            raise
        fail([str(full)])
    if as_json:
        echo_json({"pointer": new.pointer, "type": new.type, "summary": new.summary})
    else:
        console.print(f"{new.pointer}: {new.summary}", markup=False)


def _curatable_output(store, pointer: str, project: str):
    """The output ``pointer`` names, refused (naming it) when subset cannot curate it."""
    from tiltflow.workflow.errors import InputError, ProjectError

    try:
        out = store.resolve(pointer, CURATABLE)
    except ProjectError:
        out = store.resolve(pointer)  # the run's other output, to name it below
    if out.type not in CURATABLE:
        raise InputError(
            f"--input {pointer}: {out.pointer} is a set of {out.type}; subset works on tilt series "
            f"and CTF ({', '.join(CURATABLE)}) — `tiltflow show -p {project}` lists the outputs"
        )
    return out


def _exclude_views(value, specs: tuple[str, ...], out, flags: dict[tuple[str, int], bool]) -> None:
    """``--exclude-views TS:1,5,41``: flag those views (1-based positions in tilt-angle order)."""
    from tiltflow.workflow.curation import views_to_orders
    from tiltflow.workflow.errors import InputError
    from tiltflow.workflow.sets import TiltSeriesSet

    ids = {s.ts_id for s in value.items}
    for spec in specs:
        ts, sep, views = spec.partition(":")
        if not sep or ts not in ids:
            raise InputError(f"--exclude-views '{spec}': expected TS:1,5,41 with a tsId of {out.pointer}")
        try:
            positions = [int(v) for v in views.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--exclude-views '{spec}': view numbers must be integers") from None
        if not isinstance(value, TiltSeriesSet):
            raise InputError(f"--exclude-views applies to tilt series, {out.pointer} is a {out.type}")
        series = {s.ts_id: s for s in value.items}[ts]
        for order in views_to_orders(series, positions):
            flags[(ts, order)] = True


def _exclude_beyond(value, limit_deg: float, flags: dict[tuple[str, int], bool]) -> None:
    """``--exclude-beyond``: flag every view (or per-tilt CTF) with |tilt| above ``limit_deg``."""
    from tiltflow.workflow.sets import CtfSeriesSet, TiltSeriesSet

    if isinstance(value, TiltSeriesSet):
        for ts in value.items:
            for im in ts.images:
                if abs(im.tilt_angle_deg) > limit_deg:
                    flags[(ts.ts_id, im.acquisition_order)] = True
    elif isinstance(value, CtfSeriesSet):
        for s in value.items:
            for c in s.items:
                if abs(c.tilt_angle_deg) > limit_deg:
                    flags[(s.ts_id, c.acquisition_order)] = True
