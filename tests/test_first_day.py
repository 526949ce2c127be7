"""A new user's first day (issue 12, items 6, 9-12): failures summarized, one vocabulary for
parameters, examples in every --help, progress through long phases, a terse align, run.log that
starts with its command line, and `show` with the values read and a quality line per run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import write_mrc
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import write_demo_dataset
from tiltflow.testing.tilt_series import noisy_tilt_series
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.run_options import RunReport
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MOTION = ["--window", "128", "--ctf-range", "30", "8", "--motion-grid", "1", "1", "1"]


def tiltflow(*args):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


@pytest.fixture(scope="module")
def movies(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("movies")
    write_demo_dataset(
        out, DemoConfig(n_series=1, n_tilts=5, size=(256, 256), n_frames=4, seed=3, local_motion=False), force=True
    )
    return out


@pytest.fixture(scope="module")
def motion_project(movies, tmp_path_factory):
    """import-movies (CLI, no --voltage) and motion-ctf (with a progress recorder)."""
    root = tmp_path_factory.mktemp("mp") / "P"
    result = tiltflow("import-movies", "-p", root, "--files", movies, "--gain", movies / "gain_ref.gain")
    assert result.exit_code == 0, result.output
    store = ProjectStore(root)
    calls = []
    run_step(
        store,
        "motion-ctf",
        {"window_px": 128, "ctf_range_a": [30, 8], "motion_grid": [1, 1, 1]},
        {"input": "1"},
        report=RunReport(progress=lambda item, done, total: calls.append((item, done, total))),
    )
    return store, calls


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A bead series imported from a stack and aligned through the CLI."""
    config = DemoConfig(n_series=1, n_tilts=21, size=(256, 256), pixel_size_a=5.5, n_beads=14, seed=2)
    s = noisy_tilt_series(config)
    folder = tmp_path_factory.mktemp("stacks")
    write_mrc(folder / "TS_01.st", s.views.numpy().astype(np.float32), voxel_size_a=config.pixel_size_a)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a:.3f}\n" for a in s.mdoc.tolist()))
    root = tmp_path_factory.mktemp("ap") / "P"
    imp = tiltflow(
        "import-tilt-series",
        "-p",
        root,
        "--files",
        folder,
        "--pattern",
        "{TS}.st",
        "--voltage",
        300,
        "--tilt-axis",
        s.truth["mdoc_tilt_axis_deg"],
    )
    assert imp.exit_code == 0, imp.output
    terse = tiltflow("align", "-p", root, "--input", 1, "--binning", 1)
    assert terse.exit_code == 0, terse.output
    return ProjectStore(root), terse.output


# -- item 6: many per-item failures are summarized ----------------------------------------------------


def test_many_failed_movies_are_summarized_and_the_run_record_says_so(movies, tmp_path):
    data = Path(shutil.copytree(movies, tmp_path / "data"))
    root = tmp_path / "P"
    assert tiltflow("import-movies", "-p", root, "--files", data).exit_code == 0
    for movie in (data / "frames").glob("*.tif"):
        movie.write_bytes(b"garbage" * 100)  # every movie unreadable: 5 failures
    result = tiltflow("motion-ctf", "-p", root, "--input", 1, *MOTION)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "5 of 5 movies failed" in errors[0] and "and 2 more (see runs/002_motion-ctf/run.log)" in errors[0]
    assert errors[0].count("not a readable TIFF") == 3, errors[0]
    run = ProjectStore(root).run(2)
    assert run.status == "failed" and "and 2 more (see runs/002_motion-ctf/run.log)" in run.error
    assert f"error: {run.error}" in tiltflow("show", "-p", root).output  # the summary, as the viewer shows it
    log = (root / run.run_dir / "run.log").read_text()
    assert log.count("failed: ") >= 5 and log.count("not a readable TIFF") >= 5  # every one in the log


# -- item 9: the same names everywhere ---------------------------------------------------------------


def test_run_step_takes_option_names_and_suggests_for_a_typo(tmp_path):
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", np.zeros((5, 24, 32), np.float32), voxel_size_a=2.0)
    (folder / "TS_01.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "{TS}.st", "voltage": 300, "tilt-axis": 0, "--dose": 2, "amp-contrast": 0.1},
    )
    assert (run.params["voltage_kv"], run.params["tilt_axis_deg"], run.params["dose_per_tilt_e_a2"]) == (300, 0, 2)
    with pytest.raises(InputError, match=r"'windw' is not a parameter — did you mean 'window' \(window_px\)\?"):
        run_step(store, "motion-ctf", {"windw": 128}, {"input": "1"})
    with pytest.raises(InputError, match="'window_px' and 'window' name the same parameter"):
        run_step(store, "motion-ctf", {"window": 128, "window_px": 256}, {"input": "1"})
    assert [r.id for r in store.runs()] == [run.id]  # refused before any run exists


