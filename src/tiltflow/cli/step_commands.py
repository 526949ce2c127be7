"""Command-line commands generated from step declarations (one per step)."""

from __future__ import annotations

import sys
import time
import types
import typing
from typing import Any, Literal

import click

from tiltflow.cli.output import echo_json, fail, print_run
from tiltflow.workflow.steps.base import ParamMeta, Step, cli_flag, param_meta

# one example line per step in its --help (those of the README's example where it has one)
EXAMPLES = {
    "import-movies": "tiltflow import-movies -p P --files demo/data --pattern '*.mdoc' --gain demo/data/gain_ref.gain",
    "import-tilt-series": "tiltflow import-tilt-series -p P --files stacks --pattern '{TS}.st' --angles tlt "
    "--voltage 300",
    "motion-ctf": "tiltflow motion-ctf -p P --input 1 --fit-range 500 10 --window 512 --ctf-range 30 8 "
    "--defocus-grid 2 2 8",
    "ctf": "tiltflow ctf -p P --input 2.TiltSeries --window 512 --ctf-range 30 8 --defocus-range 0.5 8",
    "xray-erase": "tiltflow xray-erase -p P --input 2.TiltSeries",
    "align": "tiltflow align -p P --input 3.TiltSeries_2 --method fiducial --bead-diameter-nm 10 --binning 4",
    "reconstruct": "tiltflow reconstruct -p P --input 5 --method wbp --binning 4 --thickness-nm 200",
    "import-alignment": "tiltflow import-alignment -p P --input 3 --files imod --pattern '{TS}/{TS}.xf'",
}


def example_line(step: Step) -> str:
    """The step's example: from ``EXAMPLES``, else its inputs and required parameters."""
    if step.id in EXAMPLES:
        return EXAMPLES[step.id]
    parts = ["tiltflow", step.id, "-p", "P"]
    for i, spec in enumerate(step.inputs):
        if not spec.optional:
            parts += [f"--{spec.name}", str(i + 2)]
    for name, info in step.params.model_fields.items():
        if info.is_required():
            parts += [cli_flag(step.params, name), name.upper()]
    return " ".join(parts)


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _option_for(name: str, field: Any, help_text: str | None = None) -> click.Option:
    extra = field.json_schema_extra or {}
    flag = extra.get("cli") or "--" + name.replace("_", "-")
    ann = _unwrap_optional(field.annotation)
    origin = typing.get_origin(ann)
    help_text = (field.description or "") if help_text is None else help_text
    required = field.is_required()
    default = None if required else field.default
    if ann is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", name], default=default, show_default=True, help=help_text)
    if origin is Literal:
        return click.Option(
            [flag, name],
            type=click.Choice([str(a) for a in typing.get_args(ann)]),
            default=default,
            show_default=True,
            required=required,
            help=help_text,
        )
    if origin is list:
        (inner,) = typing.get_args(ann) or (str,)
        return click.Option([flag, name], multiple=True, type=inner, default=default or (), help=help_text)
    if origin is tuple:
        args = typing.get_args(ann)
        return click.Option(
            [flag, name],
            nargs=len(args),
            type=args[0],
            default=default,
            show_default=True,
            required=required,
            help=help_text,
        )
    ptype = {float: float, int: int, str: str}.get(ann, str)
    return click.Option(
        [flag, name], type=ptype, default=default, show_default=default is not None, required=required, help=help_text
    )


COMMON_OPTIONS = [
    click.Option(
        ["-p", "--project", "project"], default=".", show_default=True, help="Project folder (created if missing)."
    ),
    click.Option(["--json", "as_json"], is_flag=True, help="Print machine-readable output."),
    click.Option(
        ["-v", "--verbose", "verbose"],
        is_flag=True,
        help="Print the per-view tables too (they are always in the run's run.log).",
    ),
    click.Option(
        ["--skip-bad", "skip_bad"], is_flag=True, help="Report and skip bad series/movies instead of failing."
    ),
    click.Option(
        ["--device", "device"],
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where the heavy math runs.",
    ),
    click.Option(["--label", "label"], default=None, help="A label for this run."),
    click.Option(
        ["--continue", "resume"],
        type=int,
        default=None,
        metavar="RUN",
        help="Continue an interrupted run (same parameters); finished items are not recomputed.",
    ),
    click.Option(
        ["--executor", "executor"],
        type=click.Choice(["local", "dask"]),
        default="local",
        show_default=True,
        help="Where per-movie / per-series tasks run.",
    ),
    click.Option(
        ["--workers", "workers"], type=int, default=None, help="Parallel tasks (local threads or Dask workers)."
    ),
    click.Option(
        ["--scheduler", "scheduler"], default=None, help="Dask: address of an existing scheduler (tcp://host:8786)."
    ),
    click.Option(["--jobqueue", "jobqueue"], default=None, help="Dask: a dask-jobqueue SLURM cluster config (YAML)."),
]


_TITLES = {"ctf": "CTF", "wbp": "WBP", "sirt": "SIRT"}


