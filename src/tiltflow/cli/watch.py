"""``tiltflow watch DIR -p P``: process an acquisition folder on the fly (issue 14).

``workflow run SOURCE --watch DIR`` (and ``workflow run`` of a Scipion workflow whose import is in
streaming) is the same command: both take the options of :func:`watch_options` and call
:func:`run_watch`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from tiltflow.cli.output import console, echo_json, err_console, fail

if TYPE_CHECKING:
    from pathlib import Path

    from tiltflow.workflow.run_options import RunOptions

# WatchSettings field -> option; the defaults are WatchSettings' (a Scipion streaming workflow's own settings
# come between: an option given on the command line wins over the template, the template over the default)
WATCH_FIELDS = {
    "interval_s": "--interval",
    "settle_s": "--settle",
    "movie_timeout_s": "--movie-timeout",
    "quiet_s": "--quiet",
    "min_fraction": "--min-fraction",
    "expected_tilts": "--tilts",
    "stop_after_idle_s": "--stop-after-idle",
}


def watch_options(f: Callable) -> Callable:
    """The watch mode's own options (``tiltflow watch`` and ``workflow run --watch``)."""
    from tiltflow.workflow.watch.settings import WatchSettings

    d = WatchSettings()
    options = [
        click.option(
            "--interval",
            "interval_s",
            type=float,
            default=d.interval_s,
            show_default=True,
            help="Seconds between polls.",
        ),
        click.option(
            "--settle",
            "settle_s",
            type=float,
            default=d.settle_s,
            show_default=True,
            help="A movie is complete when its size has not changed for this long (s) and it decodes "
            "(Scipion: the import's fileTimeout).",
        ),
        click.option(
            "--movie-timeout",
            "movie_timeout_s",
            type=float,
            default=d.movie_timeout_s,
            show_default=True,
            help="A listed movie not complete this long (s) is reported and its series goes on without it.",
        ),
        click.option(
            "--quiet",
            "quiet_s",
            type=float,
            default=d.quiet_s,
            show_default=True,
            help="A series with no new tilt for this long (s) is complete with what is there "
            "(Scipion: ComposeTS's time4NextTilt).",
        ),
        click.option(
            "--min-fraction",
            "min_fraction",
            type=float,
            default=d.min_fraction,
            show_default=True,
            help="Process a series closed by quiet time only with at least this fraction of its expected "
            "tilts (Scipion: ComposeTS's percentTiltsRequired).",
        ),
        click.option(
            "--tilts",
            "expected_tilts",
            type=int,
            default=None,
            help="Tilts per series, when known (else: a Tomo5 mdoc's count, then the session's usual count).",
        ),
        click.option(
            "--stop-after-idle",
            "stop_after_idle_s",
            type=float,
            default=None,
            help="Stop when nothing new has arrived for this long (s) and all work is done (scripts, tests; "
            "Scipion: the import's timeout).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def given_options(values: dict) -> dict:
    """The watch options of the current command as given on the command line (None: left at its default,
    so that a Scipion streaming workflow's own setting applies)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {
        k: v if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None) else None for k, v in values.items()
    }


def _table(state: dict):
    from rich.table import Table

    c = state["counts"]
    lag = state.get("lag_s")
    title = (
        f"{len(state['series'])} series: "
        + ", ".join(f"{n} {k}" for k, n in c.items())
        + f" | {state['tilts_done']} tilts, {state['movies_per_min']:g} movies/min"
        + f" | queue: {state['queue']['tilts']} tilts, {state['queue']['series']} series"
        + (f" | lag {lag['last']:.0f} s" if lag else "")
    )
    t = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in ("series", "state", "tilts", "done", "motion px", "defocus µm", "lag s"):
        t.add_column(col, no_wrap=True)
    t.add_column("note", no_wrap=True, overflow="ellipsis", ratio=1)
    for s in state["series"][-20:]:
        tilts = f"{s['in']}/{s['listed']}" + (f" of {s['expected']}" if s["expected"] else "")
        t.add_row(
            s["ts"],
            s["state"],
            tilts,
            str(s["tilts_done"]),
            str(s["motion_px"] or ""),
            str(s["defocus_um"] or ""),
            str(s.get("lag_s") or ""),
            (s.get("error") or s["reason"] or "")[:70],
        )
    return t


def watch_settings(wf, given: dict, workers: int | None):
    """``(WatchSettings, lines)``: the options given, else the Scipion streaming template's, else the
    defaults; ``lines`` say which came from the template."""
    from dataclasses import asdict

    from tiltflow.workflow.watch.settings import WatchSettings

    streaming = getattr(wf, "streaming", None)
    values = asdict(WatchSettings())
    lines = []
    if streaming is not None:
        taken = {k: v for k, v in streaming.settings.items() if given.get(k) is None}
        values.update(taken)
        if taken:
            lines.append(
                f"settings from the Scipion workflow ({streaming.protocol} {streaming.import_id}): "
                + ", ".join(f"{WATCH_FIELDS[k]} {v:g} ({streaming.sources[k]})" for k, v in taken.items())
            )
        lines += [f"note: {n}" for n in streaming.notes]
    values.update({k: v for k, v in given.items() if v is not None})
    values["tilt_workers"] = workers or 1
    return WatchSettings(**values), lines


def describe(settings) -> str:
    """The settings as options (``--interval 10 --settle 30 ...``)."""
    return " ".join(
        f"{opt} {getattr(settings, k):g}" for k, opt in WATCH_FIELDS.items() if getattr(settings, k) is not None
    )


def import_folder(wf) -> str | None:
    """The folder the workflow's import-movies step reads (a Scipion template's own files path)."""
    return next((str(s.params.get("files") or "") or None for s in wf.steps if s.step == "import-movies"), None)


def run_watch(
    folder: str, project: str, wf, given: dict, options: RunOptions, *, as_json: bool, fresh: bool = False
) -> None:
    """Follow ``folder`` with workflow ``wf`` (loaded, overrides applied) into ``project`` until stopped
    (or ``stop_after_idle_s``); prints the live status block, then a summary (JSON with ``as_json``)."""
    from pathlib import Path

    from tiltflow.workflow.errors import InputError, ProjectError

    settings, setting_lines = watch_settings(wf, given, options.workers)
    problems = settings.problems()
    if not Path(folder).is_dir():
        problems.append(f"{folder}: no such folder — give the folder the microscope writes into")
    if problems:
        fail(problems)
    tty = sys.stdout.isatty() and not as_json
    live = None
    try:
        store = _watch_store(folder, project, wf, fresh=fresh)
        if tty:
            from rich.live import Live

            live = Live(console=console, refresh_per_second=2, transient=False)
            live.start()
        state = _follow(folder, store, wf, settings, options, setting_lines, live=live, as_json=as_json)
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
        console.print(
            f"stopped after {settings.stop_after_idle_s:g} s without anything new: {len(state['series'])} "
            "series (" + ", ".join(f"{n} {k}" for k, n in c.items()) + f"), {state['tilts_done']} tilts",
            markup=False,
        )


def _watch_store(folder: str, project: str, wf, *, fresh: bool):
    """The project to watch into, with the workflow's import pointed at ``folder`` and checked;
    ``fresh`` first removes an earlier watch's database, runs and state."""
    from pathlib import Path

    from tiltflow.workflow.store import ProjectStore
    from tiltflow.workflow.workflow_file import validate

    for s in wf.steps:
        if s.step == "import-movies":
            s.params["files"] = str(Path(folder).absolute())
    validate(wf)
    root = Path(project)
    if fresh:
        clear_project(root)
    return ProjectStore(root)


def clear_project(root: Path) -> None:
    """``--fresh``: remove the project in ``root`` (database, runs, watch state), if there is one."""
    import shutil

    from tiltflow.workflow.store import DB_NAME

    if (root / DB_NAME).exists():
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            (root / name).unlink(missing_ok=True)
        for sub in ("runs", "watch"):
            shutil.rmtree(root / sub, ignore_errors=True)


def _follow(folder: str, store, wf, settings, options: RunOptions, setting_lines: list[str], *, live, as_json: bool):
    """Run the watch loop until it stops; each event line goes above the live table (to stderr with
    ``as_json``). Returns the loop's final state."""
    from pathlib import Path

    from tiltflow.workflow.watch.loop import WatchLoop

    def on_line(line: str) -> None:
        if as_json:
            err_console.print(line, markup=False)
        elif live is not None:
            live.console.print(line, markup=False)
        else:
            console.print(line, markup=False)

    loop = WatchLoop(
        folder,
        store,
        wf,
        settings,
        options,
        on_line=on_line,
        on_state=(lambda st: live.update(_table(st))) if live is not None else None,
    )
    on_line(
        f"watching {Path(folder).absolute()} -> project {store.root} (workflow '{wf.name}'; Ctrl+C stops, "
        "the same command goes on)"
    )
    for line in setting_lines:
        on_line(line)
    on_line(
        f"live dashboard: the viewer's /dashboard page — `tiltflow view -p {store.root}` prints its address "
        "(the project page links it); it updates itself as series arrive"
    )
    try:
        return loop.run()
    finally:
        loop.close()


def executor_options(device, executor, workers, threads_per_worker, scheduler, jobqueue, skip_bad=False) -> RunOptions:
    """The run options of ``workflow run`` and both watch commands."""
    from tiltflow.workflow.run_options import RunOptions

    return RunOptions(
        skip_bad=skip_bad,
        device=device,
        workers=workers,
        threads_per_worker=threads_per_worker,
        executor="dask" if (scheduler or jobqueue) else executor,
        scheduler=scheduler,
        jobqueue=jobqueue,
    )


@click.command("watch")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-p", "--project", required=True, help="Project folder (created if missing).")
@click.option(
    "--workflow",
    "source",
    default="tutorial",
    show_default=True,
    help="Workflow file or template: its import-movies step reads FOLDER, motion-ctf runs per tilt, "
    "the rest per series. A Scipion workflow whose import is in streaming brings its own settings.",
)
@click.option("--set", "overrides", multiple=True, help="Override a parameter: STEP.PARAM=VALUE.")
@watch_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True)
@click.option("--workers", type=int, default=None, help="Tilts processed at once (local threads or Dask workers).")
@click.option("--threads-per-worker", type=int, default=None, help="Dask: threads (and torch threads) per worker.")
@click.option("--scheduler", default=None, help="Dask: address of an existing scheduler (tcp://host:8786).")
@click.option("--jobqueue", default=None, help="Dask: SLURM cluster config for dask-jobqueue (YAML).")
@click.option("--json", "as_json", is_flag=True, help="Print a final summary as JSON (with --stop-after-idle).")
def watch_command(
    folder,
    project,
    source,
    overrides,
    interval_s,
    settle_s,
    movie_timeout_s,
    quiet_s,
    min_fraction,
    expected_tilts,
    stop_after_idle_s,
    device,
    executor,
    workers,
    threads_per_worker,
    scheduler,
    jobqueue,
    as_json,
) -> None:
    """Follow FOLDER while the microscope writes it: per tilt import + motion correction + CTF as each
    movie completes, per series the rest of the workflow (CTF series pass, X-ray eraser, alignment,
    reconstruction) once it is complete. Stop with Ctrl+C; the same command goes on where it stopped.
    `tiltflow workflow run SOURCE --watch FOLDER` is the same command.

    Example: tiltflow watch /data/session -p P --set import-movies.gain=/data/session/gain.tif
    """
    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.workflow_file import apply_overrides, load_workflow

    given = given_options(
        {
            "interval_s": interval_s,
            "settle_s": settle_s,
            "movie_timeout_s": movie_timeout_s,
            "quiet_s": quiet_s,
            "min_fraction": min_fraction,
            "expected_tilts": expected_tilts,
            "stop_after_idle_s": stop_after_idle_s,
        }
    )
    try:
        wf = load_workflow(source)
        apply_overrides(wf, list(overrides))
    except (InputError, ProjectError) as err:
        fail(getattr(err, "problems", [str(err)]))
    if wf.plan is not None:  # a Scipion workflow: what each protocol became
        from tiltflow.cli.workflow_cmd import print_plan

        print_plan(wf, source, as_json=True, dry_run=False)  # on stderr: stdout starts with "watching"
    run_watch(
        folder,
        project,
        wf,
        given,
        executor_options(device, executor, workers, threads_per_worker, scheduler, jobqueue),
        as_json=as_json,
    )
