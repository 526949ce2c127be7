"""One vocabulary for parameters (DESIGN §5): a step's parameter may be named by its field name
(``window_px``) or by its command-line option (``window``, ``--window``, ``fit-range``) wherever
parameters are given by name — workflow files, ``--set STEP.PARAM=V``, :func:`runner.run_step`.
An unknown name gets one line with the closest known name ("did you mean").
"""

from __future__ import annotations

import difflib
from typing import Any

from tiltflow.workflow.errors import InputError


def _norm(name: str) -> str:
    return str(name).strip().lstrip("-").replace("_", "-").lower()


def _cli(info: Any) -> str | None:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return extra.get("cli")


def spellings(model: Any) -> dict[str, str]:
    """Every accepted spelling (normalised: ``window``, ``window-px``) -> field name."""
    names: dict[str, str] = {}
    for field, info in model.model_fields.items():
        names[_norm(field)] = field
        cli = _cli(info)
        if cli:
            names.setdefault(_norm(cli), field)
    return names


def shown_name(model: Any, field: str) -> str:
    """``window`` (window_px): the option name, with the field name when they differ."""
    cli = _cli(model.model_fields[field])
    option = _norm(cli) if cli else _norm(field)
    return f"'{option}'" + (f" ({field})" if option != _norm(field) else "")


def did_you_mean(model: Any, name: str) -> str:
    """`` — did you mean 'window' (window_px)?`` or a pointer to --help."""
    names = spellings(model)
    close = difflib.get_close_matches(_norm(name), list(names), n=1, cutoff=0.6)
    if close:
        return f" — did you mean {shown_name(model, names[close[0]])}?"
    return " — see the step's --help for its parameters"


def canonical_params(step_id: str, params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``params`` with every key turned into its field name, and one line per unknown or repeated
    name (unknown names are left out of the returned dict; callers refuse when lines are returned)."""
    from tiltflow.workflow.steps.base import get_step

    model = get_step(step_id).params
    names = spellings(model)
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    problems: list[str] = []
    for key, value in params.items():
        field = names.get(_norm(key))
        if field is None:
            problems.append(f"{step_id}: '{key}' is not a parameter{did_you_mean(model, key)}")
            continue
        if field in out:
            problems.append(
                f"{step_id}: '{key}' and '{given_as[field]}' name the same parameter ({field}); give it once"
            )
            continue
        out[field], given_as[field] = value, key
    return out, problems


def canonical_or_raise(step_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """:func:`canonical_params`, raising :class:`InputError` with every problem."""
    out, problems = canonical_params(step_id, params)
    if problems:
        raise InputError(problems)
    return out


def canonical_workflow(wf: Any) -> list[str]:
    """Rename every step's parameters of a workflow to field names, in place; returns one line per
    unknown or repeated name (the caller refuses the workflow when any is returned). Steps of an
    unknown type are left alone (validation reports them)."""
    problems: list[str] = []
    for s in wf.steps:
        try:
            params, found = canonical_params(s.step, s.params)
        except KeyError:
            continue
        s.params = params
        problems.extend(f"workflow step '{s.id}': {line.split(': ', 1)[1]}" for line in found)
    return problems
