"""The README's example block, run as it stands on the demo session it makes (issue 12, item 10):
every command succeeds with the run ids the README names (`view` waits for a browser: left out)."""

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.workflow.store import ProjectStore

README = Path(__file__).resolve().parents[1] / "README.md"


def example_commands() -> list[list[str]]:
    """The commands of the ```bash block under '## Example', continuation lines joined, comments dropped."""
    text = README.read_text()
    block = re.search(r"## Example\n+```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README has no ```bash block under '## Example'"
    joined = re.sub(r"\\\n", " ", block.group(1))
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_quick_start_is_make_demo_and_make_test():
    quick = README.read_text().split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.startswith("    ")]
    assert commands == ["make demo", "make test"]


def test_every_example_command_is_a_tiltflow_command():
    cli = build_cli()
    for args in example_commands():
        assert args[0] == "tiltflow" and args[1] in cli.commands, args


@pytest.mark.slow
def test_readme_example_runs_verbatim(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    cli = build_cli()
    printed = {}
    for args in example_commands():
        if args[1] == "view":
            continue
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, f"{shlex.join(args)}\n{result.output}"
        printed.setdefault(args[1], []).append(result.output)
    store = ProjectStore(tmp_path / "P", create=False)
    assert [(r.id, r.step, r.status) for r in store.runs()] == [
        (1, "import-movies", "finished"),
        (2, "motion-ctf", "finished"),
        (3, "xray-erase", "finished"),
        (4, "align", "finished"),
        (5, "align", "finished"),
        (6, "reconstruct", "finished"),
    ]
    # a subset is an output of the run it curates: the pointers the README's next commands use
    assert [out.split(":")[0] for out in printed["subset"]] == ["3.TiltSeries_2", "4.TiltSeries_2"]
    assert store.run(5).inputs == {"input": "4.TiltSeries_2"} and store.run(6).inputs == {"input": "5.TiltSeries"}
    # run.log starts with the command that made the run
    for run in store.runs():
        first = (store.root / run.run_dir / "run.log").read_text().splitlines()[0]
        assert f"command: tiltflow {run.step} -p P" in first, first
    assert "quality:" in printed["show"][0] and "voltage" not in printed["show"][0]
