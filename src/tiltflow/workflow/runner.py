"""Run one step in a project: validate, create the run, call the step, register outputs atomically."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tiltflow.workflow.errors import InputError, ProjectError
from tiltflow.workflow.executor import ItemFailures
from tiltflow.workflow.param_names import canonical_or_raise
from tiltflow.workflow.run_options import RunOptions, RunReport
from tiltflow.workflow.steps.base import Step, StepContext, get_step
from tiltflow.workflow.store import OutputRecord, ProjectStore, RunRecord

# the command line that is running (set by the CLI); the first line of every run.log it makes
COMMAND_LINE: ContextVar[str | None] = ContextVar("tiltflow_command_line", default=None)


def command_line_text(label: str | None = None) -> str:
    """``command: tiltflow align -p P ...`` (and the workflow step), or how Python called us."""
    line = COMMAND_LINE.get()
    if line is None:
        line = f"(Python, no command line: {shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])})"
    chained = label and any(f" {word} " in f"{line} " for word in ("workflow", "watch"))
    return f"command: {line}" + (f"  [workflow step '{label}']" if chained else "")


def _validation_messages(step: Step, err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "parameters"
        out.append(f"{step.id}: parameter '{loc}': {e['msg']}")
    return out


def _run_logger(run_dir: Path, run_id: int) -> logging.Logger:
    log = logging.getLogger(f"tiltflow.run.{run_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    run_dir.mkdir(parents=True, exist_ok=True)  # a run killed as it was created has no folder yet
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


def _close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def recorded_params(step: Step, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (field or option names) as a run records them: validated, defaults filled, JSON values."""
    params = canonical_or_raise(step.id, params)
    try:
        return step.params.model_validate(params).model_dump(mode="json")
    except ValidationError as err:
        raise InputError(_validation_messages(step, err)) from None


def resolve_inputs(store: ProjectStore, step: Step, inputs: dict[str, str] | None) -> dict[str, OutputRecord]:
    """The outputs a run of ``step`` would consume (``RUN_ID`` or ``RUN_ID.name`` per input)."""
    pointers = {k: str(v) for k, v in (inputs or {}).items() if v not in (None, "")}
    resolved = {}
    for spec in step.inputs:
        if spec.name not in pointers:
            if spec.optional:
                continue
            raise InputError(f"{step.id}: --{spec.name} is required (a RUN_ID or RUN_ID.outputName)")
        try:
            resolved[spec.name] = store.resolve(pointers[spec.name], spec.types)
        except ProjectError as err:
            raise InputError(str(err)) from None
    return resolved


# a run's scratch paths (one a line, relative to its folder), written before it is registered finished
SCRATCH_LIST = ".scratch-paths"


def _note_scratch(run_dir: Path, paths: list[Path]) -> None:
    """Record ``paths`` in the run folder before the run is registered finished: should the process
    die before it removes them, the next run in the project does (:func:`remove_finished_scratch`)."""
    listed = run_dir / SCRATCH_LIST
    if not paths:
        listed.unlink(missing_ok=True)
        return
    lines = [str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p) for p in paths]
    tmp = listed.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(listed)


def _remove_scratch(run_dir: Path, paths: list[Path], log: logging.Logger) -> None:
    """Delete a finished run's intermediate files, then their list (failures are logged: the run
    stays finished, and the next run tries again)."""
    failed = False
    for path in paths:
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass  # removed meanwhile (by another process healing the project)
        except OSError as err:
            failed = True
            log.warning("could not remove intermediate %s: %s", path, err)
    if not failed:
        (run_dir / SCRATCH_LIST).unlink(missing_ok=True)


def remove_finished_scratch(store: ProjectStore) -> None:
    """Remove the scratch a finished run left behind (its process ended between registering the run
    finished and removing them); runs not finished keep theirs for ``--continue``."""
    listed = sorted((store.root / "runs").glob(f"*/{SCRATCH_LIST}"))
    if not listed:
        return
    finished = {run.run_dir for run in store.runs() if run.status == "finished" and run.run_dir}
    log = logging.getLogger(__name__)
    for path in listed:
        run_dir = path.parent
        if run_dir.relative_to(store.root).as_posix() not in finished:
            continue
        try:
            names = path.read_text().splitlines()
        except FileNotFoundError:  # its own process removed them meanwhile
            continue
        _remove_scratch(run_dir, [run_dir / name for name in names if name], log)


