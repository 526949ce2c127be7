"""``tiltflow workflow run|export|template``."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from tiltflow.cli.output import console, echo_json, fail
from tiltflow.cli.watch import WATCH_FIELDS, watch_options

if TYPE_CHECKING:
    from tiltflow.workflow.run_options import RunOptions, RunReport


@click.group("workflow")
def workflow_group() -> None:
    """Run a whole chain from a workflow file (or a built-in template), or save the project's chain."""


@workflow_group.command("run")
@click.argument("source")
@click.option("-p", "--project", default=".", show_default=True, help="Project folder (created if missing).")
@click.option("--set", "overrides", multiple=True, help="Override a parameter: STEP.PARAM=VALUE.")
@click.option("--fresh", is_flag=True, help="Start from an empty project (removes the folder's project first).")
@click.option("--skip-bad", is_flag=True, help="Skip bad series instead of failing.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--continue",
    "resume",
    is_flag=True,
    help="Continue in the same project: steps whose parameters and inputs are unchanged reuse their "
    "finished run, an interrupted one resumes, changed ones and everything downstream re-run "
    "(earlier runs are kept).",
)
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True)
@click.option("--workers", type=int, default=None, help="Parallel tasks (local threads or Dask LocalCluster workers).")
@click.option("--threads-per-worker", type=int, default=None, help="Dask: threads (and torch threads) per worker.")
@click.option("--scheduler", default=None, help="Dask: address of an existing scheduler (tcp://host:8786).")
@click.option("--jobqueue", default=None, help="Dask: SLURM cluster config for dask-jobqueue (YAML).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan and run nothing: for a Scipion file each protocol and the step it became (or why "
    "not), with the steps' parameters; with --json a list of {protocol, id, label, step, reason}.",
)
@click.option(
    "--watch",
    "watch_dir",
    default=None,
    metavar="DIR",
    help="Follow DIR while the microscope writes it: the same as `tiltflow watch DIR --workflow SOURCE` "
    "(per tilt as movies complete, per series once complete; Ctrl+C stops, the same command goes on). "
    "A Scipion workflow whose import is in streaming is watched without it, in its own files path.",
)
@click.option(
    "--no-watch",
    is_flag=True,
    help="A Scipion workflow whose import is in streaming: run it once on the files there now instead.",
)
@watch_options
@click.option("--json", "as_json", is_flag=True)
def run_command(
    source,
    project,
    overrides,
    fresh,
    skip_bad,
    device,
    resume,
    executor,
    workers,
    threads_per_worker,
    scheduler,
    jobqueue,
    dry_run,
    watch_dir,
    no_watch,
    interval_s,
    settle_s,
    movie_timeout_s,
    quiet_s,
    min_fraction,
    expected_tilts,
    stop_after_idle_s,
    as_json,
) -> None:
    """Run SOURCE (a workflow JSON file, a Scipion workflow JSON, or a template name such as 'tutorial').

    A Scipion workflow's plan is printed first: each protocol and the tiltflow step it became, or why not.
    With --watch DIR (or a Scipion workflow whose import is in streaming) it follows an acquisition folder
    as `tiltflow watch` does, with the same options.

    Examples: tiltflow workflow run tutorial -p P --set import-movies.files=/data/session;
    tiltflow workflow run tutorial -p P --watch /data/session --set import-movies.gain=/data/session/gain.tif
    """
    from tiltflow.cli.watch import executor_options, given_options, import_folder, run_watch

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
    if watch_dir is not None and no_watch:
        fail(["--watch and --no-watch: give one of them"])
    wf = _load(source, overrides, as_json=as_json, dry_run=dry_run)
    streaming = getattr(wf, "streaming", None)
    watching = watch_dir is not None or (streaming is not None and not no_watch)
    if not watching and any(v is not None for v in given.values()):
        named = ", ".join(WATCH_FIELDS[k] for k, v in given.items() if v is not None)
        fail([f"{named}: options of the watch mode — add --watch DIR to follow an acquisition folder"])
    folder = watch_dir or (import_folder(wf) if watching else None)
    if dry_run:
        _dry_run(wf, source, given, workers, folder, watching=watching, as_json=as_json)
        return
    if wf.plan is not None:
        _print_plan(wf.plan, wf.steps, source, as_json=as_json, dry_run=False, streaming=streaming)
    options = executor_options(device, executor, workers, threads_per_worker, scheduler, jobqueue, skip_bad)
    if watching:
        if watch_dir is None:
            folder = _streaming_folder(folder, streaming)
        run_watch(folder or watch_dir, project, wf, given, options, as_json=as_json, fresh=fresh)
        return
    _run_once(wf, project, options, fresh=fresh, resume=resume, as_json=as_json)


