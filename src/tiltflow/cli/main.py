"""The ``tiltflow`` command: static commands plus one command per registered step."""

from __future__ import annotations

import click

from tiltflow import __version__


def build_cli() -> click.Group:
    from tiltflow.cli.demo import demo_command
    from tiltflow.cli.show import show_command
    from tiltflow.cli.step_commands import make_step_command
    from tiltflow.workflow.steps.base import all_steps

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
    @click.version_option(__version__, prog_name="tiltflow")
    def cli() -> None:
        """tiltflow: cryo-ET tilt series from raw movies to aligned, reconstructed tomograms."""

    cli.add_command(demo_command)
    cli.add_command(show_command)
    for step in all_steps().values():
        cli.add_command(make_step_command(step))
    for extra in _optional_commands():
        cli.add_command(extra)
    return cli


def _optional_commands() -> list[click.Command]:
    """Commands of layers that may not be installed (web viewer, workflows)."""
    found = []
    for module, attr in (("tiltflow.cli.workflow_cmd", "workflow_group"), ("tiltflow.cli.view", "view_command"),
                         ("tiltflow.cli.export", "export_command"), ("tiltflow.cli.subset", "subset_command")):
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