class StepCommand(click.Command):
    """A step's command whose ``--help`` lists its options by section (``sections``: title and
    parameter names, in order): inputs, main options, one section per group, expert options, run options."""

    def __init__(self, *args: Any, sections: list[tuple[str, list[str]]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx)}
        placed = {name for _, names in self.sections for name in names}
        for title, names in self.sections:
            if title == "Run options":  # the common options, --help among them
                names = names + [n for n in records if n not in placed]
            rows = [row for n in names if (row := records.get(n))]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def help_sections(step: Step) -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    """The ``--help`` sections of ``step`` from its parameters' metadata, and each parameter's help
    as shown: a group whose options all belong to one mode names it in its title
    ("Patch options (with --method patch)"); any other option of a mode starts "With --resolve: "."""
    model = step.params
    metas = [param_meta(model, name) for name in model.model_fields]
    groups: dict[str | None, list[ParamMeta]] = {None: []}
    for m in metas:
        if not m.expert:
            groups.setdefault(m.group, []).append(m)
    sections: list[tuple[str, list[str]]] = [("Inputs", ["input__" + spec.name for spec in step.inputs])]
    shown: dict[str, str] = {}
    for group, members in groups.items():
        cond = members[0].condition if members and all(m.condition for m in members) else None
        title = "Options" if group is None else f"{_TITLES.get(group, group.capitalize())} options"
        if cond is not None:
            title += f" (with {cond.option_text(model)})"
        for m in members:
            shown[m.name] = _with(m, model) if m.condition not in (None, cond) else m.help
        sections.append((title, [m.name for m in members]))
    experts = [m for m in metas if m.expert]
    shown.update({m.name: _with(m, model) if m.condition else m.help for m in experts})
    sections += [
        ("Expert options", [m.name for m in experts]),
        ("Run options", [p.name for p in COMMON_OPTIONS if p.name]),
    ]
    return sections, shown


def _with(meta: ParamMeta, model: Any) -> str:
    """``With --resolve: beads to leave out, ...`` (the help's first letter lowered unless an acronym)."""
    if meta.condition is None:
        return meta.help
    text = meta.help[:1].lower() + meta.help[1:] if meta.help[1:2].islower() else meta.help
    return f"With {meta.condition.option_text(model)}: {text}"


def make_step_command(step: Step) -> click.Command:
    fields = step.params.model_fields
    sections, shown = help_sections(step)
    params: list[click.Parameter] = [_option_for(name, f, shown[name]) for name, f in fields.items()]
    for spec in step.inputs:
        params.append(
            click.Option(
                [f"--{spec.name}", f"input__{spec.name}"],
                required=not spec.optional,
                help=f"{spec.help} (RUN_ID or RUN_ID.outputName; {' or '.join(spec.types)})",
            )
        )
    params.extend(COMMON_OPTIONS)

    def callback(**kwargs: Any) -> None:
        from tiltflow.cli.output import ProgressPrinter
        from tiltflow.workflow.errors import InputError, ProjectError
        from tiltflow.workflow.executor import ItemFailures
        from tiltflow.workflow.run_options import RunOptions, RunReport
        from tiltflow.workflow.runner import run_step
        from tiltflow.workflow.store import ProjectStore

        inputs = {k[len("input__") :]: v for k, v in kwargs.items() if k.startswith("input__")}
        values = {k: v for k, v in kwargs.items() if k in fields}
        values = {
            k: (
                list(v)
                if isinstance(v, tuple) and typing.get_origin(_unwrap_optional(fields[k].annotation)) is list
                else v
            )
            for k, v in values.items()
            if v is not None
        }
        options = RunOptions(
            skip_bad=bool(kwargs["skip_bad"]),
            device=kwargs["device"],
            executor="dask" if (kwargs["scheduler"] or kwargs["jobqueue"]) else kwargs["executor"],
            workers=kwargs["workers"],
            scheduler=kwargs["scheduler"],
            jobqueue=kwargs["jobqueue"],
            verbose=bool(kwargs["verbose"]),
        )
        report = RunReport() if kwargs["as_json"] else RunReport(progress=ProgressPrinter(step.id))
        ctx = click.get_current_context()
        given = {
            k
            for k in fields
            if ctx.get_parameter_source(k)
            in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
        }
        try:
            # one line per bad option, with its CLI name; a note per option its mode does not use
            report.note_all(step.validate(values, given=given))
            store = ProjectStore(kwargs["project"])
            t0 = time.time()

            run = run_step(
                store,
                step.id,
                values,
                inputs,
                options=options,
                report=report,
                label=kwargs["label"],
                resume=kwargs["resume"],
            )
        except (InputError, ProjectError) as err:
            fail(getattr(err, "problems", [str(err)]), code=2)
        except KeyboardInterrupt:
            fail(["interrupted — resume with the same command and --continue"], code=130)
        except ItemFailures as err:  # the first few, then "and N more (see runs/<id>_<step>/run.log)"
            fail([f"{step.id} failed: {err}"], code=1)
        except Exception as err:  # the run is marked failed; its log has the traceback
            fail([f"{step.id} failed: {type(err).__name__}: {err} (see the run's run.log)"], code=1)
        if kwargs["as_json"]:
            echo_json(run_summary_json(store, run.id))
        else:
            print_run(
                store,
                run,
                elapsed=time.time() - t0,
                warnings=report.warnings,
                notes=report.notes,
            )

    return StepCommand(
        step.id,
        params=params,
        callback=callback,
        short_help=step.title,
        sections=sections,
        help=f"{step.help}\n\n{step.title}\n\n\b\nExample:\n  {example_line(step)}",
    )


def run_summary_json(store: Any, run_id: int) -> dict:
    run = store.run(run_id)
    return {
        "id": run.id,
        "step": run.step,
        "status": run.status,
        "outputs": {
            o.name: {"pointer": o.pointer, "type": o.type, "summary": o.summary} for o in store.outputs(run.id)
        },
    }


_ = sys  # keep import for debugging hooks