def _load(source: str, overrides: tuple[str, ...], *, as_json: bool, dry_run: bool):
    """The workflow ``source`` names, with ``--set`` overrides; a Scipion file of which nothing can
    run prints its plan before the error."""
    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.workflow_file import apply_overrides, load_workflow

    try:
        wf = load_workflow(source)
        apply_overrides(wf, list(overrides))
    except (InputError, ProjectError) as err:
        plan = getattr(err, "plan", None)
        if plan is not None:  # a Scipion file of which nothing can run
            _print_plan(plan, [], source, as_json=as_json, dry_run=dry_run)
        fail(getattr(err, "problems", [str(err)]))
    return wf


def _dry_run(
    wf, source: str, given: dict, workers: int | None, folder: str | None, *, watching: bool, as_json: bool
) -> None:
    """``--dry-run``: the plan (or the steps), what a watch would follow, and the workflow's problems."""
    from pathlib import Path

    from tiltflow.cli.watch import describe, watch_settings
    from tiltflow.workflow.errors import InputError
    from tiltflow.workflow.workflow_file import validate

    if watching and folder:  # what the watch reads
        for s in wf.steps:
            if s.step == "import-movies":
                s.params["files"] = str(Path(folder).absolute())
    if wf.plan is not None:
        _print_plan(wf.plan, wf.steps, source, as_json=as_json, dry_run=True, streaming=getattr(wf, "streaming", None))
    elif as_json:
        echo_json(wf.to_json()["steps"])
    else:
        for s in wf.steps:
            console.print(f"{s.id}: {s.step} inputs {json.dumps(s.inputs)} params {json.dumps(s.params)}", markup=False)
    if watching and not as_json:
        settings, lines = watch_settings(wf, given, workers)
        there = "" if folder and Path(folder).is_dir() else " (not there: give --watch DIR)"
        console.print(f"watch: would follow {folder}{there} with {describe(settings)}", markup=False)
        for line in lines:
            console.print(f"    {line}", markup=False)
    try:
        validate(wf)
    except InputError as err:
        fail(err.problems)


def _streaming_folder(folder: str | None, streaming) -> str:
    """The files path of a Scipion workflow that imports in streaming; refused when it is not there."""
    from pathlib import Path

    if folder and Path(folder).is_dir():
        return folder
    sid = streaming.import_id
    fail(
        [
            (
                f"{folder}: no such folder — this Scipion workflow imports in streaming (step {sid}): give the "
                f"folder the microscope writes into with --watch DIR (or --set {sid}.files=DIR), or --no-watch "
                "to run it once on the files there"
            )
        ]
    )


