"""``tiltflow watch DIR -p P``: process an acquisition folder on the fly (issue 14)."""

from __future__ import annotations

import sys

import click

from tiltflow.cli.output import console, echo_json, err_console, fail


def _table(state: dict):
    from rich.table import Table

    c = state["counts"]
    lag = state.get("lag_s")
    title = (f"{len(state['series'])} series: " + ", ".join(f"{n} {k}" for k, n in c.items())
             + f" | {state['tilts_done']} tilts, {state['movies_per_min']:g} movies/min"
             + f" | queue: {state['queue']['tilts']} tilts, {state['queue']['series']} series"
             + (f" | lag {lag['last']:.0f} s" if lag else ""))
    t = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in ("series", "state", "tilts", "done", "motion px", "defocus µm", "lag s"):
        t.add_column(col, no_wrap=True)
    t.add_column("note", no_wrap=True, overflow="ellipsis", ratio=1)
    for s in state["series"][-20:]:
        tilts = f"{s['in']}/{s['listed']}" + (f" of {s['expected']}" if s["expected"] else "")
        t.add_row(s["ts"], s["state"], tilts, str(s["tilts_done"]), str(s["motion_px"] or ""),
                  str(s["defocus_um"] or ""), str(s.get("lag_s") or ""), (s.get("error") or s["reason"] or "")[:70])
    return t


@click.command("watch")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-p", "--project", required=True, help="Project folder (created if missing).")
@click.option("--workflow", "source", default="tutorial", show_default=True,
              help="Workflow file or template: its import-movies step reads FOLDER, motion-ctf runs per tilt, "
                   "the rest per series.")
@click.option("--set", "overrides", multiple=True, help="Override a parameter: STEP.PARAM=VALUE.")
@click.option("--interval", "interval_s", type=float, default=10.0, show_default=True, help="Seconds between polls.")
@click.option("--settle", "settle_s", type=float, default=10.0, show_default=True,
              help="A movie is complete when its size has not changed for this long (s) and it decodes.")
@click.option("--movie-timeout", "movie_timeout_s", type=float, default=300.0, show_default=True,
              help="A listed movie not complete this long (s) is reported and its series goes on without it.")
@click.option("--quiet", "quiet_s", type=float, default=180.0, show_default=True,
              help="A series with no new tilt for this long (s) is complete with what is there.")
@click.option("--min-fraction", type=float, default=0.8, show_default=True,
              help="Process a series closed by quiet time only with at least this fraction of its expected tilts.")
@click.option("--tilts", "expected_tilts", type=int, default=None,
              help="Tilts per series, when known (else: a Tomo5 mdoc's count, then the session's usual count).")
@click.option("--stop-after-idle", "stop_after_idle_s", type=float, default=None,
              help="Stop when nothing new has arrived for this long (s) and all work is done (scripts, tests).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True)
@click.option("--workers", type=int, default=None, help="Tilts processed at once (local threads or Dask workers).")
@click.option("--threads-per-worker", type=int, default=None, help="Dask: threads (and torch threads) per worker.")
@click.option("--scheduler", default=None, help="Dask: address of an existing scheduler (tcp://host:8786).")
@click.option("--jobqueue", default=None, help="Dask: SLURM cluster config for dask-jobqueue (YAML).")
@click.option("--json", "as_json", is_flag=True, help="Print a final summary as JSON (with --stop-after-idle).")
def watch_command(folder, project, source, overrides, interval_s, settle_s, movie_timeout_s, quiet_s, min_fraction,
                  expected_tilts, stop_after_idle_s, device, executor, workers, threads_per_worker, scheduler,
                  jobqueue, as_json) -> None:
    """Follow FOLDER while the microscope writes it: per tilt import + motion correction + CTF as each
    movie completes, per series the rest of the workflow (CTF series pass, X-ray eraser, alignment,
    reconstruction) once it is complete. Stop with Ctrl+C; the same command goes on where it stopped.

    Example: tiltflow watch /data/session -p P --set import-movies.gain=/data/session/gain.tif
    """
    from pathlib import Path

    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.store import ProjectStore
    from tiltflow.workflow.watch.loop import WatchLoop
    from tiltflow.workflow.watch.settings import WatchSettings
    from tiltflow.workflow.workflow_file import apply_overrides, load_workflow, validate

    settings = WatchSettings(interval_s=interval_s, settle_s=settle_s, movie_timeout_s=movie_timeout_s,
                             quiet_s=quiet_s, min_fraction=min_fraction, expected_tilts=expected_tilts,
                             stop_after_idle_s=stop_after_idle_s, tilt_workers=workers or 1)
    problems = settings.problems()
    if not Path(folder).is_dir():
        problems.append(f"{folder}: no such folder — give the folder the microscope writes into")
    if problems:
        fail(problems)
    options = {"device": device, "workers": workers, "threads_per_worker": threads_per_worker,
               "executor": "dask" if (scheduler or jobqueue) else executor, "scheduler": scheduler,
               "jobqueue": jobqueue}
    tty = sys.stdout.isatty() and not as_json
    live = None
    try:
        wf = load_workflow(source)
        apply_overrides(wf, list(overrides))
        for s in wf.steps:
            if s.step == "import-movies":
                s.params["files"] = str(Path(folder).absolute())
        validate(wf)
        store = ProjectStore(project)
        if tty:
            from rich.live import Live

            live = Live(console=console, refresh_per_second=2, transient=False)
            live.start()

        def on_line(line: str) -> None:
            if as_json:
                err_console.print(line, markup=False)
            elif live is not None:
                live.console.print(line, markup=False)
            else:
                console.print(line, markup=False)

        loop = WatchLoop(folder, store, wf, settings, options, on_line=on_line,
                         on_state=(lambda st: live.update(_table(st))) if live is not None else None)
        on_line(f"watching {Path(folder).absolute()} -> project {store.root} (workflow '{wf.name}'; Ctrl+C stops, "
                "the same command goes on)")
        try:
            state = loop.run()
        finally:
            loop.close()
    except (InputError, ProjectError) as err:
        if live is not None:
            live.stop()
        fail(getattr(err, "problems", [str(err)]))
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        fail(["stopped: run the same command to go on (nothing done is lost or done again)"], code=130)
    if live is not None:
        live.stop()
    if as_json:
        state.pop("lines", None)
        echo_json(state)
    else:
        c = state["counts"]
        console.print(f"stopped after {stop_after_idle_s:g} s without anything new: {len(state['series'])} series ("
                      + ", ".join(f"{n} {k}" for k, n in c.items()) + f"), {state['tilts_done']} tilts", markup=False)
