"""Workflow files: a JSON chain of steps, validated by the steps' parameter models.

Format (version 1)::

    {"tiltflow_workflow": 1, "name": "tutorial",
     "steps": [{"id": "import", "step": "import-movies", "params": {...}, "inputs": {}},
               {"id": "motion", "step": "motion-ctf", "params": {...}, "inputs": {"input": "import"}}]}

An input names an earlier step's ``id`` (optionally ``id.outputName``) or an existing run pointer
(``RUN_ID`` / ``RUN_ID.outputName``). ``--set STEP.PARAM=VALUE`` overrides a parameter, ``STEP``
being a step ``id`` or a step type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.param_names import canonical_workflow
from tiltflow.workflow.run_options import RunOptions, RunReport
from tiltflow.workflow.steps.base import get_step
from tiltflow.workflow.store import ProjectStore, RunRecord

FORMAT_VERSION = 1


@dataclass
class WorkflowStep:
    id: str
    step: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Workflow:
    steps: list[WorkflowStep]
    name: str = "workflow"
    plan: list | None = None  # a Scipion workflow's plan (scipion.PlanEntry per protocol)

    def to_json(self) -> dict:
        return {
            "tiltflow_workflow": FORMAT_VERSION,
            "name": self.name,
            "steps": [{"id": s.id, "step": s.step, "params": s.params, "inputs": s.inputs} for s in self.steps],
        }


def json_schema() -> dict:
    """JSON Schema of workflow files, generated from the steps' parameter models."""
    from tiltflow.workflow.steps.base import all_steps

    variants = []
    for step in all_steps().values():
        variants.append(
            {
                "type": "object",
                "title": step.title,
                "additionalProperties": False,
                "required": ["step"],
                "properties": {
                    "id": {"type": "string", "description": "Name other steps use in their inputs"},
                    "step": {"const": step.id},
                    "params": step.params.model_json_schema(),
                    "inputs": {
                        "type": "object",
                        "properties": {
                            spec.name: {
                                "type": "string",
                                "description": f"{spec.help}: step id[.output] or RUN_ID[.output]",
                            }
                            for spec in step.inputs
                        },
                        "additionalProperties": False,
                    },
                },
            }
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tiltflow workflow",
        "type": "object",
        "required": ["steps"],
        "properties": {
            "tiltflow_workflow": {"const": FORMAT_VERSION},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "steps": {"type": "array", "items": {"oneOf": variants}},
        },
    }