def _run_once(wf, project: str, options: RunOptions, *, fresh: bool, resume: bool, as_json: bool) -> None:
    """Run the workflow's steps in order, printing each run as it finishes (or the runs as JSON)."""
    from pathlib import Path

    from tiltflow.cli.output import ProgressPrinter
    from tiltflow.cli.watch import clear_project
    from tiltflow.workflow.errors import InputError, ProjectError
    from tiltflow.workflow.run_options import RunReport
    from tiltflow.workflow.store import ProjectStore
    from tiltflow.workflow.workflow_file import run_workflow

    t0 = time.time()
    try:
        root = Path(project)
        if fresh:
            clear_project(root)
        store = ProjectStore(root)
        t0 = time.time()
        printer = ProgressPrinter()
        steps = iter(wf.steps)
        printer.reset(f"[{next(steps).id}]")
        report = RunReport() if as_json else RunReport(progress=printer)
        shown = {"warnings": 0, "notes": 0}
        decisions: dict[str, str] = {}

        def on_continue(s, line):
            decisions[s.id] = line.partition(": ")[2]
            if not as_json:
                console.print(line, markup=False)

        def on_step_and_progress(s, run):
            if not as_json:
                _print_step(store, s, run, report, shown, t0)
            nxt = next(steps, None)
            if nxt is not None:
                printer.reset(f"[{nxt.id}]")

        runs = run_workflow(
            store,
            wf,
            options=options,
            report=report,
            on_step=on_step_and_progress,
            resume=resume,
            on_continue=on_continue,
        )
    except (InputError, ProjectError) as err:
        fail(getattr(err, "problems", [str(err)]))
    except Exception as err:
        fail([f"workflow failed: {type(err).__name__}: {err}"], code=1)
    if as_json:
        echo_json(
            {
                sid: {
                    "id": r.id,
                    "step": r.step,
                    "status": r.status,
                    **({"continue": decisions[sid]} if sid in decisions else {}),
                }
                for sid, r in runs.items()
            }
        )
    else:
        console.print(f"workflow '{wf.name}' finished in {time.time() - t0:.1f} s", markup=False)


def _print_step(store, s, run, report: RunReport, shown: dict[str, int], t0: float) -> None:
    """One finished step: its run, outputs, and the notes and warnings it added to ``report``."""
    took = (run.ended or time.time()) - (run.started or t0)
    console.print(f"[{s.id}] run {run.id} {run.step} {run.status} in {took:.1f} s", markup=False)
    for o in store.outputs(run.id):
        console.print(f"    {o.pointer}: {o.summary}", markup=False)
    for kind, prefix in (("notes", "    "), ("warnings", "    warning: ")):
        new = getattr(report, kind)[shown[kind] :]
        shown[kind] += len(new)
        for note in new:  # a note may be a multi-line table: indent every line
            for i, line in enumerate(str(note).splitlines()):
                console.print((prefix if i == 0 else "    ") + line, markup=False)


def _print_plan(plan, steps, source, *, as_json: bool, dry_run: bool, streaming=None) -> None:
    """A Scipion workflow's plan: on stdout for a dry run (JSON with --json), else before the run (on
    stderr when stdout carries the run's JSON)."""
    from pathlib import Path

    from tiltflow.cli.output import err_console
    from tiltflow.workflow.scipion import format_plan

    if dry_run and as_json:
        echo_json([entry.to_json() for entry in plan])
        return
    out = err_console if as_json else console
    for line in format_plan(plan, steps, origin=Path(str(source)).name, params=dry_run, streaming=streaming):
        out.print(line, markup=False)


def print_plan(wf, source, *, as_json: bool, dry_run: bool) -> None:
    """``wf``'s Scipion plan (see :func:`_print_plan`); nothing for a tiltflow workflow."""
    if wf.plan is not None:
        _print_plan(
            wf.plan, wf.steps, source, as_json=as_json, dry_run=dry_run, streaming=getattr(wf, "streaming", None)
        )


@workflow_group.command("export")
@click.option("-p", "--project", default=".", show_default=True)
def export_command(project) -> None:
    """Print the project's chain of finished runs as a workflow file (JSON)."""
    from tiltflow.workflow.errors import ProjectError
    from tiltflow.workflow.store import ProjectStore
    from tiltflow.workflow.workflow_file import export_workflow

    try:
        echo_json(export_workflow(ProjectStore(project, create=False)).to_json())
    except ProjectError as err:
        fail([str(err)])


@workflow_group.command("template")
@click.argument("name", required=False)
def template_command(name) -> None:
    """Print a built-in template (or list them)."""
    from tiltflow.workflow.errors import InputError
    from tiltflow.workflow.workflow_file import load_workflow, template_names

    if not name:
        for t in template_names():
            console.print(t)
        return
    try:
        echo_json(load_workflow(name).to_json())
    except InputError as err:
        fail(err.problems)


@workflow_group.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of workflow files (generated from the steps' parameter models)."""
    from tiltflow.workflow.workflow_file import json_schema

    echo_json(json_schema())
