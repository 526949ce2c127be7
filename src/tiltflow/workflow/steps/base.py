"""Step declarations: id, pydantic parameter model, typed inputs and outputs, and a plain function.

The CLI options, the viewer's forms and the workflow-file schema are generated from these
declarations. Parameter fields carry units in their names; ``param(...)`` attaches the help text,
the command-line spelling and the metadata as data: the mode a parameter belongs to
(``condition=("method", "patch")``), its ``group`` ("motion", "ctf", ...) and whether it is an
``expert`` option. :meth:`Step.validate` runs every check of a step before any work; a step's
``methods`` are the published methods it implements (``show RUN`` prints them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tiltflow.workflow.run_options import RunOptions, RunReport
from tiltflow.workflow.sets import AnySet

if TYPE_CHECKING:
    from tiltflow.workflow.store import ProjectStore


@dataclass(frozen=True)
class Condition:
    """When a parameter applies: the parameter ``field`` has one of ``values``
    (``Condition("method", ("patch",))``: with ``--method patch`` only)."""

    field: str
    values: tuple[Any, ...]

    @classmethod
    def of(cls, spec: Any) -> Condition:
        """From ``("method", "patch")``, ``("method", ("wbp", "sirt"))``, ``("estimate_ctf", True)``
        or the JSON form ``{"field": "method", "values": ["patch"]}``."""
        if isinstance(spec, Condition):
            return spec
        if isinstance(spec, dict):
            return cls(str(spec["field"]), tuple(spec["values"]))
        name, value = spec
        return cls(str(name), tuple(value) if isinstance(value, (list, tuple)) else (value,))

    def holds(self, params: Any) -> bool:
        value = params.get(self.field) if isinstance(params, dict) else getattr(params, self.field)
        return value in self.values

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "values": list(self.values)}

    def option_text(self, model: type[BaseModel], values: tuple[Any, ...] | None = None) -> str:
        """The condition as typed: ``--method patch``, ``--estimate-ctf``, ``--no-resolve``."""
        values = self.values if values is None else values
        flag = cli_flag(model, self.field)
        if all(isinstance(v, bool) for v in values) and len(values) == 1:
            return flag if values[0] else f"--no-{flag[2:]}"
        return f"{flag} {'|'.join(str(v) for v in values)}"


class StepParams(BaseModel):
    """Base of every step's parameter model: unknown keys are errors. In the JSON schema, a
    condition on a field the model lacks is left out (a shared option group such as the CTF
    options applies only with ``--estimate-ctf`` in motion-ctf, always in ``ctf``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, model: _schema_conditions(schema, model))


def _schema_conditions(schema: dict[str, Any], model: Any) -> None:
    for name, prop in (schema.get("properties") or {}).items():
        if "condition" in prop and condition_of(model, name) is None:
            del prop["condition"]


def param(
    default: Any = None,
    help: str = "",
    *,
    cli: str | None = None,
    condition: Any = None,
    group: str | None = None,
    expert: bool = False,
    **kwargs: Any,
) -> Any:
    """A parameter field with help text, an optional CLI spelling (``--voltage``) and its metadata:
    ``condition`` (the mode it belongs to, see :class:`Condition`), ``group`` ("motion", "ctf", ...;
    none: the step's main options) and ``expert`` (listed last in ``--help``). The metadata are
    JSON-schema extras, so the workflow schema carries them."""
    extra: dict[str, Any] = {}
    if cli:
        extra["cli"] = cli
    if group:
        extra["group"] = group
    if expert:
        extra["expert"] = True
    if condition is not None:
        extra["condition"] = Condition.of(condition).to_json()
    return Field(default, description=help, json_schema_extra=extra or None, **kwargs)


def _extra(model: type[BaseModel], name: str) -> dict[str, Any]:
    info = model.model_fields.get(name)
    extra = info.json_schema_extra if info is not None else None
    return extra if isinstance(extra, dict) else {}


def cli_flag(model: type[BaseModel], name: str) -> str:
    """The option a field is typed as (``window_px`` -> ``--window``)."""
    return _extra(model, name).get("cli") or "--" + name.replace("_", "-")


def condition_of(model: type[BaseModel], name: str) -> Condition | None:
    """The mode ``name`` belongs to; None when it always applies (or its condition names a field
    ``model`` lacks)."""
    spec = _extra(model, name).get("condition")
    if spec is None:
        return None
    cond = Condition.of(spec)
    return cond if cond.field in model.model_fields else None


@dataclass(frozen=True)
class ParamMeta:
    """What ``--help``, the workflow schema and the viewer's forms show of one parameter."""

    name: str  # field name (``window_px``)
    flag: str  # option (``--window``)
    help: str
    group: str | None  # None: the step's main options
    expert: bool
    condition: Condition | None  # None: always applies