def template_names() -> list[str]:
    folder = resources.files("tiltflow.workflow") / "templates"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_workflow(source: str | Path) -> Workflow:
    """A workflow from a file, or a built-in template by name (``tutorial``)."""
    path = Path(source)
    if not path.is_file() and str(source) in template_names():
        text = (resources.files("tiltflow.workflow") / "templates" / f"{source}.json").read_text()
        origin = f"template '{source}'"
    elif path.is_file():
        try:
            text = path.read_text()
        except UnicodeDecodeError as err:
            raise InputError(
                f"{path}: not a text file (byte {err.start} is not UTF-8) — give a workflow JSON file"
            ) from None
        origin = str(path)
    else:
        raise InputError(f"{source}: no such workflow file or template (templates: {', '.join(template_names())})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if "object.className" not in text:
            raise InputError(f"{origin}:{err.lineno}: not valid JSON ({err.msg})") from None
        import os

        from tiltflow.workflow.scipion import parse_scipion_template

        data = parse_scipion_template(text, dict(os.environ))  # a Scipion .json.template
    if isinstance(data, list):
        from tiltflow.workflow.scipion import workflow_from_scipion

        return workflow_from_scipion(data, origin)
    if not isinstance(data, dict) or "steps" not in data:
        raise InputError(f"{origin}: not a tiltflow workflow (expected an object with 'steps')")
    version = data.get("tiltflow_workflow", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise InputError(
            f"{origin}: 'tiltflow_workflow': {json.dumps(version)[:40]} — this tiltflow reads "
            f"version {FORMAT_VERSION} (`tiltflow workflow template tutorial` shows one)"
        )
    if not isinstance(data["steps"], list) or not data["steps"]:
        raise InputError(
            f'{origin}: \'steps\' must be a list of one or more steps ({{"step": "import-movies", "params": {{...}}}})'
        )
    steps = []
    for i, s in enumerate(data["steps"], 1):
        if not isinstance(s, dict) or not isinstance(s.get("step"), str) or not s["step"]:
            raise InputError(f"{origin}: step {i} needs at least a 'step' name")
        for key in ("params", "inputs"):
            if s.get(key) is not None and not isinstance(s[key], dict):
                raise InputError(f"{origin}: step {i} ({s['step']}): '{key}' must be an object ({{\"name\": value}})")
        steps.append(
            WorkflowStep(
                id=str(s.get("id") or s["step"]),
                step=s["step"],
                params=dict(s.get("params") or {}),
                inputs={str(k): str(v) for k, v in (s.get("inputs") or {}).items()},
            )
        )
    return Workflow(steps=steps, name=str(data.get("name", path.stem)))


def _coerce(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(wf: Workflow, overrides: list[str]) -> None:
    for item in overrides:
        key, sep, value = item.partition("=")
        target, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise InputError(f"--set '{item}': expected STEP.PARAM=VALUE (e.g. import-movies.files=/data)")
        matched = [s for s in wf.steps if s.id == target or s.step == target]
        if not matched:
            raise InputError(
                f"--set '{item}': no step '{target}' in the workflow ({', '.join(s.id for s in wf.steps)})"
            )
        for s in matched:
            s.params[_field_name(s.step, name)] = _coerce(value)


def _field_name(step_id: str, name: str) -> str:
    """A parameter's field name from its field name or its CLI spelling (``window`` or
    ``--window`` -> ``window_px``; DESIGN §5: one vocabulary)."""
    try:
        fields = get_step(step_id).params.model_fields
    except KeyError:
        return name  # an unknown step is reported by validate()
    if name in fields:
        return name
    wanted = name.lstrip("-").replace("_", "-")
    for field_name, info in fields.items():
        cli = (info.json_schema_extra or {}).get("cli") if isinstance(info.json_schema_extra, dict) else None
        if isinstance(cli, str) and cli.lstrip("-") == wanted:
            return field_name
    return name


def validate(wf: Workflow) -> None:
    """Check every step's type and parameters before anything runs (all problems at once)."""
    problems, ids = [], set()
    problems.extend(canonical_workflow(wf))  # option names as well as field names; 'did you mean'
    for s in wf.steps:
        try:
            step = get_step(s.step)
        except KeyError as err:
            problems.append(f"workflow step '{s.id}': {err.args[0]}")
            continue
        try:
            step.params.model_validate(s.params)
        except ValidationError as err:
            for e in err.errors():
                problems.append(f"workflow step '{s.id}' ({s.step}): '{'.'.join(map(str, e['loc']))}': {e['msg']}")
        for name, ref in s.inputs.items():
            head = str(ref).split(".")[0]
            if head not in ids and not head.isdigit():
                problems.append(f"workflow step '{s.id}': input {name}='{ref}' names no earlier step")
        if s.id in ids:
            problems.append(f"workflow step '{s.id}': an earlier step has this id — give each step its own 'id'")
        ids.add(s.id)
    if problems:
        raise InputError(problems)


def run_workflow(
    store: ProjectStore,
    wf: Workflow,
    *,
    options: RunOptions | Mapping[str, Any] | None = None,
    report: RunReport | None = None,
    on_step: Callable[[WorkflowStep, RunRecord], None] | None = None,
    resume: bool = False,
    on_continue: Callable[[WorkflowStep, str], None] | None = None,
) -> dict[str, RunRecord]:
    """Run the steps in order; returns step id -> run.

    With ``resume`` each step is compared with the project's runs labelled with its id: a finished
    run with the same parameters and inputs is reused, an interrupted one (killed, failed) continues
    where it stopped, and anything else gets a new run (earlier runs are kept) — so a changed
    parameter re-runs its step and, through the changed input, everything downstream.
    ``on_continue(step, line)`` hears one line per step saying which and why.
    The executor (``options.executor``: local or dask) is made once for the whole chain; ``report``
    hears every step's notes, warnings and progress.
    """
    from tiltflow.workflow.executor import make_executor
    from tiltflow.workflow.runner import remove_finished_scratch

    validate(wf)
    # steps go on with the series that aligned and report the rest
    run_options = replace(RunOptions.of(options), within_workflow=True)
    report = RunReport() if report is None else report
    remove_finished_scratch(store)
    owned = None
    if run_options.shared_executor is None and run_options.executor == "dask":
        owned = make_executor(run_options)
        run_options = replace(run_options, shared_executor=owned)
    try:
        return _run_steps(store, wf, run_options, report, on_step, resume, on_continue)
    finally:
        if owned is not None:
            owned.close()


def _runs_by_label(store: ProjectStore) -> dict[str, list[RunRecord]]:
    by_label: dict[str, list[RunRecord]] = {}
    for run in store.runs():
        if run.label:
            by_label.setdefault(run.label, []).append(run)
    return by_label


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def param_changes(step_id: str, wanted: dict[str, Any], recorded: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, recorded value, wanted value)`` for each parameter that differs (both as a run records
    them, :func:`runner.recorded_params`). A field a run predates counts as its default."""
    from pydantic_core import to_jsonable_python

    fields = get_step(step_id).params.model_fields
    changes = []
    for name, value in wanted.items():
        if name in recorded:
            old = recorded[name]
        elif name in fields:
            old = to_jsonable_python(fields[name].get_default(call_default_factory=True))
        else:
            old = None
        if old != value:
            changes.append((name, old, value))
    return changes


def _why_rerun(sid: str, step_id: str, params: dict, inputs: dict[str, str], last: RunRecord) -> str:
    """Why a step's last run cannot be reused: its step type, parameters (at most 3 named) or inputs."""
    if last.step != step_id:
        return f"its step changed ({last.step} -> {step_id})"
    reasons = []
    changes = param_changes(step_id, params, last.params)
    if changes:
        named = [f"{sid}.{k} changed ({_shown(a)} -> {_shown(b)})" for k, a, b in changes[:3]]
        extra = len(changes) - 3
        more = f" and {extra} more parameter{'s' if extra > 1 else ''}" if extra > 0 else ""
        reasons.append(", ".join(named) + more)
    moved = [f"{k} {last.inputs.get(k, 'none')} -> {v}" for k, v in inputs.items() if last.inputs.get(k) != v]
    moved += [f"{k} {v} -> none" for k, v in last.inputs.items() if k not in inputs]
    if moved:
        reasons.append(f"its input changed ({', '.join(moved)})")
    return "; ".join(reasons) or f"run {last.id} is {last.status}"


def continue_choice(
    sid: str, step_id: str, params: dict, inputs: dict[str, str], earlier: list[RunRecord]
) -> tuple[str, RunRecord | None, str]:
    """What ``--continue`` does with workflow step ``sid`` given its earlier runs (oldest first):
    ``("reuse", run, line)``, ``("resume", run, line)`` or ``("new", None, line)``. ``params`` and
    ``inputs`` are as a run records them (resolved pointers)."""
    same = [
        r for r in earlier if r.step == step_id and r.inputs == inputs and not param_changes(step_id, params, r.params)
    ]
    finished = [r for r in same if r.status == "finished"]
    if finished:
        return "reuse", finished[-1], f"step {sid}: reused run {finished[-1].id}"
    if same:
        return "resume", same[-1], f"step {sid}: continuing run {same[-1].id} ({same[-1].status})"
    if not earlier:
        return "new", None, f"step {sid}: new run (no earlier run)"
    last = ([r for r in earlier if r.status == "finished"] or earlier)[-1]
    return "new", None, f"step {sid}: re-run because {_why_rerun(sid, step_id, params, inputs, last)}"


def _run_steps(store, wf, options, report, on_step, resume, on_continue) -> dict[str, RunRecord]:
    from tiltflow.workflow.runner import recorded_params, resolve_inputs, run_step

    earlier = _runs_by_label(store) if resume else {}
    warn = report.warn
    done: dict[str, RunRecord] = {}
    for s in wf.steps:
        inputs = {}
        for name, ref in s.inputs.items():
            head, _, out = str(ref).partition(".")
            if head in done:
                out = _existing_output(store, done[head].id, out, warn) if out else out
                inputs[name] = f"{done[head].id}.{out}" if out else str(done[head].id)
            else:
                inputs[name] = str(ref)
        action, old = "new", None
        if resume:
            step = get_step(s.step)
            pointers = {k: o.pointer for k, o in resolve_inputs(store, step, inputs).items()}
            action, old, line = continue_choice(
                s.id, s.step, recorded_params(step, s.params), pointers, earlier.get(s.id, [])
            )
            if on_continue:
                on_continue(s, line)
        if action == "reuse" and old is not None:
            run = old
        else:
            run = run_step(
                store,
                s.step,
                s.params,
                inputs,
                options=options,
                report=report,
                label=s.id,
                resume=old.id if action == "resume" and old is not None else None,
            )
        done[s.id] = run
        if on_step:
            on_step(s, run)
    return done


def _existing_output(store: ProjectStore, run_id: int, name: str, warn: Callable[[str], None]) -> str:
    """A Scipion pointer may name a subset a viewer creates later (``TiltSeries_3``): until it
    exists, the run's base output stands in for it, with a warning."""
    names = {o.name for o in store.outputs(run_id)}
    if name in names:
        return name
    base = name.rstrip("0123456789").rstrip("_")
    for candidate in (base, "output" + base[0].upper() + base[1:] if base else base):
        if candidate in names:
            warn(
                f"output {run_id}.{name} does not exist yet (a curation viewer creates it); using {run_id}.{candidate}"
            )
            return candidate
    stripped = base[len("output") :] if base.startswith("output") else None
    if stripped and stripped in names:
        return stripped
    # Scipion spells some outputs differently (tiltSeries, goodSetOfCTFTomoSeries2): the run's output
    # whose name ends that one, ignoring case
    similar = [n for n in names if base.lower().endswith(n.lower())]
    if len(similar) == 1:
        warn(f"output {run_id}.{name} does not exist; using {run_id}.{similar[0]}")
        return similar[0]
    return name


def export_workflow(store: ProjectStore, name: str = "project") -> Workflow:
    """The project's finished runs as a workflow (inputs rewritten to step ids)."""
    steps: list[WorkflowStep] = []
    ids: dict[int, str] = {}
    for run in store.runs():
        if run.status != "finished":
            continue
        sid = run.label or f"{run.step}-{run.id}"
        while sid in ids.values():
            sid += f"-{run.id}"
        ids[run.id] = sid
        inputs = {}
        for k, ptr in run.inputs.items():
            head, _, out = ptr.partition(".")
            inputs[k] = f"{ids[int(head)]}.{out}" if head.isdigit() and int(head) in ids else ptr
        steps.append(WorkflowStep(id=sid, step=run.step, params=run.params, inputs=inputs))
    return Workflow(steps=steps, name=name)