def run_step(
    store: ProjectStore,
    step_id: str,
    params: dict[str, Any],
    inputs: dict[str, str] | None = None,
    *,
    options: RunOptions | Mapping[str, Any] | None = None,
    report: RunReport | None = None,
    label: str | None = None,
    resume: int | None = None,
) -> RunRecord:
    """Run ``step_id`` and return its finished run.

    Raises :class:`InputError` (project unchanged) for bad parameters, inputs or input files, and
    re-raises other errors after marking the run failed (its log keeps the traceback).
    ``resume=RUN_ID`` continues an interrupted or failed run of the same step with its recorded
    parameters and inputs; items it finished are not recomputed.
    ``options``: how to run (a mapping of :class:`RunOptions` field names works too); ``report``
    hears the run's notes, warnings and progress.
    """
    step = get_step(step_id)
    run_options = RunOptions.of(options)
    report = RunReport() if report is None else report
    if resume is not None:
        old = store.run(resume)
        if old.step != step.id:
            raise InputError(f"--continue {resume}: run {resume} is a {old.step} run, not {step.id}")
        if old.status == "finished":
            remove_finished_scratch(store)  # killed between 'finished' and its cleanup
            return old
        params, inputs = old.params, old.inputs
    params = canonical_or_raise(step.id, params)  # option names (``window``) work as field names
    try:
        p = step.params.model_validate(params)
    except ValidationError as err:
        raise InputError(_validation_messages(step, err)) from None
    resolved = resolve_inputs(store, step, inputs)
    pointers = {name: out.pointer for name, out in resolved.items()}
    loaded = {name: store.load(out) for name, out in resolved.items()}
    from tiltflow.workflow.steps.checks_data import check_inputs

    for note in check_inputs(step.id, p, loaded):  # options their mode does not use: one note line each
        if note not in report.notes:
            report.note(note)
    remove_finished_scratch(store)
    if resume is not None:
        store.set_status(resume, "running")
        run = store.run(resume)
    else:
        run = store.create_run(step.id, p.model_dump(mode="json"), pointers, label)
    run_dir = store.root / (run.run_dir or "")
    log = _run_logger(run_dir, run.id)
    log.info("%s", command_line_text(label))
    log.info("step %s, parameters %s, inputs %s", step.id, p.model_dump_json(), pointers)
    ctx = StepContext(
        params=p,
        inputs=loaded,
        input_pointers=pointers,
        run_dir=run_dir,
        project_root=store.root,
        run_id=run.id,
        log=log,
        options=run_options,
        report=report,
        store=store,
    )
    try:
        from tiltflow.workflow.diskspace import guard  # a full disk: DiskFull, run marked failed

        with guard(run_dir, f"free space there, then `tiltflow {step.id} -p {store.root} --continue {run.id}`"):
            outputs = dict(step.run(ctx))
            _note_scratch(run_dir, ctx.scratch)
            store.finish_run(run.id, outputs)
        log.info("finished: %s", {k: v.summary() for k, v in outputs.items()})
        _remove_scratch(run_dir, ctx.scratch, log)
    except InputError:
        _close_logger(log)
        if resume is None:
            store.delete_run(run.id)
        else:
            store.fail_run(run.id, "bad input on resume")
        raise
    except KeyboardInterrupt:
        log.error("interrupted")
        store.fail_run(run.id, "interrupted", status="interrupted")
        _close_logger(log)
        raise
    except ItemFailures as err:  # every item in the log; the summary names the log
        for line in err.lines:
            log.error("failed: %s", line)
        err.args = (err.summary(log=f"{run.run_dir}/run.log" if run.run_dir else "run.log"),)
        log.error("%s\n%s", err, traceback.format_exc())
        store.fail_run(run.id, str(err))
        _close_logger(log)
        raise
    except BaseException as err:
        log.error("failed: %s\n%s", err, traceback.format_exc())
        store.fail_run(run.id, f"{type(err).__name__}: {err}")
        _close_logger(log)
        raise
    _close_logger(log)
    return store.run(run.id)