def _workflow_file(tmp_path, params: dict) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(
        json.dumps(
            {
                "tiltflow_workflow": 1,
                "steps": [
                    {
                        "id": "import",
                        "step": "import-movies",
                        "params": {"files": "data", "voltage": 300, "amp-contrast": 0.1},
                    },
                    {"id": "motion", "step": "motion-ctf", "params": params, "inputs": {"input": "import"}},
                ],
            }
        )
    )
    return path


def test_workflow_files_and_set_take_option_names(tmp_path):
    from tiltflow.workflow.param_names import canonical_workflow
    from tiltflow.workflow.workflow_file import apply_overrides, load_workflow, validate

    wf = load_workflow(_workflow_file(tmp_path, {"window": 256, "fit-range": [500, 10], "ctf_range_a": [30, 8]}))
    apply_overrides(wf, ["motion.defocus-range=[0.5, 8]"])
    assert canonical_workflow(wf) == []
    assert wf.steps[0].params == {"files": "data", "voltage_kv": 300, "amplitude_contrast": 0.1}
    assert wf.steps[1].params == {
        "window_px": 256,
        "fit_range_a": [500, 10],
        "ctf_range_a": [30, 8],
        "defocus_range_um": [0.5, 8],
    }
    validate(wf)
    typo = load_workflow(_workflow_file(tmp_path, {"windw": 256}))
    apply_overrides(typo, ["motion.fit-rnage=[500, 10]"])
    lines = canonical_workflow(typo)
    assert lines == [
        "workflow step 'motion': 'windw' is not a parameter — did you mean 'window' (window_px)?",
        "workflow step 'motion': 'fit-rnage' is not a parameter — did you mean 'fit-range' (fit_range_a)?",
    ]


def test_validate_reads_option_names_in_workflow_files(tmp_path):
    """Workflow files (and ``--set``) with option names run; a typo gets 'did you mean'."""
    from tiltflow.workflow.workflow_file import load_workflow, validate

    wf = load_workflow(_workflow_file(tmp_path, {"window": 256, "fit-range": [500, 10]}))
    validate(wf)
    assert wf.steps[1].params == {"window_px": 256, "fit_range_a": [500, 10]}
    with pytest.raises(InputError, match=r"did you mean 'window' \(window_px\)"):
        validate(load_workflow(_workflow_file(tmp_path, {"windw": 256})))


def test_tutorial_template_carries_the_course_values():
    from tiltflow.workflow.workflow_file import load_workflow

    params = load_workflow("tutorial").steps[0].params
    assert (params["voltage_kv"], params["cs_mm"], params["amplitude_contrast"]) == (300, 2.7, 0.1)


# -- item 10: examples in every --help, demo-data's defaults --------------------------------------------


def test_every_step_help_has_an_example_that_parses():
    import shlex

    from tiltflow.workflow.steps.base import all_steps

    cli = build_cli()
    for step in all_steps():
        text = tiltflow(step, "--help").output
        assert "Example:" in text, step
        line = text.split("Example:", 1)[1].strip().splitlines()[0]
        args = shlex.split(line)
        assert args[:2] == ["tiltflow", step], line
        cli.commands[step].make_context(step, args[2:])  # every option of the example exists


def test_demo_data_help_shows_its_defaults():
    text = " ".join(tiltflow("demo-data", "--help").output.split()).split("Options:", 1)[1]
    for option in ("--series", "--tilts", "--size", "--frames"):
        assert "default:" in text.split(option, 1)[1].split("--", 1)[0], option


# -- item 11: progress through long phases; a terse align ----------------------------------------------


