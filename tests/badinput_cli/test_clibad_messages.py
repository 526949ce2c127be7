"""Bad command-line input: exit code 2 and one `error:` line naming the option / file and the fix,
no traceback, and the project (or the disk) unchanged."""

import os
import socket
import warnings

import click
import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import write_mrc
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.sets import Tomogram, TomogramSet
from tiltflow.workflow.store import ProjectStore


def stacks(folder, angles=(-6, -3, 0, 3, 6)):
    for ts in ("TS_01", "TS_02"):
        write_mrc(folder / f"{ts}.st", np.zeros((len(angles), 24, 32), np.float32), voxel_size_a=2.0)
        (folder / f"{ts}.rawtlt").write_text("".join(f"{a}\n" for a in angles))
    return folder


IMPORT = ["--pattern", "{TS}.st", "--voltage", "300", "--tilt-axis", "0", "--dose", "2"]


@pytest.fixture
def project(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run_step(
        store,
        "import-tilt-series",
        {
            "files": str(stacks(tmp_path)),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": 0.0,
            "dose_per_tilt_e_a2": 2.0,
        },
    )
    tomo = store.create_run("reconstruct", {}, {"input": "1"})
    store.finish_run(
        tomo.id, {"Tomograms": TomogramSet([Tomogram("TS_01", str(tmp_path / "TS_01.st"), 2.0, (5, 24, 32))])}
    )
    return store


def tiltflow(*args, cli=None):
    return CliRunner().invoke(cli or build_cli(), [str(a) for a in args])


def refused(result, *needles, code=2):
    """Exit ``code``, exactly one `error:` line holding every needle, and no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def state(store):
    with store.reading() as con:
        runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        outs = con.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]
    return runs, outs, sorted(p.name for p in (store.root / "runs").iterdir())


@pytest.mark.parametrize("name", ["a[/]b", "x[bold]y", "smile:smile:z"])
def test_paths_with_markup_are_printed_verbatim(tmp_path, name):
    line = refused(tiltflow("show", "-p", tmp_path / name), "no tiltflow project")
    assert name in line


def test_show_non_numeric_and_unknown_run(project):
    refused(tiltflow("show", "-p", project.root, "abc"), "run 'abc'", "tiltflow show -p")
    refused(tiltflow("show", "-p", project.root, "99"), "no run 99")


def test_subset_of_tomograms_is_refused(project):
    before = state(project)
    refused(tiltflow("subset", "-p", project.root, "--input", "2"), "--input 2", "Tomograms", "tilt series")
    refused(tiltflow("subset", "-p", project.root, "--input", "2.Tomograms", "--exclude-beyond", "3"), "--input")
    assert state(project) == before


def test_export_out_in_impossible_places(project, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    refused(
        tiltflow("export", "-p", project.root, "1", "--format", "imod", "--out", blocker / "sub"), "--out", "is a file"
    )
    assert blocker.read_text() == "x"
    refused(tiltflow("export", "-p", project.root, "1", "--format", "imod", "--out", "/proc/tiltflow_no/x"), "--out")
    refused(tiltflow("export", "-p", project.root, "99", "--format", "imod", "--out", tmp_path / "never"), "no run 99")
    assert not (tmp_path / "never").exists()  # a bad pointer is refused before --out is made


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_export_out_unwritable(project, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(
            tiltflow("export", "-p", project.root, "1", "--format", "imod", "--out", locked / "x"),
            "--out",
            "not writable",
        )
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_export_out_missing_parent_is_created(project, tmp_path):
    out = tmp_path / "new" / "deeper" / "imod"
    r = tiltflow("export", "-p", project.root, "1", "--format", "aretomo", "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "TS_01").is_dir()


def test_view_port_out_of_range_and_in_use(project, monkeypatch):
    from tiltflow.cli import view

    refused(tiltflow("view", "-p", project.root, "--port", "70000", "--no-browser"), "--port 70000", "65535")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(view, "_free_port", lambda host, wanted: wanted)  # taken after we looked
        refused(tiltflow("view", "-p", project.root, "--port", port, "--no-browser"), f"--port {port}", "in use")


def test_workers_below_one_is_refused_before_any_run(project, tmp_path):
    before = state(project)
    refused(
        tiltflow("import-tilt-series", "-p", project.root, "--files", tmp_path, *IMPORT, "--workers", "0"),
        "--workers 0",
        "1 or more",
    )
    refused(tiltflow("workflow", "run", "tutorial", "-p", project.root, "--workers", "-1"), "--workers -1")
    assert state(project) == before


def test_jobqueue_without_dask_jobqueue_names_the_install(project, tmp_path):
    pytest.importorskip("dask")
    try:
        import dask_jobqueue  # noqa: F401

        pytest.skip("dask-jobqueue is installed")
    except ImportError:
        pass
    config = tmp_path / "slurm.yaml"
    config.write_text("cores: 4\n")
    before = state(project)
    refused(
        tiltflow("import-tilt-series", "-p", project.root, "--files", tmp_path, *IMPORT, "--jobqueue", config),
        "--jobqueue",
        "pip install",
        "dask-jobqueue",
    )
    assert state(project) == before


def test_step_refuses_a_folder_without_project(tmp_path):
    typo = tmp_path / "typo"
    refused(tiltflow("ctf", "-p", typo, "--input", "1"), "no tiltflow project here", str(typo))
    assert not typo.exists()
    (tmp_path / "empty").mkdir()
    refused(tiltflow("reconstruct", "-p", tmp_path / "empty", "--input", "1"), "no tiltflow project here")
    assert list((tmp_path / "empty").iterdir()) == []


def test_rejected_first_import_leaves_no_folder(tmp_path):
    stacks(tmp_path)
    target = tmp_path / "new" / "project"
    refused(
        tiltflow("import-tilt-series", "-p", target, "--files", tmp_path, *IMPORT[2:], "--pattern", "*.nothing"),
        "--pattern",
    )  # refused inside the step, after the run began
    assert not (tmp_path / "new").exists()
    refused(
        tiltflow("import-tilt-series", "-p", target, "--files", tmp_path, *IMPORT, "--dose", "-5"), "dose"
    )  # refused by the parameter model
    assert not (tmp_path / "new").exists()
    r = tiltflow("import-tilt-series", "-p", target, "--files", tmp_path, *IMPORT)
    assert r.exit_code == 0, r.output
    assert [run.status for run in ProjectStore(target, create=False).runs()] == ["finished"]


def _with(command: click.Command):
    cli = build_cli()
    cli.add_command(command)
    return cli


def test_warnings_become_notes_once(tmp_path):
    @click.command("noisy")
    def noisy():
        for _ in range(3):
            warnings.warn("the gain has 12 dead pixels [bold]", UserWarning, stacklevel=1)
        np.log(np.zeros(1))  # RuntimeWarning: divide by zero
        click.echo("done")

    r = tiltflow("noisy", cli=_with(noisy))
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("note:")]
    assert notes[0] == "note: the gain has 12 dead pixels [bold]" and len(notes) == 2, r.output
    assert "divide by zero" in notes[1]
    assert "UserWarning" not in r.output and ".py" not in r.output


def test_warnings_during_a_run_go_to_its_log(tmp_path):
    from tiltflow.cli.output import warnings_as_notes
    from tiltflow.workflow.runner import _close_logger, _run_logger

    log = _run_logger(tmp_path, 7)
    with warnings_as_notes() as notes:
        warnings.warn("odd header, read permissively", UserWarning, stacklevel=1)
    _close_logger(log)
    assert notes == ["odd header, read permissively"]
    assert "note: odd header, read permissively" in (tmp_path / "run.log").read_text()


def test_unexpected_error_is_one_line_unless_debug():
    @click.command("broken")
    def broken():
        raise RuntimeError("boom")

    refused(tiltflow("broken", cli=_with(broken)), "RuntimeError: boom", "--debug", code=1)
    r = tiltflow("--debug", "broken", cli=_with(broken))
    assert isinstance(r.exception, RuntimeError)


def test_demo_data_bad_numbers(tmp_path):
    refused(tiltflow("demo-data", tmp_path / "demo", "--tilts", "0"), "n_tilts")
    assert not (tmp_path / "demo").exists()
