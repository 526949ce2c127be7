"""Step declarations: id, pydantic parameter model, typed inputs and outputs, and a plain function.

The CLI options, the viewer's forms and the workflow-file schema are generated from these
declarations. Parameter fields carry units in their names; ``param(...)`` attaches the help text
and the command-line spelling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from tiltflow.workflow.sets import AnySet


class StepParams(BaseModel):
    """Base of every step's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def param(default: Any = None, help: str = "", *, cli: str | None = None, **kwargs: Any) -> Any:
    """A parameter field with help text and an optional CLI spelling (``--voltage``)."""
    extra = {"cli": cli} if cli else {}
    return Field(default, description=help, json_schema_extra=extra or None, **kwargs)


@dataclass(frozen=True)
class InputSpec:
    name: str                       # CLI option --<name>
    types: tuple[str, ...]          # accepted output types
    help: str
    optional: bool = False


@dataclass
class StepContext:
    """What a step function gets: parameters, loaded inputs, its run folder, a logger."""

    params: Any
    inputs: dict[str, AnySet]
    input_pointers: dict[str, str]
    run_dir: Path
    project_root: Path
    run_id: int
    log: logging.Logger
    options: dict[str, Any] = field(default_factory=dict)   # device, skip_bad, executor, ...
    progress: Callable[[str, int, int], None] = lambda what, done, total: None
    store: Any = None   # the ProjectStore (for per-item progress records only)
    # intermediate files or folders a continue still needs: the runner removes them only once the
    # run is registered finished (a step never deletes them itself)
    scratch: list[Path] = field(default_factory=list)

    @property
    def skip_bad(self) -> bool:
        return bool(self.options.get("skip_bad"))


@dataclass(frozen=True)
class Step:
    id: str                                          # e.g. "import-movies"
    title: str
    params: type[StepParams]
    inputs: tuple[InputSpec, ...]
    outputs: dict[str, str]                          # name -> type
    run: Callable[[StepContext], dict[str, AnySet]]
    help: str = ""
    scipion_class: str | None = None                 # e.g. "ProtImportTsMovies"


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