def test_progress_restarts_its_clock_for_a_later_phase(capsys):
    from tiltflow.cli.output import ProgressPrinter

    printer = ProgressPrinter("motion-ctf")
    times = iter([0.0, 50.0, 100.0, 130.0])
    printer._clock = lambda: next(times)
    printer("/data/a.tif", 1, 2)
    printer("/data/b.tif", 2, 2)
    printer("stacks + CTF series pass: TS_01", 0, 1)  # movies done at 100 s; the series pass starts
    printer("stacks + CTF series pass: TS_01", 1, 1)
    lines = capsys.readouterr().out.splitlines()
    assert "motion-ctf 0/1 (stacks + CTF series pass: TS_01), elapsed 0 s, ETA ?" in lines[-2]
    assert "motion-ctf 1/1 (stacks + CTF series pass: TS_01), elapsed 30 s, ETA 0 s" in lines[-1]


def test_motion_ctf_reports_each_series_after_the_movies(motion_project):
    _, calls = motion_project
    movies = [c for c in calls if c[0].endswith(".tif")]
    assert [c[1] for c in movies] == [1, 2, 3, 4, 5]
    assert calls[len(movies) :] == [
        ("stacks + CTF series pass: TS_01", 0, 1),
        ("stacks + CTF series pass: TS_01", 1, 1),
    ]


def test_align_prints_one_verdict_line_per_series_and_tables_with_v(aligned):
    store, terse = aligned
    lines = [line.strip() for line in terse.splitlines()]
    verdict = [line for line in lines if line.startswith("TS_01: verdict")]
    assert len(verdict) == 1 and "beads, mean residual" in verdict[0]
    assert "residual per view" not in terse and "residual per bead" not in terse
    assert any("per-view tables in runs/002_align/run.log (-v prints them)" in line for line in lines)
    verbose = tiltflow("align", "-p", store.root, "--input", 1, "--binning", 1, "-v")
    assert "residual per view" in verbose.output and "residual per bead" in verbose.output
    for run in store.runs()[1:]:
        log = (store.root / run.run_dir / "run.log").read_text()
        assert "residual per view" in log and "TS_01: verdict" in log


# -- item 12: run.log starts with the command; show's values read and quality ------------------------------


def test_run_log_starts_with_the_command_line(motion_project, aligned, tmp_path):
    store, *_ = aligned
    first = (store.root / store.run(2).run_dir / "run.log").read_text().splitlines()[0]
    assert first.endswith(f"command: tiltflow align -p {store.root} --input 1 --binning 1")
    mstore, _ = motion_project
    first = (mstore.root / mstore.run(2).run_dir / "run.log").read_text().splitlines()[0]
    assert "command: (Python, no command line" in first  # run_step called from Python
    # a workflow: its command line with the file and the overrides, and the step
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", np.zeros((5, 24, 32), np.float32), voxel_size_a=2.0)
    (folder / "TS_01.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    wf = tmp_path / "wf.json"
    wf.write_text(
        json.dumps(
            {
                "tiltflow_workflow": 1,
                "steps": [
                    {
                        "id": "stacks",
                        "step": "import-tilt-series",
                        "params": {"files": str(folder), "pattern": "{TS}.st"},
                    }
                ],
            }
        )
    )
    result = tiltflow("workflow", "run", wf, "-p", tmp_path / "W", "--set", "stacks.voltage_kv=300")
    assert result.exit_code == 0, result.output
    log = (tmp_path / "W" / "runs").glob("*/run.log")
    first = next(log).read_text().splitlines()[0]
    assert first.endswith(
        f"command: tiltflow workflow run {wf} -p {tmp_path / 'W'} --set stacks.voltage_kv=300  [workflow step 'stacks']"
    ), first


def test_show_prints_values_read_from_the_mdoc_and_a_quality_line(motion_project, aligned):
    store, _ = motion_project
    one = tiltflow("show", "-p", store.root, 1).output
    assert "voltage_kv = 300 (from the mdoc)" in one and "pixel_size_a = 2.76 (from the mdoc)" in one
    listing = tiltflow("show", "-p", store.root).output
    quality = [line.strip() for line in listing.splitlines() if line.strip().startswith("quality:")]
    assert len(quality) == 1  # the import has nothing to judge
    assert "motion" in quality[0] and "px median" in quality[0] and "defocus" in quality[0] and "µm" in quality[0]
    assert "CTF: 1 " in quality[0]
    astore, *_ = aligned
    listing = tiltflow("show", "-p", astore.root).output
    quality = [line.strip() for line in listing.splitlines() if line.strip().startswith("quality:")]
    assert quality and all("residual" in q and "px" in q and "aligned: 1 " in q for q in quality)
    assert "quality: residual" in tiltflow("show", "-p", astore.root, 2).output
