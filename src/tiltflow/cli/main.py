"""The ``tiltflow`` command: static commands plus one command per registered step."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import click

from tiltflow import __version__
from tiltflow.cli.output import fail, print_notes, warnings_as_notes

_CLICK_OWN = (click.ClickException, click.exceptions.Exit, click.exceptions.Abort)


class TiltflowGroup(click.Group):
    """Runs every command with Python warnings printed once as ``note:`` lines, and an unexpected
    error as one line (the traceback only with ``--debug`` or TILTFLOW_DEBUG=1)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["tiltflow.argv"] = list(args)  # run.log starts with the command line
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        import shlex

        from tiltflow.workflow.runner import COMMAND_LINE

        token = COMMAND_LINE.set(shlex.join(["tiltflow", *ctx.meta.get("tiltflow.argv", [])]))
        with warnings_as_notes() as notes:
            try:
                return super().invoke(ctx)
            except _CLICK_OWN:
                raise
            except Exception as err:
                if ctx.params.get("debug") or os.environ.get("TILTFLOW_DEBUG"):
                    raise
                fail(
                    [
                        f"unexpected {type(err).__name__}: {err} — please report it; "
                        "`tiltflow --debug ...` shows the traceback"
                    ],
                    code=1,
                )
            finally:
                COMMAND_LINE.reset(token)
                print_notes(notes)


def option_problems(kw: dict[str, Any]) -> list[str]:
    """Options shared by several commands that no command can use (one line each)."""
    problems = []
    for name in ("workers", "threads_per_worker"):
        value = kw.get(name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} {value}: must be 1 or more (leave it out for the default)")
    if kw.get("jobqueue"):
        if importlib.util.find_spec("dask_jobqueue") is None:
            problems.append(
                "--jobqueue needs dask-jobqueue, which is not installed — pip install 'tiltflow[dask]' dask-jobqueue"
            )
        elif not Path(kw["jobqueue"]).is_file():
            problems.append(f"--jobqueue {kw['jobqueue']}: no such file — give a dask-jobqueue SLURM config (YAML)")
    return problems


def _check_options(command: click.Command) -> None:
    """Refuse impossible shared options before the command starts (and so before any run exists)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _check_options(sub)
        return
    inner = command.callback
    if inner is None or not {"workers", "threads_per_worker", "jobqueue"} & {p.name for p in command.params}:
        return

    @functools.wraps(inner)
    def checked(*args: Any, **kw: Any) -> Any:
        problems = option_problems(kw)
        if problems:
            fail(problems)
        return inner(*args, **kw)

    command.callback = checked


def build_cli() -> click.Group:
    from tiltflow.cli.demo import demo_command
    from tiltflow.cli.show import show_command
    from tiltflow.cli.step_commands import make_step_command
    from tiltflow.workflow.steps.base import all_steps

    @click.group(cls=TiltflowGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
    @click.version_option(__version__, prog_name="tiltflow")
    @click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
    def cli(debug: bool) -> None:
        """tiltflow: cryo-ET tilt series from raw movies to aligned, reconstructed tomograms."""

    cli.add_command(demo_command)
    cli.add_command(show_command)
    for step in all_steps().values():
        cli.add_command(make_step_command(step))
    for extra in _optional_commands():
        cli.add_command(extra)
    _check_options(cli)
    return cli


def _optional_commands() -> list[click.Command]:
    """Commands of layers that may not be installed (web viewer, workflows)."""
    found = []
    for module, attr in (
        ("tiltflow.cli.workflow_cmd", "workflow_group"),
        ("tiltflow.cli.view", "view_command"),
        ("tiltflow.cli.export", "export_command"),
        ("tiltflow.cli.subset", "subset_command"),
        ("tiltflow.cli.watch", "watch_command"),
    ):
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("tiltflow.cli"):
                continue
            raise
        found.append(getattr(mod, attr))
    return found


def main() -> None:
    build_cli()(prog_name="tiltflow")


if __name__ == "__main__":
    main()