def param_meta(model: type[BaseModel], name: str) -> ParamMeta:
    extra = _extra(model, name)
    return ParamMeta(
        name=name,
        flag=cli_flag(model, name),
        help=model.model_fields[name].description or "",
        group=extra.get("group"),
        expert=bool(extra.get("expert")),
        condition=condition_of(model, name),
    )


def inactive_notes(params: BaseModel, given: Any = None) -> list[str]:
    """One note per parameter the user set that its mode does not use (``--align-z-nm`` with
    ``--method fiducial``). ``given``: the names set (default: those set to other than the default)."""
    model = type(params)
    if given is None:
        given = {
            name
            for name in params.model_fields_set
            if getattr(params, name) != model.model_fields[name].get_default(call_default_factory=True)
        }
    notes = []
    for name in model.model_fields:
        cond = condition_of(model, name)
        if name in given and cond is not None and not cond.holds(params):
            now = (getattr(params, cond.field),)
            notes.append(
                f"{cli_flag(model, name)} applies only with {cond.option_text(model)} — ignored "
                f"with {cond.option_text(model, now)}"
            )
    return notes


@dataclass(frozen=True)
class InputSpec:
    name: str  # CLI option --<name>
    types: tuple[str, ...]  # accepted output types
    help: str
    optional: bool = False


P = TypeVar("P", bound=StepParams)
S = TypeVar("S")


@dataclass
class StepContext(Generic[P]):
    """What a step function gets: its validated parameters, loaded inputs, its run folder, a logger,
    the run options and the report its notes, warnings and progress go to."""

    params: P
    inputs: dict[str, AnySet]
    input_pointers: dict[str, str]
    run_dir: Path
    project_root: Path
    run_id: int
    log: logging.Logger
    options: RunOptions = field(default_factory=RunOptions)
    report: RunReport = field(default_factory=RunReport)
    store: ProjectStore | None = None  # the project (for per-item progress records only)
    # intermediate files or folders a continue still needs: the runner lists them in the run folder,
    # removes them once the run is registered finished, and the next run in the project removes those
    # a killed process left (runner.remove_finished_scratch); a step never deletes them itself
    scratch: list[Path] = field(default_factory=list)

    @property
    def skip_bad(self) -> bool:
        return self.options.skip_bad

    def progress(self, what: str, done: int, total: int) -> None:
        """``done`` of ``total`` items finished, the last ``what`` (to ``report.progress``)."""
        self.report.progress(what, done, total)

    def input_set(self, name: str, kind: type[S]) -> S:
        """The loaded input ``name`` as the set class ``kind`` (its :class:`InputSpec` types make it one)."""
        value = self.inputs[name]
        if not isinstance(value, kind):
            raise TypeError(f"input '{name}' is a {type(value).__name__}, not a {kind.__name__}")
        return value


@dataclass(frozen=True)
class Step:
    id: str  # e.g. "import-movies"
    title: str
    params: type[StepParams]
    inputs: tuple[InputSpec, ...]
    outputs: dict[str, str]  # name -> type
    run: Callable[[StepContext[Any]], Mapping[str, AnySet]]
    help: str = ""
    scipion_class: str | None = None  # e.g. "ProtImportTsMovies"
    # checks against the loaded ``input`` set (steps/checks_data.py): InputError, one line, before any work
    checks: Callable[[Any, Any], None] | None = None
    # the published methods the step implements, short citations with DOI (steps/citations.py)
    methods: tuple[str, ...] = ()

    def validate(self, params: Any, inputs: dict[str, Any] | None = None, *, given: Any = None) -> list[str]:
        """Every check of this step before any work, from one place; returns the notes on
        parameters set for a mode that is not active (one line each, not errors).

        ``params``: a dict of field values (validated here by the parameter model: types, bounds,
        the rules of ``checks.RULES`` and ``problems()`` across fields) or a validated model.
        ``inputs``: the loaded input sets; with an ``input`` set, ``checks`` run against it.
        ``given``: the parameter names the user set (default: those set to other than the default).
        Raises ``InputError`` with one line per problem naming the options as typed (``--window``).
        """
        if isinstance(params, dict):
            from tiltflow.workflow.steps.checks import validate_cli

            params = validate_cli(self.params, params)
        source = (inputs or {}).get("input")
        if self.checks is not None and source is not None:
            self.checks(params, source)
        return inactive_notes(params, given)


REGISTRY: dict[str, Step] = {}


def register(step: Step) -> Step:
    REGISTRY[step.id] = step
    return step


def get_step(step_id: str) -> Step:
    from tiltflow.workflow import steps  # noqa: F401  (registers the built-in steps)

    if step_id not in REGISTRY:
        raise KeyError(f"unknown step '{step_id}' — known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[step_id]


def all_steps() -> dict[str, Step]:
    from tiltflow.workflow import steps  # noqa: F401

    return dict(REGISTRY)
