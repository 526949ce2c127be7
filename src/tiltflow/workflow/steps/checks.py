"""Parameter checks of every step, in one place: one line per problem naming the option as the
user typed it (``--window``, not ``window_px``), the value and the fix.

``CheckedParams`` is the base of the steps' parameter models: a bad value (wrong type, out of
bounds, NaN or infinite, a reversed range, a zero grid) fails pydantic validation, so before a run
exists and before any work; ``cli_problems`` words each error with the option's CLI name (workflow
files keep their own keys). Checks that need the input (image size, frames) are in ``checks_data``;
a step declares them (``Step.checks``) and ``Step.validate`` runs both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.steps.base import StepParams, cli_flag


def show(value: Any) -> str:
    """A value as it would be typed: ``2 2 8`` for a tuple, ``nan``, ``1e+300``."""
    if isinstance(value, (list, tuple)):
        return " ".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_BOUNDS = {
    "greater_than": ("gt", "above", "a value above {b}"),
    "greater_than_equal": ("ge", "at least", "{flag} {b} or more"),
    "less_than": ("lt", "below", "a value below {b}"),
    "less_than_equal": ("le", "at most", "{flag} {b} or less"),
}


def _message(model: type[StepParams], e: ErrorDetails, data: Any) -> str:
    """One pydantic error as one line with the option's CLI name."""
    loc = e.get("loc") or ()
    if not loc:
        return str((e.get("ctx") or {}).get("error", e.get("msg")))
    name = str(loc[0])
    if e["type"] == "extra_forbidden":
        return f"'{name}' is not a parameter of this step — check the spelling (see --help)"
    flag = cli_flag(model, name)
    given = data.get(name, e.get("input")) if isinstance(data, dict) else e.get("input")
    what = f"{flag} {show(given)}"
    each = "each value " if len(loc) > 1 else ""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind == "value_error":  # a rule's own line (RULES, problems())
        return str(ctx.get("error", e.get("msg")))
    if kind == "missing":
        return f"{flag} is required"
    if kind == "finite_number":
        return f"{what}: not a finite number — give a finite value{_default(model, name)}"
    if kind in _BOUNDS:
        key, words, fix = _BOUNDS[kind]
        bound = show(ctx.get(key))
        return f"{what}: {each}must be {words} {bound} — pass {fix.format(flag=flag, b=bound)}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{what}: {each}must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{what}: {each}must be a number"
    if kind == "literal_error":
        return f"{what}: must be one of {ctx.get('expected')}"
    if kind in ("too_short", "too_long", "tuple_type"):
        return f"{what}: {e.get('msg', 'wrong number of values')}"
    return f"{what}: {e.get('msg')}"


def _default(model: type[StepParams], name: str) -> str:
    info = model.model_fields.get(name)
    if info is None or info.is_required() or info.default is None:
        return ""
    return f" (default {show(info.default)})"


# -- rules on single values that bounds cannot state (table: field name -> rule) ----------------------
def _resolution_range(flag: str, v: tuple[float, float]) -> str | None:
    low, high = v
    if low > high > 0:
        return None
    hint = (
        f"pass {flag} {show((max(abs(low), abs(high)), min(abs(low), abs(high))))}"
        if low and high and low != high
        else "pass the low-resolution end first, e.g. 500 10"
    )
    return f"{flag} {show(v)}: give (low, high) resolution in Å with low > high > 0 — {hint}"


def _increasing_positive(flag: str, v: tuple[float, float]) -> str | None:
    lo, hi = v
    if 0 < lo < hi:
        return None
    return f"{flag} {show(v)}: give (min, max) with 0 < min < max, e.g. {flag} 0.5 8"


def _grid(flag: str, v: tuple[int, ...] | None) -> str | None:
    if v is None or min(v) >= 1:
        return None
    return f"{flag} {show(v)}: every value must be 1 or more (x, y, time points), e.g. {flag} {show((1,) * len(v))}"


def _even_window(flag: str, v: int) -> str | None:
    return None if v % 2 == 0 else f"{flag} {v}: must be even — pass {flag} {v - 1}"


RULES: dict[str, Callable[[str, Any], str | None]] = {
    "fit_range_a": _resolution_range,
    "ctf_range_a": _resolution_range,
    "defocus_range_um": _increasing_positive,
    "motion_grid": _grid,
    "defocus_grid": _grid,
    "window_px": _even_window,
}


class CheckedParams(StepParams):
    """Parameter model whose problems read as one line each with the CLI option (``cli_problems``).

    Floats must be finite; ``RULES`` apply to the fields of those names; a model adds checks across
    fields by overriding :meth:`problems`.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator(*RULES, check_fields=False)
    @classmethod
    def _rule(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""  # a field validator always knows its field
        message = RULES[name](cli_flag(cls, name), value)
        if message:
            raise ValueError(message)
        return value

    @model_validator(mode="after")
    def _across_fields(self) -> CheckedParams:
        found = self.problems()
        if found:
            raise ValueError(found[0])
        return self

    def problems(self) -> list[str]:
        """Checks across fields (one line each, already naming the options); none by default."""
        return []


def cli_problems(model: type[StepParams], err: ValidationError, data: Any) -> list[str]:
    """A ValidationError of ``model`` as one line per problem naming the CLI options."""
    return [_message(model, e, data) for e in err.errors()]


def validate_cli(model: type[StepParams], values: dict[str, Any]) -> StepParams:
    """Validate options given on the command line; InputError with their CLI names."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise InputError(cli_problems(model, err, values)) from None


def absolute_path(value: str) -> str:
    """``value`` with ``~`` expanded, made absolute; ``~name`` of no user on this machine (a Scipion
    ``~Label|default~`` placeholder left in a file) is a ValueError, which validation reports."""
    from pathlib import Path

    try:
        return str(Path(value).expanduser().absolute())
    except RuntimeError:
        raise ValueError(f"{value}: '~' names no user on this machine — give the full path") from None
